//! The shard journal: crash images of partitions whose unsynced data was
//! lost or left stale, repaired from the journal.

mod common;

use std::path::Path;

use common::*;
use starling_storage::journal::{journal_path, recover_journals, JOURNAL_FILE_BYTES_MINIMUM};
use starling_storage::{
    verify_partition_dir_with, Journal, Partition, PartitionConfig, PartitionOptions,
    RecoveryReport, StorageError, SwitchSync, UnsyncedTail,
};

/// Opens partition 0 the way the engine does after reading the journals.
fn open_after_journal(
    dir: &Path,
    config: PartitionConfig,
    run: u32,
) -> Result<(Partition, RecoveryReport, u64), StorageError> {
    let recovery = recover_journals(dir)?;
    let journal = recovery.partitions.get(&0);
    let (mut partition, report) = Partition::open_with(
        dir,
        0,
        config,
        PartitionOptions {
            run,
            unsynced_tail: journal.and_then(|j| j.tail),
            ..PartitionOptions::default()
        },
    )?;
    let mut replayed = 0;
    for entry in journal.map(|j| &j.entries[..]).unwrap_or_default() {
        replayed += partition.replay(entry)?;
    }
    partition.sync()?;
    Ok((partition, report, replayed))
}

/// One loop turn as the shard runs it: flush into the journal, write, sync.
fn turn(partition: &mut Partition, journal: &mut Journal, records: &[(&str, u64)]) {
    for &(channel, timestamp) in records {
        append(partition, channel, timestamp);
    }
    let id = partition.id();
    partition
        .flush_with(&mut |bytes| journal.add(id, bytes))
        .unwrap();
    journal.write().unwrap();
    journal.sync().unwrap();
}

/// Starts run `run` on a fresh or recovered partition: sync, then a new
/// journal naming its durable end.
fn start_run(dir: &Path, partition: &mut Partition, run: u32, generation: u64) -> Journal {
    partition.sync().unwrap();
    Journal::create(
        dir,
        0,
        run,
        generation,
        JOURNAL_FILE_BYTES_MINIMUM,
        &[(0, partition.end_position())],
    )
    .unwrap()
}

fn open_run(dir: &Path, run: u32) -> Partition {
    Partition::open_with(
        dir,
        0,
        PartitionConfig::default(),
        PartitionOptions {
            run,
            ..PartitionOptions::default()
        },
    )
    .unwrap()
    .0
}

#[test]
fn lost_unsynced_partition_data_is_replayed_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 1), ("b", 1)]);
    for t in 2..6 {
        turn(
            &mut partition,
            &mut journal,
            &[("a", t), ("b", t), ("a", t)],
        );
    }
    let full = partition.end_position();
    partition.simulate_crash();
    drop(journal);
    // A power loss: none of the segment's pages written since the journal
    // started reached the disk. The journal was fdatasync'ed at every turn.
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, replayed) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(
        replayed,
        2 + 4 * 3,
        "every journaled record is written again"
    );
    assert_eq!(partition.end_position(), full);
    assert_eq!(partition.head_seq(b"a"), 9);
    check_channel(&partition, "a");
    check_channel(&partition, "b");
}

#[test]
fn a_hole_in_the_unsynced_tail_is_filled_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    let mut ends = vec![partition.end_position()];
    for t in 1..6 {
        turn(&mut partition, &mut journal, &[("a", t), ("b", t)]);
        ends.push(partition.end_position());
    }
    partition.simulate_crash();
    drop(journal);
    // The page cache wrote the third turn's batch but not the second's: a
    // hole followed by a valid batch (the torn-tail rules call that
    // corruption; the journal knows better).
    let file = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[ends[1] as usize..ends[2] as usize].fill(0);
    std::fs::write(&file, &bytes).unwrap();
    let (partition, report, _) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(
        report.truncated_bytes, 0,
        "nothing is cut: the journal covers it"
    );
    assert_eq!(partition.head_seq(b"a"), 5);
    check_channel(&partition, "a");
    check_channel(&partition, "b");
}

