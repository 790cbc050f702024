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
