//! Encryption at rest through the public API: round trips, key rotation,
//! wrong and missing keys, damage with a recomputed CRC, mixed partitions,
//! crashes and journal replay.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::*;
use starling_storage::format::{BatchDecode, BatchHeader, BATCH_HEADER_BYTES};
use starling_storage::journal::{journal_path, recover_journals, JOURNAL_FILE_BYTES_MINIMUM};
use starling_storage::{
    decode_batch, inspect_partition_dir_keyed, verify_partition_dir, verify_partition_dir_keyed,
    Journal, KeyRing, Partition, PartitionConfig, PartitionOptions, RecoveryReport, StorageError,
};

const KEY_1: [u8; 32] = [0x11; 32];
const KEY_2: [u8; 32] = [0x22; 32];

fn ring(keys: &[(u16, [u8; 32])], current: Option<u16>) -> Arc<KeyRing> {
    Arc::new(KeyRing::from_keys(keys.iter().copied(), current).unwrap())
}

fn open_keyed(
    dir: &Path,
    config: PartitionConfig,
    run: u32,
    keys: Option<Arc<KeyRing>>,
) -> Result<(Partition, RecoveryReport), StorageError> {
    Partition::open_with(
        dir,
        0,
        config,
        PartitionOptions {
            run,
            keys,
            ..PartitionOptions::default()
        },
    )
}

/// `error` says that a batch sealed with `key_id` met no key ring at all.
fn assert_no_key_file_for(error: &StorageError, key_id: u16) {
    match error {
        StorageError::UnknownKey {
            key_id: found,
            key_file: None,
            ..
        } if *found == key_id => {}
        other => panic!("expected a missing key file for key id {key_id}: {other}"),
    }
}

/// Opens run 1 sealing with `keys`, without preallocation: segment files end
/// where their data ends, as a crash test wants them.
fn open_growing_files(dir: &Path, keys: &Arc<KeyRing>) -> Partition {
    Partition::open_with(
        dir,
        0,
        PartitionConfig::default(),
        PartitionOptions {
            run: 1,
            keys: Some(keys.clone()),
            preallocate: false,
            ..PartitionOptions::default()
        },
    )
    .unwrap()
    .0
}

/// Writes `turns` turns sealed with key 1 in run 1 and closes.
fn write_with_key_1(dir: &Path, turns: u64) {
    let keys = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) = open_keyed(dir, small_segments(), 1, Some(keys)).unwrap();
    write_turns(&mut partition, turns, 1_000);
}

/// Opens ignoring the checkpoint: every batch is scanned (and opened).
fn open_full_scan_keyed(
    dir: &Path,
    run: u32,
    keys: Arc<KeyRing>,
) -> Result<(Partition, RecoveryReport), StorageError> {
    Partition::open_with(
        dir,
        0,
        small_segments(),
        PartitionOptions {
            run,
            keys: Some(keys),
            use_checkpoint: false,
            ..PartitionOptions::default()
        },
    )
}

/// Appends `turns` turns of records to channels a, b and c (one flush each).
fn write_turns(partition: &mut Partition, turns: u64, first_timestamp: u64) {
    for turn in 0..turns {
        for channel in ["a", "b", "a", "c"] {
            append(partition, channel, first_timestamp + turn);
        }
        partition.flush().unwrap();
    }
}

fn check_all(partition: &Partition) {
    for channel in ["a", "b", "c"] {
        check_channel(partition, channel);
    }
}

/// The stored bytes of every file under `dir` (segments, journals,
/// checkpoints) that holds `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Every batch of a segment file: (position, header).
fn batches(file: &Path) -> Vec<(usize, BatchHeader)> {
    let bytes = fs::read(file).unwrap();
    let mut at = 0;
    let mut found = Vec::new();
    while let Ok(BatchDecode::Complete(batch)) = decode_batch(&bytes[at..]) {
        found.push((at, batch.header));
        at += batch.bytes.len();
    }
    found
}

