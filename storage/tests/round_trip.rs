//! Append, flush, reopen and read back through the public API.

mod common;

use common::*;
use starling_storage::{PartitionConfig, ReadMode, StorageError};

#[test]
fn pending_records_are_invisible_until_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, report) = open(dir.path(), PartitionConfig::default());
    assert_eq!(report.records, 0);
    append(&mut partition, "general", 1);
    append(&mut partition, "general", 2);
    partition.flush().unwrap();
    append(&mut partition, "general", 3);
    assert_eq!(partition.pending_records(), 1);
    assert_eq!(partition.head_seq(b"general"), 2);
    assert_eq!(partition.appended_seq(b"general"), 3);
    // Reads work while the newest record is pending and see only flushed ones.
    let page = partition.read_last(b"general", 10).unwrap();
    assert_eq!(page.head_seq, 2);
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    partition.flush().unwrap();
    partition.sync().unwrap();
    assert_eq!(
        partition.read_last(b"general", 10).unwrap().records.len(),
        3
    );
    assert_eq!(partition.pending_records(), 0);
    // Flushing nothing is a no-op.
    partition.flush().unwrap();
}

/// The buffers a large turn grew are kept for the next turn and freed by
/// `release_idle_memory`, which leaves the partition as it was: reads and
/// the next appends work, and pending records are never dropped.
#[test]
fn idle_memory_is_released_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    for i in 0..2_000 {
        append(&mut partition, &format!("room-{}", i % 100), i);
    }
    partition.flush().unwrap();
    assert!(
        partition.idle_buffer_bytes() > 2_000 * 24,
        "kept for the next turn"
    );
    append(&mut partition, "room-0", 2_000);
    partition.release_idle_memory(3_000);
    assert_eq!(partition.pending_records(), 1, "pending records are kept");
    partition.flush().unwrap();
    partition.release_idle_memory(3_000);
    assert_eq!(partition.idle_buffer_bytes(), 0);
    append(&mut partition, "room-0", 2_001);
    partition.flush().unwrap();
    let page = partition.read_last(b"room-0", 50).unwrap();
    assert_eq!(page.head_seq, 22);
    assert_eq!(page.records.len(), 22);
}

#[test]
fn many_interleaved_channels_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let channels: Vec<String> = (0..13).map(|i| format!("room-{i}")).collect();
    let mut rng = Rng::new(7);
    {
        let (mut partition, _) = open(dir.path(), small_segments());
        for turn in 0..120 {
            for _ in 0..rng.below(9) + 1 {
                let channel = &channels[rng.below(channels.len() as u64) as usize];
                append(&mut partition, channel, turn);
            }
            partition.flush().unwrap();
            if turn % 10 == 0 {
                partition.sync().unwrap();
            }
        }
        partition.sync().unwrap();
        assert!(
            segment_files(dir.path()).len() > 3,
            "expected several segments"
        );
        for channel in &channels {
            check_channel(&partition, channel);
        }
    }
    let (mut partition, report) = open(dir.path(), small_segments());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.channels, channels.len());
    for mode in [ReadMode::Mmap, ReadMode::Pread] {
        partition.set_read_mode(mode);
        for channel in &channels {
            check_channel(&partition, channel);
            check_every_position(&partition, channel);
        }
    }
}

/// read_from / read_before / read_last at every position and a few limits.
fn check_every_position(partition: &starling_storage::Partition, channel: &str) {
    let head = partition.head_seq(channel.as_bytes());
    let seqs =
        |page: starling_storage::ReadPage| page.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    for limit in [1usize, 3, 50] {
        for at in 0..=head + 2 {
            let from = seqs(partition.read_from(channel.as_bytes(), at, limit).unwrap());
            let first = at.max(1);
            let expected: Vec<u64> = (first..=head).take(limit).collect();
            assert_eq!(from, expected, "read_from({at}, {limit}) of {channel}");

            let before = seqs(
                partition
                    .read_before(channel.as_bytes(), at, limit)
                    .unwrap(),
            );
            let end = at.saturating_sub(1).min(head);
            let start = end.saturating_sub(limit as u64 - 1).max(1);
            let expected: Vec<u64> = if end == 0 {
                vec![]
            } else {
                (start..=end).collect()
            };
            assert_eq!(before, expected, "read_before({at}, {limit}) of {channel}");
        }
        let last = seqs(partition.read_last(channel.as_bytes(), limit).unwrap());
        let start = head.saturating_sub(limit as u64 - 1).max(1);
        let expected: Vec<u64> = if head == 0 {
            vec![]
        } else {
            (start..=head).collect()
        };
        assert_eq!(last, expected);
    }
}

