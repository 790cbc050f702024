//! Scanning segments: recovery on open, and the offline `verify` and
//! `inspect` tools.
//!
//! The scan reads each batch header, checks the CRC and the record structure
//! (that is all [`decode_batch`] does) and hands the batch to a visitor. The
//! torn-tail rule: in the LAST segment, a batch that is cut short or fails its
//! check is a torn tail when no valid batch follows it anywhere in the file;
//! anything else is corruption and is reported with file and byte offset.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::channel_table::ChannelTable;
use crate::checkpoint::{read_checkpoints, Checkpoint, Unsealing};
use crate::encryption::{readable, KeyRing};
use crate::format::{
    decode_batch, BatchDecode, BatchView, RecordView, BATCH_HEADER_BYTES, BATCH_MAGIC, NO_OFFSET,
};
use crate::journal::UnsyncedTail;
use crate::segment::list_segments;
use crate::{Record, StorageError};

/// What scanning one segment found.
#[derive(Debug, Default)]
pub(crate) struct SegmentScan {
    /// The logical end of the segment (a file position): the end of the
    /// last valid batch. Zero bytes may follow it.
    pub valid_len: u64,
    pub batches: u64,
    pub records: u64,
    /// Where a torn tail starts, if there is one.
    pub torn_at: Option<u64>,
    /// Just past the last nonzero byte of the torn tail.
    pub torn_end: u64,
    /// Stream position of the last valid batch scanned.
    pub last_batch: Option<u64>,
}

/// Whether every byte is zero.
pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// The position just past the last nonzero byte (0 if all are zero).
fn nonzero_end(data: &[u8]) -> usize {
    let mut end = data.len();
    for chunk in data.rchunks(4096) {
        if let Some(at) = chunk.iter().rposition(|&b| b != 0) {
            return end - chunk.len() + at + 1;
        }
        end -= chunk.len();
    }
    0
}