#[test]
fn encrypted_round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) =
        open_keyed(dir.path(), small_segments(), 1, Some(keys.clone())).unwrap();
    write_turns(&mut partition, 40, 1_000);
    assert!(segment_files(dir.path()).len() > 3, "several segments");
    check_all(&partition);
    // Pages inside and across batches, every kind of read.
    let page = partition.read_before(b"a", 30, 7).unwrap();
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (23..30).collect::<Vec<_>>());
    let page = partition.read_last(b"c", 3).unwrap();
    assert_eq!(page.records.last().unwrap().body, body_for("c", 40));
    let mut since = 0;
    partition
        .for_each_since(1_030, |record| {
            assert_eq!(
                record.body,
                body_for(std::str::from_utf8(&record.channel).unwrap(), record.seq)
            );
            since += 1;
        })
        .unwrap();
    assert_eq!(since, 10 * 4);
    drop(partition);

    for file in segment_files(dir.path()) {
        for (_, header) in batches(&file) {
            assert!(header.is_encrypted());
            assert_eq!(header.key_id, 1);
            assert_eq!(header.run, 1);
        }
    }
    assert!(files_containing(&dir.path().join("partitions"), b"a#1:").is_empty());
    // Channel names are inside the records, and the checkpoints that list
    // them (u16 name length, name, u64 last seq) are sealed too. The whole
    // entry, not just "\x01\x00a": three bytes turn up in a few hundred KB
    // of ciphertext about one run in a hundred.
    for last_seq in 1..=80u64 {
        let mut entry = b"\x01\x00a".to_vec();
        entry.extend_from_slice(&last_seq.to_le_bytes());
        assert!(files_containing(&dir.path().join("partitions"), &entry).is_empty());
    }
    let checkpoint = fs::read(partition_dir(dir.path()).join("channels.checkpoint")).unwrap();
    assert_eq!(&checkpoint[..4], b"STRE");

    // A reopen after a clean close, and one with a full scan.
    let (partition, _) = open_keyed(dir.path(), small_segments(), 2, Some(keys.clone())).unwrap();
    check_all(&partition);
    drop(partition);
    let (partition, report) = open_full_scan_keyed(dir.path(), 3, keys.clone()).unwrap();
    assert_eq!(report.records, 160);
    check_all(&partition);
    drop(partition);

    let verified =
        verify_partition_dir_keyed(&partition_dir(dir.path()), None, Some(&keys)).unwrap();
    assert_eq!(verified.records, 160);
    assert_eq!(verified.encrypted_batches, 40);
    assert_eq!(verified.unauthenticated_batches, 0);
    assert_eq!(verified.channels, 3);
    let unkeyed = verify_partition_dir(&partition_dir(dir.path())).unwrap();
    assert_eq!(unkeyed.batches, 40);
    assert_eq!(unkeyed.unauthenticated_batches, 40);
    let mut bodies = 0;
    inspect_partition_dir_keyed(&partition_dir(dir.path()), None, Some(&keys), |record| {
        assert_eq!(
            record.body,
            body_for(std::str::from_utf8(&record.channel).unwrap(), record.seq)
        );
        bodies += 1;
    })
    .unwrap();
    assert_eq!(bodies, 160);
}