#[test]
fn a_stale_batch_of_an_earlier_run_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 1)]);
    let durable = partition.end_position();
    // Two more turns reach the segment but not the journal (never
    // acknowledged): the journal loses its last two entries.
    let journal_end = std::fs::metadata(journal_path(dir.path(), 0).join("0.journal"))
        .unwrap()
        .len();
    turn(&mut partition, &mut journal, &[("a", 2)]);
    let second = partition.end_position();
    turn(&mut partition, &mut journal, &[("a", 3)]);
    partition.simulate_crash();
    drop(journal);
    let journal_file = journal_path(dir.path(), 0).join("0.journal");
    let journal_bytes = std::fs::read(&journal_file).unwrap();
    std::fs::write(&journal_file, &journal_bytes[..journal_end as usize]).unwrap();
    // And the second turn's batch is a hole on disk; the third is there.
    let file = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[durable as usize..second as usize].fill(0);
    std::fs::write(&file, &bytes).unwrap();

    // Run 2 recovers: the log ends at the hole (the third batch is left on
    // disk after the logical end), then writes a batch of the same size
    // where the hole was.
    let (mut partition, _, _) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(partition.head_seq(b"a"), 1);
    let mut journal = start_run(dir.path(), &mut partition, 2, 2);
    turn(&mut partition, &mut journal, &[("a", 2)]);
    assert_eq!(partition.end_position(), second, "same size, same place");
    partition.simulate_crash();
    drop(journal);

    // Run 3 recovers: right after run 2's batch lies run 1's third batch,
    // valid and at the right position; its run tells it apart.
    let (partition, _, _) = open_after_journal(dir.path(), PartitionConfig::default(), 3).unwrap();
    assert_eq!(partition.head_seq(b"a"), 2);
    assert_eq!(partition.end_position(), second);
    check_channel(&partition, "a");
    let tail = recover_journals(dir.path()).unwrap().partitions[&0].tail;
    drop(partition);
    let verify = verify_partition_dir_with(&partition_dir(dir.path()), tail).unwrap();
    assert_eq!(verify.records, 2);
}

#[test]
fn damage_before_the_durable_end_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    turn_without_journal(&mut partition);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 5)]);
    partition.simulate_crash();
    drop(journal);
    // A bit flip in the first batch, which was synced before the journal
    // started.
    let file = segment_files(dir.path()).pop().unwrap();
    flip_bit(&file, 70, 3);
    let error = open_after_journal(dir.path(), PartitionConfig::default(), 2)
        .err()
        .expect("corruption");
    assert!(
        matches!(&error, StorageError::Corrupt { detail, .. } if detail.contains("durable")),
        "{error}"
    );
}

/// The last segment file cut short before the point the journal says was
/// durable (a truncated file): recovery says data is missing rather than
/// open a shorter log.
#[test]
fn a_log_ending_before_the_durable_end_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    turn_without_journal(&mut partition);
    // A batch boundary: cut there, the file looks whole.
    let first_end = partition.end_position();
    turn_without_journal(&mut partition);
    // No journal entry after the durable end: nothing else would notice.
    let journal = start_run(dir.path(), &mut partition, 1, 1);
    partition.simulate_crash();
    drop(journal);
    let file = segment_files(dir.path()).pop().unwrap();
    let cut = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    cut.set_len(first_end).unwrap();
    drop(cut);
    let error = open_after_journal(dir.path(), PartitionConfig::default(), 2)
        .err()
        .expect("missing data reported");
    assert!(
        matches!(&error, StorageError::Corrupt { detail, .. } if detail.contains("missing")),
        "{error}"
    );
}

fn turn_without_journal(partition: &mut Partition) {
    append(partition, "a", 1);
    append(partition, "a", 2);
    partition.flush().unwrap();
    partition.sync().unwrap();
}