/// Scans the segment whose bytes are `data` (the whole file) from file
/// position `start` (a batch boundary). `visit` sees every valid batch with
/// its position in the file.
///
/// The logical end is the end of the last valid batch. After it: only zero
/// bytes is a clean end (a preallocated segment, or one rolled before it
/// filled up); nonzero bytes followed by a valid batch, or nonzero bytes in
/// a segment that is not the last, are corruption; nonzero bytes with no
/// valid batch after them in the last segment are a torn tail.
///
/// With `tail` (a shard journal's [`UnsyncedTail`], for the last segment),
/// bytes from stream position `tail.durable_end` on are unsynced: the
/// segment's logical end is the first batch there that is not a valid batch
/// of `tail.run` (a torn write, a hole, a stale batch of an earlier run), and
/// nothing after it is looked at; a bad batch before `durable_end` is
/// corruption.
pub(crate) fn scan_segment(
    data: &[u8],
    base: u64,
    start: u64,
    path: &Path,
    is_last: bool,
    tail: Option<UnsyncedTail>,
    visit: &mut dyn FnMut(u64, &BatchView<'_>) -> Result<(), StorageError>,
) -> Result<SegmentScan, StorageError> {
    let mut scan = SegmentScan::default();
    if start > data.len() as u64 {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: start,
            detail: format!(
                "the checkpoint says the log goes on at byte {start} but the file has {} bytes",
                data.len()
            ),
        });
    }
    let mut position = start as usize;
    while position < data.len() {
        let unsynced = tail.filter(|tail| base + position as u64 >= tail.durable_end);
        let problem = match decode_batch(&data[position..]) {
            Ok(BatchDecode::Complete(batch))
                if unsynced.is_some_and(|tail| {
                    batch.header.run != tail.run
                        || batch.header.base_position != base + position as u64
                }) =>
            {
                // A batch of an earlier run, left beyond an earlier crash
                // point: the log of the last run ends before it.
                break;
            }
            Ok(BatchDecode::Complete(batch)) => {
                let expected = base + position as u64;
                if batch.header.base_position != expected {
                    return Err(StorageError::Corrupt {
                        path: path.to_path_buf(),
                        position: position as u64,
                        detail: format!(
                            "batch says it starts at stream position {} but sits at {expected}",
                            batch.header.base_position
                        ),
                    });
                }
                visit(position as u64, &batch)?;
                scan.batches += 1;
                scan.records += u64::from(batch.header.record_count);
                scan.last_batch = Some(expected);
                position += batch.bytes.len();
                continue;
            }
            Ok(BatchDecode::Incomplete { .. }) => {
                "batch cut short by the end of the file".to_string()
            }
            Err(error) => error.to_string(),
        };
        if unsynced.is_some() {
            // Unsynced territory: the journal replays what was acknowledged.
            break;
        }
        if let Some(tail) = tail {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                position: position as u64,
                detail: format!(
                    "{problem} before stream position {}, up to which the shard journal says the partition was durable",
                    tail.durable_end
                ),
            });
        }
        let rest = &data[position..];
        if is_all_zero(rest) {
            // A clean zero tail: the logical end of the segment.
            break;
        }
        let problem = if rest[0] == 0 {
            let first = rest.iter().position(|&b| b != 0).unwrap_or(0) + position;
            format!("nonzero byte at {first} in the zero tail after the last batch")
        } else {
            problem
        };
        let next_valid = find_valid_batch(data, position + 1, base);
        if !is_last || next_valid.is_some() {
            let detail = match next_valid {
                Some(next) => format!(
                    "{problem} (a valid batch follows at byte {next}, so this is not a torn write)"
                ),
                None => format!("{problem} (in a segment that is not the last one)"),
            };
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                position: position as u64,
                detail,
            });
        }
        scan.torn_at = Some(position as u64);
        scan.torn_end = (position + nonzero_end(rest)) as u64;
        break;
    }
    if let Some(tail) = tail {
        // The file ended (the loop stops before `durable_end` only there):
        // what the journal says was durable is missing, not torn.
        let end = base + position as u64;
        if end < tail.durable_end {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                position: position as u64,
                detail: format!(
                    "the file ends at stream position {end}, before {}, up to which the shard \
                     journal says the partition was durable: acknowledged data is missing (a \
                     truncated or lost file)",
                    tail.durable_end
                ),
            });
        }
    }
    scan.valid_len = scan.torn_at.unwrap_or(position as u64);
    Ok(scan)
}

