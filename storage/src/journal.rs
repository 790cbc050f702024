//! The shard journal: one fdatasync per loop turn for every partition a
//! broker shard owns.
//!
//! A turn's batches are written to their partitions' segment files (not
//! synced) and, as entries, to the shard's journal, which is the only file
//! synced on the acknowledgement path. A device flush costs the same for one
//! file as for sixteen, so a shard with many busy partitions pays one flush
//! per turn instead of one per partition. Partition files are synced in the
//! background when the journal moves to its other file ([`Journal::switch`]);
//! until then the journal holds every batch written since their last sync.
//!
//! # Files
//!
//! `<data dir>/journal/<shard as 3 digits>/{0,1}.journal`. One file is
//! active; a switch makes the other one active with the next generation,
//! after the partition data its old content covers has been synced. The
//! inactive file is zero-filled to `file_bytes` by the background thread
//! once the active one is half full (appending inside a file that already
//! has its blocks makes `fdatasync` commit no metadata). A new journal's
//! first file is a plain growing one: the other file is zero-filled at once
//! and the journal switches to it as soon as it is ready. All integers
//! little-endian.
//!
//! ```text
//! file header (padded with zeros to header_bytes, a multiple of 4096)
//!  0 magic "STRJ"   4 version=1   5 reserved [3]   8 crc32c(12..header_bytes) u32
//! 12 header_bytes u32   16 generation u64   24 run u32   28 partition_count u32
//! 32 partition_count × (partition_id u32, reserved u32, durable_end u64)
//!
//! entry (back to back after the header)
//!  0 crc32c(4..24) u32   4 partition_id u32   8 generation u64
//! 16 payload_bytes u32  20 reserved u32      24 payload: whole record batches
//!                                               of the partition, consecutive
//! ```
//!
//! `durable_end` is the partition's stream position up to which its segment
//! files were durable when the file became active: every batch after it is
//! in this file or the next. `run` counts engine starts; every batch written
//! in a run carries it (the batch header's `run` field), which lets recovery
//! tell a batch of the last run from a stale one beyond an earlier crash
//! point.
//!
//! # Recovery
//!
//! [`recover_journals`] reads every shard's journal: the file with the
//! highest valid generation and, when the other one has the generation just
//! before it, that one first. Entries are read until the first one that is
//! torn (bad CRC, wrong generation, a batch that does not decode). The first
//! replayed file's header gives each partition its durable end and run
//! ([`UnsyncedTail`]); the entries are applied with [`Partition::replay`]
//! after the partition has been opened.
//!
//! [`Partition::replay`]: crate::Partition::replay

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::sync_directory;
use crate::format::{decode_batch, BatchDecode};
use crate::sync_placement::SyncPlacement;
use crate::StorageError;

/// The directory under the data directory that holds the shard journals.
pub const JOURNAL_DIRECTORY: &str = "journal";
/// Default size of each of the two journal files: 4 MiB. A switch, and so a
/// background sync of the shard's partitions, happens once per this many
/// bytes written by the shard. Smaller files mean smaller partition syncs,
/// which stall the shard's own fdatasync less (docs/BENCHMARKS.md measured
/// p99 at 20,000/s: 32 MiB ~120 ms, 4 MiB ~35 ms, 1 MiB ~25 ms on this VM),
/// at some cost in peak throughput (more switches).
pub const JOURNAL_FILE_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
/// The smallest allowed journal file size.
pub const JOURNAL_FILE_BYTES_MINIMUM: u64 = 64 * 1024;
/// Entries up to this size are gathered and written together when the turn
/// ends ([`Journal::write`]): one write per turn instead of one per
/// partition, which at a steady rate (a few messages per turn, each of
/// another partition) saves most of the journal's system calls. A larger
/// one is written at once from the partition's buffer: copying it would
/// cost more than the call it saves.
const GATHERED_ENTRY_BYTES_MAX: usize = 64 * 1024;
/// Capacity of the gathering buffer kept between turns; a turn that needed
/// more gives its buffer back.
const GATHERED_CAPACITY_KEPT: usize = 1024 * 1024;

const HEADER_MAGIC: [u8; 4] = *b"STRJ";
const HEADER_VERSION: u8 = 1;
/// Headers are padded to a multiple of this, so entries start on a block.
const HEADER_ALIGN: usize = 4096;
const HEADER_FIXED_BYTES: usize = 32;
const HEADER_PARTITION_BYTES: usize = 16;
/// Bytes of an entry header.
pub const ENTRY_HEADER_BYTES: usize = 24;
/// Zeros are written in pieces of this size, with an `fdatasync` every
/// [`ZERO_SYNC_EVERY`] bytes, so that the write-back of a whole file never
/// queues in front of the shard's own `fdatasync` at once.
const ZERO_CHUNK_BYTES: usize = 1024 * 1024;
const ZERO_SYNC_EVERY: u64 = 4 * 1024 * 1024;
/// Partitions' write-back is started (not waited for) each time the journal
/// has taken this fraction of its file since the last time: the switch's
/// background sync then finds little left to write, so it does not queue a
/// file's worth of data in front of the shard's own `fdatasync` at once.
const TRICKLE_PARTS: u64 = 8;

/// Where recovery may find unsynced data of a partition: from stream
/// position `durable_end` on, the segment files may hold anything (a torn
/// write, a hole, a stale batch of an earlier run); valid data there is a
/// batch written in `run`. The journal holds every batch of that run after
/// `durable_end` that was ever acknowledged as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsyncedTail {
    /// Everything before this stream position is durable in the segments.
    pub durable_end: u64,
    /// The run whose batches may follow it.
    pub run: u32,
}

fn file_name(index: usize) -> String {
    format!("{index}.journal")
}

/// The journal directory of `shard`.
pub fn journal_path(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(JOURNAL_DIRECTORY).join(format!("{shard:03}"))
}

/// A parsed file header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    header_bytes: usize,
    generation: u64,
    run: u32,
    partitions: Vec<(u32, u64)>,
}

