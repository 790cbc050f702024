//! A partition: open and recover, append, flush, sync.
//!
//! Reads live in `read.rs` and retention in `retention.rs`; both are further
//! `impl Partition` blocks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::channel_table::{ChannelId, ChannelTable};
use crate::checkpoint::{
    sync_directory, Checkpoint, CheckpointState, Unsealing, CHECKPOINT_VERSION,
};
use crate::data_dir::{lock_directory, partition_path};
use crate::encryption::{readable, KeyRing};
use crate::format::{
    self, begin_batch, decode_batch, finish_batch, skip_target, BatchDecode, BatchMeta,
    RecordFields, RecordHead, BATCH_BYTES_SOFT_MAX, CHANNEL_BYTES_MAX, CLIENT_MESSAGE_ID_BYTES_MAX,
    HEADERS_BYTES_MAX, NO_OFFSET, RECORD_BODY_BYTES_LIMIT, RECORD_HEADER_BYTES, SENDER_BYTES_MAX,
    TAG_BYTES,
};
use crate::idempotency::{self, IdempotencyIndex, Original};
use crate::journal::{SyncTarget, UnsyncedTail};
use crate::map::SegmentMap;
use crate::retention::rule_for;
use crate::scan::{
    apply_record, find_log_start, load_channels, scan_segment, LogStart, SegmentScan,
};
use crate::segment::{segment_file_name, ReadMode, Segment, SegmentSummary};
use crate::skip_chain::SkipChains;
use crate::worker::{tidy_spares, CheckpointJob, Worker};
use crate::{
    Appended, NewRecord, PartitionConfig, PartitionOptions, StorageError, SEGMENT_BYTES_MAX_LIMIT,
    SEGMENT_BYTES_MAX_MINIMUM,
};

/// What recovery found when a partition was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in the partition.
    pub segments: usize,
    /// Valid batches scanned (those after the checkpoint position).
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Channels known after recovery.
    pub channels: usize,
    /// Bytes cut off a torn tail (0 if none).
    pub truncated_bytes: u64,
    /// The file and byte position where a torn tail was cut.
    pub truncated_at: Option<(std::path::PathBuf, u64)>,
    /// The stream position of the checkpoint recovery started from (`None`:
    /// the whole log was scanned).
    pub checkpoint_position: Option<u64>,
    /// Bytes of segment files read by the scan.
    pub scanned_bytes: u64,
}

/// A failure to inject, for tests of the failed state (here and in the
/// broker's simulator).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next positioned write fails.
    Write,
    /// The next fdatasync fails.
    Sync,
}

/// Channel state of records appended but not flushed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingChannel {
    pub seq: u64,
    pub offset: u64,
}

/// A batch being filled.
struct OpenBatch {
    /// Where its header starts in the pending buffer.
    start: usize,
    record_count: u32,
    timestamp_min_ms: u64,
    timestamp_max_ms: u64,
    summary: SegmentSummary,
}

/// A finished batch in the pending buffer.
struct ClosedBatch {
    start: usize,
    end: usize,
    summary: SegmentSummary,
}

/// Records appended since the last flush.
#[derive(Default)]
pub(crate) struct Pending {
    /// Encoded batches, back to back; `buffer[0]` sits at the flushed end of
    /// the stream.
    pub buffer: Vec<u8>,
    closed: Vec<ClosedBatch>,
    open: Option<OpenBatch>,
    /// Looked up by every append. Keyed by channel numbers the table
    /// assigns, but foldhash (seeded, and as fast as an unseeded hash for
    /// one word) rather than std's SipHash.
    pub channels: foldhash::HashMap<ChannelId, PendingChannel>,
    /// Where busy channels' next skip pointers point (kept across flushes,
    /// freed with the rest when the partition is idle).
    skip_chains: SkipChains,
    pub records: usize,
}

/// The most recently verified batches (stream positions), so a page of reads
/// in one batch checks its CRC once.
pub(crate) struct VerifiedBatches {
    positions: [u64; VERIFIED_BATCHES_CACHED],
    next: usize,
}

/// Enough for a page of records spread over a few batches; a linear scan of
/// 16 words is cheaper than any map.
const VERIFIED_BATCHES_CACHED: usize = 16;

impl VerifiedBatches {
    fn new() -> VerifiedBatches {
        VerifiedBatches {
            positions: [NO_OFFSET; VERIFIED_BATCHES_CACHED],
            next: 0,
        }
    }

    pub(crate) fn contains(&self, position: u64) -> bool {
        self.positions.contains(&position)
    }

    pub(crate) fn insert(&mut self, position: u64) {
        self.positions[self.next] = position;
        self.next = (self.next + 1) % VERIFIED_BATCHES_CACHED;
    }
}

/// The most recently decrypted batches of an encrypted partition (stream
/// position, image), so a page of reads in one batch decrypts it once.
pub(crate) struct DecryptedBatches {
    batches: [(u64, Option<bytes::Bytes>); DECRYPTED_BATCHES_CACHED],
    next: usize,
}

/// Fewer than [`VERIFIED_BATCHES_CACHED`]: an image is a copy of up to
/// `BATCH_BYTES_SOFT_MAX` (4 MiB) bytes, so this bounds the cache at 16 MiB
/// per partition, and a page of history rarely spans more batches.
const DECRYPTED_BATCHES_CACHED: usize = 4;

impl DecryptedBatches {
    fn new() -> DecryptedBatches {
        DecryptedBatches {
            batches: std::array::from_fn(|_| (NO_OFFSET, None)),
            next: 0,
        }
    }

    pub(crate) fn get(&self, position: u64) -> Option<bytes::Bytes> {
        self.batches
            .iter()
            .find(|(at, _)| *at == position)
            .and_then(|(_, image)| image.clone())
    }

    pub(crate) fn insert(&mut self, position: u64, image: bytes::Bytes) {
        self.batches[self.next] = (position, Some(image));
        self.next = (self.next + 1) % DECRYPTED_BATCHES_CACHED;
    }

    fn clear(&mut self) {
        *self = DecryptedBatches::new();
    }
}