#[test]
fn a_torn_journal_entry_ends_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 1)]);
    let journal_file = journal_path(dir.path(), 0).join("0.journal");
    let first_end = std::fs::metadata(&journal_file).unwrap().len();
    turn(&mut partition, &mut journal, &[("a", 2)]);
    turn(&mut partition, &mut journal, &[("a", 3)]);
    drop(journal);
    partition.simulate_crash();
    // Flip a bit in the second entry's payload: it and everything after it
    // are torn; the first entry stays.
    flip_bit(&journal_file, first_end + 40, 0);
    let recovery = recover_journals(dir.path()).unwrap();
    assert_eq!(recovery.partitions[&0].entries.len(), 1);
    assert_eq!(recovery.run, 1);
}

#[test]
fn switching_files_keeps_both_generations_until_the_partitions_are_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    let start = partition.end_position();
    let mut t = 0;
    // Fill the first file past its size, then switch.
    while !journal.wants_switch() {
        t += 1;
        turn(
            &mut partition,
            &mut journal,
            &[("a", t), ("b", t), ("c", t)],
        );
    }
    let switched_at = partition.end_position();
    let target = partition.sync_target().unwrap();
    journal
        .switch(&[(0, switched_at)], vec![target], SwitchSync::Now)
        .unwrap();
    assert_eq!(journal.generation(), 2);
    for _ in 0..3 {
        t += 1;
        turn(&mut partition, &mut journal, &[("a", t), ("b", t)]);
    }
    partition.simulate_crash();
    drop(journal);
    let recovery = recover_journals(dir.path()).unwrap();
    assert_eq!(recovery.generation, 2);
    // The older file's header gives the durable end: the background sync of
    // the switch may not have happened.
    assert_eq!(
        recovery.partitions[&0].tail,
        Some(UnsyncedTail {
            durable_end: start,
            run: 1
        })
    );
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, _) = open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(partition.head_seq(b"a"), t);
    check_channel(&partition, "a");
    check_channel(&partition, "b");
    check_channel(&partition, "c");
}

#[test]
fn write_back_started_between_switches_changes_nothing_recovery_sees() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    let mut t = 0;
    let mut trickles = 0;
    let mut switches = 0;
    // Past two switches (the first file of a new journal is left early),
    // starting the write-back whenever the journal asks.
    while switches < 2 {
        t += 1;
        turn(&mut partition, &mut journal, &[("a", t), ("b", t)]);
        if journal.wants_switch() {
            let end = partition.end_position();
            let target = partition.sync_target().unwrap();
            journal
                .switch(&[(0, end)], vec![target], SwitchSync::Now)
                .unwrap();
            switches += 1;
        } else if journal.wants_trickle() {
            journal.trickle(vec![partition.sync_target().unwrap()]);
            assert!(
                !journal.wants_trickle(),
                "asked again only after more writes"
            );
            trickles += 1;
        }
    }
    // An eighth of a file at a time: seven times in the full file.
    assert!(trickles >= 7, "write-back started {trickles} times");
    for _ in 0..3 {
        t += 1;
        turn(&mut partition, &mut journal, &[("a", t), ("b", t)]);
    }
    partition.simulate_crash();
    drop(journal);
    // Everything the switches did not sync is lost (one segment: its file
    // offsets are stream positions).
    let tail = recover_journals(dir.path()).unwrap().partitions[&0].tail;
    crash_zero_last_segment_from(dir.path(), tail.unwrap().durable_end);
    let (partition, _, replayed) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert!(replayed > 0, "the lost tail came back from the journal");
    assert_eq!(partition.head_seq(b"a"), t);
    check_channel(&partition, "a");
    check_channel(&partition, "b");
}

