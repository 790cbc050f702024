//! The audit log: an append-only record of security events (sign-ins,
//! tokens, permission, user and configuration changes, admin actions,
//! denied requests), hash-chained and signed at checkpoints, in its own
//! directory (`<data dir>/audit/`).
//!
//! # Contract
//!
//! - [`AuditLog::append`] (or [`AuditLog::append_batch`], one write and one
//!   `fdatasync` for many entries) returns only when the entries are durable:
//!   the caller acknowledges the audited action after it returns, and not at
//!   all if it fails. After a failed write or sync the log refuses every
//!   further write ([`AuditError::Failed`]) until reopened.
//! - Every record carries the SHA-256 of the record before it. Every
//!   [`AuditConfig::checkpoint_interval_entries`] entries, on close, at open
//!   after a crash and before a segment is sealed, a checkpoint signed with
//!   Ed25519 vouches for everything before it; a copy of the newest one is
//!   kept in `HEAD`.
//! - Recovery at open truncates a torn tail of the last segment only; any
//!   other damage is an error naming the file and byte offset.
//! - [`verify_audit_dir`] needs only the public key and detects edited,
//!   deleted, inserted, reordered and truncated entries and forged
//!   checkpoints; [`read_audit_dir`] reads entries for export.
//!
//! # Bytes on disk
//!
//! Segment files are named after the seq of their first entry
//! (`00000000000000000001.audit`); all integers are little-endian (full
//! description: `docs/STORAGE-FORMAT.md`, "Audit log").
//!
//! ```text
//! segment header (56 bytes)          record header (64 bytes, entries and checkpoints)
//!  0 magic "STRA"   4 version=1        0 record_bytes u32    4 crc32c(8..record_bytes) u32
//!  5 reserved [3]   8 crc32c(12..56)   8 record_type u8 (1 entry, 2 checkpoint)
//! 12 reserved u32  16 first_seq u64    9 version u8 = 1     10 kind u16 (checkpoint: 0)
//! 24 previous_hash [32]               12 reserved u32       16 seq u64
//!                                     24 timestamp_ms u64   32 previous_hash [32]
//! entry: 64 actor_bytes u16  66 source_bytes u16  68 target_bytes u16  70 reserved u16
//!        72 detail_bytes u32 76 actor | source | target | detail
//! checkpoint: 64 key_id [8]  72 signature [64]  (136 bytes)
//! ```

mod codec;
mod entry;
mod error;
mod key;
mod log;
mod read;

pub use codec::{
    decode_record, encode_entry, entry_encoded_bytes, record_hash, AuditRecord, ChainHash,
    Checkpoint, Decoded, EntryView, SegmentHeader, CHECKPOINT_BYTES, ENTRY_FIXED_BYTES,
    FORMAT_VERSION, GENESIS_HASH, KEY_ID_BYTES, RECORD_BYTES_MAX, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SIGNATURE_BYTES, SIGNATURE_DOMAIN,
};
/// The Ed25519 key types the audit API takes.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use entry::{
    AuditEntry, AuditKind, AuditSeq, ACTOR_BYTES_MAX, DETAIL_BYTES_MAX, SOURCE_BYTES_MAX,
    TARGET_BYTES_MAX,
};
pub use error::AuditError;
pub use key::{
    generate_key_files, hex, key_id, load_signing_key, load_verifying_key, verify_checkpoint,
    AuditSigner, RAW_KEY_BYTES,
};
pub use log::{
    system_clock_ms, AuditConfig, AuditLog, AuditRecovery, CHECKPOINT_INTERVAL_ENTRIES_DEFAULT,
    CHECKPOINT_INTERVAL_ENTRIES_MAX, SEGMENT_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MAX_MIN,
};
pub use read::{read_audit_dir, verify_audit_dir, AuditVerifyReport};

#[cfg(test)]
mod tests;
