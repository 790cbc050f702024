//! A seeded simulation of one shard's storage: several partitions and their
//! shard journal driven the way the broker drives them (appends, loop turns
//! that write and fdatasync the journal, turns that only write, journal
//! switches and write-back, clean stops) against an in-memory reference,
//! with power losses in between that lose random unsynced pages of the
//! partitions and of the journal. After every recovery each record that was
//! acknowledged (its turn's journal sync finished) must be there exactly
//! once, in order, with gap-free seqs, and nothing may appear that was never
//! written. A failing seed reproduces the run.

mod common;

use std::path::Path;

use common::*;
use starling_storage::crash_image::{lose_pages_from, lose_unsynced_partition_pages};
use starling_storage::journal::{recover_journals, JOURNAL_FILE_BYTES_MINIMUM};
use starling_storage::{Journal, Partition, PartitionConfig, PartitionOptions, SwitchSync};

const PARTITIONS: u32 = 3;

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    /// Appended, not written yet.
    Pending,
    /// Written to the segment and the journal, not synced: may be lost.
    Written,
    /// Its turn's journal sync finished: acknowledged, must survive.
    Acked,
}

struct ModelRecord {
    body: Vec<u8>,
    state: State,
}

/// One shard: its partitions, journal and the reference.
struct Shard {
    partitions: Vec<Partition>,
    journal: Journal,
    run: u32,
    /// Per channel (channel `i` lives in partition `i % PARTITIONS`).
    model: Vec<Vec<ModelRecord>>,
    /// Where the journal's synced bytes end (file, position).
    journal_synced: Option<(std::path::PathBuf, u64)>,
    /// After a background switch, until a sync or switch has waited for it:
    /// the old file and where its synced bytes end (its later bytes, and the
    /// new file's header, are durable only once the background thread ran).
    background_switch: Option<(std::path::PathBuf, u64)>,
    /// The journal's background thread is held (it starts no job): a crash
    /// now comes before the background switch's work.
    held: bool,
    /// A background sync (the `interval` policy's) is in flight.
    background_sync: bool,
    /// The journal counts entries without writing them (the `none`
    /// policy's journal, `Journal::set_count_only`).
    count_only: bool,
}

#[derive(Debug, Default)]
struct Stats {
    crashes: usize,
    clean_stops: usize,
    switches: usize,
    trickles: usize,
    /// Crashes after a switch and before the new file's first sync (its
    /// header unsynced).
    crashes_before_a_header_sync: usize,
    background_switches: usize,
    /// Background syncs finished, and those that left the journal synced
    /// (nothing written after they started).
    background_syncs: usize,
    background_syncs_synced: usize,
    /// Crashes that dropped a background switch's work undone.
    crashes_before_a_background_switch_ran: usize,
    /// Crashes of runs whose journal only counts its entries.
    count_only_crashes: usize,
    partition_pages_lost: u64,
    journal_pages_lost: u64,
    replayed_records: u64,
    unacked_lost: usize,
    unacked_kept: usize,
}

fn channel_name(index: usize) -> String {
    format!("ch-{index}")
}

fn config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 16 * 1024,
        ..PartitionConfig::default()
    }
}

fn ends(partitions: &[Partition]) -> Vec<(u32, u64)> {
    partitions
        .iter()
        .map(|p| (p.id(), p.end_position()))
        .collect()
}

/// Starts a run the way the engine does: read the journals, open every
/// partition with its unsynced tail, replay the entries, sync, and start a
/// new journal naming the partitions' ends.
fn start(dir: &Path, count_only: bool, stats: &mut Stats) -> (Vec<Partition>, Journal, u32) {
    let mut recovery = recover_journals(dir).unwrap();
    let run = recovery.run.wrapping_add(1).max(1);
    let mut partitions = Vec::new();
    for id in 0..PARTITIONS {
        let journal = recovery.partitions.remove(&id).unwrap_or_default();
        let (mut partition, _) = Partition::open_with(
            dir,
            id,
            config(),
            PartitionOptions {
                run,
                unsynced_tail: journal.tail,
                ..PartitionOptions::default()
            },
        )
        .unwrap();
        for entry in &journal.entries {
            stats.replayed_records += partition.replay(entry).unwrap();
        }
        partition.sync().unwrap();
        partitions.push(partition);
    }
    let journal = Journal::create(
        dir,
        0,
        run,
        recovery.generation + 1,
        JOURNAL_FILE_BYTES_MINIMUM,
        &ends(&partitions),
    )
    .unwrap();
    // A commit thread, for the background syncs of `interval` turns.
    let mut journal = journal;
    journal.set_sync_notifier(0, Box::new(|| {})).unwrap();
    journal.set_count_only(count_only);
    (partitions, journal, run)
}

