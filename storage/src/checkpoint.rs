//! The checkpoint: the channel table and the per-segment summaries as of one
//! stream position, so that opening a partition reads only the log after it.
//!
//! It is written (from the partition's background thread, from a snapshot
//! taken on the owner's thread) at every segment roll, on a clean close and
//! by retention before it deletes segments. Every byte of the log before
//! `position` was durable when the checkpoint was written: the writer syncs
//! it first (a roll seals the old segment with `fdatasync`; close and
//! retention sync the active segment). The write is atomic: temporary file,
//! fsync, the current file becomes `channels.checkpoint.previous`, the
//! temporary file becomes `channels.checkpoint`, fsync of the directory.
//!
//! Version 2 layout (little-endian):
//!
//! ```text
//! 0   4  magic "STRC"
//! 4   1  version (2)
//! 5   3  reserved, zero
//! 8   4  crc32c of bytes 12..end
//! 12  4  reserved, zero
//! 16  8  log_start: stream position of the first byte still in the log
//! 24  8  position: the table is exact as of this stream position
//! 32  8  last_batch: stream position of the batch that ends at `position`
//!        (ffff…ff when position == log_start)
//! 40  8  channel_count
//! 48  4  segment_count
//! 52  4  prefix_count: retention-rule prefixes the summaries are for
//! 56  8  reserved, zero
//! 64  .. prefix_count × (u16 bytes, prefix)
//!     .. segment_count × (u64 base, u8 flags [bit 0: has timestamp_max,
//!        bit 1: has a record matching no rule], u64 timestamp_max_ms,
//!        prefix_count × (u8 present, u64 timestamp_max_ms))
//!     .. channel_count × (u16 name_bytes, name, u64 last_seq, u64 head_offset)
//! ```
//!
//! Version 1 (written by earlier code, still read) has a 32-byte header
//! (magic, version, reserved, crc, reserved, log_start, channel_count) and
//! only the channels whose every record retention deleted; it is treated as
//! a version 2 checkpoint with `position == log_start` and no summaries, so
//! the whole log is scanned.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::channel_table::ChannelSnapshot;
use crate::encryption::{
    key_error, CheckpointOpenFailure, KeyRing, OpenFailure, SealedCheckpointHeader,
    SEALED_CHECKPOINT_MAGIC,
};
use crate::format::NO_OFFSET;
use crate::idempotency::Original;
use crate::segment::SegmentSummary;
use crate::StorageError;

const CHECKPOINT_MAGIC: [u8; 4] = *b"STRC";
const VERSION_1: u8 = 1;
/// The version this code writes.
pub(crate) const CHECKPOINT_VERSION: u8 = 3;
/// Version 2 (no idempotency keys) is still read; opening from it scans the
/// whole log, which rebuilds the keys.
const VERSION_2: u8 = 2;
const V1_HEADER_BYTES: usize = 32;
const V2_HEADER_BYTES: usize = 64;
pub(crate) const CHECKPOINT_FILE_NAME: &str = "channels.checkpoint";
const CHECKPOINT_PREVIOUS_NAME: &str = "channels.checkpoint.previous";
const CHECKPOINT_TEMPORARY_NAME: &str = "channels.checkpoint.tmp";

const SUMMARY_HAS_TIMESTAMP: u8 = 1;
const SUMMARY_HAS_UNMATCHED: u8 = 2;

/// What a checkpoint holds, on the writing side.
pub(crate) struct CheckpointState {
    pub log_start: u64,
    pub position: u64,
    pub last_batch: u64,
    pub prefixes: Vec<Vec<u8>>,
    /// Summaries of the segments before `position` (the one holding
    /// `position` summarizes its bytes before it).
    pub segments: Vec<(u64, SegmentSummary)>,
    pub channels: ChannelSnapshot,
    /// Idempotency keys of records before `position`, oldest first.
    pub idempotency: Vec<(Arc<[u8]>, Original)>,
    /// Seal the file with this key ring's current key, for this partition
    /// (see `KeyRing::seal_checkpoint`).
    pub sealing: Option<(Arc<KeyRing>, u32)>,
}

