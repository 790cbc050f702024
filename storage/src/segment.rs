//! Segment files: naming, listing, and reading ranges through a memory map or
//! `pread`.

use std::cell::RefCell;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::map::{MapSlice, SegmentMap};
use crate::StorageError;

/// Segment files end with this.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Digits of the base position in a segment file name.
const SEGMENT_NAME_DIGITS: usize = 20;

/// How a partition reads flushed records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Through read-only memory maps, zero copy (the default).
    #[default]
    Mmap,
    /// Through `pread` into owned buffers (no maps at all; for tests and for
    /// platforms or file systems where mapping is unwelcome).
    Pread,
}

pub(crate) fn segment_file_name(base: u64) -> String {
    format!(
        "{base:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of a partition directory, sorted by base position.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let read_dir = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut segments = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_segment_file_name(name) {
            segments.push((base, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Per-segment facts that retention and `for_each_since` need without
/// reading the segment.
#[derive(Clone, Debug, Default)]
pub(crate) struct SegmentSummary {
    /// Largest record timestamp in the segment (None when it is empty).
    pub timestamp_max_ms: Option<u64>,
    /// Per retention rule (same order as the configuration): the largest
    /// timestamp of a record governed by that rule.
    pub rule_timestamp_max_ms: Vec<Option<u64>>,
    /// Whether some record matches no rule (and so must be kept forever).
    pub has_unmatched: bool,
}

impl SegmentSummary {
    pub(crate) fn new(rules: usize) -> SegmentSummary {
        SegmentSummary {
            timestamp_max_ms: None,
            rule_timestamp_max_ms: vec![None; rules],
            has_unmatched: false,
        }
    }

    pub(crate) fn add(&mut self, rule: Option<usize>, timestamp_ms: u64) {
        self.timestamp_max_ms = Some(
            self.timestamp_max_ms
                .map_or(timestamp_ms, |t| t.max(timestamp_ms)),
        );
        match rule {
            Some(rule) => {
                let slot = &mut self.rule_timestamp_max_ms[rule];
                *slot = Some(slot.map_or(timestamp_ms, |t| t.max(timestamp_ms)));
            }
            None => self.has_unmatched = true,
        }
    }

    pub(crate) fn merge(&mut self, other: &SegmentSummary) {
        if let Some(t) = other.timestamp_max_ms {
            self.timestamp_max_ms = Some(self.timestamp_max_ms.map_or(t, |m| m.max(t)));
        }
        for (mine, theirs) in self
            .rule_timestamp_max_ms
            .iter_mut()
            .zip(&other.rule_timestamp_max_ms)
        {
            if let Some(t) = theirs {
                *mine = Some(mine.map_or(*t, |m| m.max(*t)));
            }
        }
        self.has_unmatched |= other.has_unmatched;
    }
}

/// Bytes read from a segment: a range of a shared map, or an owned buffer.
pub(crate) enum Chunk {
    Mapped(MapSlice),
    Owned(Vec<u8>),
}

impl Chunk {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Mapped(slice) => slice.as_ref(),
            Chunk::Owned(bytes) => bytes,
        }
    }

    /// Zero copy for maps: the `Bytes` keeps the map alive.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Chunk::Mapped(slice) => Bytes::from_owner(slice),
            Chunk::Owned(bytes) => Bytes::from(bytes),
        }
    }
}

/// One segment file of an open partition.
pub(crate) struct Segment {
    /// Partition-stream position of the first byte.
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
    /// Bytes of valid, flushed batches.
    pub len: u64,
    /// How many bytes a map of this segment covers at least: the size an
    /// active segment may grow to, so that it is mapped once and not again
    /// as it grows; a sealed segment's length.
    map_bytes: u64,
    /// The current map, if any; replaced by a longer one only when a read
    /// needs bytes beyond it (a batch larger than `map_bytes`). Old maps
    /// live on in the `Record`s that use them.
    map: RefCell<Option<Arc<SegmentMap>>>,
    pub summary: SegmentSummary,
    /// Where its batches start, found on demand (only reads of a partition
    /// with a key ring use it).
    pub batch_starts: RefCell<BatchStarts>,
}

/// The batch starts of a segment up to `indexed_to`, found by walking the
/// batch headers from the start of the file. An encrypted record's header is
/// ciphertext, so this (not the record's `batch_distance`) leads a read from
/// a record offset to its batch. 8 bytes per batch, built lazily: a segment
/// nobody reads costs nothing.
#[derive(Debug, Default)]
pub(crate) struct BatchStarts {
    pub starts: Vec<u64>,
    /// The end of the last batch indexed (a file position).
    pub indexed_to: u64,
}

