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
}