/// One log partition: its segment files, its channel table and the pending
/// batch. Owned by one broker thread.
pub struct Partition {
    pub(crate) id: u32,
    pub(crate) path: PathBuf,
    pub(crate) config: PartitionConfig,
    /// Held for the partition directory lock.
    _lock: File,
    pub(crate) read_mode: ReadMode,
    /// INVARIANT: never empty, sorted by base, contiguous (each segment
    /// starts where the previous one ends); the last one is the active
    /// segment that flushes write to.
    pub(crate) segments: Vec<Segment>,
    /// Stream position of the first byte still in the log.
    pub(crate) log_start: u64,
    pub(crate) channels: ChannelTable,
    pub(crate) pending: Pending,
    /// Flushed bytes of the active segment not yet fdatasync'ed.
    pub(crate) unsynced: bool,
    /// A segment file was created and the directory not yet fsync'ed.
    directory_unsynced: bool,
    /// The first write or sync failure; set forever once set.
    failed: Option<String>,
    /// Set by [`Partition::withdraw_since`]: the stream position from which
    /// flushed records are not served (their writers were told they
    /// failed).
    pub(crate) withdrawn_from: Option<u64>,
    fault: Option<Fault>,
    pub(crate) verified: RefCell<VerifiedBatches>,
    /// Stream position of the last flushed batch (`NO_OFFSET` if unknown).
    last_batch: u64,
    /// (log_start, position) of the last checkpoint written or loaded, so a
    /// close with nothing new writes none.
    pub(crate) checkpointed: Option<(u64, u64)>,
    /// Dropped by `simulate_crash`: no sync, no checkpoint.
    crashed: bool,
    /// Prepares spare segments and writes checkpoints.
    pub(crate) worker: Worker,
    /// Keys of recent records with a client message id.
    idempotency: IdempotencyIndex,
    /// The worker was asked for a spare for the next roll (reset at a roll).
    spare_requested: bool,
    /// Stamped on every batch written (`PartitionOptions::run`).
    run: u32,
    /// Encryption at rest (`PartitionOptions::keys`): reads find batches
    /// through the segments' batch indexes and decrypt sealed ones; flushes
    /// seal new batches when the ring has a current key id.
    pub(crate) keys: Option<Arc<KeyRing>>,
    pub(crate) decrypted: RefCell<DecryptedBatches>,
}

/// What recovery may take for granted about the last segment, and how it
/// opens encrypted batches.
#[derive(Clone, Copy)]
struct Hints<'a> {
    /// The last run closed cleanly (see `take_clean_marker`).
    clean_end: Option<CleanEnd>,
    /// A shard journal covers the unsynced tail.
    tail: Option<UnsyncedTail>,
    keys: Option<&'a KeyRing>,
    partition_id: u32,
}

/// What a recovery pass rebuilt.
struct Recovered {
    segments: Vec<Segment>,
    channels: ChannelTable,
    idempotency: IdempotencyIndex,
    report: RecoveryReport,
    last_batch: u64,
}

