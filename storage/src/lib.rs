//! Starling's log: a segmented, append-only, checksummed log per *log
//! partition*, with millions of channels multiplexed into each partition.
//!
//! # Role
//!
//! This crate is the single source of truth of a Starling node. It stores
//! record batches, verifies them, indexes every channel without scanning the
//! log, recovers after a crash and applies retention. It knows nothing about
//! sockets, mio or the broker.
//!
//! # Contract
//!
//! - A [`Partition`] is owned by one broker thread. During a loop turn the
//!   broker calls [`Partition::append`] (the record joins an in-memory pending
//!   batch and gets the channel's next seq, gap-free from 1), then
//!   [`Partition::flush`] (one positioned write of everything pending) and, per
//!   durability policy, [`Partition::sync`] (`fdatasync`).
//! - Reads see only flushed records: [`Partition::head_seq`] lags
//!   [`Partition::appended_seq`] until `flush`.
//! - After a failed write or fsync the partition refuses every further
//!   append, flush and sync with [`StorageError::Failed`] until reopened: it
//!   never acknowledges after a failed fsync.
//! - Recovery removes (truncates or zeroes) only a torn tail of the last
//!   segment; corruption anywhere else is an error naming the file and byte
//!   offset. Zero bytes after the last batch of a segment are a clean end:
//!   segments are preallocated (zero-filled by a background thread) so that
//!   `fdatasync` never commits a file-size change.
//! - Open loads the newest checkpoint of the channel table (written at every
//!   segment roll, on a clean close and by retention, from the partition's
//!   background thread) and scans only the log after it; without a usable
//!   one it scans everything. Dropping a `Partition` syncs and checkpoints.
//!
//! # Bytes on disk
//!
//! A partition directory holds segment files named after the partition-stream
//! position of their first byte (`00000000000000004096.seg`). A segment is a
//! sequence of batches; a record's `offset` is its stream position. All
//! integers are little-endian (full description: `docs/STORAGE-FORMAT.md`).
//!
//! ```text
//! batch header (64 bytes)                      record (64-byte header + fields)
//!  0 magic "STRL"        4 version=1            0 record_bytes u32   4 batch_distance u32
//!  5 flags (2=encrypted) 6 key_id u16 (0=plain) 8 seq u64           16 previous_offset u64
//!  8 crc32c(12..end) u32 12 batch_bytes u32    24 skip_offset u64   32 timestamp_ms u64
//! 16 term u64           24 index u64           40 relation u64      48 kind u8  49 flags=0
//! 32 base_position u64  40 record_count u32    50 channel_bytes u16 52 sender_bytes u16
//! 44 run u32            48 timestamp_min u64   54 client_message_id_bytes u16
//! 56 timestamp_max u64  64 records...          56 headers_bytes u32 60 body_bytes u32
//!                                              64 channel | sender | client_message_id | headers | body
//! ```
//!
//! An encrypted batch (see [`encryption`]) keeps this header in plaintext;
//! its records region is XChaCha20-Poly1305 ciphertext followed by a 16-byte
//! tag, and the CRC covers the stored bytes.
//!
//! Each record points back to the previous record of its channel and to the
//! record with seq `seq - lowbit(seq)` (a skip pointer), so "from seq S" and
//! "before S" take O(log² n) pointer hops and "last N" takes N hops.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod audit;
mod channel_table;
mod checkpoint;
pub mod crash_image;
mod data_dir;
pub mod encryption;
mod error;
pub mod format;
mod idempotency;
pub mod journal;
mod map;
mod partition;
mod read;
mod retention;
mod scan;
mod segment;
mod skip_chain;
mod sync;
pub mod sync_placement;
mod worker;

use bytes::Bytes;

pub use data_dir::{available_bytes, DataDir};
pub use encryption::KeyRing;
pub use error::StorageError;
pub use format::decode_batch;
pub use journal::{Journal, JournalRecovery, SwitchSync, SyncTarget, UnsyncedTail};
#[doc(hidden)]
pub use partition::Fault;
pub use partition::{Partition, RecoveryReport};
pub use retention::RetentionReport;
pub use scan::{
    inspect_partition_dir, inspect_partition_dir_keyed, inspect_partition_dir_with,
    verify_partition_dir, verify_partition_dir_keyed, verify_partition_dir_with, VerifyReport,
};
pub use segment::ReadMode;
pub use sync::SyncBatch;

/// Default for [`PartitionConfig::segment_bytes_max`]: 128 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// Default for [`PartitionConfig::record_body_bytes_max`]: 1 MiB.
pub const RECORD_BODY_BYTES_MAX_DEFAULT: u32 = 1024 * 1024;
/// The smallest allowed [`PartitionConfig::segment_bytes_max`].
pub const SEGMENT_BYTES_MAX_MINIMUM: u64 = 4096;
/// The largest segment: what one flush of a partition writes stays below
/// it, and a shard journal entry's length is 32 bits.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

/// Settings of one partition.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    /// A flush that would grow the active segment past this starts a new
    /// segment first. A single batch larger than this gets a segment of its
    /// own.
    pub segment_bytes_max: u64,
    /// Largest record body accepted by `append` (at most
    /// [`format::RECORD_BODY_BYTES_LIMIT`]).
    pub record_body_bytes_max: u32,
    /// Retention rules; the longest matching channel-name prefix wins and a
    /// channel that matches no rule is kept forever.
    pub retention: Vec<RetentionRule>,
    /// How long a (channel, sender, client message id) is remembered: an
    /// `append` with a key seen within this many milliseconds (of record
    /// timestamps) returns the original instead of appending.
    pub idempotency_window_ms: u64,
    /// At most this many keys are remembered; the oldest go first. 0 turns
    /// idempotency off.
    pub idempotency_entries_max: usize,
}

