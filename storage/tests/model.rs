//! A seeded randomized test that compares the log against an in-memory
//! reference through appends, flushes, syncs, reopens and crash truncations.
//! A failing seed reproduces the run.

mod common;

use common::*;
use starling_storage::{Partition, PartitionConfig, ReadMode};

struct ModelRecord {
    body: Vec<u8>,
    /// Index of the flush that wrote it; `None` while pending.
    flush: Option<usize>,
}

struct Model {
    channels: Vec<Vec<ModelRecord>>,
    /// Stream end after each flush.
    flush_ends: Vec<u64>,
    /// Stream end at the last sync.
    synced_end: u64,
}

impl Model {
    fn drop_pending(&mut self) {
        for records in &mut self.channels {
            records.retain(|r| r.flush.is_some());
        }
    }

    /// Keeps only what the first `survivors` flushes wrote.
    fn keep_flushes(&mut self, survivors: usize) {
        self.flush_ends.truncate(survivors);
        for records in &mut self.channels {
            records.retain(|r| r.flush.is_some_and(|f| f < survivors));
        }
    }
}

fn channel_name(index: usize) -> String {
    format!("ch-{index}")
}

fn check(partition: &Partition, model: &Model, rng: &mut Rng) {
    for (index, records) in model.channels.iter().enumerate() {
        let name = channel_name(index);
        let flushed = records.iter().filter(|r| r.flush.is_some()).count() as u64;
        assert_eq!(partition.head_seq(name.as_bytes()), flushed, "{name}");
        assert_eq!(
            partition.appended_seq(name.as_bytes()),
            records.len() as u64,
            "{name}"
        );
        let page = partition.read_from(name.as_bytes(), 1, usize::MAX).unwrap();
        assert_eq!(page.records.len() as u64, flushed, "{name}");
        for (i, record) in page.records.iter().enumerate() {
            assert_eq!(record.seq, i as u64 + 1);
            assert_eq!(record.body, records[i].body, "{name} seq {}", i + 1);
        }
        if flushed > 0 {
            let at = rng.below(flushed + 1) + 1;
            let limit = rng.below(5) as usize + 1;
            let page = partition.read_before(name.as_bytes(), at, limit).unwrap();
            let expected_end = at - 1;
            let expected_start = expected_end.saturating_sub(limit as u64 - 1).max(1);
            let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            let expected: Vec<u64> = if expected_end == 0 {
                vec![]
            } else {
                (expected_start..=expected_end).collect()
            };
            assert_eq!(seqs, expected, "{name} read_before({at}, {limit})");
        }
    }
}

/// How often the interesting paths ran, so the test shows it covers them.
#[derive(Debug, Default)]
struct Stats {
    reopens: usize,
    from_checkpoint: usize,
    crashes: usize,
    crash_from_checkpoint: usize,
    torn: usize,
    preallocated: usize,
}

fn run(seed: u64, operations: usize, stats: &mut Stats) {
    let dir = tempfile::tempdir().unwrap();
    let config = PartitionConfig {
        segment_bytes_max: 8192,
        ..PartitionConfig::default()
    };
    let mut rng = Rng::new(seed);
    let channel_count = 1 + rng.below(12) as usize;
    let mut model = Model {
        channels: (0..channel_count).map(|_| Vec::new()).collect(),
        flush_ends: Vec::new(),
        synced_end: 0,
    };
    let (mut partition, _) = open(dir.path(), config.clone());
    for step in 0..operations {
        match rng.below(100) {
            0..=59 => {
                let index = rng.below(channel_count as u64) as usize;
                let body = rng.body(20, 3000);
                let name = channel_name(index);
                let appended = partition
                    .append(&new_record(&name, &body, step as u64))
                    .unwrap();
                model.channels[index].push(ModelRecord { body, flush: None });
                assert_eq!(appended.seq, model.channels[index].len() as u64);
            }
            60..=79 => {
                partition.flush().unwrap();
                let flush = model.flush_ends.len();
                let mut any = false;
                for records in &mut model.channels {
                    for record in records.iter_mut().filter(|r| r.flush.is_none()) {
                        record.flush = Some(flush);
                        any = true;
                    }
                }
                if any {
                    model.flush_ends.push(partition.size_bytes());
                }
            }
            80..=87 => {
                partition.sync().unwrap();
                model.synced_end = partition.size_bytes();
            }
            88..=91 => {
                // A clean close syncs what was flushed.
                model.synced_end = partition.size_bytes();
                drop(partition);
                model.drop_pending();
                let reopened = open(dir.path(), config.clone());
                partition = reopened.0;
                assert_eq!(reopened.1.truncated_bytes, 0, "seed {seed} step {step}");
                stats.reopens += 1;
                stats.from_checkpoint += usize::from(reopened.1.checkpoint_position.is_some());
            }
            92..=95 => {
                // Crash: drop pending and cut the last segment somewhere at or
                // after its synced length: the file ends there, or (as in a
                // preallocated segment) the bytes after it are zeros.
                if rng.below(2) == 0 {
                    partition.wait_for_background();
                }
                partition.simulate_crash();
                model.drop_pending();
                let last = segment_files(dir.path()).pop().unwrap();
                let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                let len = logical_len(&last);
                let floor = model.synced_end.saturating_sub(base).min(len);
                let cut = floor + rng.below(len - floor + 1);
                if rng.below(2) == 0 {
                    crash_truncate_last_segment(dir.path(), cut);
                } else {
                    crash_zero_last_segment_from(dir.path(), cut);
                }
                let survivors = model
                    .flush_ends
                    .iter()
                    .filter(|&&end| end <= base + cut)
                    .count();
                model.keep_flushes(survivors);
                model.synced_end = model.synced_end.min(base + cut);
                let reopened = open(dir.path(), config.clone());
                partition = reopened.0;
                stats.crashes += 1;
                stats.crash_from_checkpoint +=
                    usize::from(reopened.1.checkpoint_position.is_some());
                stats.torn += usize::from(reopened.1.truncated_bytes > 0);
                let last = segment_files(dir.path()).pop().unwrap();
                stats.preallocated +=
                    usize::from(std::fs::metadata(&last).unwrap().len() > logical_len(&last));
                assert!(
                    model.synced_end <= partition.size_bytes(),
                    "seed {seed}: lost synced data"
                );
            }
            _ => {
                partition.set_read_mode(if rng.below(2) == 0 {
                    ReadMode::Mmap
                } else {
                    ReadMode::Pread
                });
                check(&partition, &model, &mut rng);
            }
        }
    }
    check(&partition, &model, &mut rng);
}

#[test]
fn log_matches_the_reference_model() {
    let mut stats = Stats::default();
    for seed in 1..=24 {
        run(seed, 400, &mut stats);
    }
    eprintln!("{stats:?}");
    assert!(stats.from_checkpoint > stats.reopens / 2, "{stats:?}");
    assert!(stats.crash_from_checkpoint > 0, "{stats:?}");
    assert!(stats.torn > 0 && stats.preallocated > 0, "{stats:?}");
}
