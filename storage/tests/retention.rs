//! Retention by age and by size with prefix rules.

mod common;

use common::*;
use starling_storage::{PartitionConfig, RetentionRule};

fn config(rules: Vec<RetentionRule>) -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 4096,
        retention: rules,
        ..PartitionConfig::default()
    }
}

fn rule(prefix: &str, max_age_ms: Option<u64>, max_bytes: Option<u64>) -> RetentionRule {
    RetentionRule {
        prefix: prefix.to_string(),
        max_age_ms,
        max_bytes,
    }
}

#[test]
fn retention_by_age_deletes_old_segments_and_reads_stop_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = vec![rule("dm/", Some(1000), None)];
    let (mut partition, _) = open(dir.path(), config(rules.clone()));
    // 400 records of "dm/a", 10 ms apart.
    for i in 0..400u64 {
        append(&mut partition, "dm/a", i * 10);
        if i == 5 {
            append(&mut partition, "dm/short", i * 10);
        }
        partition.flush().unwrap();
    }
    let segments_before = segment_files(dir.path()).len();
    let size_before = partition.size_bytes();
    // Nothing is older than now - 1000 when now is small.
    assert_eq!(partition.apply_retention(1000).unwrap().segments_deleted, 0);
    let report = partition.apply_retention(3000).unwrap();
    assert!(report.segments_deleted > 0);
    // The files go once the background thread has written the checkpoint.
    partition.wait_for_background();
    assert_eq!(
        segment_files(dir.path()).len(),
        segments_before - report.segments_deleted
    );
    assert_eq!(partition.size_bytes(), size_before - report.bytes_deleted);

    // Every remaining record of dm/a is kept; those before the boundary are gone.
    let page = partition.read_from(b"dm/a", 1, usize::MAX).unwrap();
    assert_eq!(page.head_seq, 400);
    let first = page.records[0].seq;
    assert!(first > 1);
    assert_eq!(page.records.len() as u64, 400 - first + 1);
    // Only expired records went: the newest deleted one is older than now - max_age.
    assert!((first - 2) * 10 < 3000 - 1000);
    assert!(partition
        .read_before(b"dm/a", first, 10)
        .unwrap()
        .records
        .is_empty());
    assert_eq!(
        partition
            .read_before(b"dm/a", first + 2, 10)
            .unwrap()
            .records
            .len(),
        2
    );
    assert_eq!(
        partition.read_last(b"dm/a", 1000).unwrap().records.len(),
        page.records.len()
    );
    // A channel whose records are all gone keeps counting after a restart.
    assert_eq!(partition.read_last(b"dm/short", 5).unwrap().head_seq, 1);
    assert!(partition
        .read_last(b"dm/short", 5)
        .unwrap()
        .records
        .is_empty());
    drop(partition);
    let (mut partition, _) = open(dir.path(), config(rules));
    assert_eq!(partition.head_seq(b"dm/short"), 1);
    assert_eq!(append(&mut partition, "dm/short", 5000), 2);
    assert_eq!(append(&mut partition, "dm/a", 5000), 401);
    partition.flush().unwrap();
    assert_eq!(
        partition.read_last(b"dm/short", 5).unwrap().records.len(),
        1
    );
    assert_eq!(
        partition.read_from(b"dm/a", 1, usize::MAX).unwrap().records[0].seq,
        first
    );
}

#[test]
fn channels_without_a_rule_are_kept_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, _) = open(dir.path(), config(vec![rule("dm/", Some(1), None)]));
    for i in 0..200u64 {
        append(&mut partition, if i == 3 { "general" } else { "dm/a" }, i);
        partition.flush().unwrap();
    }
    // The first segment holds a "general" record: nothing can go.
    assert_eq!(
        partition
            .apply_retention(1_000_000)
            .unwrap()
            .segments_deleted,
        0
    );
    check_channel(&partition, "general");
}

#[test]
fn retention_by_size_keeps_at_least_max_bytes_and_the_longest_prefix_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rules = vec![
        rule("", None, None),
        rule("log/", None, Some(10_000)),
        rule("log/keep/", None, None),
    ];
    let (mut partition, _) = open(dir.path(), config(rules));
    for i in 0..300u64 {
        append(&mut partition, "log/app", i);
        partition.flush().unwrap();
    }
    let report = partition.apply_retention(0).unwrap();
    assert!(report.segments_deleted > 0);
    assert!(partition.size_bytes() >= 10_000);
    assert!(partition.size_bytes() < 10_000 + 4096 + 1024);
    let page = partition.read_last(b"log/app", 1000).unwrap();
    assert_eq!(page.records.last().unwrap().seq, 300);

    // A record under "log/keep/" (rule without limits) pins its segment.
    for i in 0..300u64 {
        append(
            &mut partition,
            if i == 0 { "log/keep/x" } else { "log/app" },
            i,
        );
        partition.flush().unwrap();
    }
    partition.apply_retention(0).unwrap();
    check_channel(&partition, "log/keep/x");
}