/// The position of the first valid batch at or after `from`, if any.
fn find_valid_batch(data: &[u8], from: usize, base: u64) -> Option<usize> {
    if data.len() < BATCH_HEADER_BYTES {
        return None;
    }
    let last = data.len() - BATCH_HEADER_BYTES;
    let mut at = from;
    while at <= last {
        // Jump to the next byte that can start the magic.
        let skip = data[at..=last].iter().position(|&b| b == BATCH_MAGIC[0])?;
        at += skip;
        if data[at..at + 4] == BATCH_MAGIC
            && matches!(decode_batch(&data[at..]),
                Ok(BatchDecode::Complete(batch)) if batch.header.base_position == base + at as u64)
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Checks a record against what the channel table knows and advances the
/// channel. `log_start` is the first stream position still in the log
/// (records before it were deleted by retention). Returns what is wrong.
pub(crate) fn apply_record(
    table: &mut ChannelTable,
    log_start: u64,
    offset: u64,
    record: &RecordView<'_>,
) -> Result<(), String> {
    let id = table.find_or_insert(record.channel);
    let entry = table.get_mut(id);
    if entry.last_seq == 0 {
        let previous_in_log =
            record.previous_offset != NO_OFFSET && record.previous_offset >= log_start;
        if previous_in_log {
            return Err(format!(
                "record at stream offset {offset} (seq {}) points back to {} where its channel has no record",
                record.seq, record.previous_offset
            ));
        }
        if (record.previous_offset == NO_OFFSET || log_start == 0) && record.seq != 1 {
            return Err(format!(
                "the first record of a channel at stream offset {offset} has seq {} instead of 1",
                record.seq
            ));
        }
    } else {
        if record.seq != entry.last_seq + 1 {
            return Err(format!(
                "record at stream offset {offset} has seq {} but its channel's previous seq is {}",
                record.seq, entry.last_seq
            ));
        }
        if record.previous_offset != entry.head_offset {
            return Err(format!(
                "record at stream offset {offset} points back to {} but its channel's previous record is at {}",
                record.previous_offset, entry.head_offset
            ));
        }
    }
    entry.last_seq = record.seq;
    entry.head_offset = offset;
    Ok(())
}

/// A record decoded from a batch, copying its fields.
pub(crate) fn record_from_view(view: &RecordView<'_>, offset: u64) -> Record {
    Record {
        channel: Bytes::copy_from_slice(view.channel),
        seq: view.seq,
        offset,
        timestamp_ms: view.timestamp_ms,
        kind: view.kind,
        sender: Bytes::copy_from_slice(view.sender),
        client_message_id: Bytes::copy_from_slice(view.client_message_id),
        relation: view.relation,
        headers: Bytes::copy_from_slice(view.headers),
        body: Bytes::copy_from_slice(view.body),
    }
}

/// What [`verify_partition_dir`] found in a healthy (or torn-tailed)
/// partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files checked.
    pub segments: usize,
    /// Batches whose CRC and structure are good.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Distinct channels seen (including those only in the checkpoint).
    pub channels: usize,
    /// Bytes of valid batches (logical bytes: zero tails not counted).
    pub bytes: u64,
    /// Encrypted batches among `batches`.
    pub encrypted_batches: u64,
    /// Encrypted batches whose CRC and header were checked but that could
    /// not be authenticated (no key ring was given): their records were not
    /// read, and the channel chains were not checked from the first of them
    /// on.
    pub unauthenticated_batches: u64,
    /// A torn tail that opening the partition would remove: file, byte
    /// position, and bytes that would be cut or zeroed (up to the last
    /// nonzero byte; zero bytes after the last batch are not data).
    pub would_truncate: Option<(PathBuf, u64, u64)>,
}

/// Where the log of a partition directory starts, and the checkpoint that
/// says so.
pub(crate) struct LogStart {
    /// The newest valid checkpoint.
    pub checkpoint: Option<Checkpoint>,
    pub log_start: u64,
    /// Segments still in the log, sorted.
    pub segments: Vec<(u64, PathBuf)>,
    /// Segment files before the log start: retention wrote its checkpoint
    /// and stopped before deleting them.
    pub released: Vec<PathBuf>,
    /// The checkpoint is the temporary file, not yet renamed into place.
    pub checkpoint_is_temporary: bool,
}

/// Loads the newest valid checkpoint and lists the segments. Damaged
/// checkpoint files are logged and skipped; the log start must match the
/// first segment unless the newest checkpoint was damaged and an older one
/// covers the segments that are gone.
pub(crate) fn find_log_start(
    path: &Path,
    unsealing: Unsealing<'_>,
) -> Result<LogStart, StorageError> {
    let loaded = read_checkpoints(path, unsealing)?;
    for (file, detail) in &loaded.damaged {
        log::warn!(
            "{}: damaged channel checkpoint ignored ({detail}); recovering from an older one or from the log",
            file.display()
        );
    }
    let checkpoint = loaded.newest;
    let checkpoint_is_temporary = loaded.newest_is_temporary;
    let mut log_start = checkpoint.as_ref().map_or(0, |c| c.log_start);
    let (released, segments): (Vec<_>, Vec<_>) = list_segments(path)?
        .into_iter()
        .partition(|(base, _)| *base < log_start);
    if let Some(&(first, _)) = segments.first() {
        if first != log_start {
            let covered = !loaded.damaged.is_empty()
                && checkpoint
                    .as_ref()
                    .is_some_and(|c| c.log_start < first && first <= c.position);
            if covered {
                log::warn!(
                    "{}: the log starts at {first}, after the start {log_start} of the newest valid checkpoint, which covers it",
                    path.display()
                );
                log_start = first;
            } else if let Some((file, detail)) = loaded.damaged.first() {
                return Err(StorageError::Corrupt {
                    path: file.clone(),
                    position: 0,
                    detail: format!(
                        "channel checkpoint: {detail}, and the log starts at stream position {first}, so the state of the channels before it is lost"
                    ),
                });
            } else {
                return Err(StorageError::Inconsistent {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the log should start at stream position {log_start} but the first segment starts at {first}; segment files are missing"
                    ),
                });
            }
        }
    }
    Ok(LogStart {
        checkpoint,
        log_start,
        segments,
        released: released.into_iter().map(|(_, file)| file).collect(),
        checkpoint_is_temporary,
    })
}

