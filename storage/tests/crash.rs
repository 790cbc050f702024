//! Crash images: what a crash leaves on disk, and what a flipped bit does.

mod common;

use common::*;
use starling_storage::{verify_partition_dir, PartitionConfig, StorageError};

/// Writes three synced turns, then a last batch of two records; returns the
/// synced length of the last segment and its full length.
fn write_with_last_batch(dir: &std::path::Path) -> (u64, u64) {
    let (mut partition, _) = open_plain(dir, PartitionConfig::default());
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
        let (partition, _) = open_plain(dir.path(), PartitionConfig::default());
        drop(partition);
        let file = segment_files(dir.path()).pop().unwrap();
        std::fs::write(&file, &original[..cut as usize]).unwrap();
        // Zero bytes at the end of the cut are not data (a zero tail).
        let torn = torn_bytes(&original[..cut as usize], synced);

        let verify = verify_partition_dir(&partition_dir(dir.path())).unwrap();
        if torn > 0 {
            let (_, at, bytes) = verify.would_truncate.clone().expect("torn tail reported");
            assert_eq!((at, bytes), (synced, torn));
        }

        let (mut partition, report) = open_plain(dir.path(), PartitionConfig::default());
        assert_eq!(report.truncated_bytes, torn, "cut at {cut}");
        if torn > 0 {
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
    let (partition, report) = open_plain(dir.path(), PartitionConfig::default());
    assert!(report.truncated_bytes > 0);
    assert_eq!(partition.head_seq(b"b"), 3);
    check_channel(&partition, "b");
}

#[test]
fn unsynced_tail_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let synced;
    {
        let (mut partition, _) = open_plain(dir.path(), PartitionConfig::default());
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
        partition.simulate_crash();
    }
    crash_truncate_last_segment(dir.path(), synced);
    let (mut partition, report) = open_plain(dir.path(), PartitionConfig::default());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(partition.head_seq(b"a"), 5);
    assert_eq!(append(&mut partition, "a", 10), 6);
    partition.flush().unwrap();
    check_channel(&partition, "a");
}

#[test]
fn flipped_bit_in_a_non_last_batch_is_an_error_and_nothing_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open_plain(dir.path(), PartitionConfig::default());
    let mut batch_starts = Vec::new();
    for turn in 0..5 {
        batch_starts.push(last_segment_len(dir.path()));
        append(&mut partition, "a", turn);
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    // No checkpoint on close: recovery scans the active segment.
    partition.simulate_crash();
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

/// Open does not read sealed segments before the checkpoint: a flipped bit
/// in one is found by the read that returns the record and by `verify`
/// (and by a full scan), not by open.
#[test]
fn flipped_bit_in_a_sealed_segment_is_found_by_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..100 {
        append(&mut partition, "a", turn);
        partition.flush().unwrap();
    }
    drop(partition);
    let first = segment_files(dir.path()).remove(0);
    let len = std::fs::metadata(&first).unwrap().len();
    let logical = logical_len(&first);
    // The last byte of the last record of a sealed segment: it would look
    // torn if it were last.
    flip_bit(&first, logical - 1, 0);
    let error = verify_partition_dir(&partition_dir(dir.path())).unwrap_err();
    assert!(error.to_string().contains("not the last"), "{error}");
    let error = starling_storage::Partition::open_with(
        dir.path(),
        0,
        small_segments(),
        starling_storage::PartitionOptions {
            use_checkpoint: false,
            ..Default::default()
        },
    )
    .err()
    .expect("a full scan finds it");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");

    let (partition, report) = open(dir.path(), small_segments());
    assert!(report.checkpoint_position.is_some());
    // Only the active segment after the close checkpoint: its zero tail if
    // it is preallocated, nothing otherwise.
    assert!(report.scanned_bytes <= 4096, "{}", report.scanned_bytes);
    assert_eq!(report.batches, 0);
    let error = partition.read_from(b"a", 1, usize::MAX).unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt { path, .. } if *path == first),
        "{error}"
    );
    // Records in other segments still read.
    assert_eq!(partition.read_last(b"a", 3).unwrap().records.len(), 3);
    drop(partition);
    assert_eq!(std::fs::metadata(&first).unwrap().len(), len);
}

/// A config whose segments are small enough to preallocate in tests.
fn preallocated() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 64 * 1024,
        ..PartitionConfig::default()
    }
}