/// A loaded, checksummed checkpoint.
pub(crate) struct Checkpoint {
    pub version: u8,
    pub log_start: u64,
    pub position: u64,
    pub last_batch: u64,
    pub prefixes: Vec<Vec<u8>>,
    pub segments: Vec<(u64, SegmentSummary)>,
    pub channel_count: u64,
    /// Idempotency keys of records before `position`, oldest first (empty
    /// before version 3).
    pub idempotency: Vec<(Arc<[u8]>, Original)>,
    bytes: Vec<u8>,
    channels_at: usize,
    /// A sealed checkpoint that could not be opened (no key ring, an unknown
    /// key id or a failed tag): only its plaintext log start and position
    /// are known, and it is used like a version 1 checkpoint without
    /// channels. An open refuses it if it is the newest.
    unopened: Option<OpenFailure>,
}

impl Checkpoint {
    /// An upper bound of the bytes of all channel names.
    pub(crate) fn channel_name_bytes(&self) -> usize {
        self.bytes.len() - self.channels_at
    }

    /// Every channel: (name, last_seq, head_offset).
    pub(crate) fn channels(&self) -> impl Iterator<Item = (&[u8], u64, u64)> {
        let bytes = &self.bytes;
        let mut at = self.channels_at;
        (0..self.channel_count).map(move |_| {
            // The layout was checked by `decode_checkpoint`.
            let len = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
            let name = &bytes[at + 2..at + 2 + len];
            let last_seq = u64_at(bytes, at + 2 + len);
            let head_offset = u64_at(bytes, at + 10 + len);
            at += 18 + len;
            (name, last_seq, head_offset)
        })
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE_NAME)
}