fn encode_header(generation: u64, run: u32, partitions: &[(u32, u64)]) -> Vec<u8> {
    let used = HEADER_FIXED_BYTES + partitions.len() * HEADER_PARTITION_BYTES;
    let header_bytes = used.div_ceil(HEADER_ALIGN) * HEADER_ALIGN;
    let mut bytes = vec![0u8; header_bytes];
    bytes[0..4].copy_from_slice(&HEADER_MAGIC);
    bytes[4] = HEADER_VERSION;
    bytes[12..16].copy_from_slice(&(header_bytes as u32).to_le_bytes());
    bytes[16..24].copy_from_slice(&generation.to_le_bytes());
    bytes[24..28].copy_from_slice(&run.to_le_bytes());
    bytes[28..32].copy_from_slice(&(partitions.len() as u32).to_le_bytes());
    for (i, (id, end)) in partitions.iter().enumerate() {
        let at = HEADER_FIXED_BYTES + i * HEADER_PARTITION_BYTES;
        bytes[at..at + 4].copy_from_slice(&id.to_le_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&end.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and checks the header of a journal file; `None` when it has none
/// (zeros, a torn header write, another format).
fn read_header(file: &File) -> std::io::Result<Option<Header>> {
    let mut first = vec![0u8; HEADER_ALIGN];
    let read = read_up_to(file, &mut first, 0)?;
    if read < HEADER_FIXED_BYTES || first[0..4] != HEADER_MAGIC || first[4] != HEADER_VERSION {
        return Ok(None);
    }
    let header_bytes = u32_at(&first, 12) as usize;
    let count = u32_at(&first, 28) as usize;
    if !header_bytes.is_multiple_of(HEADER_ALIGN)
        || header_bytes < HEADER_FIXED_BYTES + count * HEADER_PARTITION_BYTES
    {
        return Ok(None);
    }
    let mut bytes = first;
    if header_bytes > HEADER_ALIGN {
        bytes.resize(header_bytes, 0);
        if read_up_to(file, &mut bytes[HEADER_ALIGN..], HEADER_ALIGN as u64)?
            < header_bytes - HEADER_ALIGN
        {
            return Ok(None);
        }
    } else if read < header_bytes {
        return Ok(None);
    }
    if crc32c::crc32c(&bytes[12..header_bytes]) != u32_at(&bytes, 8) {
        return Ok(None);
    }
    let partitions = (0..count)
        .map(|i| {
            let at = HEADER_FIXED_BYTES + i * HEADER_PARTITION_BYTES;
            (u32_at(&bytes, at), u64_at(&bytes, at + 8))
        })
        .collect();
    Ok(Some(Header {
        header_bytes,
        generation: u64_at(&bytes, 16),
        run: u32_at(&bytes, 24),
        partitions,
    }))
}

/// Reads into `buffer` from `at` until it is full or the file ends; returns
/// the bytes read.
fn read_up_to(file: &File, buffer: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The header of an entry of `payload_bytes` bytes.
fn entry_header(partition: u32, generation: u64, payload_bytes: usize) -> [u8; ENTRY_HEADER_BYTES] {
    let payload_bytes = u32::try_from(payload_bytes).expect("a turn's batches are below 4 GiB");
    let mut header = [0u8; ENTRY_HEADER_BYTES];
    header[4..8].copy_from_slice(&partition.to_le_bytes());
    header[8..16].copy_from_slice(&generation.to_le_bytes());
    header[16..20].copy_from_slice(&payload_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&header[4..]);
    header[..4].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Writes `head` and then `body` at `at` of `file`: one `pwritev` for both
/// in the usual case, continued after a partial write or an interruption.
fn write_pair_at(file: &File, mut head: &[u8], mut body: &[u8], mut at: u64) -> io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let slices = [IoSlice::new(head), IoSlice::new(body)];
        let offset = libc::off_t::try_from(at)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and both
        // slices borrow memory that stays valid for the call; the descriptor
        // belongs to `file`, which outlives the call. pwritev reads the
        // buffers and writes nothing to this process's memory.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                2,
                offset,
            )
        };
        let Ok(mut written) = usize::try_from(written) else {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += written as u64;
        let from_head = written.min(head.len());
        head = &head[from_head..];
        written -= from_head;
        body = &body[written..];
    }
    Ok(())
}

/// Whether `payload` is a sequence of whole, valid batches.
fn payload_is_whole(payload: &[u8]) -> bool {
    let mut at = 0;
    while at < payload.len() {
        match decode_batch(&payload[at..]) {
            Ok(BatchDecode::Complete(batch)) => at += batch.bytes.len(),
            _ => return false,
        }
    }
    !payload.is_empty()
}

/// The entries of one journal file, in order, up to the first torn one.
fn read_entries(
    file: &File,
    header: &Header,
    mut entry: impl FnMut(u32, Vec<u8>),
) -> std::io::Result<()> {
    let mut at = header.header_bytes as u64;
    let mut head = [0u8; ENTRY_HEADER_BYTES];
    let file_len = file.metadata()?.len();
    loop {
        if read_up_to(file, &mut head, at)? < ENTRY_HEADER_BYTES {
            return Ok(());
        }
        if crc32c::crc32c(&head[4..]) != u32_at(&head, 0) || u64_at(&head, 8) != header.generation {
            return Ok(());
        }
        let partition = u32_at(&head, 4);
        let start = at + ENTRY_HEADER_BYTES as u64;
        let length = u64::from(u32_at(&head, 16));
        // A length past the file's end is a torn entry: nothing is
        // allocated for it (up to 4 GiB).
        if start + length > file_len {
            return Ok(());
        }
        let mut payload = vec![0u8; length as usize];
        if read_up_to(file, &mut payload, start)? < payload.len() || !payload_is_whole(&payload) {
            return Ok(());
        }
        at = start + payload.len() as u64;
        entry(partition, payload);
    }
}

/// What the journals of an earlier run hold for one partition.
#[derive(Debug, Default)]
pub struct PartitionJournal {
    /// Where the partition's unsynced data may start (`None` when no journal
    /// header names the partition).
    pub tail: Option<UnsyncedTail>,
    /// Entry payloads (whole batches) in the order they were written.
    pub entries: Vec<Vec<u8>>,
}

/// Everything [`recover_journals`] found.
#[derive(Debug, Default)]
pub struct JournalRecovery {
    /// The highest run any journal header names (0: no journal).
    pub run: u32,
    /// The highest generation any journal header names.
    pub generation: u64,
    /// Per partition id.
    pub partitions: HashMap<u32, PartitionJournal>,
    /// The shard journal directories found.
    pub directories: Vec<PathBuf>,
}

impl JournalRecovery {
    /// Bytes of entry payloads held.
    pub fn entry_bytes(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.entries.iter())
            .map(Vec::len)
            .sum()
    }
}

/// An entry payload with its (run, generation, order in file), for sorting.
type TaggedEntry = ((u32, u64, usize), Vec<u8>);

/// Reads the journals of every shard under `data_dir` (see the module
/// documentation). Read-only.
pub fn recover_journals(data_dir: &Path) -> Result<JournalRecovery, StorageError> {
    let root = data_dir.join(JOURNAL_DIRECTORY);
    let mut recovery = JournalRecovery::default();
    let listing = match fs::read_dir(&root) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(recovery),
        Err(error) => return Err(StorageError::io("list", &root, error)),
    };
    let mut directories: Vec<PathBuf> = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| StorageError::io("list", &root, e))?;
        if entry.path().is_dir() {
            directories.push(entry.path());
        }
    }
    directories.sort();
    // Per partition: (run, generation) of the header that named it, and
    // entries tagged with (run, generation, order) for sorting.
    let mut named: HashMap<u32, (u32, u64, u64)> = HashMap::new();
    let mut entries: HashMap<u32, Vec<TaggedEntry>> = HashMap::new();
    for directory in &directories {
        let mut files = Vec::new();
        for index in 0..2 {
            let path = directory.join(file_name(index));
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(StorageError::io("open", &path, error)),
            };
            if let Some(header) =
                read_header(&file).map_err(|e| StorageError::io("read", &path, e))?
            {
                files.push((header, file, path));
            }
        }
        files.sort_by_key(|(header, _, _)| header.generation);
        if files.len() == 2 && files[0].0.generation + 1 != files[1].0.generation {
            files.remove(0);
        }
        for (rank, (header, file, path)) in files.iter().enumerate() {
            recovery.run = recovery.run.max(header.run);
            recovery.generation = recovery.generation.max(header.generation);
            if rank == 0 {
                for &(id, durable_end) in &header.partitions {
                    let newer = named.get(&id).is_none_or(|&(run, generation, _)| {
                        (header.run, header.generation) > (run, generation)
                    });
                    if newer {
                        named.insert(id, (header.run, header.generation, durable_end));
                    }
                }
            }
            let mut order = 0;
            read_entries(file, header, |partition, payload| {
                entries
                    .entry(partition)
                    .or_default()
                    .push(((header.run, header.generation, order), payload));
                order += 1;
            })
            .map_err(|e| StorageError::io("read", path, e))?;
        }
    }
    for (id, (run, _, durable_end)) in named {
        recovery.partitions.entry(id).or_default().tail = Some(UnsyncedTail { durable_end, run });
    }
    for (id, mut list) in entries {
        list.sort_by_key(|(key, _)| *key);
        recovery.partitions.entry(id).or_default().entries =
            list.into_iter().map(|(_, payload)| payload).collect();
    }
    recovery.directories = directories;
    Ok(recovery)
}