/// Rolls once with a spare ready, so that the active segment is a
/// preallocated one; then three synced turns and a last synced batch.
/// Returns the synced logical length before the last batch and after it.
fn write_into_preallocated(dir: &std::path::Path) -> (u64, u64) {
    let (mut partition, _) = open(dir, preallocated());
    partition.wait_for_background();
    let mut turn = 0;
    while segment_files(dir).len() < 2 {
        append(&mut partition, "a", turn);
        append(&mut partition, "b", turn);
        partition.flush().unwrap();
        // The spare is asked for at half full; let it be ready before the roll.
        partition.wait_for_background();
        turn += 1;
    }
    assert_eq!(last_segment_file_len(dir), 64 * 1024, "preallocated");
    for _ in 0..3 {
        append(&mut partition, "a", turn);
        append(&mut partition, "b", turn);
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    let synced = last_segment_len(dir);
    append(&mut partition, "a", 99);
    append(&mut partition, "b", 99);
    partition.flush().unwrap();
    partition.sync().unwrap();
    let full = last_segment_len(dir);
    partition.wait_for_background();
    partition.simulate_crash();
    (synced, full)
}

fn copy_partition(from: &std::path::Path, to: &std::path::Path) {
    let target = partition_dir(to);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(partition_dir(from)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn torn_write_inside_a_zero_tail_is_zeroed() {
    let template = tempfile::tempdir().unwrap();
    let (synced, full) = write_into_preallocated(template.path());
    let original = std::fs::read(segment_files(template.path()).pop().unwrap()).unwrap();
    for cut in synced..=full {
        let dir = tempfile::tempdir().unwrap();
        copy_partition(template.path(), dir.path());
        // The pages after the cut never reached the disk.
        crash_zero_last_segment_from(dir.path(), cut);
        let mut image = original.clone();
        image[cut as usize..].fill(0);
        let torn = if cut == full {
            0
        } else {
            torn_bytes(&image, synced)
        };

        let verify = verify_partition_dir(&partition_dir(dir.path())).unwrap();
        assert_eq!(
            verify.would_truncate.as_ref().map(|t| (t.1, t.2)),
            (torn > 0).then_some((synced, torn)),
            "cut at {cut}"
        );
        let (mut partition, report) = open(dir.path(), preallocated());
        assert_eq!(report.truncated_bytes, torn, "cut at {cut}");
        assert_eq!(
            report.truncated_at.as_ref().map(|t| t.1),
            (torn > 0).then_some(synced)
        );
        // Zeroed, not truncated: the segment keeps its preallocated size.
        assert_eq!(last_segment_file_len(dir.path()), 64 * 1024);
        let expected = if cut == full { full } else { synced };
        assert_eq!(last_segment_len(dir.path()), expected);
        check_channel(&partition, "a");
        check_channel(&partition, "b");
        let head = partition.head_seq(b"a");
        assert_eq!(append(&mut partition, "a", 100), head + 1);
        partition.flush().unwrap();
        partition.sync().unwrap();
        partition.simulate_crash();
        let (partition, report) = open(dir.path(), preallocated());
        assert_eq!(report.truncated_bytes, 0);
        check_channel(&partition, "a");
        assert!(verify_partition_dir(&partition_dir(dir.path()))
            .unwrap()
            .would_truncate
            .is_none());
    }
}

#[test]
fn clean_zero_tails_are_not_torn_tails() {
    let dir = tempfile::tempdir().unwrap();
    let (_, full) = write_into_preallocated(dir.path());
    // Sealed segments rolled before they filled up end with zeros too.
    for options in [true, false] {
        let (partition, report) = starling_storage::Partition::open_with(
            dir.path(),
            0,
            preallocated(),
            starling_storage::PartitionOptions {
                use_checkpoint: options,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.truncated_at, None);
        assert_eq!(report.checkpoint_position.is_some(), options);
        check_channel(&partition, "a");
        check_channel(&partition, "b");
        assert_eq!(
            partition.size_bytes(),
            logical_len(&segment_files(dir.path())[0]) + full,
            "logical bytes"
        );
        partition.simulate_crash();
    }
    let verify = verify_partition_dir(&partition_dir(dir.path())).unwrap();
    assert_eq!(verify.would_truncate, None);
    assert_eq!(
        verify.bytes,
        logical_len(&segment_files(dir.path())[0]) + full
    );
}

#[test]
fn flipped_byte_in_the_zero_tail_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), preallocated());
    let body = vec![7u8; 5000];
    // Fill two preallocated segments with 5 kB records: each is rolled with
    // a zero tail of up to 5 kB.
    partition.wait_for_background();
    let mut turn = 0;
    while segment_files(dir.path()).len() < 4 {
        partition.wait_for_background();
        partition.append(&new_record("big", &body, turn)).unwrap();
        partition.flush().unwrap();
        turn += 1;
    }
    drop(partition);
    let sealed = segment_files(dir.path())[1].clone();
    let logical = logical_len(&sealed);
    let file_len = std::fs::metadata(&sealed).unwrap().len();
    assert_eq!(file_len, 64 * 1024);
    assert!(logical < file_len, "a zero tail");
    flip_bit(&sealed, (logical + file_len) / 2, 5);

    let error = verify_partition_dir(&partition_dir(dir.path())).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("zero tail"), "{message}");
    assert!(message.contains("not the last"), "{message}");
    assert!(
        matches!(&error, StorageError::Corrupt { path, position, .. } if *path == sealed && *position == logical),
        "{message}"
    );
    let error = starling_storage::Partition::open_with(
        dir.path(),
        0,
        preallocated(),
        starling_storage::PartitionOptions {
            use_checkpoint: false,
            ..Default::default()
        },
    )
    .err()
    .expect("a full scan finds it");
    assert!(error.to_string().contains("zero tail"), "{error}");
}