/// Rebuilds the segments and the channel table of a partition directory.
///
/// With a checkpoint (`fast`), its table and summaries are loaded and only
/// the log after its position is scanned: the segments entirely before it
/// are not read at all. Without one, every segment is scanned from
/// `log_start`, starting from the channels of `checkpoint` that have no
/// record left in the log. Only the last segment may be modified (a torn
/// tail removed), and only once everything else has been checked.
fn recover(
    path: &Path,
    listed: &[(u64, PathBuf)],
    log_start: u64,
    config: &PartitionConfig,
    checkpoint: Option<&Checkpoint>,
    fast: bool,
    hints: Hints<'_>,
) -> Result<Recovered, StorageError> {
    let Hints {
        clean_end,
        tail,
        keys,
        partition_id,
    } = hints;
    let rules = config.retention.len();
    let mut channels = ChannelTable::new();
    let mut idempotency =
        IdempotencyIndex::new(config.idempotency_window_ms, config.idempotency_entries_max);
    let mut summaries: HashMap<u64, SegmentSummary> = HashMap::new();
    let mut start = log_start;
    let mut last_batch = NO_OFFSET;
    match checkpoint {
        Some(checkpoint) if fast => {
            load_channels(&mut channels, checkpoint, u64::MAX);
            for (key, original) in &checkpoint.idempotency {
                idempotency.insert(key.clone(), *original);
            }
            summaries.extend(checkpoint.segments.iter().cloned());
            start = checkpoint.position;
            if start > log_start {
                check_checkpoint_end(listed, checkpoint, keys, partition_id)?;
                last_batch = checkpoint.last_batch;
            }
        }
        Some(checkpoint) => load_channels(&mut channels, checkpoint, log_start),
        None => {}
    }
    let mut report = RecoveryReport {
        segments: listed.len(),
        checkpoint_position: fast.then_some(start),
        ..RecoveryReport::default()
    };
    let mut segments = Vec::with_capacity(listed.len());
    let mut expected_base = log_start;
    for (index, (base, file_path)) in listed.iter().enumerate() {
        let base = *base;
        if base != expected_base {
            return Err(StorageError::Inconsistent {
                path: path.to_path_buf(),
                detail: format!(
                    "segment {} should start at stream position {expected_base} (where the previous one ends)",
                    file_path.display()
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file_path)
            .map_err(|e| StorageError::io("open", file_path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", file_path, e))?
            .len();
        let next_base = listed.get(index + 1).map(|(next, _)| *next);
        let summary = match summaries.remove(&base) {
            Some(summary) if summary.rule_timestamp_max_ms.len() == rules => summary,
            _ if base < start => {
                return Err(StorageError::Inconsistent {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the checkpoint has no summary of segment {}",
                        file_path.display()
                    ),
                })
            }
            _ => SegmentSummary::new(rules),
        };
        if let Some(next) = next_base.filter(|&next| next <= start) {
            // Entirely before the checkpoint position: sealed, verified when
            // it was written, not read now (reads still check every CRC).
            let len = next
                .checked_sub(base)
                .filter(|&len| len <= file_len)
                .ok_or_else(|| StorageError::Inconsistent {
                    path: path.to_path_buf(),
                    detail: format!(
                        "segment {} has {file_len} bytes but the next one starts {} bytes after it",
                        file_path.display(),
                        next.wrapping_sub(base)
                    ),
                })?;
            segments.push(Segment::new(
                base,
                file_path.clone(),
                file,
                len,
                len,
                summary,
            ));
            expected_base = next;
            continue;
        }
        let from = start.saturating_sub(base);
        let is_last = next_base.is_none();
        let mut summary = summary;
        let skipped;
        let scan = {
            let map = if file_len > 0 {
                let map = Arc::new(
                    SegmentMap::map(&file, file_len)
                        .map_err(|e| StorageError::io("map", file_path, e))?,
                );
                // SAFETY: the map covers the whole file, and nothing writes
                // to the file while recovery scans it: this partition writes
                // only after the scan (the torn tail below is cut after the
                // map is gone) and holds the directory lock against others.
                Some(unsafe { map.slice(0, file_len as usize) })
            } else {
                None
            };
            let mut visit = |position: u64, batch: &format::BatchView<'_>| {
                let mut image = None;
                let batch = readable(keys, partition_id, batch, &mut image, file_path, position)?;
                index_batch(
                    &mut channels,
                    &mut idempotency,
                    &mut summary,
                    config,
                    log_start,
                    base + position,
                    &batch,
                )
                .map_err(|detail| StorageError::Corrupt {
                    path: file_path.clone(),
                    position,
                    detail,
                })
            };
            let mut data = map.as_ref().map_or(&[][..], |map| map.as_ref());
            if let (Some(_), Some(next)) = (tail, next_base) {
                // With a journal, what lies after a sealed segment's end (the
                // next base) is not data: it may be left from a crash point.
                data = &data[..(next.saturating_sub(base) as usize).min(data.len())];
            }
            let untouched = clean_end.is_some_and(|clean| {
                clean.position == start
                    && clean.file_bytes == file_len
                    && file.metadata().ok().map(|m| modified_ns(&m)) == Some(clean.modified_ns)
            });
            skipped = fast && is_last && untouched && start >= base;
            if skipped {
                // The last run closed cleanly exactly at the checkpoint, and
                // nothing has written since: the bytes after it are the zero
                // tail that run found and kept. Reading them (up to a whole
                // segment) would only slow the start down.
                SegmentScan {
                    valid_len: from,
                    ..SegmentScan::default()
                }
            } else {
                scan_segment(
                    data,
                    base,
                    from,
                    file_path,
                    is_last,
                    tail.filter(|_| is_last),
                    &mut visit,
                )?
            }
            // The map is dropped here, before any truncation.
        };
        report.batches += scan.batches;
        report.records += scan.records;
        if !skipped {
            report.scanned_bytes += file_len.saturating_sub(from);
        }
        if let Some(at) = scan.last_batch {
            last_batch = at;
        }
        if let Some(torn_at) = scan.torn_at {
            let cut = scan.torn_end - torn_at;
            log::warn!(
                "{}: removing a torn tail of {cut} bytes at byte {torn_at} (an incomplete write from a crash)",
                file_path.display()
            );
            let result = if scan.torn_end == file_len {
                file.set_len(torn_at)
            } else {
                // A preallocated segment: zero the torn bytes, keep the size.
                file.write_all_at(&vec![0u8; cut as usize], torn_at)
            };
            result
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("remove the torn tail of", file_path, e))?;
            report.truncated_bytes = cut;
            report.truncated_at = Some((file_path.clone(), torn_at));
        }
        expected_base = base + scan.valid_len;
        segments.push(Segment::new(
            base,
            file_path.clone(),
            file,
            scan.valid_len,
            // The last segment is the active one: map it once at the size
            // it may grow to.
            if is_last {
                config.segment_bytes_max
            } else {
                scan.valid_len
            },
            summary,
        ));
    }
    report.channels = channels.len();
    Ok(Recovered {
        segments,
        channels,
        idempotency,
        report,
        last_batch,
    })
}

/// Adds a valid batch at stream position `at` to the channel table, the
/// idempotency keys and its segment's summary (recovery and replay).
fn index_batch(
    channels: &mut ChannelTable,
    idempotency: &mut IdempotencyIndex,
    summary: &mut SegmentSummary,
    config: &PartitionConfig,
    log_start: u64,
    at: u64,
    batch: &format::BatchView<'_>,
) -> Result<(), String> {
    for (in_batch, record) in batch.records() {
        let offset = at + in_batch as u64;
        if !record.client_message_id.is_empty() {
            let key = idempotency::key(record.channel, record.sender, record.client_message_id);
            let original = Original {
                seq: record.seq,
                offset,
                timestamp_ms: record.timestamp_ms,
            };
            idempotency.insert(key, original);
        }
        apply_record(channels, log_start, offset, &record)?;
        summary.add(
            rule_for(&config.retention, record.channel),
            record.timestamp_ms,
        );
    }
    Ok(())
}

/// Checks that the batch the checkpoint names as its last is on disk, valid,
/// and ends exactly at the checkpoint position.
fn check_checkpoint_end(
    listed: &[(u64, PathBuf)],
    checkpoint: &Checkpoint,
    keys: Option<&KeyRing>,
    partition_id: u32,
) -> Result<(), StorageError> {
    let at = checkpoint.last_batch;
    let index = listed.partition_point(|(base, _)| *base <= at);
    let bad = |detail: String| StorageError::Inconsistent {
        path: PathBuf::new(),
        detail,
    };
    let Some((base, file_path)) = index.checked_sub(1).map(|i| &listed[i]) else {
        return Err(bad(format!(
            "the checkpoint's last batch at {at} is not in the log"
        )));
    };
    let file = File::open(file_path).map_err(|e| StorageError::io("open", file_path, e))?;
    let mut header = [0u8; format::BATCH_HEADER_BYTES];
    file.read_exact_at(&mut header, at - base)
        .map_err(|e| StorageError::io("read", file_path, e))?;
    let batch_bytes = format::BatchHeader::parse(&header)
        .map_err(|e| bad(format!("the checkpoint's last batch: {e}")))?
        .batch_bytes;
    let mut bytes = vec![0u8; batch_bytes as usize];
    file.read_exact_at(&mut bytes, at - base)
        .map_err(|e| StorageError::io("read", file_path, e))?;
    match decode_batch(&bytes) {
        Ok(BatchDecode::Complete(batch))
            if batch.header.base_position == at
                && at + u64::from(batch_bytes) == checkpoint.position =>
        {
            // The open reads nothing else of a cleanly closed log: opening
            // its last batch is what proves the key file right at start.
            readable(keys, partition_id, &batch, &mut None, file_path, at - base)?;
            Ok(())
        }
        _ => Err(bad(format!(
            "the checkpoint's last batch at {at} is not a valid batch ending at {}",
            checkpoint.position
        ))),
    }
}

impl Partition {
    /// Opens (creating if needed) partition `partition_id` of the data
    /// directory `dir`, at `<dir>/partitions/<id as 5 digits>`, with the
    /// default [`PartitionOptions`], and recovers it (see
    /// [`Partition::open_with`]).
    pub fn open(
        dir: &Path,
        partition_id: u32,
        config: PartitionConfig,
    ) -> Result<(Partition, RecoveryReport), StorageError> {
        Partition::open_with(dir, partition_id, config, PartitionOptions::default())
    }

    /// Opens (creating if needed) partition `partition_id` of the data
    /// directory `dir` and recovers it: loads the newest valid checkpoint,
    /// scans the log after its position (normally the active segment only;
    /// everything without a usable checkpoint), rebuilds the channel table
    /// and removes a torn tail of the last segment. The partition directory
    /// is locked (`LOCK`) while the partition is open.
    pub fn open_with(
        dir: &Path,
        partition_id: u32,
        config: PartitionConfig,
        options: PartitionOptions,
    ) -> Result<(Partition, RecoveryReport), StorageError> {
        check_config(&config)?;
        let keys = options.keys.as_deref();
        if keys.and_then(KeyRing::current).is_some() && options.run == 0 {
            return Err(StorageError::InvalidConfig {
                detail: "encrypting batches needs the engine run (PartitionOptions::run, from the shard journal), which is part of every nonce; it is 0".into(),
            });
        }
        let path = partition_path(dir, partition_id);
        fs::create_dir_all(&path).map_err(|e| StorageError::io("create directory", &path, e))?;
        let lock = lock_directory(&path)?;

        let clean_end = take_clean_marker(&path)?;
        let spare_bytes = options.preallocate.then_some(config.segment_bytes_max);
        let spare_ready = tidy_spares(&path, spare_bytes)?;
        let LogStart {
            checkpoint,
            log_start,
            segments: mut listed,
            released,
            checkpoint_is_temporary,
        } = find_log_start(
            &path,
            Unsealing {
                keys,
                partition_id,
                required: true,
            },
        )?;
        // A checkpoint a crash left as the temporary file goes into place
        // before anything is deleted on its word: the next checkpoint write
        // starts by truncating the temporary file, and a crash then would
        // leave only an older checkpoint, whose segments are gone.
        if checkpoint_is_temporary {
            crate::checkpoint::promote_temporary(&path)?;
        }
        // Segments before the log start are left over from a retention run
        // that wrote its checkpoint and then stopped: finish it.
        let mut directory_unsynced = false;
        for file in released {
            log::info!(
                "removing {} that retention had already released",
                file.display()
            );
            directory_unsynced |= fs::remove_file(&file).is_ok();
        }
        let worker = Worker::start(&path, partition_id, spare_bytes, spare_ready)?;
        if listed.is_empty() {
            let file = path.join(segment_file_name(log_start));
            let preallocated = worker.take_spare(&file).unwrap_or_else(|error| {
                log::warn!("{}: spare segment not used: {error}", path.display());
                false
            });
            if !preallocated {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .map_err(|e| StorageError::io("create", &file, e))?;
            }
            listed.push((log_start, file));
            directory_unsynced = true;
        }

        let prefixes = rule_prefixes(&config);
        let mut recovered = None;
        if let Some(checkpoint) = checkpoint.as_ref().filter(|c| {
            options.use_checkpoint && c.version >= CHECKPOINT_VERSION && c.position >= log_start
        }) {
            if checkpoint.prefixes != prefixes {
                log::info!(
                    "{}: the retention rules changed since the checkpoint; scanning the whole log",
                    path.display()
                );
            } else {
                match recover(
                    &path,
                    &listed,
                    log_start,
                    &config,
                    Some(checkpoint),
                    true,
                    Hints {
                        clean_end,
                        tail: options.unsynced_tail,
                        keys,
                        partition_id,
                    },
                ) {
                    Ok(done) => recovered = Some(done),
                    // Scanning the whole log would meet the same batch.
                    Err(error) if error.is_key_error() => return Err(error),
                    Err(error) => log::warn!(
                        "{}: the checkpoint at stream position {} does not match the log ({error}); scanning the whole log",
                        path.display(),
                        checkpoint.position
                    ),
                }
            }
        } else if checkpoint.is_none() && log_start == 0 && listed.len() > 1 {
            log::warn!(
                "{}: no channel checkpoint; scanning the whole log",
                path.display()
            );
        }
        let Recovered {
            segments,
            channels,
            idempotency,
            report,
            last_batch,
        } = match recovered {
            Some(recovered) => recovered,
            None => recover(
                &path,
                &listed,
                log_start,
                &config,
                checkpoint.as_ref(),
                false,
                Hints {
                    clean_end: None,
                    tail: options.unsynced_tail,
                    keys,
                    partition_id,
                },
            )?,
        };
        if directory_unsynced {
            sync_directory(&path)?;
        }
        let checkpointed = report
            .checkpoint_position
            .filter(|_| report.batches == 0 && report.truncated_bytes == 0)
            .map(|position| (log_start, position));
        let partition = Partition {
            id: partition_id,
            path,
            config,
            _lock: lock,
            read_mode: ReadMode::Mmap,
            segments,
            log_start,
            channels,
            idempotency,
            pending: Pending::default(),
            unsynced: false,
            directory_unsynced: false,
            failed: None,
            withdrawn_from: None,
            fault: None,
            verified: RefCell::new(VerifiedBatches::new()),
            last_batch,
            checkpointed,
            crashed: false,
            worker,
            spare_requested: false,
            run: options.run,
            keys: options.keys.clone(),
            decrypted: RefCell::new(DecryptedBatches::new()),
        };
        partition.check_run_grows()?;
        Ok((partition, report))
    }

    /// Replaces the key ring (a key rotation while running): batches closed
    /// from now on, and checkpoints written from now on, use its current key
    /// id. It must hold every key of the ring in use
    /// ([`KeyRing::check_replaces`]); sealing needs a nonzero run.
    pub fn set_keys(&mut self, keys: Option<Arc<KeyRing>>) -> Result<(), StorageError> {
        KeyRing::check_replaces(self.keys.as_deref(), keys.as_deref())?;
        if keys.as_deref().and_then(KeyRing::current).is_some() && self.run == 0 {
            return Err(StorageError::InvalidConfig {
                detail: format!(
                    "partition {}: encrypting batches needs the engine run (PartitionOptions::run), which is part of every nonce; it is 0",
                    self.id
                ),
            });
        }
        self.keys = keys;
        Ok(())
    }

    /// The key id new batches are sealed with, if any.
    fn sealing_key_id(&self) -> Option<u16> {
        self.keys.as_deref().and_then(KeyRing::current)
    }

    /// A nonce must never repeat for a key: with sealing on, this open's run
    /// must be later than the run of the log's last batch (a run counter
    /// that went back, as after deleting the shard journals, would seal a
    /// rewritten position with a nonce used before).
    fn check_run_grows(&self) -> Result<(), StorageError> {
        if self.sealing_key_id().is_none() || self.last_batch == NO_OFFSET {
            return Ok(());
        }
        let Some(segment) = self.segment_for(self.last_batch) else {
            return Ok(());
        };
        let position = self.last_batch - segment.base;
        let chunk = segment.read(position, format::BATCH_HEADER_BYTES, ReadMode::Pread)?;
        let header =
            format::BatchHeader::parse(chunk.as_slice()).map_err(|e| StorageError::Corrupt {
                path: segment.path.clone(),
                position,
                detail: e.to_string(),
            })?;
        if header.run >= self.run {
            return Err(StorageError::InvalidConfig {
                detail: format!(
                    "partition {}: this open's engine run {} is not later than run {} of the last batch in the log; encrypted batches need a run counter that only grows (keep the shard journals)",
                    self.id, self.run, header.run
                ),
            });
        }
        Ok(())
    }

    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The partition directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chooses how flushed records are read (memory maps by default).
    pub fn set_read_mode(&mut self, mode: ReadMode) {
        self.read_mode = mode;
    }

    /// Makes the next write or sync fail, to test the failed state.
    #[doc(hidden)]
    pub fn inject_fault(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// Stream position just past the last flushed byte.
    pub(crate) fn flushed_end(&self) -> u64 {
        self.segments
            .last()
            .expect("a partition has an active segment")
            .end()
    }

    fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(reason) => Err(StorageError::Failed {
                partition_id: self.id,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Enters the failed state for good and returns the error to report.
    fn fail(&mut self, error: StorageError) -> StorageError {
        log::error!("partition {} stops accepting writes: {error}", self.id);
        self.failed = Some(error.to_string());
        error
    }

    /// When records were flushed at or after stream position `from`: enters
    /// the failed state (as a failed write or sync of its own would) and
    /// takes every one of them back out of what reads see: the shard
    /// journal's write or fdatasync of the turn that flushed them failed,
    /// and their publishers are told so.
    /// Their bytes stay in the segment (a restart's recovery decides what
    /// the disk kept, like for any failed write); channel heads go back to
    /// the last record before `from`. Walks the table once: a failure is
    /// rare, and each channel written since `from` steps back over its own
    /// records of that turn.
    pub fn withdraw_since(&mut self, from: u64, error: &StorageError) -> Result<(), StorageError> {
        if from >= self.flushed_end() {
            // Nothing to withdraw: the partition stays as it is (a clean
            // close still syncs it).
            return Ok(());
        }
        if self.failed.is_none() {
            self.fail(StorageError::Failed {
                partition_id: self.id,
                reason: error.to_string(),
            });
        }
        let from = from.max(self.log_start);
        if self.withdrawn_from.is_some_and(|earlier| earlier <= from) {
            return Ok(());
        }
        self.withdrawn_from = Some(from);
        for id in 0..self.channels.len() as ChannelId {
            let entry = *self.channels.get(id);
            if entry.last_seq == 0 || entry.head_offset == NO_OFFSET || entry.head_offset < from {
                continue;
            }
            let (mut seq, mut offset) = (entry.last_seq, entry.head_offset);
            loop {
                let previous = self.record_head(offset, seq)?.previous_offset;
                if seq == 1 || previous == NO_OFFSET || previous < from {
                    let entry = self.channels.get_mut(id);
                    entry.last_seq = seq - 1;
                    entry.head_offset = if seq == 1 { NO_OFFSET } else { previous };
                    break;
                }
                (seq, offset) = (seq - 1, previous);
            }
        }
        Ok(())
    }

    /// Validates the record, assigns it the channel's next seq and adds it to
    /// the pending batch. It becomes visible to reads at the next `flush`.
    pub fn append(&mut self, record: &NewRecord<'_>) -> Result<Appended, StorageError> {
        self.check_not_failed()?;
        check_record(record, self.config.record_body_bytes_max)?;
        let key = (!record.client_message_id.is_empty() && self.config.idempotency_entries_max > 0)
            .then(|| idempotency::key(record.channel, record.sender, record.client_message_id));
        if let Some(original) = key
            .as_ref()
            .and_then(|key| self.idempotency.get(key, record.timestamp_ms))
        {
            return Ok(Appended {
                seq: original.seq,
                offset: original.offset,
                timestamp_ms: original.timestamp_ms,
                duplicate: true,
            });
        }
        let id = self.channels.find_or_insert(record.channel);
        let previous = match self.pending.channels.get(&id) {
            Some(pending) => *pending,
            None => {
                let entry = self.channels.get(id);
                PendingChannel {
                    seq: entry.last_seq,
                    offset: entry.head_offset,
                }
            }
        };
        let seq = previous.seq + 1;
        let known = self
            .pending
            .skip_chains
            .target_offset(id, previous.seq, previous.offset);
        let skip_offset = match known {
            Some(offset) if offset >= self.log_start => offset,
            // Deleted by retention (the walk would stop there too).
            Some(_) => NO_OFFSET,
            None => self.skip_offset_for(seq, previous)?,
        };
        if cfg!(debug_assertions) && known.is_some() {
            let walked = self.skip_offset_for(seq, previous)?;
            assert_eq!(skip_offset, walked, "the skip chain agrees with the walk");
        }
        let fields = RecordFields {
            seq,
            previous_offset: previous.offset,
            skip_offset,
            timestamp_ms: record.timestamp_ms,
            relation: record.relation,
            kind: record.kind,
            channel: record.channel,
            sender: record.sender,
            client_message_id: record.client_message_id,
            headers: record.headers,
            body: record.body,
        };
        let record_bytes = fields.encoded_bytes();

        // Close the open batch if this record would take it past the soft
        // maximum; the next record starts a new batch in the same flush.
        if let Some(open) = &self.pending.open {
            if open.record_count > 0
                && self.pending.buffer.len() - open.start + record_bytes > BATCH_BYTES_SOFT_MAX
            {
                self.close_open_batch();
            }
        }
        if self.pending.open.is_none() {
            let start = begin_batch(&mut self.pending.buffer);
            self.pending.open = Some(OpenBatch {
                start,
                record_count: 0,
                timestamp_min_ms: u64::MAX,
                timestamp_max_ms: 0,
                summary: SegmentSummary::new(self.config.retention.len()),
            });
        }
        let offset = self.flushed_end() + self.pending.buffer.len() as u64;
        let rule = rule_for(&self.config.retention, record.channel);
        let open = self.pending.open.as_mut().expect("opened above");
        let distance =
            u32::try_from(self.pending.buffer.len() - open.start).expect("a batch is below 4 GiB");
        fields.encode(distance, &mut self.pending.buffer);
        open.record_count += 1;
        open.timestamp_min_ms = open.timestamp_min_ms.min(record.timestamp_ms);
        open.timestamp_max_ms = open.timestamp_max_ms.max(record.timestamp_ms);
        open.summary.add(rule, record.timestamp_ms);
        self.pending
            .channels
            .insert(id, PendingChannel { seq, offset });
        self.pending
            .skip_chains
            .appended(id, previous.seq, previous.offset, offset, skip_offset);
        self.pending.records += 1;
        if let Some(key) = key {
            let original = Original {
                seq,
                offset,
                timestamp_ms: record.timestamp_ms,
            };
            self.idempotency.insert(key, original);
        }
        Ok(Appended {
            seq,
            offset,
            timestamp_ms: record.timestamp_ms,
            duplicate: false,
        })
    }

    /// The offset of the channel's record with seq `skip_target(seq)`, found
    /// by following skip pointers from the channel's newest record (whose
    /// seq is `seq - 1`). Clearing the low bits of `seq - 1` one at a time
    /// lands exactly on the target, so this takes at most log2(seq) hops and
    /// one on average.
    fn skip_offset_for(&self, seq: u64, previous: PendingChannel) -> Result<u64, StorageError> {
        let target = skip_target(seq);
        if target == 0 {
            return Ok(NO_OFFSET);
        }
        let (mut current_seq, mut current_offset) = (previous.seq, previous.offset);
        while current_seq > target {
            if current_offset == NO_OFFSET || current_offset < self.log_start {
                // The chain runs into records deleted by retention; without a
                // skip pointer, searches fall back to back-pointers and stop at
                // the retention boundary anyway.
                return Ok(NO_OFFSET);
            }
            let head = self.record_head_anywhere(current_offset, current_seq)?;
            if head.skip_offset != NO_OFFSET {
                current_seq = skip_target(current_seq);
                current_offset = head.skip_offset;
            } else {
                current_seq -= 1;
                current_offset = head.previous_offset;
            }
        }
        if current_offset < self.log_start {
            return Ok(NO_OFFSET);
        }
        Ok(current_offset)
    }

    /// The fixed header of the record at `offset`, pending or flushed,
    /// checked to carry `expected_seq`.
    fn record_head_anywhere(
        &self,
        offset: u64,
        expected_seq: u64,
    ) -> Result<RecordHead, StorageError> {
        let flushed_end = self.flushed_end();
        if offset >= flushed_end {
            let at = (offset - flushed_end) as usize;
            let head = RecordHead::parse(&self.pending.buffer[at..at + RECORD_HEADER_BYTES]);
            assert_eq!(head.seq, expected_seq, "pending record chain is consistent");
            return Ok(head);
        }
        self.record_head(offset, expected_seq)
    }

    fn close_open_batch(&mut self) {
        let Some(open) = self.pending.open.take() else {
            return;
        };
        let base_position = self.flushed_end() + open.start as u64;
        let key_id = self.sealing_key_id().unwrap_or(0);
        if key_id != 0 {
            // Room for the tag: records appended after this batch get their
            // offsets past it.
            self.pending
                .buffer
                .resize(self.pending.buffer.len() + TAG_BYTES, 0);
        }
        let meta = BatchMeta {
            term: 0,
            index: 0,
            base_position,
            record_count: open.record_count,
            run: self.run,
            timestamp_min_ms: open.timestamp_min_ms,
            timestamp_max_ms: open.timestamp_max_ms,
            key_id,
        };
        let end = self.pending.buffer.len();
        finish_batch(&mut self.pending.buffer[open.start..end], &meta);
        self.pending.closed.push(ClosedBatch {
            start: open.start,
            end,
            summary: open.summary,
        });
    }

    /// Records appended and not yet flushed.
    pub fn pending_records(&self) -> usize {
        self.pending.records
    }

    /// Writes the pending batch with one positioned write and makes it
    /// visible to reads. Does nothing if nothing is pending. Starts a new
    /// segment first if the batch would take the active one past
    /// `segment_bytes_max`; a batch never spans segments.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.flush_with(&mut |_| {})
    }

    /// [`Partition::flush`], handing `written` the bytes of every positioned
    /// write (whole batches, consecutive in the stream) once it succeeded:
    /// the shard journal writes them as an entry.
    pub fn flush_with(&mut self, written: &mut dyn FnMut(&[u8])) -> Result<(), StorageError> {
        self.check_not_failed()?;
        if self.pending.records == 0 {
            return Ok(());
        }
        self.close_open_batch();
        // Check the data before writing it (the same check a read does);
        // seal encrypted batches only now, as pending records are read
        // (skip pointers of later appends) from the plain buffer.
        for batch in &self.pending.closed {
            let bytes = &mut self.pending.buffer[batch.start..batch.end];
            let sealed = format::BatchHeader::parse(bytes).is_ok_and(|h| h.is_encrypted());
            if let Some(keys) = self.keys.as_deref().filter(|_| sealed) {
                assert!(
                    format::check_image(&bytes[..bytes.len() - TAG_BYTES]).is_ok(),
                    "a batch about to be sealed does not decode"
                );
                keys.seal(self.id, bytes);
            }
            assert!(
                matches!(decode_batch(bytes), Ok(BatchDecode::Complete(b)) if b.bytes.len() == bytes.len()),
                "a batch about to be written does not decode"
            );
        }
        let closed = std::mem::take(&mut self.pending.closed);
        let mut buffer = std::mem::take(&mut self.pending.buffer);
        let flush_start = self.flushed_end();
        // When this flush rolls, the checkpoint written at the roll is the
        // state before the flush: the table is exact there, and the bytes
        // before it are in the segment the roll seals.
        let mut snapshot = (self.segments.last().expect("active segment").len
            + buffer.len() as u64
            > self.config.segment_bytes_max)
            .then(|| self.checkpoint_state());
        let mut first = 0;
        while first < closed.len() {
            let active_len = self.segments.last().expect("active segment").len;
            let first_bytes = (closed[first].end - closed[first].start) as u64;
            if active_len > 0 && active_len + first_bytes > self.config.segment_bytes_max {
                if let Err(error) = self.roll(snapshot.take()) {
                    // What this flush wrote before is not read (the
                    // channel table is not updated either).
                    self.withdrawn_from.get_or_insert(flush_start);
                    return Err(error);
                }
            }
            // Take as many batches as fit in the active segment (at least one).
            let active_len = self.segments.last().expect("active segment").len;
            let mut last = first;
            while last + 1 < closed.len()
                && active_len + (closed[last + 1].end - closed[first].start) as u64
                    <= self.config.segment_bytes_max
            {
                last += 1;
            }
            let bytes = &buffer[closed[first].start..closed[last].end];
            if let Err(error) = self.write_to_active(bytes) {
                self.withdrawn_from.get_or_insert(flush_start);
                return Err(error);
            }
            written(bytes);
            let active = self.segments.last_mut().expect("active segment");
            for batch in &closed[first..=last] {
                active.summary.merge(&batch.summary);
            }
            first = last + 1;
        }
        for (id, pending) in self.pending.channels.drain() {
            let entry = self.channels.get_mut(id);
            entry.last_seq = pending.seq;
            entry.head_offset = pending.offset;
        }
        self.last_batch = flush_start + closed.last().expect("records are pending").start as u64;
        let active_len = self.segments.last().expect("active segment").len;
        if !self.spare_requested && active_len >= self.config.segment_bytes_max / 2 {
            self.worker.want_spare();
            self.spare_requested = true;
        }
        // Keep the buffer's capacity for the next loop turn.
        buffer.clear();
        self.pending.buffer = buffer;
        self.pending.records = 0;
        Ok(())
    }

    /// Frees what the partition keeps between loop turns only to avoid
    /// regrowing it: the pending buffer and its per-channel map (a busy turn
    /// leaves them as large as its batch) and the cache of decrypted batches.
    /// The owner calls this once the partition has been idle for a while, so
    /// a burst of traffic does not stay resident after it; the next append
    /// grows them again. Also forgets the idempotency keys that fell out of
    /// the window by `now_ms` (appends forget old keys only as new ones
    /// come). Keeps the buffers while records are pending.
    pub fn release_idle_memory(&mut self, now_ms: u64) {
        self.idempotency.expire(now_ms);
        if self.pending.records > 0 {
            return;
        }
        self.pending = Pending::default();
        self.decrypted.get_mut().clear();
    }

    /// Idempotency keys remembered (some may be past the window until the
    /// next append or [`Partition::release_idle_memory`] forgets them).
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }

    /// Heap bytes held by the buffers [`Partition::release_idle_memory`]
    /// frees and by the idempotency tables (capacity, not length).
    pub fn idle_buffer_bytes(&self) -> usize {
        self.pending.buffer.capacity()
            + self.pending.closed.capacity() * std::mem::size_of::<ClosedBatch>()
            + self.pending.channels.capacity() * std::mem::size_of::<(ChannelId, PendingChannel)>()
            + self.pending.skip_chains.table_bytes()
            + self.idempotency.table_bytes()
    }

    fn write_to_active(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let active = self.segments.last().expect("active segment");
        let result = if self.fault == Some(Fault::Write) {
            self.fault = None;
            Err(std::io::Error::other("injected write fault"))
        } else {
            active.file.write_all_at(bytes, active.len)
        };
        if let Err(error) = result {
            let error = StorageError::io("write to", &active.path, error);
            return Err(self.fail(error));
        }
        let active = self.segments.last_mut().expect("active segment");
        active.len += bytes.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), StorageError> {
        let active = self.segments.last().expect("active segment");
        let result = if self.fault == Some(Fault::Sync) {
            self.fault = None;
            Err(std::io::Error::other("injected fdatasync fault"))
        } else {
            active.file.sync_data()
        };
        if let Err(error) = result {
            let error = StorageError::io("fdatasync", &active.path, error);
            return Err(self.fail(error));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Seals the active segment and starts a new one where it ends. The old
    /// segment is synced first so that recovery never finds a torn tail in a
    /// segment that is not the last. The new segment is the spare prepared
    /// by the background thread (renamed into place) when one is ready, else
    /// a plain empty file. `snapshot`, taken at the start of the flush, is
    /// handed to the background thread to be written as the checkpoint.
    fn roll(&mut self, snapshot: Option<CheckpointState>) -> Result<(), StorageError> {
        if self.unsynced {
            self.sync_active()?;
        }
        let base = self.flushed_end();
        let file_path = self.path.join(segment_file_name(base));
        let preallocated = self.worker.take_spare(&file_path).unwrap_or_else(|error| {
            log::warn!("{}: spare segment not used: {error}", self.path.display());
            false
        });
        self.spare_requested = false;
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(!preallocated)
            .open(&file_path)
        {
            Ok(file) => file,
            Err(error) => return Err(self.fail(StorageError::io("create", &file_path, error))),
        };
        self.directory_unsynced = true;
        let summary = SegmentSummary::new(self.config.retention.len());
        self.segments.push(Segment::new(
            base,
            file_path,
            file,
            0,
            self.config.segment_bytes_max,
            summary,
        ));
        if let Some(state) = snapshot {
            self.checkpointed = Some((state.log_start, state.position));
            self.worker.submit(CheckpointJob {
                state,
                sync: None,
                delete: Vec::new(),
            });
        }
        Ok(())
    }

    /// The state a checkpoint at the flushed end would hold. Copies the
    /// channel table (two `memcpy`s; the encoding happens on the background
    /// thread).
    pub(crate) fn checkpoint_state(&self) -> CheckpointState {
        CheckpointState {
            log_start: self.log_start,
            position: self.flushed_end(),
            last_batch: if self.flushed_end() > self.log_start {
                self.last_batch
            } else {
                NO_OFFSET
            },
            prefixes: rule_prefixes(&self.config),
            segments: self
                .segments
                .iter()
                .map(|segment| (segment.base, segment.summary.clone()))
                .collect(),
            channels: self.channels.snapshot(),
            // Only keys of records before the checkpoint position: pending
            // ones may never reach the disk.
            idempotency: self
                .idempotency
                .snapshot()
                .into_iter()
                .filter(|(_, original)| original.offset < self.flushed_end())
                .collect(),
            // A partition that seals its batches seals its checkpoints.
            sealing: self
                .keys
                .clone()
                .filter(|keys| keys.current().is_some())
                .map(|keys| (keys, self.id)),
        }
    }

    /// Waits until the background thread has written the checkpoints and
    /// deleted the files queued so far, and (with preallocation) has a spare
    /// segment ready. For tests and benchmarks; nothing needs to wait.
    pub fn wait_for_background(&self) {
        self.worker.wait_idle();
    }

    /// Drops the partition as a crash would: no sync, no checkpoint on
    /// close, a queued checkpoint is discarded. For tests.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.crashed = true;
    }

    /// The file descriptor to fdatasync for [`Partition::sync`], when there
    /// is flushed data to sync and no injected fault; `None` otherwise.
    #[cfg(feature = "io-uring")]
    pub(crate) fn fdatasync_target(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        (self.failed.is_none() && self.unsynced && self.fault.is_none()).then(|| {
            self.segments
                .last()
                .expect("active segment")
                .file
                .as_raw_fd()
        })
    }

    /// Completes a [`Partition::sync`] whose fdatasync was done elsewhere
    /// (an io_uring submission) with `result`.
    #[cfg(feature = "io-uring")]
    pub(crate) fn finish_fdatasync(
        &mut self,
        result: std::io::Result<()>,
    ) -> Result<(), StorageError> {
        self.check_not_failed()?;
        if let Err(error) = result {
            let active = self.segments.last().expect("active segment");
            let error = StorageError::io("fdatasync", &active.path, error);
            return Err(self.fail(error));
        }
        self.unsynced = false;
        self.sync()
    }

    /// Makes everything flushed durable: `fdatasync` of the active segment,
    /// and an fsync of the directory if a segment file was created.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_not_failed()?;
        if self.unsynced {
            self.sync_active()?;
        }
        if self.directory_unsynced {
            if let Err(error) = sync_directory(&self.path) {
                return Err(self.fail(error));
            }
            self.directory_unsynced = false;
        }
        Ok(())
    }

    /// Applies a shard journal entry after recovery: `payload` is whole
    /// batches, consecutive in this partition's stream. Batches that end at
    /// or before the flushed end are already here and skipped; the one that
    /// starts there and those after it are written (rolling as a flush
    /// would) and indexed. Nothing may be pending. Returns the records
    /// written.
    pub fn replay(&mut self, payload: &[u8]) -> Result<u64, StorageError> {
        self.check_not_failed()?;
        assert_eq!(self.pending.records, 0, "replay before any append");
        let mut written = 0;
        let mut at = 0;
        while at < payload.len() {
            let batch = match decode_batch(&payload[at..]) {
                Ok(BatchDecode::Complete(batch)) => batch,
                _ => {
                    return Err(StorageError::Inconsistent {
                        path: self.path.clone(),
                        detail: "a journal entry holds a batch that does not decode".into(),
                    })
                }
            };
            let bytes = batch.bytes;
            let in_payload = at as u64;
            at += bytes.len();
            let base = batch.header.base_position;
            let end = base + bytes.len() as u64;
            let flushed_end = self.flushed_end();
            if end <= flushed_end {
                continue;
            }
            if base != flushed_end {
                return Err(StorageError::Inconsistent {
                    path: self.path.clone(),
                    detail: format!(
                        "the shard journal holds a batch at stream position {base} but the partition's log ends at {flushed_end}: acknowledged data between them is missing"
                    ),
                });
            }
            let active_len = self.segments.last().expect("active segment").len;
            if active_len > 0 && active_len + bytes.len() as u64 > self.config.segment_bytes_max {
                self.roll(None)?;
            }
            let mut image = None;
            let journal = self.path.join("(shard journal entry)");
            let view = readable(
                self.keys.as_deref(),
                self.id,
                &batch,
                &mut image,
                &journal,
                in_payload,
            )?;
            self.write_to_active(bytes)?;
            let log_start = self.log_start;
            let active = self.segments.last_mut().expect("active segment");
            index_batch(
                &mut self.channels,
                &mut self.idempotency,
                &mut active.summary,
                &self.config,
                log_start,
                base,
                &view,
            )
            .map_err(|detail| StorageError::Inconsistent {
                path: self.path.clone(),
                detail: format!("a batch replayed from the shard journal: {detail}"),
            })?;
            self.last_batch = base;
            written += u64::from(batch.header.record_count);
        }
        Ok(written)
    }

    /// The active segment and the partition directory, for the shard
    /// journal's background sync after a switch.
    pub fn sync_target(&self) -> Result<SyncTarget, StorageError> {
        let active = self.segments.last().expect("active segment");
        let file = active
            .file
            .try_clone()
            .map_err(|e| StorageError::io("duplicate the descriptor of", &active.path, e))?;
        Ok(SyncTarget {
            file,
            file_path: active.path.clone(),
            directory: self.path.clone(),
        })
    }

    /// Stream position just past the last flushed byte (where the next
    /// flush writes).
    pub fn end_position(&self) -> u64 {
        self.flushed_end()
    }

    /// The channel's last visible (flushed) seq, 0 if none.
    pub fn head_seq(&self, channel: &[u8]) -> u64 {
        self.channels
            .find(channel)
            .map_or(0, |id| self.channels.get(id).last_seq)
    }

    /// The channel's last assigned seq, pending records included.
    pub fn appended_seq(&self, channel: &[u8]) -> u64 {
        let Some(id) = self.channels.find(channel) else {
            return 0;
        };
        match self.pending.channels.get(&id) {
            Some(pending) => pending.seq,
            None => self.channels.get(id).last_seq,
        }
    }

    /// Channels known to the partition.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes of flushed log still on disk.
    pub fn size_bytes(&self) -> u64 {
        self.flushed_end() - self.log_start
    }
}

impl Drop for Partition {
    /// A clean close: syncs what was flushed (pending records are dropped)
    /// and writes a checkpoint at the flushed end unless one is there
    /// already, then stops the background thread.
    fn drop(&mut self) {
        let clean = self.failed.is_none() && !self.crashed;
        if clean {
            match self.sync() {
                Ok(()) => {
                    let position = (self.log_start, self.flushed_end());
                    if self.checkpointed != Some(position) {
                        self.worker.submit(CheckpointJob {
                            state: self.checkpoint_state(),
                            sync: None,
                            delete: Vec::new(),
                        });
                    }
                }
                Err(error) => log::warn!("partition {}: no checkpoint on close: {error}", self.id),
            }
        }
        self.worker.stop(self.crashed);
        if clean && self.failed.is_none() {
            let last = &self.segments.last().expect("active segment").path;
            if let Err(error) = write_clean_marker(&self.path, self.flushed_end(), last) {
                log::warn!("partition {}: no clean-close marker: {error}", self.id);
            }
        }
    }
}

/// The file a clean close leaves: where the log ends, and the size and
/// modification time of the last segment file then. The next open trusts the
/// checkpoint at that position without re-reading the zero tail after it if
/// the file is unchanged, and deletes the marker before anything can write.
const CLEAN_MARKER: &str = "CLEAN";

/// What the clean-close marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CleanEnd {
    position: u64,
    file_bytes: u64,
    modified_ns: u128,
}

fn modified_ns(metadata: &fs::Metadata) -> u128 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn write_clean_marker(dir: &Path, position: u64, last_segment: &Path) -> std::io::Result<()> {
    let metadata = fs::metadata(last_segment)?;
    let text = format!("{position} {} {}\n", metadata.len(), modified_ns(&metadata));
    let path = dir.join(CLEAN_MARKER);
    let mut file = fs::File::create(&path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    fs::File::open(dir)?.sync_all()
}

/// Reads and removes the clean-close marker.
fn take_clean_marker(dir: &Path) -> Result<Option<CleanEnd>, StorageError> {
    let path = dir.join(CLEAN_MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::io("read", &path, error)),
    };
    fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
    sync_directory(dir)?;
    let mut fields = text.split_whitespace().map(str::parse::<u128>);
    Ok(match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(position)), Some(Ok(file_bytes)), Some(Ok(modified_ns))) => Some(CleanEnd {
            position: position as u64,
            file_bytes: file_bytes as u64,
            modified_ns,
        }),
        _ => None,
    })
}

