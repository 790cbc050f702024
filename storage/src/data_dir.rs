//! The data directory and its process lock.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::StorageError;

/// The name of the lock file in the data directory and in each partition
/// directory.
pub(crate) const LOCK_FILE_NAME: &str = "LOCK";
/// Directory under the data directory that holds one directory per
/// partition.
const PARTITIONS_DIRECTORY: &str = "partitions";

/// The data directory of a starling process.
///
/// It holds an exclusive lock on `<dir>/LOCK` for its whole life, so two
/// processes never share a data directory (a second one could truncate files
/// this one has mapped).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held for the lock; released when dropped.
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and locks it.
    ///
    /// Fails with [`StorageError::Locked`] if another process (or another
    /// `DataDir` in this process) holds the lock.
    pub fn open(path: &Path) -> Result<DataDir, StorageError> {
        fs::create_dir_all(path).map_err(|e| StorageError::io("create directory", path, e))?;
        let lock = lock_directory(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<dir>/partitions/<id as 5 digits>`.
    pub fn partition_path(&self, partition_id: u32) -> PathBuf {
        partition_path(&self.path, partition_id)
    }
}

/// `<data_dir>/partitions/<id as 5 digits>`.
pub(crate) fn partition_path(data_dir: &Path, partition_id: u32) -> PathBuf {
    data_dir
        .join(PARTITIONS_DIRECTORY)
        .join(format!("{partition_id:05}"))
}

/// Takes an exclusive lock on `<dir>/LOCK`, creating it if needed.
pub(crate) fn lock_directory(dir: &Path) -> Result<File, StorageError> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StorageError::io("open lock file", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(StorageError::io("lock", &lock_path, e)),
    }
}

/// Bytes an unprivileged writer may still use on the file system holding
/// `path` (`statvfs`: available blocks × fragment size).
pub fn available_bytes(path: &Path) -> Result<u64, StorageError> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        StorageError::io(
            "read the free space of",
            path,
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is a NUL-terminated path and `stats` is written by
    // statvfs before it is read (only when it returns 0).
    if unsafe { libc::statvfs(name.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(StorageError::io(
            "read the free space of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    // The field types are u64 here but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_bytes) = (stats.f_bavail as u64, stats.f_frsize as u64);
    Ok(blocks.saturating_mul(block_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let error = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(error, StorageError::Locked { .. }));
        assert!(
            error.to_string().contains("another starling process"),
            "{error}"
        );
        assert_eq!(
            first.partition_path(7),
            dir.path().join("partitions").join("00007")
        );
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn available_bytes_of_a_directory_and_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        let error = available_bytes(&dir.path().join("missing")).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
