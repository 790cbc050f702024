//! Crash images: what a power loss can leave of a data directory, made on
//! purpose so tests can check that recovery repairs it.
//!
//! A write that was not followed by a finished `fdatasync` may reach the
//! disk in part: any of its pages may be lost while later ones survive.
//! These functions destroy exactly such pages (as zeros, which is what a
//! preallocated file reads where a page never arrived) and nothing that the
//! storage layer reported durable.

use std::fs;
use std::path::Path;

use crate::journal::unsynced_tails;
use crate::StorageError;

/// The page size a lost write is counted in.
pub const PAGE_BYTES: u64 = 4096;

/// Zeroes pages of `path` from byte `from` (the page holding `from` keeps
/// its bytes before it) for which `lose()` says so; pages that are already
/// all zeros are left alone. Returns how many pages were lost.
pub fn lose_pages_from(
    path: &Path,
    from: u64,
    lose: &mut dyn FnMut() -> bool,
) -> Result<u64, StorageError> {
    let mut bytes = fs::read(path).map_err(|e| StorageError::io("read", path, e))?;
    let mut at = from as usize;
    let mut lost = 0;
    while at < bytes.len() {
        let page_end = ((at as u64 / PAGE_BYTES + 1) * PAGE_BYTES).min(bytes.len() as u64) as usize;
        if bytes[at..page_end].iter().any(|&b| b != 0) && lose() {
            bytes[at..page_end].fill(0);
            lost += 1;
        }
        at = page_end;
    }
    if lost > 0 {
        fs::write(path, bytes).map_err(|e| StorageError::io("write", path, e))?;
    }
    Ok(lost)
}

/// Loses pages of every partition's active (last) segment after the
/// durable end its shard journal records (the page holding that end keeps
/// its durable bytes). Sealed segments are left alone: a roll syncs the
/// segment it seals before the next one gets a byte. Returns how many pages
/// were lost.
pub fn lose_unsynced_partition_pages(
    data_dir: &Path,
    lose: &mut dyn FnMut() -> bool,
) -> Result<u64, StorageError> {
    let mut lost = 0;
    for (id, tail) in unsynced_tails(data_dir)? {
        let directory = data_dir.join("partitions").join(format!("{id:05}"));
        let entries =
            fs::read_dir(&directory).map_err(|e| StorageError::io("list", &directory, e))?;
        let mut last: Option<(u64, std::path::PathBuf)> = None;
        for entry in entries {
            let path = entry
                .map_err(|e| StorageError::io("list", &directory, e))?
                .path();
            let base = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(base) = base {
                if last.as_ref().is_none_or(|(at, _)| base > *at) {
                    last = Some((base, path));
                }
            }
        }
        if let Some((base, path)) = last {
            lost += lose_pages_from(&path, tail.durable_end.saturating_sub(base), lose)?;
        }
    }
    Ok(lost)
}
