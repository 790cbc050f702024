//! The partition's background thread: it prepares the next segment file
//! (zero-filled and fsynced, so that appending to it never changes the file
//! size and `fdatasync` has no metadata to commit) and writes checkpoints
//! from snapshots, so that neither stalls the owner's event loop.
//!
//! One thread per `Partition`, idle on a condition variable when there is
//! nothing to do. Jobs: at most one pending checkpoint (a newer one replaces
//! an older one that has not started; the files to delete after it are
//! kept), and keeping one spare segment ready when preallocation is on.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::checkpoint::{encode_checkpoint, sync_directory, write_checkpoint, CheckpointState};
use crate::StorageError;

/// The spare segment, ready to be renamed into place at the next roll.
pub(crate) const SPARE_FILE_NAME: &str = "next-segment.prealloc";
/// The spare while it is being zero-filled.
pub(crate) const SPARE_TEMPORARY_NAME: &str = "next-segment.prealloc.tmp";
/// Zeros are written in pieces of this size, with an `fdatasync` every
/// [`SPARE_SYNC_EVERY`] bytes so that the write-back of a whole segment
/// never queues in front of the owner's `fdatasync` at once.
const SPARE_CHUNK_BYTES: usize = 1024 * 1024;
const SPARE_SYNC_EVERY: u64 = 8 * 1024 * 1024;

/// A checkpoint to write, then files to delete (retention).
pub(crate) struct CheckpointJob {
    pub state: CheckpointState,
    /// `fdatasync` this file first: the bytes before `state.position` are
    /// not durable yet.
    pub sync: Option<File>,
    /// Segment files to delete once the checkpoint is durable.
    pub delete: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    spare_wanted: bool,
    spare_ready: bool,
    job: Option<CheckpointJob>,
    running: bool,
    shutdown: bool,
    discard_jobs: bool,
}

struct Shared {
    dir: PathBuf,
    /// Size of a spare segment; `None` when preallocation is off.
    spare_bytes: Option<u64>,
    state: Mutex<State>,
    changed: Condvar,
    /// Set on shutdown: a spare being zero-filled is abandoned.
    abandon: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread. `spare_ready` says that a spare left by an earlier
    /// run is in place.
    pub(crate) fn start(
        dir: &Path,
        partition_id: u32,
        spare_bytes: Option<u64>,
        spare_ready: bool,
    ) -> Result<Worker, StorageError> {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            spare_bytes,
            state: Mutex::new(State {
                // A spare is made only once the active segment is half full
                // (see `want_spare`): zero-filling one segment per partition
                // at every start would be a burst of gigabytes of writes.
                spare_wanted: false,
                spare_ready: spare_ready && spare_bytes.is_some(),
                ..State::default()
            }),
            changed: Condvar::new(),
            abandon: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("storage-{partition_id:05}"))
            .spawn(move || run(&thread_shared))
            .map_err(|e| StorageError::io("start the background thread for", dir, e))?;
        Ok(Worker {
            shared,
            thread: Some(thread),
        })
    }

    /// Renames the spare segment to `to` if one is ready (and asks for the
    /// next one). Returns false when there is none.
    pub(crate) fn take_spare(&self, to: &Path) -> io::Result<bool> {
        if self.shared.spare_bytes.is_none() {
            return Ok(false);
        }
        let mut state = self.shared.lock();
        if !state.spare_ready {
            return Ok(false);
        }
        // The next spare is wanted when the new segment is half full.
        state.spare_wanted = false;
        // The rename happens under the lock, so the thread cannot rename a
        // new spare into place meanwhile.
        state.spare_ready = false;
        if to.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", to.display()),
            ));
        }
        fs::rename(self.shared.dir.join(SPARE_FILE_NAME), to)?;
        Ok(true)
    }

    /// Asks for a spare segment to be prepared (when preallocation is on and
    /// none is ready or being made).
    pub(crate) fn want_spare(&self) {
        if self.shared.spare_bytes.is_none() {
            return;
        }
        let mut state = self.shared.lock();
        if !state.spare_wanted && !state.spare_ready {
            state.spare_wanted = true;
            self.shared.changed.notify_all();
        }
    }

    /// Queues a checkpoint; it replaces a queued one that has not started
    /// (whose deletions it inherits).
    pub(crate) fn submit(&self, mut job: CheckpointJob) {
        let mut state = self.shared.lock();
        if let Some(older) = state.job.take() {
            job.delete.extend(older.delete);
        }
        state.job = Some(job);
        self.shared.changed.notify_all();
    }

    /// Waits until no checkpoint is queued or being written and, with
    /// preallocation on, a spare is ready (or could not be made).
    pub(crate) fn wait_idle(&self) {
        let mut state = self.shared.lock();
        while state.job.is_some()
            || state.running
            || (self.shared.spare_bytes.is_some() && state.spare_wanted && !state.spare_ready)
        {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the thread: a queued checkpoint is written first unless
    /// `discard`; a spare being filled is abandoned.
    pub(crate) fn stop(&mut self, discard: bool) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            state.discard_jobs = discard;
            self.shared.abandon.store(true, Ordering::Relaxed);
            self.shared.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop(false);
    }
}