/// Default for [`PartitionConfig::idempotency_window_ms`]: two minutes.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 120_000;
/// Default for [`PartitionConfig::idempotency_entries_max`]. The keys are
/// copied into every checkpoint (at each segment roll), so this bounds that
/// copy to a few MB: 100k keys per partition cover a two-minute window at
/// about 800 keyed messages/s per partition.
pub const IDEMPOTENCY_ENTRIES_MAX_DEFAULT: usize = 100_000;

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            record_body_bytes_max: RECORD_BODY_BYTES_MAX_DEFAULT,
            retention: Vec::new(),
            idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            idempotency_entries_max: IDEMPOTENCY_ENTRIES_MAX_DEFAULT,
        }
    }
}

/// How a partition runs, apart from its log settings (kept out of
/// [`PartitionConfig`] so that adding one does not change how the broker
/// builds its configuration).
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// Keep a zero-filled, fsynced spare segment of `segment_bytes_max`
    /// bytes ready (prepared by the partition's background thread) and use
    /// it at the next roll, so that `fdatasync` after an append never has to
    /// commit a file-size change. Costs one segment of disk per partition.
    /// Default true.
    pub preallocate: bool,
    /// Start recovery from the newest valid checkpoint (default true);
    /// false scans the whole log (for comparisons and tests).
    pub use_checkpoint: bool,
    /// Stamped on every batch this open writes (the batch header's `run`):
    /// the engine run, counted by the shard journals. 0 without a journal.
    pub run: u32,
    /// What a shard journal says of this partition's unsynced data (see
    /// [`UnsyncedTail`]). With it, recovery treats everything from
    /// `durable_end` on as unsynced: the log ends at the first batch there
    /// that is not a valid batch of `run`, nothing is truncated or zeroed
    /// (the journal's entries are replayed over it with
    /// [`Partition::replay`]), and a bad batch before `durable_end` is
    /// corruption. Without it, the torn-tail rules apply.
    pub unsynced_tail: Option<UnsyncedTail>,
    /// Encryption at rest: the keys that open encrypted batches, and (its
    /// current key id) the key new batches are sealed with. `None`: batches
    /// are written plain, and an encrypted batch is an error naming its key
    /// id. Sealing needs a nonzero `run` (it is part of the nonce).
    pub keys: Option<std::sync::Arc<KeyRing>>,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        PartitionOptions {
            preallocate: true,
            use_checkpoint: true,
            run: 0,
            unsynced_tail: None,
            keys: None,
        }
    }
}

/// How long records of the channels whose name starts with `prefix` are
/// kept. A record is expired when it is older than `max_age_ms` or when it
/// lies outside the newest `max_bytes` of the partition (either limit may be
/// absent). Retention deletes whole sealed segments, oldest first, while every
/// record in them is expired.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionRule {
    /// Channel-name prefix ("" matches every channel).
    pub prefix: String,
    /// Maximum age in milliseconds.
    pub max_age_ms: Option<u64>,
    /// Partition bytes to keep at least.
    pub max_bytes: Option<u64>,
}

/// A record to append; the storage assigns seq and offset.
#[derive(Clone, Copy, Debug)]
pub struct NewRecord<'a> {
    /// Channel name (1 to [`format::CHANNEL_BYTES_MAX`] bytes).
    pub channel: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Record kind, defined by the broker.
    pub kind: u8,
    /// Sender identity (at most [`format::SENDER_BYTES_MAX`] bytes).
    pub sender: &'a [u8],
    /// Client message id (at most [`format::CLIENT_MESSAGE_ID_BYTES_MAX`]).
    pub client_message_id: &'a [u8],
    /// The seq this record edits, deletes, reacts or replies to (0 = none).
    pub relation: u64,
    /// Small headers blob (at most [`format::HEADERS_BYTES_MAX`]).
    pub headers: &'a [u8],
    /// Body (at most `record_body_bytes_max`).
    pub body: &'a [u8],
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The channel's seq of the record.
    pub seq: u64,
    /// The record's partition-stream byte position.
    pub offset: u64,
    /// The record's timestamp.
    pub timestamp_ms: u64,
    /// True when the record's (channel, sender, client message id) was seen
    /// within the idempotency window: nothing was appended, and `seq`,
    /// `offset` and `timestamp_ms` are the original record's.
    pub duplicate: bool,
}

/// A stored record. Its byte fields may share a memory map of the segment
/// (zero copy); the map stays alive as long as they do, even after retention
/// deleted the segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Channel name.
    pub channel: Bytes,
    /// The channel's seq.
    pub seq: u64,
    /// Partition-stream byte position.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Record kind.
    pub kind: u8,
    /// Sender identity.
    pub sender: Bytes,
    /// Client message id.
    pub client_message_id: Bytes,
    /// Related seq (0 = none).
    pub relation: u64,
    /// Headers blob.
    pub headers: Bytes,
    /// Body.
    pub body: Bytes,
}

/// A page of one channel's history.
#[derive(Clone, Debug, Default)]
pub struct ReadPage {
    /// Records in ascending seq order.
    pub records: Vec<Record>,
    /// The channel's last visible seq at read time (0 if none).
    pub head_seq: u64,
}