/// Reads the unsynced-tail information of every partition from the
/// journals under `data_dir`, for offline tools (`verify`, `inspect`).
pub fn unsynced_tails(data_dir: &Path) -> Result<HashMap<u32, UnsyncedTail>, StorageError> {
    Ok(recover_journals(data_dir)?
        .partitions
        .into_iter()
        .filter_map(|(id, journal)| journal.tail.map(|tail| (id, tail)))
        .collect())
}

/// A partition's active segment and directory, to be synced in the
/// background when the journal switches files.
#[derive(Debug)]
pub struct SyncTarget {
    /// A duplicate descriptor of the active segment file.
    pub file: File,
    /// The segment's path, for error messages.
    pub file_path: PathBuf,
    /// The partition directory (a segment file may have been created).
    pub directory: PathBuf,
}

/// How a [`Journal::switch`] orders the old file before the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchSync {
    /// The caller's thread fdatasyncs the old file (nothing to do when it is
    /// synced already, as under the `fsync` policy) and writes the new
    /// file's header, left for the file's first sync. For the policies that
    /// acknowledge syncs of the journal as durable.
    Now,
    /// The background thread fdatasyncs the old file, then writes and
    /// fdatasyncs the new header, before its partition syncs; the caller
    /// writes entries to the new file at once. A [`Journal::sync`] before
    /// that is done waits for it. For the `none` policy, whose loop would
    /// otherwise stall for those fdatasyncs (10-40 ms each on the test VM
    /// while the partitions' background sync ran) at every switch.
    Background,
}

/// A background switch's ordering work (see [`SwitchSync::Background`]).
struct Activation {
    old: File,
    old_path: PathBuf,
    new: File,
    new_path: PathBuf,
    header: Vec<u8>,
}

/// Work for the journal's background thread.
enum Job {
    /// Sync the partitions' active segments and directories (after a
    /// background switch's activation, if any).
    Sync {
        activation: Option<Activation>,
        targets: Vec<SyncTarget>,
    },
    /// Zero-fill the inactive file from its current length to `bytes`.
    Prepare {
        file: File,
        path: PathBuf,
        bytes: u64,
    },
}

#[derive(Default)]
struct SyncerState {
    /// Jobs waiting for the thread: at most one of each kind (a switch
    /// waits for both before it asks for more).
    queue: Vec<Job>,
    /// Files whose write-back to start, after the queued jobs (a newer set
    /// replaces one that has not started; nobody waits for it).
    trickle: Option<Vec<SyncTarget>>,
    /// Jobs asked for and jobs done.
    requested: u64,
    finished: u64,
    error: Option<String>,
    shutdown: bool,
    /// Set by [`Journal::simulate_crash`]: queued jobs are dropped undone.
    drop_queue: bool,
    /// Tests only ([`Journal::hold_background`]): queued jobs wait.
    held: bool,
}

struct SyncerShared {
    state: Mutex<SyncerState>,
    changed: Condvar,
    /// Set on shutdown: a zero-fill in progress stops (the file only stays
    /// shorter; the next start goes on from its length).
    abandon: AtomicBool,
}

impl SyncerShared {
    fn lock(&self) -> MutexGuard<'_, SyncerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The journal's background thread: syncs partition files after a switch
/// and zero-fills the inactive file, so that the event loop waits for
/// neither.
struct Syncer {
    shared: Arc<SyncerShared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(name: String) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncerShared {
            state: Mutex::new(SyncerState::default()),
            changed: Condvar::new(),
            abandon: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_syncer(&thread_shared))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    fn request(&self, job: Job) {
        let mut state = self.shared.lock();
        assert!(state.queue.len() < 2, "at most a sync and a prepare wait");
        state.queue.push(job);
        state.requested += 1;
        self.shared.changed.notify_all();
    }

    /// Asks for the write-back of `targets` to be started, without waiting.
    fn request_trickle(&self, targets: Vec<SyncTarget>) {
        let mut state = self.shared.lock();
        state.trickle = Some(targets);
        self.shared.changed.notify_all();
    }