/// Loads into `table` the channels of `checkpoint` whose newest record lies
/// before `before` (all of them for `before == u64::MAX`).
pub(crate) fn load_channels(table: &mut ChannelTable, checkpoint: &Checkpoint, before: u64) {
    if before == u64::MAX {
        table.reserve(
            checkpoint.channel_count as usize,
            checkpoint.channel_name_bytes(),
        );
    }
    for (name, last_seq, head_offset) in checkpoint.channels() {
        if last_seq == 0 || (before != u64::MAX && head_offset >= before) {
            continue;
        }
        let id = table.find_or_insert(name);
        let entry = table.get_mut(id);
        entry.last_seq = last_seq;
        entry.head_offset = head_offset;
    }
}

/// Offline, read-only scan of a partition directory that calls `visit` with
/// every valid record in log order. Never modifies a file.
fn scan_directory(
    path: &Path,
    tail: Option<UnsyncedTail>,
    keys: Option<&KeyRing>,
    visit: &mut dyn FnMut(&RecordView<'_>, u64),
) -> Result<VerifyReport, StorageError> {
    // The nonce of an encrypted batch holds its partition id: the directory
    // name (5 digits).
    let partition_id = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse::<u32>().ok());
    let mut table = ChannelTable::new();
    let LogStart {
        checkpoint,
        log_start,
        segments,
        ..
    } = find_log_start(
        path,
        Unsealing {
            keys,
            // A directory name that is no partition id opens no sealed
            // checkpoint (the id is authenticated with it).
            partition_id: partition_id.unwrap_or(u32::MAX),
            required: false,
        },
    )?;
    if let Some(checkpoint) = &checkpoint {
        // Only the channels with nothing left in the log; the scan rebuilds
        // the others.
        load_channels(&mut table, checkpoint, log_start);
    }
    let mut report = VerifyReport {
        segments: segments.len(),
        ..VerifyReport::default()
    };
    let mut expected_base = log_start;
    let (mut encrypted, mut unauthenticated) = (0u64, 0u64);
    for (index, (base, file)) in segments.iter().enumerate() {
        if *base != expected_base {
            return Err(StorageError::Inconsistent {
                path: path.to_path_buf(),
                detail: format!(
                    "segment {} should start at stream position {expected_base} (the end of the previous one)",
                    file.display(),
                ),
            });
        }
        let mut data = fs::read(file).map_err(|e| StorageError::io("read", file, e))?;
        let is_last = index + 1 == segments.len();
        if let (Some(_), Some((next, _))) = (tail, segments.get(index + 1)) {
            // With a journal, what lies after a sealed segment's end (the
            // next base) is not data: it may be left from a crash point.
            data.truncate(next.saturating_sub(*base) as usize);
        }
        let mut visit_batch = |position: u64, batch: &BatchView<'_>| {
            if batch.is_sealed() {
                encrypted += 1;
                if keys.is_none() {
                    // CRC and header checked; the records cannot be read, so
                    // the channel chains cannot be followed past here.
                    unauthenticated += 1;
                    return Ok(());
                }
            }
            if unauthenticated > 0 {
                return Ok(());
            }
            let partition_id = partition_id.ok_or_else(|| StorageError::Inconsistent {
                path: path.to_path_buf(),
                detail:
                    "an encrypted batch needs the partition id, and the directory name is not one"
                        .into(),
            });
            let mut image = None;
            let batch = match batch.is_sealed() {
                true => readable(keys, partition_id?, batch, &mut image, file, position)?,
                false => *batch,
            };
            for (in_batch, record) in batch.records() {
                let offset = base + position + in_batch as u64;
                apply_record(&mut table, log_start, offset, &record).map_err(|detail| {
                    StorageError::Corrupt {
                        path: file.clone(),
                        position,
                        detail,
                    }
                })?;
                visit(&record, offset);
            }
            Ok(())
        };
        let scan = scan_segment(
            &data,
            *base,
            0,
            file,
            is_last,
            tail.filter(|_| is_last),
            &mut visit_batch,
        )?;
        report.batches += scan.batches;
        report.records += scan.records;
        report.bytes += scan.valid_len;
        if let Some(torn_at) = scan.torn_at {
            report.would_truncate = Some((file.clone(), torn_at, scan.torn_end - torn_at));
        }
        expected_base = base + scan.valid_len;
    }
    report.channels = table.len();
    report.encrypted_batches = encrypted;
    report.unauthenticated_batches = unauthenticated;
    Ok(report)
}