fn run(shared: &Shared) {
    // Files a failed checkpoint could not delete; retried after the next.
    let mut carry: Vec<PathBuf> = Vec::new();
    let mut state = shared.lock();
    loop {
        if let Some(mut job) = state.job.take() {
            if state.discard_jobs {
                continue;
            }
            state.running = true;
            drop(state);
            job.delete.append(&mut carry);
            if let Err((error, delete)) = run_checkpoint(&shared.dir, job) {
                log::error!("{}: checkpoint not written: {error}", shared.dir.display());
                carry = delete;
            }
            state = shared.lock();
            state.running = false;
            shared.changed.notify_all();
            continue;
        }
        if state.shutdown {
            break;
        }
        if let Some(bytes) = shared.spare_bytes {
            if state.spare_wanted && !state.spare_ready {
                state.running = true;
                drop(state);
                let result = make_spare(&shared.dir, bytes, &shared.abandon);
                state = shared.lock();
                state.running = false;
                match result {
                    Ok(true) => state.spare_ready = true,
                    Ok(false) => {}
                    Err(error) => {
                        // Rolls create plain files until the next attempt
                        // (at the next roll).
                        log::warn!(
                            "{}: could not prepare the next segment: {error}",
                            shared.dir.display()
                        );
                        state.spare_wanted = false;
                    }
                }
                shared.changed.notify_all();
                continue;
            }
        }
        state = shared
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
}

fn run_checkpoint(dir: &Path, job: CheckpointJob) -> Result<(), (StorageError, Vec<PathBuf>)> {
    let started = Instant::now();
    let CheckpointJob {
        state,
        sync,
        delete,
    } = job;
    let written = (|| {
        if let Some(file) = &sync {
            file.sync_data()
                .map_err(|e| StorageError::io("fdatasync", dir, e))?;
        }
        // Segment files created since the last directory fsync must exist
        // after a crash if the checkpoint does.
        sync_directory(dir)?;
        let mut bytes = encode_checkpoint(&state);
        if let Some((keys, partition_id)) = &state.sealing {
            bytes = keys.seal_checkpoint(*partition_id, &bytes);
        }
        write_checkpoint(dir, &bytes)?;
        Ok(bytes.len())
    })();
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(error) => return Err((error, delete)),
    };
    log::debug!(
        "{}: checkpoint of {} channels at stream position {} ({bytes} bytes) written in {} ms",
        dir.display(),
        state.channels.len(),
        state.position,
        started.elapsed().as_millis()
    );
    let mut deleted = false;
    for path in &delete {
        match fs::remove_file(path) {
            Ok(()) => {
                deleted = true;
                log::info!("retention deleted {}", path.display());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("retention could not delete {}: {e}", path.display()),
        }
    }
    if deleted {
        if let Err(error) = sync_directory(dir) {
            log::warn!("{error}");
        }
    }
    Ok(())
}

/// Writes a zero-filled, fsynced spare segment of `bytes` bytes. Returns
/// false if it was abandoned.
fn make_spare(dir: &Path, bytes: u64, abandon: &AtomicBool) -> io::Result<bool> {
    let temporary = dir.join(SPARE_TEMPORARY_NAME);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        let zeros = vec![0u8; SPARE_CHUNK_BYTES];
        let mut at = 0u64;
        let mut synced = 0u64;
        while at < bytes {
            if abandon.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let len = (bytes - at).min(SPARE_CHUNK_BYTES as u64) as usize;
            file.write_all_at(&zeros[..len], at)?;
            at += len as u64;
            if at - synced >= SPARE_SYNC_EVERY {
                file.sync_data()?;
                synced = at;
            }
        }
        file.sync_all()?;
        fs::rename(&temporary, dir.join(SPARE_FILE_NAME))?;
        File::open(dir).and_then(|d| d.sync_all())?;
        Ok(true)
    })();
    if !matches!(result, Ok(true)) {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// At open: deletes an interrupted spare, and keeps a finished one if it has
/// the wanted size (else deletes it). Returns whether a spare is ready.
pub(crate) fn tidy_spares(dir: &Path, spare_bytes: Option<u64>) -> Result<bool, StorageError> {
    let temporary = dir.join(SPARE_TEMPORARY_NAME);
    match fs::remove_file(&temporary) {
        Ok(()) => log::info!(
            "removed an unfinished spare segment {}",
            temporary.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("delete", &temporary, e)),
    }
    let spare = dir.join(SPARE_FILE_NAME);
    match fs::metadata(&spare) {
        Ok(metadata) if Some(metadata.len()) == spare_bytes => Ok(true),
        Ok(_) => {
            fs::remove_file(&spare).map_err(|e| StorageError::io("delete", &spare, e))?;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io("stat", &spare, e)),
    }
}