impl Shard {
    /// One loop turn: write every partition's pending records, the same
    /// bytes to the journal, and (when `sync`) fdatasync the journal, which
    /// acknowledges everything written so far; then switch files or start
    /// the write-back when the journal asks.
    /// Lets the journal's background thread go on (before anything that
    /// waits for it).
    fn release(&mut self) {
        if self.held {
            self.journal.hold_background(false);
            self.held = false;
        }
    }

    /// `background`: a switch, if the journal asks for one, leaves the old
    /// file's sync to the background thread (the `none` policy's way); with
    /// `hold` that thread is held until something waits for it.
    /// `background_sync`: after writing, start a background sync (the
    /// `interval` policy's) if none is in flight; one in flight is finished
    /// (waited for) before this turn writes when `finish_first`, else after
    /// (then it covers less than what is written).
    fn turn(
        &mut self,
        sync: bool,
        background: bool,
        hold: bool,
        (background_sync, finish_first): (bool, bool),
        stats: &mut Stats,
    ) {
        if sync || self.journal.wants_switch() {
            self.release();
        }
        if finish_first {
            self.finish_background_sync(stats);
        }
        let journal = &mut self.journal;
        for partition in &mut self.partitions {
            let id = partition.id();
            partition
                .flush_with(&mut |bytes| journal.add(id, bytes))
                .unwrap();
        }
        journal.write().unwrap();
        for records in &mut self.model {
            for record in records.iter_mut().filter(|r| r.state == State::Pending) {
                record.state = State::Written;
            }
        }
        if !finish_first {
            self.finish_background_sync(stats);
        }
        let journal = &mut self.journal;
        if sync {
            // Waits for a background switch's work first.
            journal.sync().unwrap();
            self.background_switch = None;
            self.journal_synced = Some(journal.active_file());
            for records in &mut self.model {
                for record in records.iter_mut().filter(|r| r.state == State::Written) {
                    record.state = State::Acked;
                }
            }
        }
        if background_sync && !self.background_sync {
            self.background_sync = self.journal.start_background_sync().unwrap();
        }
        if self.journal.wants_switch() {
            let targets = self
                .partitions
                .iter()
                .map(|p| p.sync_target().unwrap())
                .collect();
            let old = self.journal.active_file();
            let old_synced = match &self.journal_synced {
                Some((file, position)) if *file == old.0 => *position,
                _ => 4096,
            };
            let order = if background {
                SwitchSync::Background
            } else {
                SwitchSync::Now
            };
            // Either way it first waits for an earlier switch's background
            // work.
            self.journal
                .switch(&ends(&self.partitions), targets, order)
                .unwrap();
            if background && hold {
                self.journal.hold_background(true);
                self.held = true;
            }
            if background {
                self.background_switch = Some((old.0, old_synced));
                stats.background_switches += 1;
            } else {
                // The old file is synced now, and what it holds is
                // acknowledged.
                self.background_switch = None;
                for records in &mut self.model {
                    for record in records.iter_mut().filter(|r| r.state == State::Written) {
                        record.state = State::Acked;
                    }
                }
            }
            // The new file's header is not synced until the file's first
            // sync (or the background thread's), so a crash before that may
            // lose it too.
            self.journal_synced = Some((self.journal.active_file().0, 0));
            stats.switches += 1;
        } else if self.journal.wants_trickle() {
            let targets = self
                .partitions
                .iter()
                .map(|p| p.sync_target().unwrap())
                .collect();
            self.journal.trickle(targets);
            stats.trickles += 1;
        }
    }

    /// Waits for the background sync in flight; when the journal then says
    /// that nothing is unsynced, everything written is acknowledged (as the
    /// broker's acknowledgements would say). After a background switch that
    /// nothing waited for yet the model does not follow (it counts nothing
    /// as acknowledged: weaker, never wrong).
    fn finish_background_sync(&mut self, stats: &mut Stats) {
        if !std::mem::take(&mut self.background_sync) {
            return;
        }
        self.journal
            .finish_background_sync(true)
            .expect("one was started")
            .unwrap();
        stats.background_syncs += 1;
        if self.journal.unsynced() || self.background_switch.is_some() {
            return;
        }
        stats.background_syncs_synced += 1;
        self.journal_synced = Some(self.journal.active_file());
        for records in &mut self.model {
            for record in records.iter_mut().filter(|r| r.state == State::Written) {
                record.state = State::Acked;
            }
        }
    }