#[test]
fn leftover_spare_files_are_reused_or_deleted_never_read_as_segments() {
    let dir = tempfile::tempdir().unwrap();
    let spare = partition_dir(dir.path()).join("next-segment.prealloc");
    let unfinished = partition_dir(dir.path()).join("next-segment.prealloc.tmp");
    {
        let (mut partition, _) = open(dir.path(), preallocated());
        // A spare is prepared once the active segment is half full.
        while partition.size_bytes() < 32 * 1024 {
            append(&mut partition, "a", 1);
            partition.flush().unwrap();
        }
        partition.wait_for_background();
        partition.simulate_crash();
    }
    assert_eq!(std::fs::metadata(&spare).unwrap().len(), 64 * 1024);
    std::fs::write(&unfinished, b"half a spare").unwrap();
    let before = std::fs::metadata(&spare).unwrap();
    let verify = verify_partition_dir(&partition_dir(dir.path())).unwrap();
    assert_eq!(verify.segments, 1);

    let (mut partition, report) = open(dir.path(), preallocated());
    assert_eq!(report.segments, 1);
    assert!(!unfinished.exists(), "an unfinished spare is deleted");
    // The finished spare is kept as it is and becomes the next segment.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&spare).unwrap().ino(), before.ino());
    while segment_files(dir.path()).len() < 2 {
        append(&mut partition, "a", 2);
        partition.flush().unwrap();
    }
    let second = segment_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&second).unwrap().ino(), before.ino());
    check_channel(&partition, "a");
    partition.wait_for_background();
    drop(partition);

    // A spare of another size (the segment size changed) is deleted, and
    // the next one has the new size.
    let (mut partition, _) = open(dir.path(), small_segments());
    assert!(!spare.exists());
    check_channel(&partition, "a");
    let segments = segment_files(dir.path()).len();
    while !spare.exists() && segment_files(dir.path()).len() < segments + 2 {
        append(&mut partition, "a", 3);
        partition.flush().unwrap();
        partition.wait_for_background();
    }
    assert_eq!(std::fs::metadata(&spare).unwrap().len(), 4096);
    check_channel(&partition, "a");
}

/// Many sealed segments: a reopen reads only the log after the checkpoint
/// and rebuilds exactly the same channel table as a full scan.
#[test]
fn reopen_reads_only_the_log_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let channels: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    let mut rng = Rng::new(3);
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..600 {
        for _ in 0..rng.below(4) + 1 {
            let channel = &channels[rng.below(channels.len() as u64) as usize];
            append(&mut partition, channel, turn);
        }
        partition.flush().unwrap();
    }
    partition.sync().unwrap();
    let size = partition.size_bytes();
    // A crash: no checkpoint on close, only the one of the last roll.
    partition.wait_for_background();
    partition.simulate_crash();
    let files = segment_files(dir.path());
    assert!(files.len() > 20, "{} segments", files.len());

    let (partition, report) = open(dir.path(), small_segments());
    let position = report
        .checkpoint_position
        .expect("recovered from a checkpoint");
    let active_base: u64 = files
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(position <= active_base && position + 4096 > active_base);
    assert!(
        report.scanned_bytes <= 2 * 4096,
        "read {} bytes",
        report.scanned_bytes
    );
    assert_eq!(partition.size_bytes(), size);
    let (full, full_report) = {
        partition.simulate_crash();
        open_full_scan(dir.path(), small_segments())
    };
    assert!(full_report.scanned_bytes >= size);
    assert_eq!(full_report.checkpoint_position, None);
    full.simulate_crash();
    let (partition, _) = open(dir.path(), small_segments());
    for channel in &channels {
        check_channel(&partition, channel);
    }
    assert_eq!(partition.channel_count(), channels.len());
    assert!(verify_partition_dir(&partition_dir(dir.path())).is_ok());
}

