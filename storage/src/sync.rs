//! Group commit across partitions: fdatasync several partitions at once.
//!
//! Concurrent fdatasyncs overlap on the device and share journal commits, so
//! a shard whose turn touched many partitions waits about as long as for one.
//! With the `io-uring` feature, one submission carries every fdatasync of the
//! turn and one wait collects them; without it, or where the kernel refuses
//! io_uring (containers often do), scoped threads do the same.

use crate::partition::Partition;
use crate::StorageError;

/// Fdatasyncs batches of partitions. One per event loop; reused every turn.
pub struct SyncBatch {
    #[cfg(feature = "io-uring")]
    ring: Option<io_uring::IoUring>,
}

/// Partitions one submission may carry; a larger batch is split.
#[cfg(feature = "io-uring")]
const RING_ENTRIES: u32 = 64;

impl SyncBatch {
    /// Sets up io_uring when the feature is on and the kernel allows it.
    pub fn new() -> SyncBatch {
        #[cfg(feature = "io-uring")]
        {
            let ring = match io_uring::IoUring::new(RING_ENTRIES) {
                Ok(ring) => Some(ring),
                Err(error) => {
                    log::info!("io_uring is not available ({error}); fdatasyncs use threads");
                    None
                }
            };
            SyncBatch { ring }
        }
        #[cfg(not(feature = "io-uring"))]
        SyncBatch {}
    }

    /// Which mechanism this batch uses: `"io_uring"` or `"threads"`.
    pub fn mechanism(&self) -> &'static str {
        #[cfg(feature = "io-uring")]
        if self.ring.is_some() {
            return "io_uring";
        }
        "threads"
    }

    /// Runs [`Partition::sync`] on every partition, overlapping their
    /// fdatasyncs; returns one result per partition, in order.
    pub fn sync_all(&mut self, partitions: &mut [&mut Partition]) -> Vec<Result<(), StorageError>> {
        match partitions {
            [] => Vec::new(),
            [only] => vec![only.sync()],
            _ => {
                #[cfg(feature = "io-uring")]
                if let Some(ring) = self.ring.as_mut() {
                    return sync_with_ring(ring, partitions);
                }
                sync_with_threads(partitions)
            }
        }
    }
}

impl Default for SyncBatch {
    fn default() -> SyncBatch {
        SyncBatch::new()
    }
}

fn sync_with_threads(partitions: &mut [&mut Partition]) -> Vec<Result<(), StorageError>> {
    let (first, rest) = partitions
        .split_first_mut()
        .expect("at least two partitions");
    std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter_mut()
            .map(|partition| scope.spawn(move || partition.sync()))
            .collect();
        let mut results = vec![first.sync()];
        results.extend(
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a sync thread panicked")),
        );
        results
    })
}

#[cfg(feature = "io-uring")]
fn sync_with_ring(
    ring: &mut io_uring::IoUring,
    partitions: &mut [&mut Partition],
) -> Vec<Result<(), StorageError>> {
    use io_uring::{opcode, types};

    let mut outcomes: Vec<Option<std::io::Result<()>>> = Vec::with_capacity(partitions.len());
    for chunk_start in (0..partitions.len()).step_by(RING_ENTRIES as usize) {
        let chunk_end = (chunk_start + RING_ENTRIES as usize).min(partitions.len());
        let mut submitted = 0;
        for (index, partition) in partitions[chunk_start..chunk_end].iter().enumerate() {
            let Some(fd) = partition.fdatasync_target() else {
                outcomes.push(None);
                continue;
            };
            outcomes.push(None);
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data((chunk_start + index) as u64);
            // SAFETY: the entry refers to a file descriptor owned by a
            // partition that stays mutably borrowed (so open) until every
            // completion of this submission has been reaped below, and it
            // points at no memory buffer.
            unsafe {
                ring.submission()
                    .push(&entry)
                    .expect("the ring has room for RING_ENTRIES entries");
            }
            submitted += 1;
        }
        let mut reaped = 0;
        while reaped < submitted {
            if let Err(error) = ring.submit_and_wait(submitted - reaped) {
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The kernel did not take the batch: fall back for what is left.
                log::warn!("io_uring submit failed ({error}); syncing with threads");
                break;
            }
            for completion in ring.completion() {
                let index = completion.user_data() as usize;
                let result = completion.result();
                outcomes[index] = Some(if result < 0 {
                    Err(std::io::Error::from_raw_os_error(-result))
                } else {
                    Ok(())
                });
                reaped += 1;
            }
        }
    }
    partitions
        .iter_mut()
        .zip(outcomes)
        .map(|(partition, outcome)| match outcome {
            Some(result) => partition.finish_fdatasync(result),
            // Nothing to fdatasync through the ring (or the ring failed):
            // the plain path does whatever is needed.
            None => partition.sync(),
        })
        .collect()
}

/// Starts the write-back of every dirty page of `file` and returns without
/// waiting for it (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). This
/// makes nothing durable: it only spreads the device writes that a later
/// `fdatasync` of the file would otherwise do all at once.
pub(crate) fn start_write_back(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call (borrowed from
    // `file`); offset 0 and length 0 mean "to the end of the file", and the
    // call reads no memory of ours.
    let result =
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewRecord, PartitionConfig};

    fn record<'a>(channel: &'a [u8], body: &'a [u8]) -> NewRecord<'a> {
        NewRecord {
            channel,
            timestamp_ms: 1,
            kind: 0,
            sender: b"tester",
            client_message_id: b"",
            relation: 0,
            headers: b"",
            body,
        }
    }

    /// Several partitions synced in one batch all become durable, and a
    /// failed fdatasync fails only its own partition.
    #[test]
    fn a_batch_syncs_every_partition_and_isolates_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut partitions: Vec<Partition> = (0..5)
            .map(|id| {
                Partition::open(dir.path(), id, PartitionConfig::default())
                    .unwrap()
                    .0
            })
            .collect();
        let mut batch = SyncBatch::new();
        for round in 0..3 {
            for partition in &mut partitions {
                partition.append(&record(b"c", b"body")).unwrap();
                partition.flush().unwrap();
            }
            if round == 2 {
                partitions[3].inject_fault(crate::Fault::Sync);
            }
            let mut borrowed: Vec<&mut Partition> = partitions.iter_mut().collect();
            let results = batch.sync_all(&mut borrowed);
            for (index, result) in results.iter().enumerate() {
                assert_eq!(
                    result.is_err(),
                    round == 2 && index == 3,
                    "{index}: {result:?}"
                );
            }
        }
        assert!(partitions[3].append(&record(b"c", b"more")).is_err());
        assert!(partitions[0].append(&record(b"c", b"more")).is_ok());
        eprintln!("synced with {}", batch.mechanism());
    }

    #[test]
    fn write_back_starts_on_a_file_and_reports_what_it_cannot_do() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 64 * 1024]).unwrap();
        super::start_write_back(&file).unwrap();
        // A pipe has no pages to write back: the error comes through.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
        assert!(super::start_write_back(&pipe).is_err());
    }
}