/// Offline, read-only check of a partition directory: every batch CRC, the
/// record structure, the per-channel seq chains and the segment layout.
///
/// A torn tail is not an error: it is reported in
/// [`VerifyReport::would_truncate`]. Any other corruption is an error naming
/// the file and byte offset. Never modifies a file, takes no lock, maps
/// nothing (it may run beside a live process).
pub fn verify_partition_dir(path: &Path) -> Result<VerifyReport, StorageError> {
    scan_directory(path, None, None, &mut |_, _| {})
}

/// [`verify_partition_dir`] for a partition that a shard journal names:
/// its unsynced tail is checked by the journal's rules (see
/// [`UnsyncedTail`]), as the engine's recovery does.
pub fn verify_partition_dir_with(
    path: &Path,
    tail: Option<UnsyncedTail>,
) -> Result<VerifyReport, StorageError> {
    scan_directory(path, tail, None, &mut |_, _| {})
}

/// [`verify_partition_dir_with`] that also authenticates encrypted batches
/// with `keys` (and checks their records and channel chains). Without keys,
/// encrypted batches get the CRC and header checks only and are counted in
/// [`VerifyReport::unauthenticated_batches`].
pub fn verify_partition_dir_keyed(
    path: &Path,
    tail: Option<UnsyncedTail>,
    keys: Option<&KeyRing>,
) -> Result<VerifyReport, StorageError> {
    scan_directory(path, tail, keys, &mut |_, _| {})
}

/// Offline, read-only: calls `f` with every record of the partition directory
/// in log order. Fails like [`verify_partition_dir`] on corruption (after
/// visiting the records before it); a torn tail is skipped.
pub fn inspect_partition_dir(path: &Path, f: impl FnMut(&Record)) -> Result<(), StorageError> {
    inspect_partition_dir_with(path, None, f)
}

/// [`inspect_partition_dir`] with a shard journal's [`UnsyncedTail`] (see
/// [`verify_partition_dir_with`]).
pub fn inspect_partition_dir_with(
    path: &Path,
    tail: Option<UnsyncedTail>,
    f: impl FnMut(&Record),
) -> Result<(), StorageError> {
    inspect_partition_dir_keyed(path, tail, None, f).map(|_| ())
}

/// [`inspect_partition_dir_with`] that decrypts encrypted batches with
/// `keys`. Without keys, the records of encrypted batches (and every record
/// after the first of them) are not visited; the report says how many
/// batches that was.
pub fn inspect_partition_dir_keyed(
    path: &Path,
    tail: Option<UnsyncedTail>,
    keys: Option<&KeyRing>,
    mut f: impl FnMut(&Record),
) -> Result<VerifyReport, StorageError> {
    scan_directory(path, tail, keys, &mut |view, offset| {
        f(&record_from_view(view, offset))
    })
}