pub(crate) fn encode_checkpoint(state: &CheckpointState) -> Vec<u8> {
    let mut bytes = vec![0u8; V2_HEADER_BYTES];
    for prefix in &state.prefixes {
        bytes.extend_from_slice(&(prefix.len() as u16).to_le_bytes());
        bytes.extend_from_slice(prefix);
    }
    for (base, summary) in &state.segments {
        bytes.extend_from_slice(&base.to_le_bytes());
        let mut flags = 0;
        if summary.timestamp_max_ms.is_some() {
            flags |= SUMMARY_HAS_TIMESTAMP;
        }
        if summary.has_unmatched {
            flags |= SUMMARY_HAS_UNMATCHED;
        }
        bytes.push(flags);
        bytes.extend_from_slice(&summary.timestamp_max_ms.unwrap_or(0).to_le_bytes());
        for index in 0..state.prefixes.len() {
            let rule = summary.rule_timestamp_max_ms.get(index).copied().flatten();
            bytes.push(u8::from(rule.is_some()));
            bytes.extend_from_slice(&rule.unwrap_or(0).to_le_bytes());
        }
    }
    bytes.reserve(state.channels.len() * 50);
    let mut count = 0u64;
    for (name, last_seq, head_offset) in state.channels.iter() {
        if last_seq == 0 {
            continue;
        }
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&last_seq.to_le_bytes());
        bytes.extend_from_slice(&head_offset.to_le_bytes());
        count += 1;
    }
    for (key, original) in &state.idempotency {
        bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&original.seq.to_le_bytes());
        bytes.extend_from_slice(&original.offset.to_le_bytes());
        bytes.extend_from_slice(&original.timestamp_ms.to_le_bytes());
    }
    bytes[56..64].copy_from_slice(&(state.idempotency.len() as u64).to_le_bytes());
    bytes[0..4].copy_from_slice(&CHECKPOINT_MAGIC);
    bytes[4] = CHECKPOINT_VERSION;
    bytes[16..24].copy_from_slice(&state.log_start.to_le_bytes());
    bytes[24..32].copy_from_slice(&state.position.to_le_bytes());
    bytes[32..40].copy_from_slice(&state.last_batch.to_le_bytes());
    bytes[40..48].copy_from_slice(&count.to_le_bytes());
    bytes[48..52].copy_from_slice(&(state.segments.len() as u32).to_le_bytes());
    bytes[52..56].copy_from_slice(&(state.prefixes.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Writes the checkpoint atomically and durably, keeping the one it
/// replaces as `channels.checkpoint.previous`.
pub(crate) fn write_checkpoint(dir: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temporary = dir.join(CHECKPOINT_TEMPORARY_NAME);
    let mut file =
        File::create(&temporary).map_err(|e| StorageError::io("create", &temporary, e))?;
    file.write_all(bytes)
        .map_err(|e| StorageError::io("write to", &temporary, e))?;
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", &temporary, e))?;
    promote_temporary(dir)
}

/// Renames the (complete, synced) temporary checkpoint into place, keeping
/// the one it replaces as `channels.checkpoint.previous`, and syncs the
/// directory.
pub(crate) fn promote_temporary(dir: &Path) -> Result<(), StorageError> {
    let temporary = dir.join(CHECKPOINT_TEMPORARY_NAME);
    let path = checkpoint_path(dir);
    let previous = dir.join(CHECKPOINT_PREVIOUS_NAME);
    match fs::rename(&path, &previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("rename", &path, e)),
    }
    fs::rename(&temporary, &path).map_err(|e| StorageError::io("rename into place", &path, e))?;
    sync_directory(dir)
}

pub(crate) fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// The checkpoints found in a partition directory.
pub(crate) struct LoadedCheckpoints {
    /// The valid checkpoint with the highest position.
    pub newest: Option<Checkpoint>,
    /// `newest` is the temporary file: a crash came between its fsync and
    /// its rename.
    pub newest_is_temporary: bool,
    /// Checkpoint files that exist but do not decode: (file, what is wrong).
    pub damaged: Vec<(PathBuf, String)>,
}

/// How [`read_checkpoints`] opens sealed checkpoints.
#[derive(Clone, Copy)]
pub(crate) struct Unsealing<'a> {
    pub keys: Option<&'a KeyRing>,
    pub partition_id: u32,
    /// Without keys: a sealed checkpoint is an error (`true`, an open) or is
    /// loaded with its plaintext header only (`false`, `log verify`).
    pub required: bool,
}

/// Reads every checkpoint file of a partition directory (the current one,
/// the previous one, and a complete temporary one left by a crash between
/// its fsync and its rename) and picks the valid one with the highest
/// position. A sealed one that fails authentication or whose key id is
/// unknown is an error (a temporary one is skipped: it may be torn).
pub(crate) fn read_checkpoints(
    dir: &Path,
    unsealing: Unsealing<'_>,
) -> Result<LoadedCheckpoints, StorageError> {
    let mut loaded = LoadedCheckpoints {
        newest: None,
        newest_is_temporary: false,
        damaged: Vec::new(),
    };
    let mut newest_path = PathBuf::new();
    for name in [
        CHECKPOINT_TEMPORARY_NAME,
        CHECKPOINT_FILE_NAME,
        CHECKPOINT_PREVIOUS_NAME,
    ] {
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io("read", &path, e)),
        };
        let decoded = if bytes.starts_with(&SEALED_CHECKPOINT_MAGIC) {
            open_sealed(bytes, unsealing.keys, unsealing.partition_id)
        } else {
            decode_checkpoint(bytes)
        };
        match decoded {
            Ok(checkpoint) => {
                if loaded
                    .newest
                    .as_ref()
                    .is_none_or(|newest| checkpoint.position > newest.position)
                {
                    loaded.newest = Some(checkpoint);
                    loaded.newest_is_temporary = name == CHECKPOINT_TEMPORARY_NAME;
                    newest_path = path;
                }
            }
            // A temporary file that does not decode was never renamed into
            // place: an interrupted write, not damage.
            Err(_) if name == CHECKPOINT_TEMPORARY_NAME => {}
            Err((position, detail)) => loaded
                .damaged
                .push((path, format!("{detail} at byte {position}"))),
        }
    }
    let unopened = loaded.newest.as_ref().and_then(|c| c.unopened);
    if let Some(failure) = unopened.filter(|_| unsealing.required) {
        return Err(key_error(
            failure,
            unsealing.keys,
            unsealing.partition_id,
            &newest_path,
            0,
        ));
    }
    Ok(loaded)
}

