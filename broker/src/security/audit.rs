//! Feeds the audit log (`storage::audit`): one thread owns the log and
//! writes what it is given in batches (one write and one fdatasync per
//! batch).
//!
//! The security service waits for its entries to be durable before it
//! answers (a sign-in, a revoked token, a changed user is in the audit log
//! before the client hears of it). Denied requests come from the shards,
//! which must never wait for a disk: they are queued without waiting, and if
//! the queue is full they are counted as dropped (and the count is logged).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crossbeam_channel::{Receiver, Sender};
use starling_storage::audit::{AuditConfig, AuditEntry, AuditKind, AuditLog, AuditSigner};

use super::SecurityError;

/// Entries waiting for the audit thread. Denials on a busy server can come
/// in bursts; 64 Ki entries (a few MB) ride out seconds of a slow disk.
const AUDIT_QUEUE_MAX: usize = 64 * 1024;
/// Entries written per batch at most.
const AUDIT_BATCH_MAX: usize = 1024;

type Reply = Sender<Result<(), String>>;
/// An entry, and where to say that it is durable (`None`: nobody waits).
type Job = (AuditEntry, Option<Reply>);

/// The audit log's writer thread.
pub struct AuditWriter {
    /// `None` once closed.
    jobs: Mutex<Option<Sender<Job>>>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AuditWriter {
    /// Opens (or creates) the audit log in `dir`, signing checkpoints with
    /// the key in `key_file`, and starts the writer thread.
    pub fn start(dir: &Path, key_file: &Path) -> Result<Arc<AuditWriter>, SecurityError> {
        let signer = AuditSigner::from_file(key_file).map_err(|e| {
            SecurityError::Invalid(format!(
                "the audit key {}: {e}; make one with `starling audit keygen --out FILE`",
                key_file.display()
            ))
        })?;
        let (log, recovery) = AuditLog::open(dir, signer, AuditConfig::default()).map_err(|e| {
            SecurityError::Internal(format!("the audit log {}: {e}", dir.display()))
        })?;
        log::info!("audit log {}: {recovery:?}", dir.display());
        let (jobs, receiver) = crossbeam_channel::bounded(AUDIT_QUEUE_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread_dropped = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("starling-audit".into())
            .spawn(move || run(log, receiver, thread_dropped))
            .map_err(|e| SecurityError::Internal(format!("start the audit thread: {e}")))?;
        Ok(Arc::new(AuditWriter {
            jobs: Mutex::new(Some(jobs)),
            dropped,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Writes `entry` and waits until it is durable.
    pub fn record(&self, entry: AuditEntry) -> Result<(), SecurityError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let jobs = self.jobs.lock().clone();
        jobs.ok_or_else(|| SecurityError::Internal("the audit log is closed".into()))?
            .send((entry.within_limits(), Some(reply)))
            .map_err(|_| SecurityError::Internal("the audit thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| SecurityError::Internal("the audit thread has stopped".into()))?
            .map_err(|e| SecurityError::Internal(format!("the audit log: {e}")))
    }

    /// Queues `entry` without waiting (for the shards).
    pub fn record_later(&self, entry: AuditEntry) {
        let sent = match self.jobs.lock().as_ref() {
            Some(jobs) => jobs.try_send((entry.within_limits(), None)).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A convenience for [`AuditWriter::record`].
    pub fn note(
        &self,
        kind: AuditKind,
        actor: &str,
        source: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), SecurityError> {
        self.record(AuditEntry::new(kind, actor, source, target, detail))
    }
}

impl AuditWriter {
    /// Writes what is queued, signs a last checkpoint and closes the log
    /// (a clean stop). Later entries are refused.
    pub fn close(&self) {
        // Closing the queue ends the thread, which signs and closes the log.
        self.jobs.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(mut log: AuditLog, jobs: Receiver<Job>, dropped: Arc<AtomicU64>) {
    let mut reported = 0;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let entries: Vec<AuditEntry> = batch.iter().map(|(entry, _)| entry.clone()).collect();
        let result = log
            .append_batch(&entries)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(error) = &result {
            log::error!("the audit log cannot be written: {error}");
        }
        for (_, reply) in batch {
            if let Some(reply) = reply {
                let _ = reply.send(result.clone());
            }
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported {
            log::error!(
                "{} denied requests were not audited: the audit queue was full",
                now_dropped - reported
            );
            reported = now_dropped;
        }
    }
    if let Err(error) = log.close() {
        log::error!("closing the audit log: {error}");
    }
}