#[test]
fn replay_rolls_segments_like_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let mut partition = Partition::open_with(
        dir.path(),
        0,
        config.clone(),
        PartitionOptions {
            run: 1,
            preallocate: false,
            ..PartitionOptions::default()
        },
    )
    .unwrap()
    .0;
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    for t in 1..100 {
        turn(&mut partition, &mut journal, &[("a", t), ("b", t)]);
    }
    let segments = segment_files(dir.path()).len();
    assert!(segments > 3);
    partition.simulate_crash();
    drop(journal);
    // Lose the newest segment file altogether (its directory entry was not
    // synced) and zero the one before it from its start.
    let files = segment_files(dir.path());
    std::fs::remove_file(files.last().unwrap()).unwrap();
    let (partition, _, _) = open_after_journal(dir.path(), config, 2).unwrap();
    assert_eq!(segment_files(dir.path()).len(), segments);
    assert_eq!(partition.head_seq(b"a"), 99);
    check_channel(&partition, "a");
    check_channel(&partition, "b");
}

#[test]
fn after_a_clean_close_everything_before_the_ends_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 1), ("a", 2)]);
    partition.sync().unwrap();
    journal.close(&[(0, partition.end_position())]).unwrap();
    let end = partition.end_position();
    drop(partition);
    drop(journal);
    let recovery = recover_journals(dir.path()).unwrap();
    assert_eq!(
        recovery.partitions[&0].tail,
        Some(UnsyncedTail {
            durable_end: end,
            run: 1
        })
    );
    assert!(recovery.partitions[&0].entries.is_empty());
    // So a damaged batch is corruption again, not an unsynced tail.
    let file = segment_files(dir.path()).pop().unwrap();
    flip_bit(&file, 70, 1);
    let error = open_after_journal(dir.path(), PartitionConfig::default(), 2)
        .err()
        .expect("corruption");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
}

/// One record of channel "a" written to the partition and the journal,
/// not synced.
fn write_unsynced(partition: &mut Partition, journal: &mut Journal, timestamp: u64) {
    append(partition, "a", timestamp);
    let id = partition.id();
    partition
        .flush_with(&mut |bytes| journal.add(id, bytes))
        .unwrap();
    journal.write().unwrap();
}

/// A partition and its journal, with the journal's commit thread started;
/// the receiver hears of each sync the thread finishes.
fn with_commit_thread(dir: &Path) -> (Partition, Journal, std::sync::mpsc::Receiver<()>) {
    let mut partition = open_run(dir, 1);
    let mut journal = start_run(dir, &mut partition, 1, 1);
    let (notified, notifications) = std::sync::mpsc::channel();
    journal
        .set_sync_notifier(0, Box::new(move || notified.send(()).unwrap()))
        .unwrap();
    (partition, journal, notifications)
}

/// A sync on the commit thread: started without waiting, reported once
/// (the notifier called), and what it covered survives a crash; while it
/// runs nothing may be written.
#[test]
fn a_sync_on_the_commit_thread_is_reported_when_done() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, mut journal, notifications) = with_commit_thread(dir.path());
    assert!(
        !journal.start_sync().unwrap(),
        "nothing written, nothing to sync"
    );
    for t in 1..=3 {
        write_unsynced(&mut partition, &mut journal, t);
        assert!(journal.unsynced());
        assert!(journal.start_sync().unwrap());
        assert!(journal.sync_in_flight());
        notifications
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the commit thread reports the sync");
        assert!(journal.finish_sync(false).unwrap().is_ok());
        assert!(!journal.sync_in_flight() && !journal.unsynced());
        assert!(journal.finish_sync(true).is_none(), "reported once");
    }
    // The journal holds the three turns: a crash that loses every unsynced
    // segment page keeps them.
    partition.simulate_crash();
    drop(journal);
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, _) = open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(partition.head_seq(b"a"), 3);
    check_channel(&partition, "a");
}