#[test]
fn a_flipped_ciphertext_byte_with_a_recomputed_crc_is_an_authentication_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) =
        open_keyed(dir.path(), small_segments(), 1, Some(keys.clone())).unwrap();
    write_turns(&mut partition, 3, 1_000);
    drop(partition);
    let file = segment_files(dir.path()).remove(0);
    let second = batches(&file)[1].0;
    let mut bytes = fs::read(&file).unwrap();
    // The body of the first record of the second batch, with the CRC redone:
    // only authentication can tell.
    let at = second + BATCH_HEADER_BYTES + 70;
    bytes[at] ^= 0x01;
    recompute_crcs(&mut bytes);
    fs::write(&file, &bytes).unwrap();

    // The CRC-only verify cannot see it; the keyed one names it.
    verify_partition_dir(&partition_dir(dir.path())).unwrap();
    let error =
        verify_partition_dir_keyed(&partition_dir(dir.path()), None, Some(&keys)).unwrap_err();
    let expected = format!("at byte {second} of {}", file.display());
    match &error {
        StorageError::Authentication {
            partition_id: 0,
            position,
            key_id: 1,
            ..
        } if *position == second as u64 => {}
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains(&expected), "{error}");

    // A reopen after a clean close reads the last batch only: it opens, and
    // the read of the damaged batch is the error, never garbage.
    let (partition, _) = open_keyed(dir.path(), small_segments(), 2, Some(keys.clone())).unwrap();
    let error = partition.read_from(b"a", 1, 100).unwrap_err();
    assert!(
        matches!(error, StorageError::Authentication { key_id: 1, .. }),
        "{error}"
    );
    drop(partition);
    // A full scan at open meets it too.
    let error = open_full_scan_keyed(dir.path(), 3, keys)
        .err()
        .expect("the open is refused");
    assert!(error.is_key_error(), "{error}");
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // CRC32C (Castagnoli), bitwise: the test does not need a fast one.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_wrong_or_missing_key_is_a_clear_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write_with_key_1(dir.path(), 3);
    let wrong = ring(&[(1, KEY_2)], Some(1));
    let error = open_keyed(dir.path(), small_segments(), 2, Some(wrong.clone()))
        .err()
        .expect("the open is refused");
    let message = error.to_string();
    let checkpoint = partition_dir(dir.path()).join("channels.checkpoint");
    assert!(
        message.contains(&format!(
            "partition 0: the sealed data (batch or checkpoint) at byte 0 of {} fails authentication with key id 1",
            checkpoint.display()
        )),
        "{message}"
    );
    // Without checkpoints the first batch scanned says it.
    let saved = dir.path().join("saved");
    fs::create_dir(&saved).unwrap();
    for name in ["channels.checkpoint", "channels.checkpoint.previous"] {
        let from = partition_dir(dir.path()).join(name);
        if from.exists() {
            fs::rename(&from, saved.join(name)).unwrap();
        }
    }
    let error = open_keyed(dir.path(), small_segments(), 2, Some(wrong))
        .err()
        .expect("the open is refused");
    let first = segment_files(dir.path()).remove(0);
    assert!(
        error.to_string().contains(&format!(
            "at byte 0 of {} fails authentication with key id 1",
            first.display()
        )),
        "{error}"
    );
    for entry in fs::read_dir(&saved).unwrap() {
        let entry = entry.unwrap();
        fs::rename(
            entry.path(),
            partition_dir(dir.path()).join(entry.file_name()),
        )
        .unwrap();
    }

    let error = open_keyed(dir.path(), small_segments(), 2, None)
        .err()
        .expect("the open is refused");
    assert_no_key_file_for(&error, 1);
    assert!(
        error
            .to_string()
            .contains("no encryption key file is configured"),
        "{error}"
    );

    let other_id = ring(&[(2, KEY_1)], Some(2));
    let error = open_keyed(dir.path(), small_segments(), 2, Some(other_id))
        .err()
        .expect("the open is refused");
    assert!(
        matches!(error, StorageError::UnknownKey { key_id: 1, .. }),
        "{error}"
    );

    // None of these opens changed anything: the right key still reads all.
    let (partition, _) = open_keyed(
        dir.path(),
        small_segments(),
        2,
        Some(ring(&[(1, KEY_1)], None)),
    )
    .unwrap();
    check_all(&partition);
}

/// The key id of every batch in the segments, in log order.
fn batch_key_ids(dir: &Path) -> Vec<u16> {
    segment_files(dir)
        .iter()
        .flat_map(|file| batches(file))
        .map(|(_, header)| header.key_id)
        .collect()
}

