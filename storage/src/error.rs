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
    #[error("failed to {operation} {path}: {source}; {}", io_hint(.source))]
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

    /// The encryption key file cannot be used.
    #[error("encryption key file {path}: {detail}; fix the file ([engine] encryption_key_file: one `ID HEX-KEY` line per key, 64 hex digits) or the configured encryption_key_id")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// A batch is encrypted with a key id that the key ring does not hold.
    #[error(
        "partition {partition_id}: the sealed data (batch or checkpoint) at byte {position} of {path} is encrypted with key id {key_id}, {}; add the key with id {key_id} to the key file (after a rotation, old keys must stay in it while batches use them)",
        match key_file {
            Some(file) => format!("which the key file {} does not hold", file.display()),
            None => "but no encryption key file is configured".to_string(),
        }
    )]
    UnknownKey {
        /// The partition.
        partition_id: u32,
        /// The segment or journal file.
        path: PathBuf,
        /// Byte position of the batch in that file.
        position: u64,
        /// The batch's key id.
        key_id: u16,
        /// The key file in use, if any.
        key_file: Option<PathBuf>,
    },

    /// A batch failed authentication: the key with its id is not the key
    /// that wrote it, or its bytes were changed (and the CRC recomputed).
    #[error(
        "partition {partition_id}: the sealed data (batch or checkpoint) at byte {position} of {path} fails authentication with key id {key_id}: the key with that id in the key file is not the one that encrypted it, or the data was altered; check the key file (a wrong key never yields data), else restore this partition from a replica or backup"
    )]
    Authentication {
        /// The partition.
        partition_id: u32,
        /// The segment or journal file.
        path: PathBuf,
        /// Byte position of the batch in that file.
        position: u64,
        /// The batch's key id.
        key_id: u16,
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

/// What to do about a failed operating-system call, by its kind.
pub(crate) fn io_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "the file system holding it is full (or this user's quota is used up): free space on it or grow it"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "this user may not write there: fix the owner or mode, or mount the file system read-write"
        }
        io::ErrorKind::NotFound => {
            "the path does not exist: create it or fix the configured data directory"
        }
        _ => "check that the path exists, that this user may write it, and that the disk has room",
    }
}

impl StorageError {
    /// Whether this is a key problem (a batch encrypted with an unknown key
    /// id, or one that fails authentication): reading the log another way
    /// cannot help, the key file must be fixed.
    pub fn is_key_error(&self) -> bool {
        matches!(
            self,
            StorageError::UnknownKey { .. } | StorageError::Authentication { .. }
        )
    }

    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice of an I/O error fits its cause.
    #[test]
    fn io_errors_say_what_to_do_about_their_cause() {
        let message = |code: i32| {
            StorageError::io(
                "write to",
                "/data/x.seg",
                io::Error::from_raw_os_error(code),
            )
            .to_string()
        };
        let full = message(28); // ENOSPC
        assert!(full.contains("/data/x.seg"), "{full}");
        assert!(full.contains("is full"), "{full}");
        assert!(message(122).contains("quota"), "EDQUOT"); // EDQUOT
        assert!(message(13).contains("may not write there"), "EACCES");
        assert!(message(30).contains("read-write"), "EROFS");
        assert!(message(2).contains("does not exist"), "ENOENT");
        assert!(message(5).contains("check that the path exists"), "EIO");
    }
}
