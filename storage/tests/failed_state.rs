//! After a failed write or fsync the partition refuses writes until reopened.

mod common;

use common::*;
use starling_storage::{Fault, PartitionConfig, StorageError};

#[test]
fn failed_write_stops_the_partition_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    append(&mut partition, "a", 1);
    partition.flush().unwrap();
    partition.sync().unwrap();
    append(&mut partition, "a", 2);
    partition.inject_fault(Fault::Write);
    let error = partition.flush().unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error}");
    for result in [
        partition.append(&new_record("a", b"x", 3)).map(|_| ()),
        partition.flush(),
        partition.sync(),
    ] {
        let error = result.unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::Failed {
                    partition_id: 0,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("reopen"), "{error}");
    }
    // Reads still work and never show the unwritten record.
    assert_eq!(partition.head_seq(b"a"), 1);
    assert_eq!(partition.read_last(b"a", 5).unwrap().records.len(), 1);
    drop(partition);
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    assert_eq!(append(&mut partition, "a", 3), 2);
    partition.flush().unwrap();
    partition.sync().unwrap();
}

#[test]
fn failed_fsync_is_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    append(&mut partition, "a", 1);
    partition.flush().unwrap();
    partition.inject_fault(Fault::Sync);
    assert!(partition.sync().is_err());
    assert!(matches!(partition.sync(), Err(StorageError::Failed { .. })));
    assert!(matches!(
        partition.append(&new_record("a", b"x", 3)),
        Err(StorageError::Failed { .. })
    ));
}

/// The shard journal's write or fdatasync of a turn failed after the
/// partition flushed the turn's batches: `withdraw_since` takes them back
/// out of every read (their publishers are told they failed), over a
/// segment roll too, for channels with records before and for channels
/// the turn created; the partition refuses writes as after its own failure.
#[test]
fn withdrawn_records_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for timestamp_ms in 1..=3 {
        append(&mut partition, "a", timestamp_ms);
    }
    append(&mut partition, "b", 4);
    partition.flush().unwrap();
    let from = partition.end_position();
    let error = StorageError::Failed {
        partition_id: 0,
        reason: "injected journal failure".to_string(),
    };
    // Nothing flushed past `from`: nothing to withdraw, and the partition
    // goes on.
    partition.withdraw_since(from, &error).unwrap();
    // The failed turn: enough to roll to new segments.
    for timestamp_ms in 10..200 {
        append(&mut partition, "a", timestamp_ms);
        append(&mut partition, "new", timestamp_ms);
    }
    partition.flush().unwrap();
    assert!(segment_files(dir.path()).len() > 1, "the turn rolls");
    assert_eq!(partition.head_seq(b"a"), 193);
    partition.withdraw_since(from, &error).unwrap();

    assert_eq!(partition.head_seq(b"a"), 3);
    assert_eq!(partition.head_seq(b"b"), 1);
    assert_eq!(partition.head_seq(b"new"), 0);
    let seqs = |records: &[starling_storage::Record]| -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    };
    let last = partition.read_last(b"a", 50).unwrap();
    assert_eq!((seqs(&last.records), last.head_seq), (vec![1, 2, 3], 3));
    assert_eq!(
        seqs(&partition.read_from(b"a", 2, 50).unwrap().records),
        [2, 3]
    );
    assert!(partition.read_from(b"a", 4, 50).unwrap().records.is_empty());
    assert_eq!(
        seqs(&partition.read_before(b"a", 100, 50).unwrap().records),
        [1, 2, 3]
    );
    assert!(partition.read_last(b"new", 50).unwrap().records.is_empty());
    let mut since = Vec::new();
    partition
        .for_each_since(0, |record| since.push(record.timestamp_ms))
        .unwrap();
    assert_eq!(since, [1, 2, 3, 4]);
    assert!(matches!(
        partition.append(&new_record("a", b"x", 300)),
        Err(StorageError::Failed { .. })
    ));
}