#[test]
fn key_rotation_keeps_old_batches_readable() {
    let dir = tempfile::tempdir().unwrap();
    write_with_key_1(dir.path(), 5);
    // A restart with key 2 as the current one; key 1 stays in the file.
    let both = ring(&[(1, KEY_1), (2, KEY_2)], Some(2));
    let (mut partition, _) =
        open_keyed(dir.path(), small_segments(), 2, Some(both.clone())).unwrap();
    write_turns(&mut partition, 5, 2_000);
    check_all(&partition);
    drop(partition);
    assert_eq!(batch_key_ids(dir.path()), [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    let (partition, _) = open_keyed(dir.path(), small_segments(), 3, Some(both)).unwrap();
    check_all(&partition);
    drop(partition);

    // Key 1 removed too early: the open (which reads the last batch) works,
    // a read of an old batch names the missing key id.
    let (partition, _) = open_keyed(
        dir.path(),
        small_segments(),
        4,
        Some(ring(&[(2, KEY_2)], Some(2))),
    )
    .unwrap();
    let error = partition.read_from(b"a", 1, 100).unwrap_err();
    assert!(
        matches!(error, StorageError::UnknownKey { key_id: 1, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("add the key with id 1"),
        "{error}"
    );
    let page = partition.read_last(b"b", 5).unwrap();
    assert_eq!(page.records.len(), 5);
}

#[test]
fn key_rotation_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let one = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) = open_keyed(dir.path(), small_segments(), 1, Some(one)).unwrap();
    write_turns(&mut partition, 3, 1_000);
    // The new ring takes effect for the next batches, no reopen.
    let both = ring(&[(1, KEY_1), (2, KEY_2)], Some(2));
    partition.set_keys(Some(both.clone())).unwrap();
    write_turns(&mut partition, 3, 2_000);
    check_all(&partition);
    // A ring without key 1, or with another key under id 1, is refused and
    // the running ring stays: new batches keep key id 2, old ones read.
    let error = partition
        .set_keys(Some(ring(&[(2, KEY_2)], Some(2))))
        .unwrap_err();
    assert!(
        error.to_string().contains("holds no key with id [1]"),
        "{error}"
    );
    let error = partition
        .set_keys(Some(ring(&[(1, KEY_2), (2, KEY_2)], Some(2))))
        .unwrap_err();
    assert!(
        error.to_string().contains("different key for key id [1]"),
        "{error}"
    );
    assert!(partition.set_keys(None).is_err());
    write_turns(&mut partition, 2, 3_000);
    check_all(&partition);
    drop(partition);
    assert_eq!(batch_key_ids(dir.path()), [1, 1, 1, 2, 2, 2, 2, 2]);
    // The checkpoint written at close is sealed with key 2 as well: a ring
    // whose key 2 is wrong cannot open it.
    let wrong_2 = ring(&[(1, KEY_1), (2, KEY_1)], Some(2));
    let Err(error) = open_keyed(dir.path(), small_segments(), 2, Some(wrong_2)) else {
        panic!("a wrong key 2 opened the partition");
    };
    assert!(
        matches!(error, StorageError::Authentication { key_id: 2, .. })
            && error.to_string().contains("channels.checkpoint"),
        "{error}"
    );
    let (partition, _) = open_keyed(dir.path(), small_segments(), 3, Some(both)).unwrap();
    check_all(&partition);
    drop(partition);

    // Sealing needs a nonzero run, at a rotation as at open.
    let plain = tempfile::tempdir().unwrap();
    let (mut partition, _) = open_keyed(plain.path(), small_segments(), 0, None).unwrap();
    let error = partition
        .set_keys(Some(ring(&[(1, KEY_1)], Some(1))))
        .unwrap_err();
    assert!(error.to_string().contains("it is 0"), "{error}");
}

#[test]
fn a_partition_can_turn_encryption_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open_keyed(dir.path(), small_segments(), 1, None).unwrap();
    write_turns(&mut partition, 4, 1_000);
    drop(partition);
    let keys = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) =
        open_keyed(dir.path(), small_segments(), 2, Some(keys.clone())).unwrap();
    check_all(&partition);
    write_turns(&mut partition, 4, 2_000);
    check_all(&partition);
    drop(partition);
    // Off again: plain batches, with the key ring still there to read.
    let (mut partition, _) = open_keyed(
        dir.path(),
        small_segments(),
        3,
        Some(ring(&[(1, KEY_1)], None)),
    )
    .unwrap();
    write_turns(&mut partition, 4, 3_000);
    check_all(&partition);
    drop(partition);
    let encrypted: Vec<bool> = segment_files(dir.path())
        .iter()
        .flat_map(|file| batches(file))
        .map(|(_, header)| header.is_encrypted())
        .collect();
    assert_eq!(encrypted.iter().filter(|&&e| e).count(), 4);
    assert_eq!(encrypted.len(), 12);
    let report = verify_partition_dir_keyed(&partition_dir(dir.path()), None, Some(&keys)).unwrap();
    assert_eq!((report.records, report.encrypted_batches), (48, 4));
    let report = verify_partition_dir(&partition_dir(dir.path())).unwrap();
    assert_eq!(report.unauthenticated_batches, 4);
    // Without any key ring the open works (the last batch is plain), and a
    // read that reaches a sealed batch names its key id.
    let (partition, _) = open_keyed(dir.path(), small_segments(), 4, None).unwrap();
    let error = partition.read_from(b"a", 1, 100).unwrap_err();
    assert_no_key_file_for(&error, 1);
    drop(partition);
    let (partition, _) = open_full_scan_keyed(dir.path(), 4, keys).unwrap();
    check_all(&partition);
}