#[test]
fn long_channel_search_uses_skip_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..1000u64 {
        append(&mut partition, "busy", turn);
        if turn % 3 == 0 {
            append(&mut partition, "quiet", turn);
        }
        if turn % 17 == 0 {
            partition.flush().unwrap();
        }
    }
    partition.flush().unwrap();
    check_every_position(&partition, "quiet");
    for at in [1u64, 2, 511, 512, 513, 999, 1000] {
        let page = partition.read_from(b"busy", at, 2).unwrap();
        assert_eq!(page.records[0].seq, at);
        assert_eq!(page.records[0].body, body_for("busy", at));
    }
}

#[test]
fn a_batch_bigger_than_a_segment_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    append(&mut partition, "a", 1);
    partition.flush().unwrap();
    let big = vec![7u8; 10_000];
    partition.append(&new_record("a", &big, 2)).unwrap();
    partition.flush().unwrap();
    append(&mut partition, "a", 3);
    partition.flush().unwrap();
    partition.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 3);
    drop(partition);
    let (partition, _) = open(dir.path(), small_segments());
    let page = partition.read_last(b"a", 10).unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(page.records[1].body.len(), 10_000);
}

#[test]
fn for_each_since_visits_recent_records_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for timestamp in 0..200u64 {
        append(
            &mut partition,
            if timestamp % 2 == 0 { "even" } else { "odd" },
            timestamp,
        );
        partition.flush().unwrap();
    }
    let mut seen = Vec::new();
    partition
        .for_each_since(150, |r| seen.push(r.timestamp_ms))
        .unwrap();
    assert_eq!(seen, (150..200).collect::<Vec<_>>());
}

#[test]
fn oversized_fields_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = PartitionConfig {
        record_body_bytes_max: 100,
        ..PartitionConfig::default()
    };
    let (mut partition, _) = open(dir.path(), config);
    let body = vec![0u8; 101];
    let error = partition.append(&new_record("a", &body, 1)).unwrap_err();
    assert!(matches!(
        error,
        StorageError::TooLarge { field: "body", .. }
    ));
    assert!(
        error.to_string().contains("record_body_bytes_max"),
        "{error}"
    );
    let channel = "c".repeat(2000);
    let error = partition.append(&new_record(&channel, b"", 1)).unwrap_err();
    assert!(error.to_string().contains("CHANNEL_BYTES_MAX"), "{error}");
    assert!(partition.append(&new_record("", b"", 1)).is_err());
    assert_eq!(partition.appended_seq(b"a"), 0);
}

#[test]
fn a_partition_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (_partition, _) = open(dir.path(), PartitionConfig::default());
    let error = starling_storage::Partition::open(dir.path(), 0, PartitionConfig::default())
        .err()
        .unwrap();
    assert!(matches!(error, StorageError::Locked { .. }), "{error}");
}

#[test]
fn records_outlive_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    append(&mut partition, "general", 1);
    partition.flush().unwrap();
    let page = partition.read_last(b"general", 1).unwrap();
    drop(partition);
    assert_eq!(page.records[0].body, body_for("general", 1));
}

/// Segment sizes outside what the format can hold are refused when a
/// partition opens, with the setting named: below a page, or above 2 GiB
/// (a flush, and the journal entry that repeats it, must stay below 4 GiB).
#[test]
fn segment_sizes_out_of_range_are_refused_with_the_setting_named() {
    for bytes in [1024, 4 * 1024 * 1024 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let config = PartitionConfig {
            segment_bytes_max: bytes,
            ..PartitionConfig::default()
        };
        let error = starling_storage::Partition::open(dir.path(), 0, config)
            .err()
            .expect("refused");
        assert!(
            matches!(&error, StorageError::InvalidConfig { detail } if detail.contains("segment_bytes_max")),
            "{error}"
        );
    }
}