/// Opens (or, without keys and if allowed, only reads the header of) a
/// sealed checkpoint.
fn open_sealed(
    bytes: Vec<u8>,
    keys: Option<&KeyRing>,
    partition_id: u32,
) -> Result<Checkpoint, (u64, &'static str)> {
    let header = match SealedCheckpointHeader::parse(&bytes) {
        Ok(header) => header,
        Err(CheckpointOpenFailure::Damaged(at, detail)) => return Err((at, detail)),
        Err(CheckpointOpenFailure::Key(_)) => unreachable!("the header needs no key"),
    };
    let opened = match keys {
        None => Err(OpenFailure::UnknownKey(header.key_id)),
        Some(keys) => match keys.open_checkpoint(partition_id, &bytes) {
            Ok(plain) => Ok(plain),
            Err(CheckpointOpenFailure::Key(failure)) => Err(failure),
            Err(CheckpointOpenFailure::Damaged(at, detail)) => return Err((at, detail)),
        },
    };
    let plain = match opened {
        Ok(plain) => plain,
        Err(failure) => {
            return Ok(Checkpoint {
                version: VERSION_1,
                log_start: header.log_start,
                // For picking the newest file; a version 1 checkpoint is never
                // the start of a fast recovery.
                position: header.position,
                last_batch: NO_OFFSET,
                prefixes: Vec::new(),
                segments: Vec::new(),
                channel_count: 0,
                idempotency: Vec::new(),
                bytes: Vec::new(),
                channels_at: 0,
                unopened: Some(failure),
            });
        }
    };
    // Authenticated: the plain checkpoint is what the writer made. Its
    // header must agree with the envelope's plaintext copy.
    let checkpoint = decode_checkpoint(plain)?;
    if (checkpoint.log_start, checkpoint.position) != (header.log_start, header.position) {
        return Err((16, "sealed checkpoint's header does not match its contents"));
    }
    Ok(checkpoint)
}