#[test]
fn sealing_needs_a_run_that_grows() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    let error = open_keyed(dir.path(), small_segments(), 0, Some(keys.clone()))
        .err()
        .expect("the open is refused");
    assert!(
        error.to_string().contains("needs the engine run"),
        "{error}"
    );
    let (mut partition, _) =
        open_keyed(dir.path(), small_segments(), 5, Some(keys.clone())).unwrap();
    write_turns(&mut partition, 2, 1_000);
    drop(partition);
    let error = open_keyed(dir.path(), small_segments(), 5, Some(keys.clone()))
        .err()
        .expect("the open is refused");
    assert!(
        error.to_string().contains("not later than run 5"),
        "{error}"
    );
    open_keyed(dir.path(), small_segments(), 6, Some(keys)).unwrap();
}

#[test]
fn a_torn_encrypted_batch_is_cut_at_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    let mut partition = open_growing_files(dir.path(), &keys);
    write_turns(&mut partition, 3, 1_000);
    partition.sync().unwrap();
    let full = partition.end_position();
    partition.simulate_crash();
    let image = fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
    let last = batches(&segment_files(dir.path()).pop().unwrap())
        .pop()
        .unwrap()
        .0 as u64;
    for cut in last + 1..full {
        let case = tempfile::tempdir().unwrap();
        let target = partition_dir(case.path());
        fs::create_dir_all(&target).unwrap();
        let name = segment_files(dir.path()).pop().unwrap();
        fs::write(
            target.join(name.file_name().unwrap()),
            &image[..cut as usize],
        )
        .unwrap();
        let (partition, report) = open_keyed(
            case.path(),
            PartitionConfig::default(),
            2,
            Some(keys.clone()),
        )
        .unwrap();
        assert_eq!(
            report.truncated_bytes,
            torn_bytes(&image[..cut as usize], last),
            "cut at {cut}"
        );
        assert_eq!(partition.end_position(), last);
        assert_eq!(partition.head_seq(b"a"), 4);
        check_all(&partition);
    }
}

