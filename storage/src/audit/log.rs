//! The writer: [`AuditLog`], with group commit, checkpoints, segment rolls
//! and recovery at open.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::codec::{
    encode_entry, record_hash, ChainHash, Checkpoint, SegmentHeader, CHECKPOINT_BYTES,
    GENESIS_HASH, SEGMENT_HEADER_BYTES,
};
use super::entry::{AuditEntry, AuditSeq};
use super::key::AuditSigner;
use super::read::{
    list_segments, read_head, scan_segment, segment_file_name, ChainState, HEAD_FILE_NAME,
};
use super::AuditError;
use crate::data_dir::lock_directory;

/// Default of [`AuditConfig::checkpoint_interval_entries`]: a signature every
/// 1000 entries costs one more 136-byte record and a small `HEAD` rewrite,
/// while bounding how many entries are not yet covered by a signature.
pub const CHECKPOINT_INTERVAL_ENTRIES_DEFAULT: u64 = 1000;
/// The largest [`AuditConfig::checkpoint_interval_entries`] accepted.
pub const CHECKPOINT_INTERVAL_ENTRIES_MAX: u64 = 1_000_000;
/// Default of [`AuditConfig::segment_bytes_max`].
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// The smallest [`AuditConfig::segment_bytes_max`] accepted.
pub const SEGMENT_BYTES_MAX_MIN: u64 = 4096;
/// `HEAD` is written here, synced, then renamed over `HEAD`.
const HEAD_TEMPORARY_NAME: &str = "HEAD.tmp";
/// A new segment is written here, synced, then renamed to its name.
const SEGMENT_TEMPORARY_NAME: &str = "segment.tmp";

/// How an [`AuditLog`] writes.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A signed checkpoint follows every this many entries (and one is
    /// written on close, and at open after a crash).
    pub checkpoint_interval_entries: u64,
    /// When a segment reaches this size, the next append seals it with a
    /// checkpoint and starts a new one.
    pub segment_bytes_max: u64,
    /// Milliseconds since the Unix epoch; tests fix it. The log never lets
    /// time go backwards (it keeps the newest timestamp written).
    pub clock: fn() -> u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval_entries: CHECKPOINT_INTERVAL_ENTRIES_DEFAULT,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            clock: system_clock_ms,
        }
    }
}

/// The system clock in milliseconds since the Unix epoch.
pub fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// What recovery did at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecovery {
    /// A torn tail removed: file, byte offset of the cut, bytes removed. It
    /// held no acknowledged entry (`append` returns after `fdatasync`).
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Entries found after the last checkpoint (a crash before the next
    /// checkpoint); open signs them with a new checkpoint at once.
    pub unsigned_entries_signed: u64,
    /// `HEAD` was missing or older than the last checkpoint (a crash
    /// between writing a checkpoint and `HEAD`) and was rewritten.
    pub head_rewritten: bool,
}

/// An append-only, hash-chained audit log with signed checkpoints, in its
/// own directory. Owned by one thread; every append is durable
/// (`fdatasync`) before it returns.
///
/// INVARIANT: `segment_bytes` is the end of the last valid record in the
/// active segment, and `chain` describes that record.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    _lock: File,
    signer: AuditSigner,
    config: AuditConfig,
    segment: File,
    segment_path: PathBuf,
    segment_bytes: u64,
    chain: ChainState,
    last_signed_seq: u64,
    failed: bool,
    closed: bool,
    buffer: Vec<u8>,
}

