//! Storage write and read costs: append + flush of 256-byte records in
//! batches of 1, 64 and 1024, with and without fdatasync, and `read_last(50)`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling_storage::{NewRecord, Partition, PartitionConfig};

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

criterion_group!(benches, append_flush, read_last);
criterion_main!(benches);
