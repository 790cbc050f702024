//! The engine's settings. The binary fills these from its embedded defaults,
//! a TOML file and environment variables; an embedding program builds them
//! directly.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// When an acknowledgement is sent, relative to the disk. Named for what each
/// policy promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Write and fdatasync before acknowledging; one fdatasync covers every
    /// record gathered in one loop turn (group commit). Acks say `durable`.
    Fsync,
    /// Write before acknowledging, fdatasync at most every `interval_ms`.
    /// Acks say *not* durable: a power loss may lose the last interval.
    Interval,
    /// Write before acknowledging and never fdatasync (the OS decides).
    /// Acks say *not* durable.
    None,
}

/// What to do with a subscriber whose outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Send an error frame naming the reason and close the connection. The
    /// client reconnects and resumes from its last seq without a gap.
    Disconnect,
    /// Drop the delivery for that subscriber and count it in the metrics.
    /// The subscriber sees a gap in seqs.
    Drop,
    /// A subscription to one channel reads on from the log: its live
    /// deliveries stop, and the channel is read from the first message it
    /// missed, a page at a time as the connection's queue drains, until it
    /// is caught up and live again. Nothing is lost or repeated; ephemeral
    /// messages passing meanwhile do not reach it. What cannot be read again
    /// (pattern subscriptions, replies) falls back to `Disconnect`.
    CatchUp,
}

/// Retention of whole sealed segments for channels whose name starts with
/// `prefix` (the longest matching prefix wins; no match keeps forever).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub prefix: String,
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Everything the engine needs to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Event-loop threads (cores). 0 means one per available core.
    pub shards: usize,
    /// Log partitions. Fixed when a data directory is created; the value
    /// stored there wins over this one afterwards.
    pub partitions: u32,
    /// Where the log lives.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// fdatasync period of the `interval` policy.
    pub interval_ms: u64,
    /// Under `fsync`, a turn's fdatasync runs on the shard's event loop
    /// while the shard's recent fdatasyncs averaged under this many µs, and
    /// on its commit thread otherwise (a short flush costs less than the
    /// two thread wake-ups of the hand-off; a long one would hold up the
    /// loop's other work). 0 = always on the commit thread.
    pub sync_on_loop_max_us: u64,
    /// Size of each of the two files of a shard's journal (see
    /// docs/STORAGE-FORMAT.md): partition files are synced in the background
    /// once per this many bytes a shard writes.
    pub journal_file_bytes: u64,
    pub segment_bytes_max: u64,
    pub body_bytes_max: u32,
    /// How long a (sender, client message id) pair is remembered for
    /// idempotent publish.
    pub dedupe_window_ms: u64,
    /// At most this many remembered pairs per partition; the oldest go first.
    pub dedupe_entries_max: usize,
    /// Bytes queued to one connection before the slow-consumer policy acts.
    pub outbound_bytes_max: usize,
    pub slow_consumer: SlowConsumerPolicy,
    /// Requests one connection may have unanswered before the shard stops
    /// reading from it (backpressure instead of unbounded buffering).
    pub inflight_requests_max: usize,
    /// Largest page a history request or a catch-up step reads at once.
    pub page_messages_max: u32,
    /// Events (deliveries, replies) waiting for one in-process client
    /// ([`crate::LocalClient`]) to take them before the slow-consumer policy
    /// acts: its counterpart of `outbound_bytes_max`.
    pub local_events_max: usize,
    pub retention: Vec<RetentionConfig>,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// Abuse limits (0 = off; docs/SECURITY.md): publishes per second and
    /// bytes of message bodies per second, per connection and per user.
    pub publish_messages_per_s_per_connection: u64,
    pub publish_bytes_per_s_per_connection: u64,
    pub publish_messages_per_s_per_user: u64,
    pub publish_bytes_per_s_per_user: u64,
    /// Connections one address may have open at once (0 = no limit).
    pub connections_per_address_max: u32,
    /// A connection that has neither identified itself (a native Hello, an
    /// MQTT CONNECT, a signed-in WebSocket) nor started a request its
    /// protocol times (an HTTP request) this long after it was accepted —
    /// including one whose TLS handshake never finishes — is closed.
    pub handshake_timeout_ms: u64,
    /// How often each shard asks the authorizer about the sign-in sessions
    /// of its open connections ([`crate::Authorizer::session_in_use`]): an
    /// expired or revoked one closes the connection, a valid one counts as
    /// used (an open connection keeps its session from idling out).
    pub session_check_ms: u64,
    /// New connections one address may open per second (0 = no limit).
    pub new_connections_per_s_per_address: u64,
    /// Publishes are refused (`StorageFull`, temporary) while the file
    /// system holding `data_dir` has less free space than this, and
    /// accepted again once it has more; the engine's own bookkeeping still
    /// writes. Checked at most every 100 ms by each shard while it takes
    /// publishes. 0 = off (a full disk then stops a partition until a
    /// restart: docs/OPERATIONS.md).
    pub disk_free_min_bytes: u64,
    /// Encryption at rest: a file of `ID HEX-KEY` lines (key ids 1 to
    /// 65535, 32-byte keys as 64 hex digits); "" = no keys. Every key in it
    /// can read the batches it sealed; keep a key while batches use it.
    pub encryption_key_file: String,
    /// The key id new batches are sealed with (XChaCha20-Poly1305); 0 =
    /// write plain batches (those sealed earlier stay readable with the key
    /// file). Rotation: add a key to the file, set this to its id, restart.
    pub encryption_key_id: u16,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            shards: 0,
            partitions: 16,
            data_dir: PathBuf::from("starling-data"),
            durability: Durability::Fsync,
            interval_ms: 10,
            sync_on_loop_max_us: 250,
            journal_file_bytes: starling_storage::journal::JOURNAL_FILE_BYTES_DEFAULT,
            segment_bytes_max: 128 * 1024 * 1024,
            body_bytes_max: 1024 * 1024,
            dedupe_window_ms: 120_000,
            dedupe_entries_max: starling_storage::IDEMPOTENCY_ENTRIES_MAX_DEFAULT,
            outbound_bytes_max: 8 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            inflight_requests_max: 4096,
            page_messages_max: 1000,
            local_events_max: crate::engine::LOCAL_EVENTS_MAX,
            retention: Vec::new(),
            retention_check_ms: 60_000,
            publish_messages_per_s_per_connection: 0,
            publish_bytes_per_s_per_connection: 0,
            publish_messages_per_s_per_user: 0,
            publish_bytes_per_s_per_user: 0,
            connections_per_address_max: 0,
            handshake_timeout_ms: 10_000,
            session_check_ms: 60_000,
            new_connections_per_s_per_address: 0,
            disk_free_min_bytes: 256 * 1024 * 1024,
            encryption_key_file: String::new(),
            encryption_key_id: 0,
        }
    }
}