/// A background sync (the `interval` policy) lets writes go on: it is
/// reported once, and leaves the journal synced only when nothing was
/// written after it started; one at a time.
#[test]
fn a_background_sync_lets_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, mut journal, notifications) = with_commit_thread(dir.path());
    let wait = || {
        notifications
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the commit thread reports the sync")
    };
    assert!(!journal.start_background_sync().unwrap(), "nothing to sync");

    // A write while it runs: reported done, still unsynced.
    write_unsynced(&mut partition, &mut journal, 1);
    assert!(journal.start_background_sync().unwrap());
    assert!(!journal.sync_in_flight(), "it holds up no write");
    assert!(!journal.start_background_sync().unwrap(), "one at a time");
    write_unsynced(&mut partition, &mut journal, 2);
    wait();
    assert!(journal.finish_background_sync(false).unwrap().is_ok());
    assert!(journal.unsynced(), "the second write came after it started");
    assert!(
        journal.finish_background_sync(false).is_none(),
        "reported once"
    );

    // Nothing written meanwhile: synced.
    assert!(journal.start_background_sync().unwrap());
    wait();
    assert!(journal.finish_background_sync(false).unwrap().is_ok());
    assert!(!journal.unsynced());

    // What it covered survives a crash that loses every unsynced segment page.
    partition.simulate_crash();
    drop(journal);
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, _) = open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(partition.head_seq(b"a"), 2);
    check_channel(&partition, "a");
}

#[test]
#[should_panic(expected = "finish the sync in flight before a write")]
fn nothing_is_written_while_a_sync_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    journal.set_sync_notifier(0, Box::new(|| {})).unwrap();
    write_unsynced(&mut partition, &mut journal, 1);
    assert!(journal.start_sync().unwrap());
    journal.write().unwrap();
}

/// Without a commit thread a started sync ran on the caller's thread: it is
/// reported done at once.
#[test]
fn without_a_commit_thread_a_started_sync_is_done_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    assert!(!journal.has_commit_thread());
    write_unsynced(&mut partition, &mut journal, 1);
    assert!(journal.start_sync().unwrap());
    assert!(journal.finish_sync(false).unwrap().is_ok());
    assert!(!journal.sync_in_flight() && !journal.unsynced());
}

/// While recent syncs were short (`set_sync_on_loop_max_us`), a started
/// sync runs on the caller's thread even beside a commit thread: done at
/// once, nothing reported by the thread. With a limit of 0 every sync goes
/// to the commit thread. Either way what it covered survives a crash.
#[test]
fn short_syncs_run_on_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (mut partition, mut journal, notifications) = with_commit_thread(dir.path());
    journal.set_sync_on_loop_max_us(u64::MAX);
    for timestamp in 1..=3 {
        write_unsynced(&mut partition, &mut journal, timestamp);
        assert!(journal.start_sync().unwrap());
        assert!(journal.synced_inline());
        assert!(journal.finish_sync(false).unwrap().is_ok());
        assert!(!journal.sync_in_flight() && !journal.unsynced());
    }
    assert!(
        notifications.try_recv().is_err(),
        "the commit thread ran none of them"
    );

    journal.set_sync_on_loop_max_us(0);
    write_unsynced(&mut partition, &mut journal, 4);
    assert!(journal.start_sync().unwrap());
    assert!(!journal.synced_inline(), "on the commit thread");
    notifications
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the commit thread reports the sync");
    assert!(journal.finish_sync(false).unwrap().is_ok());
    assert!(!journal.sync_in_flight() && !journal.unsynced());

    partition.simulate_crash();
    drop(journal);
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, _) = open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(partition.head_seq(b"a"), 4);
    check_channel(&partition, "a");
}

/// Small entries are gathered and written together when the turn ends; a
/// large one is written at once, after the small ones gathered before it.
/// Either way the journal holds them in order, and a crash that loses every
/// unsynced segment page gets them all back.
#[test]
fn gathered_and_large_entries_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    let id = partition.id();
    let big = vec![7u8; 100_000];
    // One turn, three flushes: small, large, small (as three partitions'
    // entries of one turn would be).
    append(&mut partition, "a", 1);
    append(&mut partition, "a", 1);
    partition
        .flush_with(&mut |bytes| journal.add(id, bytes))
        .unwrap();
    partition
        .append(&new_record("big", &big, 1))
        .expect("append");
    partition
        .flush_with(&mut |bytes| journal.add(id, bytes))
        .unwrap();
    append(&mut partition, "a", 1);
    partition
        .flush_with(&mut |bytes| journal.add(id, bytes))
        .unwrap();
    journal.write().unwrap();
    journal.sync().unwrap();

    partition.simulate_crash();
    drop(journal);
    crash_zero_last_segment_from(dir.path(), 0);
    let (partition, _, replayed) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(replayed, 4, "every journaled record is written again");
    check_channel(&partition, "a");
    assert_eq!(partition.head_seq(b"a"), 3);
    let page = partition.read_from(b"big", 1, 10).unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].body, big);
}