    /// Waits until every job asked for is done; the first error, if any.
    fn wait(&self) -> Result<(), String> {
        let mut state = self.shared.lock();
        assert!(
            !state.held || state.finished == state.requested,
            "a held journal thread would never finish"
        );
        while state.finished < state.requested && state.error.is_none() {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        match &state.error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.abandon.store(true, Ordering::Relaxed);
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            state.held = false;
        }
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether every job asked for is done (without waiting).
impl Syncer {
    fn idle(&self) -> bool {
        let state = self.shared.lock();
        state.finished == state.requested
    }

    /// Stops the thread like a crash would: queued jobs are not run (one
    /// already running finishes). Whether every job asked for had run.
    fn stop_abruptly(mut self) -> bool {
        {
            let mut state = self.shared.lock();
            state.drop_queue = true;
            state.shutdown = true;
        }
        self.shared.abandon.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let state = self.shared.lock();
        state.finished == state.requested
    }
}

fn run_job(job: &Job, abandon: &AtomicBool) -> Result<(), String> {
    match job {
        Job::Sync {
            activation,
            targets,
        } => {
            if let Some(activation) = activation {
                // The old file's entries first: recovery replays the new
                // file's only after them, without a gap.
                activation.old.sync_data().map_err(|e| {
                    StorageError::io("fdatasync", &activation.old_path, e).to_string()
                })?;
                activation
                    .new
                    .write_all_at(&activation.header, 0)
                    .and_then(|()| activation.new.sync_data())
                    .map_err(|e| {
                        StorageError::io("write the header of", &activation.new_path, e).to_string()
                    })?;
            }
            let mut directories: Vec<&Path> = Vec::new();
            for target in targets {
                target
                    .file
                    .sync_data()
                    .map_err(|e| StorageError::io("fdatasync", &target.file_path, e).to_string())?;
                if !directories.contains(&target.directory.as_path()) {
                    directories.push(&target.directory);
                }
            }
            for directory in directories {
                sync_directory(directory).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Job::Prepare { file, path, bytes } => {
            let len = file
                .metadata()
                .map_err(|e| StorageError::io("stat", path, e).to_string())?
                .len();
            zero_fill(file, len, *bytes, abandon)
                .map_err(|e| StorageError::io("zero-fill", path, e).to_string())
        }
    }
}

fn run_syncer(shared: &SyncerShared) {
    let mut state = shared.lock();
    loop {
        if state.drop_queue {
            state.queue.clear();
            state.trickle = None;
        }
        if !state.queue.is_empty() && !state.held {
            let job = state.queue.remove(0);
            drop(state);
            let result = run_job(&job, &shared.abandon);
            state = shared.lock();
            state.finished += 1;
            if let Err(error) = result {
                state.error.get_or_insert(error);
            }
            shared.changed.notify_all();
            continue;
        }
        // A held thread (tests) starts no write-back either.
        let trickle = if state.held {
            None
        } else {
            state.trickle.take()
        };
        if let Some(targets) = trickle {
            drop(state);
            for target in &targets {
                // Only a hint: the switch's fdatasync reports real failures.
                if let Err(error) = crate::sync::start_write_back(&target.file) {
                    log::debug!("write-back of {}: {error}", target.file_path.display());
                }
            }
            state = shared.lock();
            continue;
        }
        if state.shutdown {
            return;
        }
        state = shared
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Tests only ([`hold_commits`]): commit threads start no fdatasync.
static COMMITS_HELD: AtomicBool = AtomicBool::new(false);

/// Tests only: while held, every commit thread of the process waits before
/// its next fdatasync, so a test can look at what an engine does while a
/// commit is in flight. Process-wide: use it in a test binary of its own.
#[doc(hidden)]
pub fn hold_commits(hold: bool) {
    COMMITS_HELD.store(hold, Ordering::Relaxed);
}

/// Tests only ([`fail_next_commit`]): the next acknowledgement's
/// fdatasync fails.
static COMMIT_FAILS: AtomicBool = AtomicBool::new(false);

/// Tests only: the next fdatasync of the journal that acknowledgements wait
/// for (on a commit thread or inline, in any journal of the process) fails
/// with an injected error instead of syncing, as a disk error would. Process-wide:
/// use it in a test binary of its own.
#[doc(hidden)]
pub fn fail_next_commit() {
    COMMIT_FAILS.store(true, Ordering::Relaxed);
}

/// The fdatasync of an acknowledgement's commit, or the injected failure.
fn commit_sync(file: &File) -> io::Result<()> {
    if COMMIT_FAILS.swap(false, Ordering::Relaxed) {
        return Err(io::Error::other(
            "injected fdatasync failure (journal::fail_next_commit)",
        ));
    }
    file.sync_data()
}

/// Called by the commit thread when a sync it ran is done (the broker wakes
/// the shard's event loop with it).
pub type SyncNotifier = Box<dyn Fn() + Send>;

#[derive(Default)]
struct CommitState {
    /// The file index to fdatasync, waiting for the thread.
    request: Option<usize>,
    /// The outcome of the last sync (how long its fdatasync took), waiting
    /// for the journal to take it.
    done: Option<Result<Duration, String>>,
    shutdown: bool,
}

struct CommitShared {
    state: Mutex<CommitState>,
    changed: Condvar,
}

impl CommitShared {
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The journal's commit thread: runs the fdatasync of an acknowledgement
/// path off the event loop ([`Journal::start_sync`]), so the loop goes on
/// with the work that does not wait for it (forwarding publishes to other
/// shards, writing replies and deliveries, taking the next turn's appends)
/// instead of sitting in the system call. Apart from the background
/// thread: a journal fdatasync must not queue behind a partition sync.
struct Committer {
    shared: Arc<CommitShared>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    fn start(name: String, files: [File; 2], notify: SyncNotifier) -> std::io::Result<Committer> {
        let shared = Arc::new(CommitShared {
            state: Mutex::new(CommitState::default()),
            changed: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut state = thread_shared.lock();
            loop {
                if let Some(index) = state.request.take() {
                    drop(state);
                    while COMMITS_HELD.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let started = Instant::now();
                    let result = commit_sync(&files[index])
                        .map(|()| started.elapsed())
                        .map_err(|e| e.to_string());
                    state = thread_shared.lock();
                    state.done = Some(result);
                    thread_shared.changed.notify_all();
                    notify();
                    continue;
                }
                if state.shutdown {
                    return;
                }
                state = thread_shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        })?;
        Ok(Committer {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // A sync asked for still runs: its outcome is only not reported.
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A shard's journal, open for writing. Owned by the shard's event loop.
pub struct Journal {
    directory: PathBuf,
    files: [File; 2],
    active: usize,
    generation: u64,
    run: u32,
    /// Write position in the active file.
    position: u64,
    file_bytes: u64,
    /// Entries were written since the last [`Journal::write`].
    entries_written: bool,
    /// Written and not yet fdatasync'ed.
    unsynced: bool,
    /// The sync in flight ran inline (on the caller's thread) and is done.
    committer_done_inline: bool,
    /// Whether [`Journal::start_sync`] runs its fdatasync inline or on the
    /// commit thread.
    placement: SyncPlacement,
    /// A background switch's header may not be written yet: a sync waits
    /// for the background thread first.
    activation_pending: bool,
    /// The inactive file was given to the background thread to zero-fill
    /// (reset at a switch).
    prepare_requested: bool,
    /// The active file is a growing one (a new journal): switch to the other
    /// file as soon as the background thread has zero-filled it.
    growing: bool,
    /// Write position when the partitions' write-back was last started.
    trickled_at: u64,
    /// The first write or sync failure; set forever once set.
    failed: Option<String>,
    syncer: Syncer,
    /// The commit thread, once [`Journal::set_sync_notifier`] started it.
    committer: Option<Committer>,
    /// A sync started by [`Journal::start_sync`] has not been finished.
    sync_in_flight: bool,
    /// Entry writes so far, in any file: a background sync clears
    /// `unsynced` only if none came after it started.
    writes: u64,
    /// This turn's small entries, not written yet (see
    /// [`GATHERED_ENTRY_BYTES_MAX`]), and where they go in the active file.
    gathered: Vec<u8>,
    gathered_at: u64,
    /// A sync started by [`Journal::start_background_sync`] has not been
    /// finished: `writes` when it started.
    background_sync: Option<u64>,
    /// Entries are counted, not written (see [`Journal::set_count_only`]).
    count_only: bool,
    /// An entry was counted and not written: what it covers is durable once
    /// its partition is synced, never through this journal.
    counted: bool,
}

impl Journal {
    /// Creates (or takes over) the journal of `shard` under `data_dir` for
    /// a new run. Every partition in `partitions` must be durable up to the
    /// given stream position: the journal starts empty. The active file gets
    /// `generation`; the other file's header is erased.
    pub fn create(
        data_dir: &Path,
        shard: usize,
        run: u32,
        generation: u64,
        file_bytes: u64,
        partitions: &[(u32, u64)],
    ) -> Result<Journal, StorageError> {
        if file_bytes < JOURNAL_FILE_BYTES_MINIMUM {
            return Err(StorageError::InvalidConfig {
                detail: format!(
                    "journal_file_bytes = {file_bytes} is below the minimum {JOURNAL_FILE_BYTES_MINIMUM}"
                ),
            });
        }
        let directory = journal_path(data_dir, shard);
        fs::create_dir_all(&directory)
            .map_err(|e| StorageError::io("create directory", &directory, e))?;
        let open = |index: usize| -> Result<File, StorageError> {
            let path = directory.join(file_name(index));
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| StorageError::io("open", &path, e))
        };
        let files = [open(0)?, open(1)?];
        sync_directory(&directory)?;
        // Erase the other file's header first: the new file's entries must
        // never be replayed after stale ones.
        let other_path = directory.join(file_name(1));
        let other_len = files[1]
            .metadata()
            .map_err(|e| StorageError::io("stat", &other_path, e))?
            .len();
        if other_len > 0 {
            let erase = vec![0u8; HEADER_ALIGN.min(other_len as usize)];
            files[1]
                .write_all_at(&erase, 0)
                .and_then(|()| files[1].sync_data())
                .map_err(|e| StorageError::io("erase the header of", &other_path, e))?;
        }
        let mut journal = Journal {
            directory,
            files,
            active: 0,
            generation,
            run,
            position: 0,
            file_bytes,
            entries_written: false,
            unsynced: false,
            committer_done_inline: false,
            placement: SyncPlacement::default(),
            activation_pending: false,
            prepare_requested: false,
            growing: false,
            trickled_at: 0,
            failed: None,
            syncer: Syncer::start(format!("journal-{shard:03}"))
                .map_err(|e| StorageError::io("start the journal thread for", data_dir, e))?,
            committer: None,
            sync_in_flight: false,
            writes: 0,
            gathered: Vec::new(),
            gathered_at: 0,
            background_sync: None,
            count_only: false,
            counted: false,
        };
        // Entries of an earlier run may lie where this file's first entry
        // goes, of the very generation this run starts with: a switch whose
        // new header never became durable (a crash, a power loss) leaves
        // its entries under the older header, and recovery, going by valid
        // headers, hands out that generation again. Cut them off before
        // the header makes them look like this run's.
        let first_entry = encode_header(generation, run, partitions).len() as u64;
        let path = journal.directory.join(file_name(0));
        let len = journal.files[0]
            .metadata()
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        if len > first_entry {
            journal.files[0]
                .write_all_at(&[0u8; ENTRY_HEADER_BYTES], first_entry)
                .and_then(|()| journal.files[0].sync_data())
                .map_err(|e| StorageError::io("erase the first entry of", &path, e))?;
        }
        journal.activate(0, generation, partitions, true)?;
        let active_len = journal.files[0]
            .metadata()
            .map_err(|e| StorageError::io("stat", journal.directory.join(file_name(0)), e))?
            .len();
        if active_len < file_bytes {
            // A new journal: its first file grows (an fdatasync then also
            // commits the file size), so the other one is zero-filled now
            // and taken as soon as it is ready.
            journal.growing = true;
            journal.prepare_other()?;
        }
        Ok(journal)
    }

    /// With `count_only`, [`Journal::add`] counts entries instead of
    /// writing them: the write position moves on as if they had been
    /// written, so the switches (whose partition syncs bound what is not yet
    /// durable) and the write-back starts keep their pace, but the journal
    /// makes nothing durable: [`Journal::unsynced`] stays true once an entry
    /// was counted, whatever is synced. For the `none` policy, whose
    /// acknowledgements never wait for the journal: a process crash loses
    /// nothing without the entries (the partitions' writes are in the page
    /// cache, and recovery keeps this run's valid batches beyond the
    /// partitions' durable ends), and a power loss loses what the system
    /// had not written, as that policy says; the entries would only
    /// duplicate every partition write.
    pub fn set_count_only(&mut self, count_only: bool) {
        assert!(
            self.gathered.is_empty() && !self.entries_written,
            "end the turn's entries (Journal::write) before changing how they are kept"
        );
        self.count_only = count_only;
    }

    /// The run stamped on every batch written while this journal is open.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// The generation of the active file.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn active_path(&self) -> PathBuf {
        self.directory.join(file_name(self.active))
    }

    fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(reason) => Err(StorageError::Failed {
                partition_id: u32::MAX,
                reason: format!("shard journal {}: {reason}", self.directory.display()),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, error: StorageError) -> StorageError {
        log::error!(
            "journal {} stops accepting writes: {error}",
            self.directory.display()
        );
        self.failed = Some(error.to_string());
        error
    }

    /// Writes the header of file `index` and makes it the active one. With
    /// `sync_now` the header is synced at once; without, it is left for the
    /// next [`Journal::sync`] of the file, which then makes it durable
    /// together with the first entries behind it (see [`Journal::switch`]
    /// for why that is safe there).
    fn activate(
        &mut self,
        index: usize,
        generation: u64,
        partitions: &[(u32, u64)],
        sync_now: bool,
    ) -> Result<(), StorageError> {
        let header = encode_header(generation, self.run, partitions);
        let path = self.directory.join(file_name(index));
        let file = &self.files[index];
        if let Err(error) =
            file.write_all_at(&header, 0)
                .and_then(|()| if sync_now { file.sync_data() } else { Ok(()) })
        {
            return Err(self.fail(StorageError::io("write the header of", &path, error)));
        }
        self.active = index;
        self.generation = generation;
        self.position = header.len() as u64;
        self.trickled_at = self.position;
        self.unsynced = !sync_now;
        Ok(())
    }

    /// Adds an entry: `payload` is the whole batches a partition flush just
    /// wrote to partition `partition`'s segment. A small entry is gathered
    /// with the turn's others and written by [`Journal::write`]; a large one
    /// is written at once, straight from `payload` (the partition's own
    /// buffer). A failure is kept and reported by the next
    /// [`Journal::write`], which every turn calls before it syncs or
    /// acknowledges anything.
    pub fn add(&mut self, partition: u32, payload: &[u8]) {
        assert!(
            !self.sync_in_flight,
            "finish the sync in flight before adding entries"
        );
        if self.failed.is_some() {
            return;
        }
        if self.count_only {
            self.position += (ENTRY_HEADER_BYTES + payload.len()) as u64;
            self.entries_written = true;
            self.counted = true;
            self.writes += 1;
            return;
        }
        let header = entry_header(partition, self.generation, payload.len());
        if payload.len() <= GATHERED_ENTRY_BYTES_MAX {
            if self.gathered.is_empty() {
                self.gathered_at = self.position;
            }
            self.gathered.extend_from_slice(&header);
            self.gathered.extend_from_slice(payload);
        } else {
            if self.write_gathered().is_err() {
                return;
            }
            let written = write_pair_at(&self.files[self.active], &header, payload, self.position);
            if let Err(error) = written {
                let path = self.active_path();
                self.fail(StorageError::io("write to", &path, error));
                return;
            }
        }
        self.position += (ENTRY_HEADER_BYTES + payload.len()) as u64;
        self.entries_written = true;
        self.unsynced = true;
        self.writes += 1;
    }

    /// Whether entries were written since the last [`Journal::write`].
    pub fn has_entries(&self) -> bool {
        self.entries_written
    }

    /// Ends a turn's entries: reports a failure of one of their writes, and
    /// asks for the inactive file's zero-fill once the active one is half
    /// full.
    pub fn write(&mut self) -> Result<(), StorageError> {
        self.check_not_failed()?;
        assert!(
            !self.sync_in_flight,
            "finish the sync in flight before a write"
        );
        self.write_gathered()?;
        if !std::mem::take(&mut self.entries_written) {
            return Ok(());
        }
        // Counted entries need no zero-filled file to go to.
        if !self.prepare_requested && !self.count_only && self.position >= self.file_bytes / 2 {
            self.prepare_other()?;
        }
        Ok(())
    }

    /// Writes the gathered entries (one `pwrite`), in place in the active
    /// file; a failure fails the journal.
    fn write_gathered(&mut self) -> Result<(), StorageError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        let written = self.files[self.active].write_all_at(&self.gathered, self.gathered_at);
        self.gathered.clear();
        if self.gathered.capacity() > GATHERED_CAPACITY_KEPT {
            self.gathered = Vec::new();
        }
        if let Err(error) = written {
            let path = self.active_path();
            return Err(self.fail(StorageError::io("write to", &path, error)));
        }
        Ok(())
    }

    /// Asks the background thread to zero-fill the inactive file up to
    /// `file_bytes` if it is shorter (only its end, never its content: it
    /// may still hold entries that recovery needs). Asked once the active
    /// file is half full, or at the start of a new journal.
    fn prepare_other(&mut self) -> Result<(), StorageError> {
        self.prepare_requested = true;
        let other = 1 - self.active;
        let path = self.directory.join(file_name(other));
        let file = self.duplicate(other)?;
        self.syncer.request(Job::Prepare {
            file,
            path,
            bytes: self.file_bytes,
        });
        Ok(())
    }

    /// The active file and the position the next write goes to (crash
    /// tests lose what lies beyond the last synced position).
    pub fn active_file(&self) -> (PathBuf, u64) {
        (self.active_path(), self.position)
    }

    /// Whether written entries wait for [`Journal::sync`] (or, once one was
    /// counted, [`Journal::set_count_only`]: always).
    pub fn unsynced(&self) -> bool {
        self.unsynced || self.counted
    }

    /// Makes every written entry durable (`fdatasync` of the active file;
    /// after a background switch, once its header is in place).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.check_not_failed()?;
        assert!(
            !self.sync_in_flight,
            "finish the sync in flight before a sync"
        );
        self.write_gathered()?;
        if !self.unsynced {
            return Ok(());
        }
        if self.activation_pending {
            self.wait_for_background()?;
        }
        if let Err(error) = commit_sync(&self.files[self.active]) {
            let path = self.active_path();
            return Err(self.fail(StorageError::io("fdatasync", &path, error)));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Starts the commit thread (`commit-NNN`): from now on
    /// [`Journal::start_sync`] can run the fdatasync there; `notify` is
    /// called each time one is done.
    pub fn set_sync_notifier(
        &mut self,
        shard: usize,
        notify: SyncNotifier,
    ) -> Result<(), StorageError> {
        let files = [self.duplicate(0)?, self.duplicate(1)?];
        let committer = Committer::start(format!("commit-{shard:03}"), files, notify)
            .map_err(|e| StorageError::io("start the commit thread for", &self.directory, e))?;
        self.committer = Some(committer);
        Ok(())
    }

    /// Lets [`Journal::start_sync`] run the fdatasync on the caller's thread
    /// while recent ones averaged under `limit_us` (0: always on the commit
    /// thread, once there is one). See [`crate::sync_placement`].
    pub fn set_sync_on_loop_max_us(&mut self, limit_us: u64) {
        self.placement = SyncPlacement::new(limit_us);
    }

    /// Starts making every written entry durable on the commit thread, and
    /// returns at once: `Ok(true)` when a sync was started, `Ok(false)` when
    /// nothing waits for one. Until [`Journal::finish_sync`] reports it done,
    /// nothing may be written, synced or switched. Without a commit thread
    /// ([`Journal::set_sync_notifier`]), or while recent syncs were short
    /// ([`Journal::set_sync_on_loop_max_us`]), this syncs here, and
    /// [`Journal::synced_inline`] says so.
    pub fn start_sync(&mut self) -> Result<bool, StorageError> {
        self.check_not_failed()?;
        assert!(!self.sync_in_flight, "one sync at a time");
        self.write_gathered()?;
        assert!(
            self.background_sync.is_none(),
            "not beside a background sync"
        );
        if !self.unsynced {
            return Ok(false);
        }
        if self.activation_pending {
            self.wait_for_background()?;
        }
        match &self.committer {
            Some(committer) if !self.placement.on_loop() => {
                Journal::request_commit(committer, self.active);
            }
            _ => {
                let started = Instant::now();
                self.sync()?;
                self.placement.observe(started.elapsed());
                self.committer_done_inline = true;
            }
        }
        self.sync_in_flight = true;
        Ok(true)
    }

    /// Whether the sync [`Journal::start_sync`] or
    /// [`Journal::start_background_sync`] just started ran on the caller's
    /// thread, and so is done (no commit thread will report it).
    pub fn synced_inline(&self) -> bool {
        self.committer_done_inline
    }

    /// Starts an fdatasync of the active file on the commit thread that
    /// nothing waits for (the `interval` policy): entries may be written,
    /// and files switched, meanwhile, and [`Journal::finish_background_sync`]
    /// reports it done and clears [`Journal::unsynced`] only if no entry
    /// was written since it started. Returns false, starting nothing, when
    /// nothing is unsynced, one is in flight, or a background switch's
    /// header is not durable yet (a later call tries again). Without a
    /// commit thread this syncs here (reported done by the next finish).
    pub fn start_background_sync(&mut self) -> Result<bool, StorageError> {
        self.check_not_failed()?;
        assert!(!self.sync_in_flight, "not beside an acknowledgement's sync");
        self.write_gathered()?;
        if !self.unsynced || self.background_sync.is_some() {
            return Ok(false);
        }
        if self.activation_pending {
            if !self.syncer.idle() {
                return Ok(false);
            }
            self.wait_for_background()?;
        }
        let Some(committer) = &self.committer else {
            self.sync()?;
            self.committer_done_inline = true;
            self.background_sync = Some(self.writes);
            return Ok(true);
        };
        Journal::request_commit(committer, self.active);
        self.background_sync = Some(self.writes);
        Ok(true)
    }

    /// The outcome of the sync [`Journal::start_background_sync`] started,
    /// once it is done (`None` while it runs, or when none was started);
    /// with `wait`, waits for it. A failure fails the journal.
    pub fn finish_background_sync(&mut self, wait: bool) -> Option<Result<(), StorageError>> {
        let started_at = self.background_sync?;
        let result = self.commit_outcome(wait)?;
        self.background_sync = None;
        Some(match result {
            Ok(()) => {
                if self.writes == started_at {
                    self.unsynced = false;
                }
                Ok(())
            }
            Err(error) => Err(self.commit_failed(error)),
        })
    }

    /// The outcome of the commit thread's sync (or of one done inline),
    /// once there is one; with `wait`, waits for it.
    fn commit_outcome(&mut self, wait: bool) -> Option<Result<(), String>> {
        if std::mem::take(&mut self.committer_done_inline) {
            return Some(Ok(()));
        }
        let committer = self
            .committer
            .as_ref()
            .expect("a sync in flight has its thread");
        let mut state = committer.shared.lock();
        loop {
            if let Some(result) = state.done.take() {
                return Some(result.map(|took| self.placement.observe(took)));
            }
            if !wait {
                return None;
            }
            state = committer
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Fails the journal with the commit thread's fdatasync error.
    fn commit_failed(&mut self, error: String) -> StorageError {
        let path = self.active_path();
        self.fail(StorageError::io(
            "fdatasync",
            &path,
            std::io::Error::other(error),
        ))
    }

    /// Asks the commit thread to fdatasync the active file.
    fn request_commit(committer: &Committer, active: usize) {
        let mut state = committer.shared.lock();
        state.request = Some(active);
        committer.shared.changed.notify_all();
    }

    /// Whether [`Journal::start_sync`] runs the fdatasync on the commit
    /// thread (else it syncs on the caller's thread, done when it returns).
    pub fn has_commit_thread(&self) -> bool {
        self.committer.is_some()
    }

    /// Whether a sync started by [`Journal::start_sync`] is not finished.
    pub fn sync_in_flight(&self) -> bool {
        self.sync_in_flight
    }

    /// The outcome of the sync [`Journal::start_sync`] started, once it is
    /// done (`None` while it runs, or when none was started); with `wait`,
    /// waits for it. A failure fails the journal.
    pub fn finish_sync(&mut self, wait: bool) -> Option<Result<(), StorageError>> {
        if !self.sync_in_flight {
            return None;
        }
        let result = self.commit_outcome(wait)?;
        self.sync_in_flight = false;
        Some(match result {
            Ok(()) => {
                self.unsynced = false;
                Ok(())
            }
            Err(error) => Err(self.commit_failed(error)),
        })
    }

    /// Whether the partitions' write-back should be started
    /// ([`Journal::trickle`]): an eighth of a file was written since the
    /// last time.
    pub fn wants_trickle(&self) -> bool {
        self.position - self.trickled_at >= self.file_bytes / TRICKLE_PARTS
    }

    /// Asks the background thread to start the write-back of `targets`
    /// (the partitions' active segments) without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the data written since
    /// the last switch then reaches the disk a piece at a time instead of
    /// all at the next switch, whose partition sync would otherwise stall
    /// the shard's next `fdatasync` for as long as that write takes.
    pub fn trickle(&mut self, targets: Vec<SyncTarget>) {
        self.trickled_at = self.position;
        self.syncer.request_trickle(targets);
    }

    /// Whether the active file is full and the journal should
    /// [`switch`](Journal::switch).
    pub fn wants_switch(&self) -> bool {
        self.position >= self.file_bytes || (self.growing && self.syncer.idle())
    }

    /// Moves to the other file. `partitions` are the partitions' flushed
    /// ends now and `targets` their active segments: the other file's old
    /// content is no longer needed once the partitions were synced after it
    /// was written, which the previous switch asked the background thread to
    /// do (waited for here if it has not finished); this switch asks it to
    /// sync `targets`, which makes the active file's content redundant by
    /// the next switch. `order` says which thread makes the old file durable
    /// before the new one counts.
    pub fn switch(
        &mut self,
        partitions: &[(u32, u64)],
        targets: Vec<SyncTarget>,
        order: SwitchSync,
    ) -> Result<(), StorageError> {
        self.check_not_failed()?;
        assert!(
            !self.entries_written,
            "end the turn's entries (Journal::write) before a switch"
        );
        if order == SwitchSync::Now {
            // The new file's entries must follow durable ones: recovery
            // replays the old file, then the new one, without a gap. (Under
            // the `fsync` policy the old file is synced already: this costs
            // nothing.)
            self.sync()?;
        }
        self.wait_for_background()?;
        let new = 1 - self.active;
        let generation = self.generation + 1;
        let activation = match order {
            // The new header is not synced on its own: the file's next sync
            // makes it durable with the first entries, so a switch costs the
            // shard no fdatasync of its own (one took 10-40 ms on the test
            // VM while the background sync of the partitions ran). Until
            // then a crash may leave the header lost (zeros, or the file's
            // stale header of two generations ago); either way recovery does
            // not take the file as the newest, and replays the old one,
            // which is durable whole. Nothing written to the new file was
            // acknowledged as durable before that sync, and stale entries
            // stop at the first new one (its generation is not the stale
            // header's).
            SwitchSync::Now => {
                self.activate(new, generation, partitions, false)?;
                None
            }
            // The same, with the old file's sync and the header's write
            // and sync on the background thread, ahead of the partition
            // syncs; until the header is durable, recovery ignores the new
            // file's entries as above.
            SwitchSync::Background => {
                let header = encode_header(generation, self.run, partitions);
                let activation = Activation {
                    old: self.duplicate(self.active)?,
                    old_path: self.active_path(),
                    new: self.duplicate(new)?,
                    new_path: self.directory.join(file_name(new)),
                    header,
                };
                let header_bytes = activation.header.len() as u64;
                self.active = new;
                self.generation = generation;
                self.position = header_bytes;
                self.trickled_at = header_bytes;
                self.activation_pending = true;
                Some(activation)
            }
        };
        self.prepare_requested = false;
        self.growing = false;
        self.syncer.request(Job::Sync {
            activation,
            targets,
        });
        Ok(())
    }

    /// Waits until the background thread has done every job asked for (a
    /// background switch's header is then durable); its first error fails
    /// the journal.
    pub fn wait_for_background(&mut self) -> Result<(), StorageError> {
        if let Err(reason) = self.syncer.wait() {
            self.failed = Some(reason.clone());
            return Err(StorageError::Failed {
                partition_id: u32::MAX,
                reason,
            });
        }
        self.activation_pending = false;
        Ok(())
    }

    /// Tests only: while held, the background thread starts no job, so a
    /// test can crash before a switch's background work. Release before
    /// anything that waits for that work (a sync after a background switch,
    /// a switch, a close), which panics otherwise.
    #[doc(hidden)]
    pub fn hold_background(&self, hold: bool) {
        self.syncer.shared.lock().held = hold;
        self.syncer.shared.changed.notify_all();
    }

    /// Ends the journal's background thread the way a crash would (tests
    /// only): jobs not started yet are dropped. Whether every job asked for
    /// had run, so a test knows what a crash may have lost.
    pub fn simulate_crash(self) -> bool {
        self.syncer.stop_abruptly()
    }

    /// A second descriptor of file `index` for the background thread.
    fn duplicate(&mut self, index: usize) -> Result<File, StorageError> {
        match self.files[index].try_clone() {
            Ok(file) => Ok(file),
            Err(error) => {
                let path = self.directory.join(file_name(index));
                Err(self.fail(StorageError::io("duplicate", &path, error)))
            }
        }
    }
}

impl Journal {
    /// Ends the journal after a clean stop: the caller has synced every
    /// partition up to `partitions`' ends, so no entry is needed any more.
    /// The other file gets a header naming those ends (and no entries), and
    /// the active file's header is erased: the next start then treats
    /// everything before the ends as durable (a damaged batch there is
    /// corruption, not an unsynced tail).
    pub fn close(&mut self, partitions: &[(u32, u64)]) -> Result<(), StorageError> {
        self.check_not_failed()?;
        self.sync()?;
        self.wait_for_background()?;
        let old = self.active;
        self.activate(1 - old, self.generation + 1, partitions, true)?;
        let path = self.directory.join(file_name(old));
        let erase = vec![0u8; HEADER_ALIGN];
        if let Err(error) = self.files[old]
            .write_all_at(&erase, 0)
            .and_then(|()| self.files[old].sync_data())
        {
            return Err(self.fail(StorageError::io("erase the header of", &path, error)));
        }
        Ok(())
    }
}

/// Writes zeros from `from` to `to`, syncing as it goes.
fn zero_fill(file: &File, from: u64, to: u64, abandon: &AtomicBool) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    let mut unsynced = 0;
    while at < to && !abandon.load(Ordering::Relaxed) {
        let n = (to - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
        unsynced += n as u64;
        if unsynced >= ZERO_SYNC_EVERY {
            file.sync_data()?;
            unsynced = 0;
        }
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_pinned() {
        let header = encode_header(7, 3, &[(2, 4096)]);
        assert_eq!(header.len(), 4096);
        assert_eq!(&header[0..8], b"STRJ\x01\0\0\0");
        assert_eq!(u32_at(&header, 12), 4096);
        assert_eq!(u64_at(&header, 16), 7);
        assert_eq!(u32_at(&header, 24), 3);
        assert_eq!(u32_at(&header, 28), 1);
        assert_eq!(
            &header[32..48],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(u32_at(&header, 8), crc32c::crc32c(&header[12..]));
        assert!(header[48..].iter().all(|&b| b == 0));
    }

    #[test]
    fn entry_bytes_are_pinned() {
        let header = entry_header(5, 9, 2);
        assert_eq!(
            &header[4..],
            &[5, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(u32_at(&header, 0), crc32c::crc32c(&header[4..24]));
    }

    #[test]
    fn a_pair_is_written_whole_at_its_offset() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("pair");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all_at(b"0123456789", 0).unwrap();
        write_pair_at(&file, b"ab", b"cde", 3).unwrap();
        write_pair_at(&file, b"", b"", 9).unwrap();
        write_pair_at(&file, b"", b"XY", 9).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"012abcde8XY");
    }

    #[test]
    fn a_large_header_spans_blocks() {
        let partitions: Vec<(u32, u64)> = (0..300).map(|i| (i, u64::from(i) * 10)).collect();
        let header = encode_header(1, 1, &partitions);
        assert_eq!(header.len(), 8192);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.journal");
        fs::write(&path, &header).unwrap();
        let parsed = read_header(&File::open(&path).unwrap()).unwrap().unwrap();
        assert_eq!(parsed.partitions, partitions);
        // A flipped byte anywhere in the header makes it invalid.
        let mut bad = header.clone();
        bad[5000] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(read_header(&File::open(&path).unwrap()).unwrap().is_none());
    }
}