fn decode_checkpoint(bytes: Vec<u8>) -> Result<Checkpoint, (u64, &'static str)> {
    if bytes.len() < V1_HEADER_BYTES || bytes[0..4] != CHECKPOINT_MAGIC {
        return Err((0, "bad magic or short header"));
    }
    let version = bytes[4];
    if version != VERSION_1 && version != VERSION_2 && version != CHECKPOINT_VERSION {
        return Err((4, "unsupported version"));
    }
    if bytes[5..8] != [0, 0, 0] || bytes[12..16] != [0, 0, 0, 0] {
        return Err((5, "reserved bytes are not zero"));
    }
    let stored = u32_at(&bytes, 8);
    if crc32c::crc32c(&bytes[12..]) != stored {
        return Err((8, "checksum mismatch"));
    }
    let log_start = u64_at(&bytes, 16);
    let short = |at: usize| (at as u64, "entry cut short");
    let (position, last_batch, channel_count, mut at) = if version == VERSION_1 {
        (log_start, NO_OFFSET, u64_at(&bytes, 24), V1_HEADER_BYTES)
    } else {
        if bytes.len() < V2_HEADER_BYTES {
            return Err((0, "short header"));
        }
        if version == VERSION_2 && bytes[56..64] != [0; 8] {
            return Err((56, "reserved bytes are not zero"));
        }
        (
            u64_at(&bytes, 24),
            u64_at(&bytes, 32),
            u64_at(&bytes, 40),
            V2_HEADER_BYTES,
        )
    };
    if position < log_start {
        return Err((24, "position before the log start"));
    }
    let mut prefixes = Vec::new();
    let mut segments = Vec::new();
    if version >= VERSION_2 {
        let segment_count = u32_at(&bytes, 48);
        let prefix_count = u32_at(&bytes, 52) as usize;
        for _ in 0..prefix_count {
            let len = bytes.get(at..at + 2).ok_or(short(at))?;
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            let prefix = bytes.get(at + 2..at + 2 + len).ok_or(short(at))?;
            prefixes.push(prefix.to_vec());
            at += 2 + len;
        }
        for _ in 0..segment_count {
            let entry = bytes.get(at..at + 17 + 9 * prefix_count).ok_or(short(at))?;
            let flags = entry[8];
            if flags & !(SUMMARY_HAS_TIMESTAMP | SUMMARY_HAS_UNMATCHED) != 0 {
                return Err((at as u64 + 8, "unknown segment summary flags"));
            }
            let mut summary = SegmentSummary::new(prefix_count);
            if flags & SUMMARY_HAS_TIMESTAMP != 0 {
                summary.timestamp_max_ms = Some(u64_at(entry, 9));
            }
            summary.has_unmatched = flags & SUMMARY_HAS_UNMATCHED != 0;
            for (index, slot) in summary.rule_timestamp_max_ms.iter_mut().enumerate() {
                let rule = &entry[17 + 9 * index..17 + 9 * index + 9];
                if rule[0] > 1 {
                    return Err((at as u64, "bad rule summary flag"));
                }
                if rule[0] == 1 {
                    *slot = Some(u64_at(rule, 1));
                }
            }
            segments.push((u64_at(entry, 0), summary));
            at += entry.len();
        }
    }
    let channels_at = at;
    for _ in 0..channel_count {
        let len = bytes.get(at..at + 2).ok_or(short(at))?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        bytes.get(at + 2..at + 2 + len + 16).ok_or(short(at))?;
        at += 2 + len + 16;
    }
    let mut idempotency = Vec::new();
    if version >= CHECKPOINT_VERSION {
        for _ in 0..u64_at(&bytes, 56) {
            let len = bytes.get(at..at + 2).ok_or(short(at))?;
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            let entry = bytes.get(at + 2..at + 2 + len + 24).ok_or(short(at))?;
            let original = Original {
                seq: u64_at(entry, len),
                offset: u64_at(entry, len + 8),
                timestamp_ms: u64_at(entry, len + 16),
            };
            idempotency.push((Arc::from(&entry[..len]), original));
            at += 2 + len + 24;
        }
    }
    if at != bytes.len() {
        return Err((at as u64, "trailing bytes after the last entry"));
    }
    Ok(Checkpoint {
        version,
        log_start,
        position,
        last_batch,
        prefixes,
        segments,
        channel_count,
        idempotency,
        bytes,
        channels_at,
        unopened: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No keys: as for a partition that never sealed anything.
    const PLAIN: Unsealing<'static> = Unsealing {
        keys: None,
        partition_id: 0,
        required: true,
    };
    use crate::channel_table::ChannelTable;

    #[test]
    fn round_trip_and_damage() {
        let mut table = ChannelTable::new();
        for (name, seq, head) in [(&b"a"[..], 3, 100), (b"general", 9, 4000), (b"idle", 0, 0)] {
            let id = table.find_or_insert(name);
            table.get_mut(id).last_seq = seq;
            table.get_mut(id).head_offset = head;
        }
        let mut summary = SegmentSummary::new(2);
        summary.add(Some(1), 77);
        summary.add(None, 5);
        let state = CheckpointState {
            log_start: 8192,
            position: 9000,
            last_batch: 8192,
            prefixes: vec![b"dm/".to_vec(), b"".to_vec()],
            segments: vec![(8192, summary)],
            channels: table.snapshot(),
            sealing: None,
            idempotency: vec![(
                crate::idempotency::key(b"general", b"alice", b"msg-1"),
                Original {
                    seq: 9,
                    offset: 8500,
                    timestamp_ms: 77,
                },
            )],
        };
        let bytes = encode_checkpoint(&state);
        let decoded = decode_checkpoint(bytes.clone()).unwrap();
        assert_eq!(
            (decoded.log_start, decoded.position, decoded.last_batch),
            (8192, 9000, 8192)
        );
        assert_eq!(decoded.prefixes, state.prefixes);
        let (base, summary) = &decoded.segments[0];
        assert_eq!(*base, 8192);
        assert_eq!(summary.timestamp_max_ms, Some(77));
        assert_eq!(summary.rule_timestamp_max_ms, vec![None, Some(77)]);
        assert!(summary.has_unmatched);
        let channels: Vec<_> = decoded.channels().collect();
        assert_eq!(
            channels,
            vec![(&b"a"[..], 3, 100), (&b"general"[..], 9, 4000)]
        );
        assert_eq!(decoded.idempotency, state.idempotency);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(decode_checkpoint(damaged).is_err(), "flip at {i}");
        }
    }

    /// The version 1 file that earlier code wrote (retention only) still
    /// loads, as a checkpoint at its log start.
    #[test]
    fn version_1_still_loads() {
        let mut bytes = vec![0u8; V1_HEADER_BYTES];
        bytes[0..4].copy_from_slice(b"STRC");
        bytes[4] = 1;
        bytes[16..24].copy_from_slice(&4096u64.to_le_bytes());
        bytes[24..32].copy_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(b"dm");
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&300u64.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        let decoded = decode_checkpoint(bytes).unwrap();
        assert_eq!(
            (decoded.version, decoded.log_start, decoded.position),
            (1, 4096, 4096)
        );
        assert!(decoded.segments.is_empty());
        assert_eq!(
            decoded.channels().collect::<Vec<_>>(),
            vec![(&b"dm"[..], 5, 300)]
        );
    }

    /// The measurement quoted in docs/STORAGE-FORMAT.md (run with
    /// `cargo test --release -p starling-storage checkpoint_cost -- --ignored
    /// --nocapture`): one million channels with 32-byte names.
    #[test]
    #[ignore]
    fn checkpoint_cost_one_million_channels() {
        let mut table = ChannelTable::new();
        for i in 0..1_000_000u64 {
            let id = table.find_or_insert(format!("dm/{i:029}").as_bytes());
            table.get_mut(id).last_seq = i + 1;
            table.get_mut(id).head_offset = i * 100;
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let snapshot = table.snapshot();
            let snapshot_time = started.elapsed();
            let state = CheckpointState {
                log_start: 0,
                position: 100_000_000,
                last_batch: 99_999_000,
                prefixes: Vec::new(),
                segments: Vec::new(),
                channels: snapshot,
                idempotency: Vec::new(),
                sealing: None,
            };
            let started = std::time::Instant::now();
            let bytes = encode_checkpoint(&state);
            let encode_time = started.elapsed();
            let started = std::time::Instant::now();
            write_checkpoint(dir.path(), &bytes).unwrap();
            let write_time = started.elapsed();
            let started = std::time::Instant::now();
            let loaded = read_checkpoints(dir.path(), PLAIN).unwrap().newest.unwrap();
            let read_time = started.elapsed();
            let mut reloaded = ChannelTable::new();
            crate::scan::load_channels(&mut reloaded, &loaded, u64::MAX);
            assert_eq!(reloaded.len(), 1_000_000);
            let load_time = started.elapsed();
            eprintln!(
                "1M channels, {} bytes: snapshot (owner thread) {snapshot_time:?}, encode {encode_time:?}, write+fsync+rename {write_time:?}, read+check {read_time:?}, read+check+load {load_time:?}",
                bytes.len()
            );
        }
    }
}
