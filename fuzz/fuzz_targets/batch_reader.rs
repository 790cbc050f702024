//! Feeds arbitrary bytes to the batch decoder and, as a segment file, to the
//! offline verifier, the inspector and partition recovery. None may panic.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use starling_storage::{
    decode_batch, inspect_partition_dir, inspect_partition_dir_keyed, verify_partition_dir,
    verify_partition_dir_keyed, KeyRing, Partition, PartitionConfig, PartitionOptions,
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
    // The same with a key ring: encrypted batches are authenticated and
    // decrypted (a fuzzed batch passes its CRC but never its tag).
    let keys = std::sync::Arc::new(KeyRing::from_keys([(1, [7u8; 32])], None).unwrap());
    let _ = verify_partition_dir_keyed(&partition_dir, None, Some(&keys));
    let _ = inspect_partition_dir_keyed(&partition_dir, None, Some(&keys), |record| {
        let _ = record.body.len();
    });
    let options = PartitionOptions {
        keys: Some(keys),
        ..PartitionOptions::default()
    };
    if let Ok((partition, _)) = Partition::open_with(&root, 0, PartitionConfig::default(), options)
    {
        let _ = partition.read_last(b"general", 10);
        let _ = partition.for_each_since(0, |_| {});
    }
    std::fs::remove_dir_all(&root).unwrap();
});
