//! Crash images: what a crash leaves on disk, and what a flipped bit does.

mod common;

use common::*;
use starling_storage::{verify_partition_dir, PartitionConfig, StorageError};

/// Writes three synced turns, then a last batch of two records; returns the
/// synced length of the last segment and its full length.
fn write_with_last_batch(dir: &std::path::Path) -> (u64, u64) {
    let (mut partition, _) = open(dir, PartitionConfig::default());
    for turn in 0..3 {
        append(&mut partition, "a", turn);
        append(&mut partition, "b", turn);
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    let synced = last_segment_len(dir);
    append(&mut partition, "a", 9);
    append(&mut partition, "b", 9);
    partition.flush().unwrap();
    partition.sync().unwrap();
    (synced, last_segment_len(dir))
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_batch() {
    let template = tempfile::tempdir().unwrap();
    let (synced, full) = write_with_last_batch(template.path());
    let original = std::fs::read(segment_files(template.path()).pop().unwrap()).unwrap();
    for cut in synced..full {
        let dir = tempfile::tempdir().unwrap();
        let (partition, _) = open(dir.path(), PartitionConfig::default());
        drop(partition);
        let file = segment_files(dir.path()).pop().unwrap();
        std::fs::write(&file, &original[..cut as usize]).unwrap();

        let verify = verify_partition_dir(&partition_dir(dir.path())).unwrap();
        if cut > synced {
            let (_, at, bytes) = verify.would_truncate.clone().expect("torn tail reported");
            assert_eq!((at, bytes), (synced, cut - synced));
        }

        let (mut partition, report) = open(dir.path(), PartitionConfig::default());
        assert_eq!(report.truncated_bytes, cut - synced, "cut at {cut}");
        if cut > synced {
            assert_eq!(report.truncated_at.as_ref().unwrap().1, synced);
        }
        assert_eq!(last_segment_len(dir.path()), synced);
        check_channel(&partition, "a");
        assert_eq!(partition.head_seq(b"a"), 3);
        // Seqs continue gap-free after the cut.
        assert_eq!(append(&mut partition, "a", 10), 4);
        partition.flush().unwrap();
        check_channel(&partition, "a");
    }
}

#[test]
fn record_cut_in_half() {
    let dir = tempfile::tempdir().unwrap();
    let (synced, full) = write_with_last_batch(dir.path());
    // Half-way through the second record of the last batch.
    crash_truncate_last_segment(dir.path(), full - (full - synced) / 4);
    let (partition, report) = open(dir.path(), PartitionConfig::default());
    assert!(report.truncated_bytes > 0);
    assert_eq!(partition.head_seq(b"b"), 3);
    check_channel(&partition, "b");
}

#[test]
fn unsynced_tail_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let synced;
    {
        let (mut partition, _) = open(dir.path(), PartitionConfig::default());
        for turn in 0..5 {
            append(&mut partition, "a", turn);
            partition.flush().unwrap();
        }
        partition.sync().unwrap();
        synced = last_segment_len(dir.path());
        for turn in 5..9 {
            append(&mut partition, "a", turn);
            partition.flush().unwrap();
        }
    }
    crash_truncate_last_segment(dir.path(), synced);
    let (mut partition, report) = open(dir.path(), PartitionConfig::default());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(partition.head_seq(b"a"), 5);
    assert_eq!(append(&mut partition, "a", 10), 6);
    partition.flush().unwrap();
    check_channel(&partition, "a");
}

#[test]
fn flipped_bit_in_a_non_last_batch_is_an_error_and_nothing_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    let mut batch_starts = Vec::new();
    for turn in 0..5 {
        batch_starts.push(last_segment_len(dir.path()));
        append(&mut partition, "a", turn);
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    drop(partition);
    let file = segment_files(dir.path()).pop().unwrap();
    let len_before = std::fs::metadata(&file).unwrap().len();
    // The middle of the second batch.
    let (start, end) = (batch_starts[1], batch_starts[2]);
    flip_bit(&file, (start + end) / 2, 3);

    let error = verify_partition_dir(&partition_dir(dir.path())).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StorageError::Corrupt { position, .. } if position == start),
        "{message}"
    );
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains(&format!("byte {start}")), "{message}");

    let error = starling_storage::Partition::open(dir.path(), 0, PartitionConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(error, StorageError::Corrupt { position, .. } if position == start),
        "{error}"
    );
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len_before);
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..100 {
        append(&mut partition, "a", turn);
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    drop(partition);
    let first = segment_files(dir.path()).remove(0);
    let len = std::fs::metadata(&first).unwrap().len();
    // The last byte of a sealed segment: it would look torn if it were last.
    flip_bit(&first, len - 1, 0);
    let error = verify_partition_dir(&partition_dir(dir.path())).unwrap_err();
    assert!(error.to_string().contains("not the last"), "{error}");
    assert!(starling_storage::Partition::open(dir.path(), 0, small_segments()).is_err());
    assert_eq!(std::fs::metadata(&first).unwrap().len(), len);
}