impl AuditLog {
    /// Opens (or creates) the audit log in `dir`, locking it.
    ///
    /// Recovery reads the last segment: a torn tail (bytes after the last
    /// valid record with no valid record after them) is truncated; any other
    /// damage, or a `HEAD` naming a checkpoint the log does not end with or
    /// after, is an error and nothing is modified. Entries after the last
    /// checkpoint are signed at once.
    pub fn open(
        dir: &Path,
        signer: AuditSigner,
        config: AuditConfig,
    ) -> Result<(AuditLog, AuditRecovery), AuditError> {
        check_config(&config)?;
        fs::create_dir_all(dir).map_err(|error| AuditError::io("create directory", dir, error))?;
        let lock = lock_directory(dir)?;
        for name in [HEAD_TEMPORARY_NAME, SEGMENT_TEMPORARY_NAME] {
            let _ = fs::remove_file(dir.join(name));
        }
        let mut recovery = AuditRecovery::default();
        let (segment_path, segment_bytes, chain, last_checkpoint) = match list_segments(dir)?.pop()
        {
            Some((first_seq, path)) => {
                let bytes =
                    fs::read(&path).map_err(|error| AuditError::io("read", &path, error))?;
                let mut state = None;
                let scan =
                    scan_segment(&path, first_seq, &bytes, &mut state, true, &mut |_| Ok(()))?;
                let (Some(header), Some(state)) = (scan.header, state) else {
                    return Err(AuditError::Tampered {
                            path,
                            position: 0,
                            detail: "the last segment's header is damaged (segments are created whole, by rename)".into(),
                        });
                };
                recovery.truncated = scan
                    .torn
                    .map(|(position, torn_bytes)| (path.clone(), position, torn_bytes));
                // Without a checkpoint of its own, the newest checkpoint
                // is the one that sealed the segment before: its hash is
                // in the header.
                let last_checkpoint = match scan.last_checkpoint {
                    Some(bytes) => Some(LastCheckpoint::from_bytes(&bytes)),
                    None if first_seq > 1 => Some(LastCheckpoint {
                        seq: first_seq - 1,
                        hash: header.previous_hash,
                        bytes: None,
                    }),
                    None => None,
                };
                (path, scan.valid_bytes, state, last_checkpoint)
            }
            None => (
                create_segment(dir, 1, &GENESIS_HASH)?,
                SEGMENT_HEADER_BYTES as u64,
                ChainState::genesis(),
                None,
            ),
        };
        let head = read_head(dir)?;
        check_head(dir, head.as_ref(), &chain, last_checkpoint.as_ref())?;
        // Only now, when nothing else is wrong, is the torn tail removed.
        if let Some((path, position, torn_bytes)) = &recovery.truncated {
            log::warn!(
                "audit log: truncating a torn tail of {torn_bytes} bytes at byte {position} of {} (a write interrupted by a crash; never acknowledged)",
                path.display()
            );
            truncate_file(path, *position)?;
        }
        let segment = OpenOptions::new()
            .write(true)
            .open(&segment_path)
            .map_err(|error| AuditError::io("open", &segment_path, error))?;
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            _lock: lock,
            signer,
            config,
            segment,
            segment_path,
            segment_bytes,
            last_signed_seq: last_checkpoint.as_ref().map_or(0, |c| c.seq),
            chain,
            failed: false,
            closed: false,
            buffer: Vec::new(),
        };
        if let Some(LastCheckpoint {
            seq,
            bytes: Some(bytes),
            ..
        }) = &last_checkpoint
        {
            if head.is_none_or(|(head, _)| head.seq < *seq) {
                log::warn!(
                    "audit log: rewriting {} from the checkpoint at seq {seq} (missing or older: a crash before it was written)",
                    dir.join(HEAD_FILE_NAME).display()
                );
                log.write_head(bytes)?;
                recovery.head_rewritten = true;
            }
        }
        recovery.unsigned_entries_signed = log.chain.entries_since_checkpoint;
        log.checkpoint()?;
        Ok((log, recovery))
    }

    /// Appends one entry and returns its seq once it is durable.
    pub fn append(&mut self, entry: &AuditEntry) -> Result<AuditSeq, AuditError> {
        let seqs = self.append_batch(std::slice::from_ref(entry))?;
        Ok(seqs[0])
    }

    /// Appends entries with one write and one `fdatasync` (group commit) and
    /// returns their seqs, consecutive, once all are durable. Checkpoints
    /// due inside the batch are written in the same write. If any entry is
    /// over a limit, nothing is written.
    pub fn append_batch(&mut self, entries: &[AuditEntry]) -> Result<Vec<AuditSeq>, AuditError> {
        self.check_writable()?;
        for entry in entries {
            entry.check_limits()?;
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if self.segment_bytes >= self.config.segment_bytes_max {
            self.roll()?;
        }
        let mut chain = self.chain.clone();
        self.buffer.clear();
        let mut seqs = Vec::with_capacity(entries.len());
        let mut checkpoint_at = None;
        for entry in entries {
            let timestamp_ms = self.now_ms(&chain);
            let start = self.buffer.len();
            encode_entry(
                chain.next_seq,
                timestamp_ms,
                &chain.last_hash,
                entry,
                &mut self.buffer,
            );
            chain.last_hash = record_hash(&self.buffer[start..]);
            chain.last_timestamp_ms = timestamp_ms;
            seqs.push(AuditSeq(chain.next_seq));
            chain.next_seq += 1;
            chain.entries_since_checkpoint += 1;
            if chain.entries_since_checkpoint >= self.config.checkpoint_interval_entries {
                checkpoint_at = Some(self.encode_checkpoint(&mut chain));
            }
        }
        self.write_buffer(chain, checkpoint_at)?;
        Ok(seqs)
    }

    /// Writes a signed checkpoint now if entries follow the last one.
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        self.check_writable()?;
        if self.chain.entries_since_checkpoint == 0 {
            return Ok(());
        }
        let mut chain = self.chain.clone();
        self.buffer.clear();
        let at = self.encode_checkpoint(&mut chain);
        self.write_buffer(chain, Some(at))
    }

    /// Signs the entries since the last checkpoint and closes the log.
    /// (Dropping it does the same, logging an error instead of returning it.)
    pub fn close(mut self) -> Result<(), AuditError> {
        let result = self.checkpoint();
        self.closed = true;
        result
    }

    /// The seq of the last entry (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.chain.next_seq - 1
    }

    /// The last entry a checkpoint covers (0 if none).
    pub fn last_signed_seq(&self) -> u64 {
        self.last_signed_seq
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_writable(&self) -> Result<(), AuditError> {
        if self.failed || self.closed {
            return Err(AuditError::Failed {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn now_ms(&self, chain: &ChainState) -> u64 {
        (self.config.clock)().max(chain.last_timestamp_ms)
    }

    /// Adds a signed checkpoint to the buffer; returns where it starts.
    fn encode_checkpoint(&mut self, chain: &mut ChainState) -> usize {
        let timestamp_ms = self.now_ms(chain);
        let mut checkpoint = Checkpoint {
            seq: chain.next_seq - 1,
            timestamp_ms,
            previous_hash: chain.last_hash,
            key_id: self.signer.key_id(),
            signature: [0; 64],
        };
        self.signer.sign(&mut checkpoint);
        let start = self.buffer.len();
        checkpoint.encode(&mut self.buffer);
        chain.last_hash = record_hash(&self.buffer[start..]);
        chain.last_timestamp_ms = timestamp_ms;
        chain.entries_since_checkpoint = 0;
        start
    }

    /// Writes and syncs the buffer at the end of the segment, then `HEAD` if
    /// the buffer holds a checkpoint (the last one, at `checkpoint_at`).
    fn write_buffer(
        &mut self,
        chain: ChainState,
        checkpoint_at: Option<usize>,
    ) -> Result<(), AuditError> {
        let written = self
            .segment
            .write_all_at(&self.buffer, self.segment_bytes)
            .and_then(|()| self.segment.sync_data());
        if let Err(error) = written {
            self.failed = true;
            return Err(AuditError::io(
                "write and fdatasync",
                &self.segment_path,
                error,
            ));
        }
        self.segment_bytes += self.buffer.len() as u64;
        self.chain = chain;
        if let Some(at) = checkpoint_at {
            let checkpoint: [u8; CHECKPOINT_BYTES] = self.buffer[at..at + CHECKPOINT_BYTES]
                .try_into()
                .expect("a checkpoint's bytes");
            self.last_signed_seq = LastCheckpoint::from_bytes(&checkpoint).seq;
            self.write_head(&checkpoint)?;
        }
        Ok(())
    }

    /// Replaces `HEAD` with a copy of a checkpoint (write, sync, rename,
    /// directory sync).
    fn write_head(&mut self, checkpoint: &[u8; CHECKPOINT_BYTES]) -> Result<(), AuditError> {
        let temporary = self.dir.join(HEAD_TEMPORARY_NAME);
        let result = write_synced(&temporary, checkpoint)
            .and_then(|()| rename_synced(&self.dir, &temporary, HEAD_FILE_NAME));
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Seals the active segment with a checkpoint and starts the next one.
    fn roll(&mut self) -> Result<(), AuditError> {
        self.checkpoint()?;
        let created = create_segment(&self.dir, self.chain.next_seq, &self.chain.last_hash)
            .and_then(|path| {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|error| AuditError::io("open", &path, error))?;
                Ok((path, file))
            });
        match created {
            Ok((path, file)) => {
                self.segment = file;
                self.segment_path = path;
                self.segment_bytes = SEGMENT_HEADER_BYTES as u64;
                Ok(())
            }
            Err(error) => {
                self.failed = true;
                Err(error)
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if self.closed || self.failed {
            return;
        }
        if let Err(error) = self.checkpoint() {
            log::error!("audit log: the checkpoint on close failed: {error}");
        }
    }
}

/// The newest checkpoint found at open.
struct LastCheckpoint {
    seq: u64,
    hash: ChainHash,
    /// Its bytes, when it is in the last segment (to rewrite `HEAD`).
    bytes: Option<[u8; CHECKPOINT_BYTES]>,
}

impl LastCheckpoint {
    fn from_bytes(bytes: &[u8; CHECKPOINT_BYTES]) -> LastCheckpoint {
        LastCheckpoint {
            seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            hash: record_hash(bytes),
            bytes: Some(*bytes),
        }
    }
}

fn check_config(config: &AuditConfig) -> Result<(), AuditError> {
    if !(1..=CHECKPOINT_INTERVAL_ENTRIES_MAX).contains(&config.checkpoint_interval_entries) {
        return Err(AuditError::InvalidConfig {
            detail: format!(
                "checkpoint_interval_entries is {}; it must be 1 to {CHECKPOINT_INTERVAL_ENTRIES_MAX}",
                config.checkpoint_interval_entries
            ),
        });
    }
    if config.segment_bytes_max < SEGMENT_BYTES_MAX_MIN {
        return Err(AuditError::InvalidConfig {
            detail: format!(
                "segment_bytes_max is {}; it must be at least {SEGMENT_BYTES_MAX_MIN}",
                config.segment_bytes_max
            ),
        });
    }
    Ok(())
}

/// `HEAD` may lag the log (a crash between a checkpoint and `HEAD`), never
/// lead it: a `HEAD` newer than the log's newest checkpoint, or naming a
/// checkpoint the log has differently, means the log lost its end.
fn check_head(
    dir: &Path,
    head: Option<&(Checkpoint, ChainHash)>,
    chain: &ChainState,
    last_checkpoint: Option<&LastCheckpoint>,
) -> Result<(), AuditError> {
    let Some((head, head_hash)) = head else {
        return Ok(());
    };
    let consistent = match last_checkpoint {
        Some(last) if last.seq == head.seq => last.hash == *head_hash,
        Some(last) => head.seq < last.seq,
        None => false,
    };
    if consistent {
        return Ok(());
    }
    Err(AuditError::Truncated {
        detail: format!(
            "{} holds a signed checkpoint covering entries up to seq {}, which this log (last entry seq {}, newest checkpoint {}) does not have; nothing was changed: run `starling audit verify` and restore the audit directory from a backup",
            dir.join(HEAD_FILE_NAME).display(),
            head.seq,
            chain.next_seq - 1,
            last_checkpoint.map_or("none".to_string(), |last| format!("at seq {}", last.seq)),
        ),
    })
}

/// Creates a segment with only its header, whole or not at all (written to
/// a temporary file, synced, renamed, directory synced).
fn create_segment(
    dir: &Path,
    first_seq: u64,
    previous_hash: &ChainHash,
) -> Result<PathBuf, AuditError> {
    let header = SegmentHeader {
        first_seq,
        previous_hash: *previous_hash,
    }
    .encode();
    let temporary = dir.join(SEGMENT_TEMPORARY_NAME);
    write_synced(&temporary, &header)?;
    let name = segment_file_name(first_seq);
    rename_synced(dir, &temporary, &name)?;
    Ok(dir.join(name))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let mut file = File::create(path).map_err(|error| AuditError::io("create", path, error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| AuditError::io("write and sync", path, error))
}

fn rename_synced(dir: &Path, from: &Path, name: &str) -> Result<(), AuditError> {
    fs::rename(from, dir.join(name)).map_err(|error| AuditError::io("rename", from, error))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| AuditError::io("sync directory", dir, error))
}

fn truncate_file(path: &Path, length: u64) -> Result<(), AuditError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(length)?;
            file.sync_all()
        })
        .map_err(|error| AuditError::io("truncate", path, error))
}
