//! The one error type of the storage layer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the storage layer.
///
/// Every variant carries the context an operator needs (file, byte offset,
/// sizes, limits) and its message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed.
    #[error("failed to {operation} {path}: {source}; check that the path exists, that this user may write it, and that the disk has room")]
    Io {
        /// What was being done, e.g. "write to".
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// The data directory or partition is locked by someone else.
    #[error(
        "{path} is locked: another starling process (or another open of the same partition in this process) uses it; stop it or choose another data directory"
    )]
    Locked {
        /// The directory whose lock is held elsewhere.
        path: PathBuf,
    },

    /// A file failed a checksum or structure check.
    #[error(
        "{detail} in batch at byte {position} of {path}: the file is corrupt; restore this partition from a replica or backup, or run `starling log verify` for details"
    )]
    Corrupt {
        /// The segment (or checkpoint) file.
        path: PathBuf,
        /// Byte position inside that file of the batch (or entry) that is bad.
        position: u64,
        /// What exactly is wrong.
        detail: String,
    },

    /// The partition directory does not look like a partition (missing
    /// segments, gaps between segments, foreign files).
    #[error("{path} is not a consistent partition: {detail}; restore this partition from a replica or backup")]
    Inconsistent {
        /// The partition directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// A record field is larger than its limit.
    #[error("record {field} is {bytes} bytes, over the limit {limit_name} = {limit} bytes; send a smaller {field}")]
    TooLarge {
        /// Which field ("body", "channel", ...).
        field: &'static str,
        /// Its size.
        bytes: u64,
        /// The name of the limit (a constant or configuration value).
        limit_name: &'static str,
        /// The limit.
        limit: u64,
    },

    /// A record is not acceptable for a reason other than its size.
    #[error("invalid record: {detail}")]
    InvalidRecord {
        /// What is wrong.
        detail: &'static str,
    },

    /// The partition configuration is not usable.
    #[error("invalid partition configuration: {detail}")]
    InvalidConfig {
        /// What is wrong and what the valid range is.
        detail: String,
    },

    /// A write or fsync failed earlier; the partition accepts no more writes.
    #[error(
        "partition {partition_id} stopped accepting writes after an earlier failure ({reason}); nothing after that failure was acknowledged; fix the cause (disk full, I/O error) and reopen the partition"
    )]
    Failed {
        /// The partition.
        partition_id: u32,
        /// The first failure.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