    /// A clean stop (every partition synced, the journal closed) and a
    /// start: everything written is kept, pending appends are not.
    fn clean_restart(mut self, dir: &Path, stats: &mut Stats) -> Shard {
        self.release();
        let Shard {
            mut partitions,
            mut journal,
            mut model,
            count_only,
            ..
        } = self;
        for partition in &mut partitions {
            partition.sync().unwrap();
        }
        // Closing waits for a background switch's work.
        journal.close(&ends(&partitions)).unwrap();
        drop(journal);
        drop(partitions);
        for records in &mut model {
            records.retain(|r| r.state != State::Pending);
            for record in records.iter_mut() {
                record.state = State::Acked;
            }
        }
        let (partitions, journal, run) = start(dir, count_only, stats);
        stats.clean_stops += 1;
        Shard {
            partitions,
            journal,
            run,
            model,
            journal_synced: None,
            background_switch: None,
            held: false,
            background_sync: false,
            count_only,
        }
    }

    /// A power loss: the processes' memory is gone, and of what was written
    /// after the last durable point, random pages are lost.
    fn crash_and_restart(self, dir: &Path, rng: &mut Rng, seed: u64, stats: &mut Stats) -> Shard {
        let Shard {
            partitions,
            journal,
            mut model,
            journal_synced,
            background_switch,
            run,
            count_only,
            ..
        } = self;
        let (journal_file, _) = journal.active_file();
        let background_ran = journal.simulate_crash();
        for partition in partitions {
            if rng.below(2) == 0 {
                partition.wait_for_background();
            }
            partition.simulate_crash();
        }
        let lose_half = rng.below(3);
        let mut lose = || rng.below(4) < lose_half + 1;
        // The journal's bytes after its last sync (all of it if this run's
        // file was never synced) may be lost page by page.
        let from = match &journal_synced {
            Some((file, position)) if *file == journal_file => *position,
            _ => 4096,
        };
        if from == 0 {
            stats.crashes_before_a_header_sync += 1;
        }
        stats.journal_pages_lost += lose_pages_from(&journal_file, from, &mut lose).unwrap();
        // A background switch whose work was dropped: the old file's bytes
        // after its last sync may be lost as well (and the new header was
        // never written).
        if let (Some((old_file, old_synced)), false) = (&background_switch, background_ran) {
            stats.crashes_before_a_background_switch_ran += 1;
            stats.journal_pages_lost += lose_pages_from(old_file, *old_synced, &mut lose).unwrap();
        }
        stats.partition_pages_lost += lose_unsynced_partition_pages(dir, &mut lose).unwrap();
        let (partitions, journal, new_run) = start(dir, count_only, stats);
        assert!(new_run > run);
        // Check every channel against the reference and adopt what came
        // back: a prefix holding every acknowledged record.
        for (index, records) in model.iter_mut().enumerate() {
            let name = channel_name(index);
            let partition = &partitions[index % PARTITIONS as usize];
            let head = partition.head_seq(name.as_bytes());
            let acked = records.iter().filter(|r| r.state == State::Acked).count() as u64;
            let written = records.iter().filter(|r| r.state != State::Pending).count() as u64;
            assert!(
                head >= acked,
                "seed {seed}: {name} lost acknowledged records (head {head}, acked {acked})"
            );
            assert!(
                head <= written,
                "seed {seed}: {name} has records never written (head {head}, written {written})"
            );
            stats.unacked_kept += (head - acked) as usize;
            stats.unacked_lost += (written - head) as usize;
            records.truncate(head as usize);
            for record in records.iter_mut() {
                record.state = State::Acked;
            }
        }
        let shard = Shard {
            partitions,
            journal,
            run: new_run,
            model,
            journal_synced: None,
            background_switch: None,
            held: false,
            background_sync: false,
            count_only,
        };
        shard.check(seed);
        stats.crashes += 1;
        stats.count_only_crashes += usize::from(count_only);
        shard
    }