impl Segment {
    /// `map_bytes`: the size the segment may grow to (its length if it is
    /// sealed); its map covers that much.
    pub(crate) fn new(
        base: u64,
        path: PathBuf,
        file: File,
        len: u64,
        map_bytes: u64,
        summary: SegmentSummary,
    ) -> Segment {
        Segment {
            base,
            path,
            file,
            len,
            map_bytes,
            map: RefCell::new(None),
            summary,
            batch_starts: RefCell::new(BatchStarts::default()),
        }
    }

    pub(crate) fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Reads `len` bytes at `position` (relative to the file start). The range
    /// must lie inside the flushed length; a pointer that leads outside it is
    /// reported as corruption.
    pub(crate) fn read(
        &self,
        position: u64,
        len: usize,
        mode: ReadMode,
    ) -> Result<Chunk, StorageError> {
        let end = position
            .checked_add(len as u64)
            .filter(|&end| end <= self.len);
        let Some(end) = end else {
            return Err(StorageError::Corrupt {
                path: self.path.clone(),
                position,
                detail: format!(
                    "a pointer leads to bytes {position}..{} beyond the segment's {} valid bytes",
                    position.saturating_add(len as u64),
                    self.len
                ),
            });
        };
        match mode {
            ReadMode::Pread => {
                let mut buffer = vec![0u8; len];
                self.file
                    .read_exact_at(&mut buffer, position)
                    .map_err(|e| StorageError::io("read", &self.path, e))?;
                Ok(Chunk::Owned(buffer))
            }
            ReadMode::Mmap => {
                let map = self.map_covering(end)?;
                // SAFETY: `position..end` lies inside the flushed length
                // (checked above), whose bytes the partition never modifies
                // or truncates while a map exists; `map_covering` returns a
                // map of at least `end` bytes.
                Ok(Chunk::Mapped(unsafe {
                    map.slice(position as usize, end as usize)
                }))
            }
        }
    }

    /// The current map if it covers `end`, else a new map of `map_bytes` (or
    /// of all flushed bytes, if more).
    fn map_covering(&self, end: u64) -> Result<Arc<SegmentMap>, StorageError> {
        let mut slot = self.map.borrow_mut();
        if let Some(map) = slot.as_ref() {
            if map.len() as u64 >= end {
                return Ok(Arc::clone(map));
            }
        }
        let map = Arc::new(
            SegmentMap::map(&self.file, self.len.max(self.map_bytes))
                .map_err(|e| StorageError::io("map", &self.path, e))?,
        );
        *slot = Some(Arc::clone(&map));
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(4096), "00000000000000004096.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000004096.seg"),
            Some(4096)
        );
        assert_eq!(parse_segment_file_name("4096.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000409x.seg"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    fn mapped(chunk: Chunk) -> MapSlice {
        match chunk {
            Chunk::Mapped(slice) => slice,
            Chunk::Owned(_) => panic!("a map read returned owned bytes"),
        }
    }

    /// A growing segment is mapped once: reads of bytes appended after the
    /// first map use that map (remapping on the append path stalled shards
    /// for milliseconds), and a read past `map_bytes` maps again.
    #[test]
    fn an_active_segment_is_mapped_once_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(0));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&[1; 100], 0).unwrap();
        let mut segment = Segment::new(0, path, file, 100, 8192, SegmentSummary::new(0));

        let first = mapped(segment.read(10, 20, ReadMode::Mmap).unwrap());
        assert_eq!(first.as_ref(), &[1; 20]);
        segment.file.write_all_at(&[2; 4000], 100).unwrap();
        segment.len = 4100;
        let second = mapped(segment.read(4000, 100, ReadMode::Mmap).unwrap());
        assert_eq!(second.as_ref(), &[2; 100]);
        assert!(Arc::ptr_eq(first.map(), second.map()), "no new map");
        assert_eq!(first.map().len(), 8192);

        segment.file.write_all_at(&[3; 8000], 4100).unwrap();
        segment.len = 12_100;
        let third = mapped(segment.read(12_000, 100, ReadMode::Mmap).unwrap());
        assert_eq!(third.as_ref(), &[3; 100]);
        assert_eq!(third.map().len(), 12_100, "a read past the map maps again");
        // The older slices still read their bytes through the old map.
        assert_eq!(first.as_ref(), &[1; 20]);
        assert_eq!(
            segment.read(0, 12_100, ReadMode::Pread).unwrap().as_slice()[4100..],
            [3; 8000]
        );
    }
}