/// The retention-rule prefixes, whose order the segment summaries follow.
pub(crate) fn rule_prefixes(config: &PartitionConfig) -> Vec<Vec<u8>> {
    config
        .retention
        .iter()
        .map(|rule| rule.prefix.as_bytes().to_vec())
        .collect()
}

fn check_config(config: &PartitionConfig) -> Result<(), StorageError> {
    if config.segment_bytes_max < SEGMENT_BYTES_MAX_MINIMUM {
        return Err(StorageError::InvalidConfig {
            detail: format!(
                "segment_bytes_max = {} is below the minimum {SEGMENT_BYTES_MAX_MINIMUM}",
                config.segment_bytes_max
            ),
        });
    }
    if config.segment_bytes_max > SEGMENT_BYTES_MAX_LIMIT {
        return Err(StorageError::InvalidConfig {
            detail: format!(
                "segment_bytes_max = {} is above the limit {SEGMENT_BYTES_MAX_LIMIT} (2 GiB); \
                 choose a smaller segment size",
                config.segment_bytes_max
            ),
        });
    }
    if config.record_body_bytes_max > RECORD_BODY_BYTES_LIMIT {
        return Err(StorageError::InvalidConfig {
            detail: format!(
                "record_body_bytes_max = {} is above the limit {RECORD_BODY_BYTES_LIMIT}",
                config.record_body_bytes_max
            ),
        });
    }
    Ok(())
}

