//! Feeds arbitrary bytes to the batch decoder and, as a segment file, to the
//! offline verifier, the inspector and partition recovery. None may panic.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use starling_storage::{
    decode_batch, inspect_partition_dir, verify_partition_dir, Partition, PartitionConfig,
};

static RUN: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let _ = decode_batch(data);

    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!(
        "starling-fuzz-batch-reader-{}-{run}",
        std::process::id()
    ));
    let partition_dir = root.join("partitions").join("00000");
    std::fs::create_dir_all(&partition_dir).unwrap();
    std::fs::write(partition_dir.join("00000000000000000000.seg"), data).unwrap();

    let _ = verify_partition_dir(&partition_dir);
    let _ = inspect_partition_dir(&partition_dir, |record| {
        let _ = record.body.len();
    });
    if let Ok((partition, _)) = Partition::open(&root, 0, PartitionConfig::default()) {
        let _ = partition.read_last(b"general", 10);
        let _ = partition.for_each_since(0, |_| {});
    }
    std::fs::remove_dir_all(&root).unwrap();
});
