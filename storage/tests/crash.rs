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

/// What the fuzz target does, with seeded damage: random bytes overwritten
/// and random cuts must give a clean error or a working partition, never a
/// panic, and never a silent change unless it is a torn-tail cut.
#[test]
fn random_damage_never_panics() {
    let template = tempfile::tempdir().unwrap();
    {
        let (mut partition, _) = open(template.path(), PartitionConfig::default());
        for turn in 0..40 {
            append(&mut partition, ["a", "b", "c"][turn % 3], turn as u64);
            if turn % 4 == 0 {
                partition.flush().unwrap();
            }
        }
        partition.flush().unwrap();
    }
    let original = std::fs::read(segment_files(template.path()).pop().unwrap()).unwrap();
    let mut rng = Rng::new(99);
    for _ in 0..300 {
        let mut damaged = original.clone();
        for _ in 0..rng.below(4) + 1 {
            let at = rng.below(damaged.len() as u64) as usize;
            damaged[at] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            damaged.truncate(rng.below(damaged.len() as u64 + 1) as usize);
        }
        let dir = tempfile::tempdir().unwrap();
        let partition_path = partition_dir(dir.path());
        std::fs::create_dir_all(&partition_path).unwrap();
        let file = partition_path.join("00000000000000000000.seg");
        std::fs::write(&file, &damaged).unwrap();
        let verified = verify_partition_dir(&partition_path);
        let _ = starling_storage::inspect_partition_dir(&partition_path, |_| {});
        assert_eq!(
            std::fs::read(&file).unwrap(),
            damaged,
            "verify must not modify files"
        );
        match starling_storage::Partition::open(dir.path(), 0, PartitionConfig::default()) {
            Ok((partition, report)) => {
                let verified = verified.expect("open succeeded, so verify must too");
                assert_eq!(
                    verified.would_truncate.map_or(0, |t| t.2),
                    report.truncated_bytes
                );
                for channel in ["a", "b", "c"] {
                    let _ = partition.read_from(channel.as_bytes(), 1, usize::MAX);
                }
            }
            Err(_) => {
                assert!(verified.is_err());
                assert_eq!(
                    std::fs::read(&file).unwrap(),
                    damaged,
                    "a failed open must not modify files"
                );
            }
        }
    }
}
