//! The one error type of the audit log.

use std::io;
use std::path::PathBuf;

use crate::StorageError;

/// Everything that can go wrong when writing, reading or verifying the audit
/// log.
///
/// Every variant names the file and, where there is one, the byte offset, and
/// its message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An operating-system call failed.
    #[error("failed to {operation} {path}: {source}; {}", crate::error::io_hint(.source))]
    Io {
        /// What was being done, e.g. "write to".
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// Locking the audit directory failed (another process has it open).
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// A record or segment header is damaged or was altered: a bad checksum,
    /// a broken hash chain, a sequence gap, an impossible field.
    #[error("{detail} (record at byte {position} of {path}): the audit log was altered or damaged after it was written; keep this copy as evidence and compare it with your exported or backed-up copies")]
    Tampered {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file of the first bad record (or header).
        position: u64,
        /// What exactly is wrong.
        detail: String,
    },

    /// A checkpoint's signature does not verify with the given public key.
    #[error("checkpoint at byte {position} of {path} (covering entries up to seq {seq}): {detail}; the checkpoint was forged or replaced, or the wrong public key was given")]
    BadSignature {
        /// The segment file (or `HEAD`).
        path: PathBuf,
        /// Byte offset of the checkpoint in that file.
        position: u64,
        /// The last entry the checkpoint claims to cover.
        seq: u64,
        /// What is wrong.
        detail: String,
    },

    /// Entries that existed are gone from the end of the log: the log ends
    /// inside a record, or ends before a position a signed checkpoint (or the
    /// caller) says it reached.
    #[error("the audit log was truncated: {detail}")]
    Truncated {
        /// What says that more existed, and where the log ends now.
        detail: String,
    },

    /// An entry field is larger than its limit.
    #[error("audit entry {field} is {bytes} bytes, over the limit {limit_name} = {limit} bytes; shorten it (the detail should be a small JSON object or key=value text)")]
    TooLarge {
        /// Which field ("actor", "detail", ...).
        field: &'static str,
        /// Its size.
        bytes: u64,
        /// The name of the limit constant.
        limit_name: &'static str,
        /// The limit.
        limit: u64,
    },

    /// A key file cannot be used.
    #[error("audit key file {path}: {detail}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },

    /// The configuration is not usable.
    #[error("invalid audit log configuration: {detail}")]
    InvalidConfig {
        /// What is wrong and the valid range.
        detail: String,
    },

    /// An earlier write or fdatasync failed; nothing more is accepted.
    #[error("the audit log at {path} refuses writes after an earlier write or fdatasync failure; fix the disk and reopen it (recovery keeps every acknowledged entry)")]
    Failed {
        /// The audit directory.
        path: PathBuf,
    },
}

impl AuditError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        AuditError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