fn check_record(record: &NewRecord<'_>, body_bytes_max: u32) -> Result<(), StorageError> {
    let too_large = |field, bytes: usize, limit_name, limit: usize| {
        if bytes > limit {
            Err(StorageError::TooLarge {
                field,
                bytes: bytes as u64,
                limit_name,
                limit: limit as u64,
            })
        } else {
            Ok(())
        }
    };
    if record.channel.is_empty() {
        return Err(StorageError::InvalidRecord {
            detail: "the channel name is empty",
        });
    }
    too_large(
        "channel",
        record.channel.len(),
        "CHANNEL_BYTES_MAX",
        CHANNEL_BYTES_MAX,
    )?;
    too_large(
        "sender",
        record.sender.len(),
        "SENDER_BYTES_MAX",
        SENDER_BYTES_MAX,
    )?;
    too_large(
        "client message id",
        record.client_message_id.len(),
        "CLIENT_MESSAGE_ID_BYTES_MAX",
        CLIENT_MESSAGE_ID_BYTES_MAX,
    )?;
    too_large(
        "headers",
        record.headers.len(),
        "HEADERS_BYTES_MAX",
        HEADERS_BYTES_MAX,
    )?;
    too_large(
        "body",
        record.body.len(),
        "record_body_bytes_max",
        body_bytes_max as usize,
    )?;
    Ok(())
}