#[test]
fn a_counting_journal_writes_no_entries_and_a_process_crash_keeps_the_partition_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut partition = open_run(dir.path(), 1);
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    journal.set_count_only(true);
    let (file, header_end) = journal.active_file();
    for _ in 0..3 {
        turn(
            &mut partition,
            &mut journal,
            &[("a", 1), ("b", 1), ("a", 1)],
        );
    }
    // The position moved on as if the entries had been written (it paces
    // the switches), nothing was written, and a sync makes nothing
    // durable through the journal.
    assert!(journal.active_file().1 > header_end);
    let length = std::fs::metadata(&file).unwrap().len();
    assert!(length <= header_end, "no entry written: {length} bytes");
    assert!(journal.unsynced());

    // A process crash: the partition's writes are in the page cache, and
    // recovery keeps them (valid batches of the run beyond the durable end).
    partition.simulate_crash();
    drop(journal);
    let (partition, _, replayed) =
        open_after_journal(dir.path(), PartitionConfig::default(), 2).unwrap();
    assert_eq!(replayed, 0);
    check_channel(&partition, "a");
    assert_eq!(partition.head_seq(b"a"), 6);
    assert_eq!(partition.head_seq(b"b"), 3);
}

/// A switch whose new header never became durable leaves its entries, of
/// generation G + 1, under the file's older header; recovery goes by valid
/// headers, finds G at most, and the next run starts its journal with
/// G + 1 in that very file. Those entries, never acknowledged as this run's,
/// must not be replayed after it: the new journal cuts them off.
#[test]
fn entries_left_under_an_older_header_are_not_taken_for_a_new_runs() {
    let dir = tempfile::tempdir().unwrap();
    let journals = journal_path(dir.path(), 0);
    let (file0, file1) = (journals.join("0.journal"), journals.join("1.journal"));
    let mut partition = open_run(dir.path(), 1);
    // Run 1, generation 1: its file is kept aside as file 1 will be.
    let mut journal = start_run(dir.path(), &mut partition, 1, 1);
    turn(&mut partition, &mut journal, &[("a", 1)]);
    drop(journal);
    let generation_1 = std::fs::read(&file0).unwrap();
    // Generation 2 writes entries in file 0...
    let mut journal = start_run(dir.path(), &mut partition, 1, 2);
    turn(&mut partition, &mut journal, &[("a", 2)]);
    turn(&mut partition, &mut journal, &[("a", 3)]);
    drop(journal);
    partition.sync().unwrap();
    // ...whose header then never made it; generation 1 is the valid one.
    std::fs::write(&file1, &generation_1).unwrap();
    let mut bytes = std::fs::read(&file0).unwrap();
    bytes[..16].fill(0);
    std::fs::write(&file0, &bytes).unwrap();
    let recovery = recover_journals(dir.path()).unwrap();
    assert_eq!(recovery.generation, 1, "the highest valid header");

    // The next run starts with generation 2 in file 0, and stops before it
    // writes anything.
    let journal = start_run(dir.path(), &mut partition, 2, recovery.generation + 1);
    drop(journal);
    let recovery = recover_journals(dir.path()).unwrap();
    let entries = recovery.partitions.get(&0).map_or(0, |p| p.entries.len());
    assert_eq!(entries, 0, "the older run's entries are not this run's");
}
