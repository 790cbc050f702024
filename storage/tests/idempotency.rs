//! Idempotent append: a record whose (channel, sender, client message id)
//! was seen within the window is not appended again, and the original is
//! returned — also after a clean reopen (keys from the checkpoint), after a
//! crash (keys from the scan of the tail) and across segment rolls.

mod common;

use common::{open, open_full_scan, small_segments};
use starling_storage::{NewRecord, Partition, PartitionConfig};

fn keyed<'a>(channel: &'a str, id: &'a str, timestamp_ms: u64) -> NewRecord<'a> {
    NewRecord {
        channel: channel.as_bytes(),
        timestamp_ms,
        kind: 0,
        sender: b"alice",
        client_message_id: id.as_bytes(),
        relation: 0,
        headers: b"",
        body: b"hello",
    }
}

fn publish(partition: &mut Partition, channel: &str, id: &str, timestamp_ms: u64) -> (u64, bool) {
    let appended = partition.append(&keyed(channel, id, timestamp_ms)).unwrap();
    partition.flush().unwrap();
    partition.sync().unwrap();
    (appended.seq, appended.duplicate)
}

#[test]
fn a_retry_returns_the_original_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    assert_eq!(publish(&mut partition, "g", "m1", 1000), (1, false));
    assert_eq!(publish(&mut partition, "g", "m2", 1001), (2, false));
    assert_eq!(publish(&mut partition, "g", "m1", 1002), (1, true));
    // The same id from another sender or in another channel is another key.
    let other_sender = NewRecord {
        sender: b"bob",
        ..keyed("g", "m1", 1003)
    };
    assert!(!partition.append(&other_sender).unwrap().duplicate);
    assert_eq!(publish(&mut partition, "h", "m1", 1004), (1, false));
    partition.flush().unwrap();
    assert_eq!(partition.head_seq(b"g"), 3);
    // Two appends with one key in one turn: the second is the duplicate.
    let first = partition.append(&keyed("g", "m9", 1005)).unwrap();
    let second = partition.append(&keyed("g", "m9", 1005)).unwrap();
    assert_eq!((first.seq, first.duplicate), (4, false));
    assert_eq!((second.seq, second.duplicate), (4, true));
}

#[test]
fn keys_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = PartitionConfig {
        idempotency_window_ms: 1000,
        ..PartitionConfig::default()
    };
    let (mut partition, _) = open(dir.path(), config);
    assert_eq!(publish(&mut partition, "g", "m1", 10_000), (1, false));
    assert_eq!(publish(&mut partition, "g", "m1", 10_900), (1, true));
    assert_eq!(publish(&mut partition, "g", "m1", 11_500), (2, false));
}

#[test]
fn keys_survive_a_clean_reopen_a_crash_and_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut partition, _) = open(dir.path(), small_segments());
        for n in 0..200u64 {
            publish(&mut partition, "g", &format!("m{n}"), 5000 + n);
        }
    }
    // Clean reopen: the keys come from the checkpoint; nothing is scanned.
    {
        let (mut partition, report) = open(dir.path(), small_segments());
        assert_eq!(report.scanned_bytes, 0, "{report:?}");
        assert_eq!(publish(&mut partition, "g", "m0", 6000), (1, true));
        assert_eq!(publish(&mut partition, "g", "m199", 6000), (200, true));
        assert_eq!(publish(&mut partition, "g", "new", 6001), (201, false));
        partition.simulate_crash();
    }
    // After a crash: the checkpoint of the last roll plus the scan of the tail.
    let (mut partition, report) = open(dir.path(), small_segments());
    assert!(report.checkpoint_position.is_some(), "{report:?}");
    for (id, seq) in [("m0", 1), ("m150", 151), ("m199", 200), ("new", 201)] {
        assert_eq!(publish(&mut partition, "g", id, 6002), (seq, true), "{id}");
    }
    drop(partition);
    // A full scan rebuilds the same keys.
    let (mut partition, _) = open_full_scan(dir.path(), small_segments());
    assert_eq!(publish(&mut partition, "g", "m77", 6003), (78, true));
}

#[test]
fn the_key_of_a_record_lost_in_a_crash_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut partition, _) = open(dir.path(), PartitionConfig::default());
        assert_eq!(publish(&mut partition, "g", "kept", 1000), (1, false));
        // Appended, never flushed: the crash loses it.
        partition.append(&keyed("g", "lost", 1001)).unwrap();
        partition.simulate_crash();
    }
    let (mut partition, _) = open(dir.path(), PartitionConfig::default());
    assert_eq!(publish(&mut partition, "g", "kept", 1002), (1, true));
    assert_eq!(publish(&mut partition, "g", "lost", 1003), (2, false));
}