    /// Every channel reads back exactly what the reference holds (flushed
    /// records: written or acknowledged).
    fn check(&self, seed: u64) {
        for (index, records) in self.model.iter().enumerate() {
            let name = channel_name(index);
            let partition = &self.partitions[index % PARTITIONS as usize];
            let visible: Vec<&ModelRecord> = records
                .iter()
                .filter(|r| r.state != State::Pending)
                .collect();
            assert_eq!(
                partition.head_seq(name.as_bytes()),
                visible.len() as u64,
                "seed {seed}: {name}"
            );
            let page = partition.read_from(name.as_bytes(), 1, usize::MAX).unwrap();
            assert_eq!(page.records.len(), visible.len(), "seed {seed}: {name}");
            for (i, (record, expected)) in page.records.iter().zip(&visible).enumerate() {
                assert_eq!(record.seq, i as u64 + 1, "seed {seed}: {name}");
                assert_eq!(
                    record.body,
                    expected.body,
                    "seed {seed}: {name} seq {}",
                    i + 1
                );
            }
        }
    }
}

fn run(seed: u64, operations: usize, stats: &mut Stats) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let channels = PARTITIONS as usize + rng.below(9) as usize;
    // Half the runs switch the way the `none` policy does after turns
    // that do not sync.
    let mut background_switches = rng.below(2) == 0;
    // Half the runs start a background sync after turns that do not sync
    // (the `interval` policy's way).
    let mut background_syncs = rng.below(2) == 0;
    // Every fourth seed is the `none` policy's as the broker runs it: the
    // journal counts its entries, and no turn syncs.
    let count_only = seed.is_multiple_of(4);
    if count_only {
        (background_switches, background_syncs) = (true, false);
    }
    let (partitions, journal, run) = start(dir.path(), count_only, stats);
    let mut shard = Shard {
        partitions,
        journal,
        run,
        model: (0..channels).map(|_| Vec::new()).collect(),
        journal_synced: None,
        background_switch: None,
        held: false,
        background_sync: false,
        count_only,
    };
    for step in 0..operations {
        let mut operation = rng.below(100);
        if background_switches && (60..=81).contains(&operation) && rng.below(4) != 0 {
            // The `none` policy's way: turns that sync are rare.
            operation = 82;
        }
        if count_only && (60..=81).contains(&operation) {
            // And with a counting journal there are none.
            operation = 82;
        }
        match operation {
            0..=59 => {
                let index = rng.below(channels as u64) as usize;
                let body = rng.body(10, 2500);
                let name = channel_name(index);
                let partition = &mut shard.partitions[index % PARTITIONS as usize];
                let appended = partition
                    .append(&new_record(&name, &body, step as u64))
                    .unwrap();
                shard.model[index].push(ModelRecord {
                    body,
                    state: State::Pending,
                });
                assert_eq!(appended.seq, shard.model[index].len() as u64);
            }
            60..=81 => shard.turn(true, false, false, (false, false), stats),
            82..=89 => {
                let hold = rng.below(2) == 0;
                let finish_first = rng.below(2) == 0;
                let syncs = (background_syncs, finish_first);
                shard.turn(false, background_switches, hold, syncs, stats)
            }
            90..=91 => shard = shard.clean_restart(dir.path(), stats),
            92..=96 => shard = shard.crash_and_restart(dir.path(), &mut rng, seed, stats),
            _ => shard.check(seed),
        }
    }
    shard.check(seed);
}

#[test]
fn acknowledged_records_survive_power_losses_that_lose_unsynced_pages() {
    let mut stats = Stats::default();
    let seeds: u64 = std::env::var("STARLING_MODEL_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(12);
    for seed in 1..=seeds {
        run(seed, 400, &mut stats);
    }
    eprintln!("{stats:?}");
    // The paths this test is about really ran.
    assert!(stats.crashes > 12 && stats.clean_stops > 0, "{stats:?}");
    assert!(stats.switches > 0 && stats.trickles > 0, "{stats:?}");
    assert!(stats.crashes_before_a_header_sync > 0, "{stats:?}");
    assert!(
        stats.background_switches > 0 && stats.crashes_before_a_background_switch_ran > 0,
        "{stats:?}"
    );
    assert!(
        stats.partition_pages_lost > 0 && stats.journal_pages_lost > 0,
        "{stats:?}"
    );
    assert!(stats.replayed_records > 0, "{stats:?}");
    assert!(
        stats.background_syncs > stats.background_syncs_synced && stats.background_syncs_synced > 0,
        "{stats:?}"
    );
    assert!(
        stats.unacked_lost > 0 && stats.unacked_kept > 0,
        "{stats:?}"
    );
    assert!(stats.count_only_crashes > 0, "{stats:?}");
}
