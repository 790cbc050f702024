//! Storage write and read costs: append + flush of 256-byte records in
//! batches of 1, 64 and 1024, with and without fdatasync, `read_last(50)`,
//! and `open` of a partition with 200 MB of log and 100k channels (full scan
//! against checkpoint).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling_storage::{NewRecord, Partition, PartitionConfig, PartitionOptions};

const BODY_BYTES: usize = 256;

fn record<'a>(channel: &'a [u8], body: &'a [u8]) -> NewRecord<'a> {
    NewRecord {
        channel,
        timestamp_ms: 1_700_000_000_000,
        kind: 1,
        sender: b"bench-sender",
        client_message_id: b"",
        relation: 0,
        headers: b"",
        body,
    }
}

fn append_flush(c: &mut Criterion) {
    let body = vec![0x5a; BODY_BYTES];
    let channels: Vec<Vec<u8>> = (0..64).map(|i| format!("room-{i}").into_bytes()).collect();
    let mut group = c.benchmark_group("log_append");
    for sync in [false, true] {
        for batch in [1usize, 64, 1024] {
            let dir = tempfile::tempdir().unwrap();
            let (mut partition, _) =
                Partition::open(dir.path(), 0, PartitionConfig::default()).unwrap();
            let mut next = 0usize;
            group.throughput(Throughput::Elements(batch as u64));
            let name = if sync {
                "append_flush_sync"
            } else {
                "append_flush"
            };
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for _ in 0..batch {
                        let channel = &channels[next % channels.len()];
                        next += 1;
                        partition.append(&record(channel, &body)).unwrap();
                    }
                    partition.flush().unwrap();
                    if sync {
                        partition.sync().unwrap();
                    }
                })
            });
        }
    }
    group.finish();
}

fn read_last(c: &mut Criterion) {
    let body = vec![0x5a; BODY_BYTES];
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = Partition::open(dir.path(), 0, PartitionConfig::default()).unwrap();
    // 100 busy channels interleaved, so a channel's last 50 records are
    // spread over many batches.
    for turn in 0..200 {
        for channel in 0..100 {
            let name = format!("room-{channel}");
            partition.append(&record(name.as_bytes(), &body)).unwrap();
        }
        if turn % 4 == 0 {
            partition.flush().unwrap();
        }
    }
    partition.flush().unwrap();
    c.bench_function("read_last_50", |b| {
        b.iter(|| {
            let page = partition.read_last(b"room-42", 50).unwrap();
            assert_eq!(page.records.len(), 50);
            page
        })
    });
}

/// Reopening a partition with 200 MB of log in 16 MiB segments and 100k
/// channels: a full scan, from the checkpoint after a clean close (nothing to
/// scan), and from the checkpoint of the last roll after a crash (the active
/// segment is scanned).
fn open(c: &mut Criterion) {
    const LOG_BYTES: u64 = 200 * 1024 * 1024;
    const CHANNELS: usize = 100_000;
    let body = vec![0x5a; BODY_BYTES];
    let config = PartitionConfig {
        segment_bytes_max: 16 * 1024 * 1024,
        ..PartitionConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut partition, _) = Partition::open(dir.path(), 0, config.clone()).unwrap();
        let mut next = 0usize;
        while partition.size_bytes() < LOG_BYTES {
            for _ in 0..1024 {
                let name = format!("room-{:08}", next % CHANNELS);
                next += 1;
                partition.append(&record(name.as_bytes(), &body)).unwrap();
            }
            partition.flush().unwrap();
        }
        partition.sync().unwrap();
        partition.wait_for_background();
        // Leaves the checkpoint of the last roll, not one at the very end.
        partition.simulate_crash();
    }
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, use_checkpoint, clean) in [
        ("full_scan", false, false),
        ("checkpoint_after_crash", true, false),
        ("checkpoint_after_close", true, true),
    ] {
        let options = PartitionOptions {
            use_checkpoint,
            ..PartitionOptions::default()
        };
        if clean {
            // A clean close writes a checkpoint at the end of the log.
            let (partition, _) =
                Partition::open_with(dir.path(), 0, config.clone(), options.clone()).unwrap();
            drop(partition);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let (partition, report) =
                    Partition::open_with(dir.path(), 0, config.clone(), options.clone()).unwrap();
                assert_eq!(report.checkpoint_position.is_some(), use_checkpoint);
                assert_eq!(partition.channel_count(), CHANNELS);
                // No close checkpoint, so every run sees the same directory.
                partition.simulate_crash();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append_flush, read_last, open);
criterion_main!(benches);