#[test]
fn journal_replay_writes_encrypted_batches_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    let (mut partition, _) = open_keyed(
        dir.path(),
        PartitionConfig::default(),
        1,
        Some(keys.clone()),
    )
    .unwrap();
    partition.sync().unwrap();
    let mut journal = Journal::create(
        dir.path(),
        0,
        1,
        1,
        JOURNAL_FILE_BYTES_MINIMUM,
        &[(0, partition.end_position())],
    )
    .unwrap();
    for t in 0..5 {
        for channel in ["a", "b", "a", "c"] {
            append(&mut partition, channel, 1_000 + t);
        }
        partition
            .flush_with(&mut |bytes| journal.add(0, bytes))
            .unwrap();
        journal.write().unwrap();
        journal.sync().unwrap();
    }
    let full = partition.end_position();
    partition.simulate_crash();
    drop(journal);
    crash_zero_last_segment_from(dir.path(), 0);
    assert!(files_containing(&journal_path(dir.path(), 0), b"a#1:").is_empty());

    let recovery = recover_journals(dir.path()).unwrap();
    let entries = &recovery.partitions[&0];
    let (mut partition, _) = Partition::open_with(
        dir.path(),
        0,
        PartitionConfig::default(),
        PartitionOptions {
            run: 2,
            keys: Some(keys.clone()),
            unsynced_tail: entries.tail,
            ..PartitionOptions::default()
        },
    )
    .unwrap();
    let mut replayed = 0;
    for entry in &entries.entries {
        replayed += partition.replay(entry).unwrap();
    }
    assert_eq!(replayed, 20);
    assert_eq!(partition.end_position(), full);
    check_all(&partition);
    drop(partition);

    // The same replay with the wrong key is refused, naming the key id.
    crash_zero_last_segment_from(dir.path(), 0);
    fs::remove_file(partition_dir(dir.path()).join("channels.checkpoint")).ok();
    fs::remove_file(partition_dir(dir.path()).join("channels.checkpoint.previous")).ok();
    let (mut partition, _) = Partition::open_with(
        dir.path(),
        0,
        PartitionConfig::default(),
        PartitionOptions {
            run: 3,
            keys: Some(ring(&[(1, KEY_2)], Some(1))),
            unsynced_tail: entries.tail,
            ..PartitionOptions::default()
        },
    )
    .unwrap();
    let error = partition.replay(&entries.entries[0]).unwrap_err();
    assert!(
        matches!(error, StorageError::Authentication { key_id: 1, .. }),
        "{error}"
    );
}

/// Seeded damage to an encrypted segment, with the CRCs recomputed half the
/// time (as an attacker would): a keyed open, verify and every read either
/// fail cleanly or return exactly what was written; never a panic, never a
/// changed record.
#[test]
fn random_damage_to_encrypted_batches_never_yields_garbage() {
    let template = tempfile::tempdir().unwrap();
    let keys = ring(&[(1, KEY_1)], Some(1));
    write_turns(&mut open_growing_files(template.path(), &keys), 10, 1_000);
    let original = fs::read(segment_files(template.path()).pop().unwrap()).unwrap();
    let mut rng = Rng::new(7);
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..200 {
        let mut damaged = original.clone();
        for _ in 0..rng.below(3) + 1 {
            let at = rng.below(damaged.len() as u64) as usize;
            damaged[at] ^= (rng.below(255) + 1) as u8;
        }
        if rng.below(2) == 0 {
            recompute_crcs(&mut damaged);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = partition_dir(dir.path());
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("00000000000000000000.seg"), &damaged).unwrap();
        let verified = verify_partition_dir_keyed(&path, None, Some(&keys));
        match open_keyed(
            dir.path(),
            PartitionConfig::default(),
            2,
            Some(keys.clone()),
        ) {
            Ok((partition, _)) => {
                opened += 1;
                assert!(verified.is_ok(), "open succeeded, so verify must too");
                for channel in ["a", "b", "c"] {
                    let Ok(page) = partition.read_from(channel.as_bytes(), 1, usize::MAX) else {
                        continue;
                    };
                    for record in page.records {
                        assert_eq!(record.body, body_for(channel, record.seq));
                    }
                }
            }
            Err(_) => {
                refused += 1;
                assert!(verified.is_err());
            }
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

/// Writes a correct CRC into every batch header that still parses.
fn recompute_crcs(segment: &mut [u8]) {
    let mut at = 0;
    while at + BATCH_HEADER_BYTES <= segment.len() {
        let Ok(header) = BatchHeader::parse(&segment[at..]) else {
            break;
        };
        let end = at + header.batch_bytes as usize;
        if end > segment.len() {
            break;
        }
        let crc = crc32c_of(&segment[at + 12..end]);
        segment[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}