impl EngineConfig {
    /// The publish limits of one connection.
    pub fn connection_limits(&self) -> crate::limits::RateLimits {
        crate::limits::RateLimits {
            messages_per_s: self.publish_messages_per_s_per_connection,
            bytes_per_s: self.publish_bytes_per_s_per_connection,
        }
    }

    /// The publish limits of one user, over all their connections.
    pub fn user_limits(&self) -> crate::limits::RateLimits {
        crate::limits::RateLimits {
            messages_per_s: self.publish_messages_per_s_per_user,
            bytes_per_s: self.publish_bytes_per_s_per_user,
        }
    }

    /// The key ring of `encryption_key_file` with `encryption_key_id` as its
    /// current key (`None` when no key file is set).
    pub fn key_ring(
        &self,
    ) -> Result<Option<starling_storage::KeyRing>, starling_storage::StorageError> {
        let current = (self.encryption_key_id != 0).then_some(self.encryption_key_id);
        if self.encryption_key_file.is_empty() {
            return match current {
                Some(id) => Err(starling_storage::StorageError::KeyFile {
                    path: PathBuf::new(),
                    detail: format!(
                        "encryption_key_id = {id} is set but encryption_key_file is not"
                    ),
                }),
                None => Ok(None),
            };
        }
        let path = PathBuf::from(&self.encryption_key_file);
        starling_storage::KeyRing::load(&path, current).map(Some)
    }

    /// The shard count after resolving 0 to the number of cores.
    pub fn resolved_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