/// A damaged checkpoint is skipped: recovery uses the previous one, or
/// scans the whole log, and loses nothing.
#[test]
fn damaged_checkpoint_falls_back_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..200 {
        append(&mut partition, ["a", "b", "c"][turn % 3], turn as u64);
        partition.flush().unwrap();
        // Each roll's checkpoint is written (the background thread merges
        // queued ones: on a busy machine all of them became one, and there
        // was no previous checkpoint to fall back to).
        partition.wait_for_background();
    }
    drop(partition);
    let checkpoint = partition_dir(dir.path()).join("channels.checkpoint");
    let previous = partition_dir(dir.path()).join("channels.checkpoint.previous");
    assert!(previous.exists());
    flip_bit(&checkpoint, 40, 1);
    let (partition, report) = open(dir.path(), small_segments());
    assert!(report.checkpoint_position.is_some(), "the previous one");
    for channel in ["a", "b", "c"] {
        check_channel(&partition, channel);
    }
    partition.simulate_crash();
    flip_bit(&previous, 40, 1);
    let (partition, report) = open(dir.path(), small_segments());
    assert_eq!(report.checkpoint_position, None, "a full scan");
    for channel in ["a", "b", "c"] {
        check_channel(&partition, channel);
    }
}

/// A crash between a checkpoint's fsync and its rename leaves it as the
/// temporary file, newer than the one in place: the open takes it, and
/// puts it in place before anything is deleted on its word. Before, it
/// stayed temporary; the next checkpoint write truncates that file first,
/// so a crash then left only the older checkpoint.
#[test]
fn a_checkpoint_left_temporary_by_a_crash_is_put_in_place_at_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), small_segments());
    for turn in 0..200 {
        append(&mut partition, ["a", "b", "c"][turn % 3], turn as u64);
        partition.flush().unwrap();
        partition.wait_for_background();
    }
    drop(partition);
    let dir_path = partition_dir(dir.path());
    let current = dir_path.join("channels.checkpoint");
    let previous = dir_path.join("channels.checkpoint.previous");
    let temporary = dir_path.join("channels.checkpoint.tmp");
    let newest = std::fs::read(&current).unwrap();
    // As a crash leaves it: the newest still temporary, the older in place.
    std::fs::rename(&current, &temporary).unwrap();
    std::fs::rename(&previous, &current).unwrap();
    let (partition, report) = open(dir.path(), small_segments());
    assert!(report.checkpoint_position.is_some());
    assert!(!temporary.exists(), "put in place");
    assert_eq!(std::fs::read(&current).unwrap(), newest);
    for channel in ["a", "b", "c"] {
        check_channel(&partition, channel);
    }
}

/// What the fuzz target does, with seeded damage: random bytes overwritten
/// and random cuts must give a clean error or a working partition, never a
/// panic, and never a silent change unless it is a torn-tail cut.
#[test]
fn random_damage_never_panics() {
    let template = tempfile::tempdir().unwrap();
    {
        let (mut partition, _) = open_plain(template.path(), PartitionConfig::default());
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
        if rng.below(2) == 0 {
            // As if preallocated: a zero tail.
            damaged.resize(8192, 0);
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
        let options = starling_storage::PartitionOptions {
            preallocate: false,
            ..Default::default()
        };
        match starling_storage::Partition::open_with(
            dir.path(),
            0,
            PartitionConfig::default(),
            options,
        ) {
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

/// A clean close leaves a marker that lets the next open skip re-reading the
/// zero tail; the open removes it at once, so a crash after it is recovered
/// by a scan as usual.
#[test]
fn a_clean_close_lets_the_next_open_skip_the_tail_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let marker = partition_dir(dir.path()).join("CLEAN");
    {
        let (mut partition, _) = open(dir.path(), preallocated());
        for turn in 0..5 {
            append(&mut partition, "a", turn);
            partition.flush().unwrap();
        }
    }
    assert!(marker.exists(), "a clean close leaves the marker");
    let (mut partition, report) = open(dir.path(), preallocated());
    assert!(
        !marker.exists(),
        "open removes the marker before anything is written"
    );
    assert_eq!(report.scanned_bytes, 0, "{report:?}");
    check_channel(&partition, "a");
    append(&mut partition, "a", 9);
    partition.flush().unwrap();
    partition.sync().unwrap();
    partition.simulate_crash();
    assert!(!marker.exists(), "a crash leaves no marker");
    let (partition, report) = open(dir.path(), preallocated());
    assert!(
        report.scanned_bytes > 0,
        "after a crash the tail is scanned: {report:?}"
    );
    assert_eq!(partition.head_seq(b"a"), 6);
    check_channel(&partition, "a");
}
