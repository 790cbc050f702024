//! Under `fsync` a shard's journal fdatasync runs on its commit thread while
//! the shard's loop goes on. A record written but not yet durable must not
//! be acknowledged, and must not be read: a read that comes meanwhile waits
//! for the commit; an ephemeral message, which is not in the log, does not
//! wait. (Its own test binary: the hold on commit threads is process-wide.)

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use starling_broker::{Engine, EngineConfig, LoopbackAuthorizer, Principal};
use starling_protocol::HistoryQuery;
use starling_storage::journal::hold_commits;

/// Releases the commit threads when dropped.
struct Release;

/// The tests of this binary hold the commit threads one at a time.
static HOLDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HOLDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Release {
    fn drop(&mut self) {
        hold_commits(false);
    }
}

/// One shard of two partitions in `dir`, otherwise the defaults.
fn one_shard(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        shards: 1,
        partitions: 2,
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    }
}

/// One shard of two partitions, under `fsync` (the default), every
/// fdatasync on the commit thread (which the tests hold).
fn start(dir: &std::path::Path) -> Engine {
    let config = EngineConfig {
        sync_on_loop_max_us: 0,
        ..one_shard(dir)
    };
    Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap()
}

#[test]
fn a_read_waits_for_the_commit_of_what_it_would_see() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path());
    let mut early = engine.connect(Principal::embedded("early"));
    early.publish("visible", "durable first").unwrap();

    hold_commits(true);
    // Declared after the engine, so dropped before it: a failing assertion
    // releases the commit threads, and the engine can stop.
    let _release = Release;
    let (acked, acks) = mpsc::channel();
    let mut writer = engine.connect(Principal::embedded("writer"));
    let publishing = std::thread::spawn(move || {
        let seq = writer.publish("visible", "second").unwrap().seq;
        acked.send(seq).unwrap();
    });
    assert!(
        acks.recv_timeout(Duration::from_millis(500)).is_err(),
        "no acknowledgement before the fdatasync"
    );
    let (read, reads) = mpsc::channel();
    let mut reader = engine.connect(Principal::embedded("reader"));
    let reading = std::thread::spawn(move || {
        let (head, page) = reader.history("visible", HistoryQuery::Last, 10).unwrap();
        read.send((head, page.len())).unwrap();
    });
    assert!(
        reads.recv_timeout(Duration::from_millis(500)).is_err(),
        "the read waits for the commit: it would see a record that is not durable"
    );

    hold_commits(false);
    assert_eq!(acks.recv_timeout(Duration::from_secs(20)).unwrap(), 2);
    assert_eq!(reads.recv_timeout(Duration::from_secs(20)).unwrap(), (2, 2));
    publishing.join().unwrap();
    reading.join().unwrap();
}

/// A commit whose fdatasync fails: its publishers are told the write
/// failed, and its records, already written to the partition's segment, are
/// never read (not by the read that waited for the commit, not by a later
/// one, not by a subscription from before them) nor delivered; the
/// partition refuses writes from then on. With the commit on the commit
/// thread (held, so a read waits for it) and run inline on the loop.
#[test]
fn the_records_of_a_failed_commit_are_never_read() {
    use starling_broker::BrokerError;
    use starling_protocol::SubscribeStart;
    use starling_storage::journal::fail_next_commit;

    for on_commit_thread in [true, false] {
        let _one = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            sync_on_loop_max_us: if on_commit_thread { 0 } else { u64::MAX },
            ..one_shard(dir.path())
        };
        let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
        let mut early = engine.connect(Principal::embedded("early"));
        early.publish("room", "durable first").unwrap();
        let mut live = engine.connect(Principal::embedded("live"));
        live.subscribe("room", SubscribeStart::Live).unwrap();

        hold_commits(on_commit_thread);
        let _release = Release;
        fail_next_commit();
        let mut writer = engine.connect(Principal::embedded("writer"));
        let publishing = std::thread::spawn(move || writer.publish("room", "lost"));
        let mut reader = engine.connect(Principal::embedded("reader"));
        let reading = std::thread::spawn(move || {
            // Sent once the write is in flight (under a held commit, the
            // read waits for its outcome).
            std::thread::sleep(Duration::from_millis(200));
            reader.history("room", HistoryQuery::Last, 10).unwrap()
        });
        std::thread::sleep(Duration::from_millis(400));
        hold_commits(false);

        let refused = publishing.join().unwrap().unwrap_err();
        assert!(
            matches!(refused, BrokerError::StorageFailed { .. }),
            "{refused}"
        );
        let bodies = |page: &[starling_protocol::Message]| -> Vec<Vec<u8>> {
            page.iter().map(|m| m.body.to_vec()).collect()
        };
        let (head, page) = reading.join().unwrap();
        assert_eq!(
            (head, bodies(&page)),
            (1, vec![b"durable first".to_vec()]),
            "the read that waited for the failed commit (commit thread: {on_commit_thread})"
        );
        for query in [
            HistoryQuery::Last,
            HistoryQuery::From(1),
            HistoryQuery::Before(9),
        ] {
            let (head, page) = early.history("room", query, 10).unwrap();
            assert_eq!((head, bodies(&page)), (1, vec![b"durable first".to_vec()]));
        }
        let mut late = engine.connect(Principal::embedded("late"));
        late.subscribe("room", SubscribeStart::FromSeq(1)).unwrap();
        let (_, messages) = late.next_delivery(Duration::from_secs(20)).unwrap();
        assert_eq!(bodies(&messages), [b"durable first".to_vec()]);
        assert!(late.next_delivery(Duration::from_millis(300)).is_none());
        assert!(
            live.next_delivery(Duration::from_millis(300)).is_none(),
            "nothing of a failed commit is delivered"
        );
        let again = early.publish("room", "after").unwrap_err();
        assert!(
            matches!(again, BrokerError::StorageFailed { .. }),
            "{again}"
        );
    }
}

#[test]
fn an_ephemeral_message_does_not_wait_for_the_commit_of_durable_ones() {
    use bytes::Bytes;
    use starling_broker::Command;
    use starling_protocol::{kind, SubscribeStart};

    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path());
    let mut subscriber = engine.connect(Principal::embedded("subscriber"));
    subscriber.subscribe("room", SubscribeStart::Live).unwrap();

    hold_commits(true);
    let _release = Release;
    let mut writer = engine.connect(Principal::embedded("writer"));
    let publishing = std::thread::spawn(move || {
        writer.publish("room", "durable").unwrap();
        writer
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut typist = engine.connect(Principal::embedded("typist"));
    let typing = typist
        .publish_command(Command::Publish {
            channel: "room".into(),
            ephemeral: true,
            kind: kind::TYPING,
            client_message_id: Bytes::new(),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from_static(b"typing"),
        })
        .unwrap();
    assert_eq!(typing.seq, 0);
    // The durable message's fdatasync is held: only the ephemeral one
    // comes, at once.
    let (channel, messages) = subscriber
        .next_delivery(Duration::from_secs(20))
        .expect("the ephemeral message is delivered while the commit waits");
    assert_eq!(&*channel, "room");
    let bodies: Vec<&[u8]> = messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [&b"typing"[..]]);
    assert!(
        !publishing.is_finished(),
        "the durable one is not acknowledged yet"
    );

    hold_commits(false);
    publishing.join().unwrap();
    let (_, messages) = subscriber.next_delivery(Duration::from_secs(20)).unwrap();
    assert_eq!(
        (messages[0].seq, &messages[0].body[..]),
        (1, &b"durable"[..])
    );
}

/// Under `interval` the periodic fdatasync runs on the commit thread too,
/// and nothing waits for it: while it is held, publishes are still
/// acknowledged (not durable), delivered and read; once released, it is
/// done and counted.
#[test]
fn the_interval_fdatasync_holds_up_nothing() {
    use starling_broker::Durability;
    use starling_protocol::SubscribeStart;

    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::Interval,
        interval_ms: 10,
        ..one_shard(dir.path())
    };
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
    let mut subscriber = engine.connect(Principal::embedded("subscriber"));
    subscriber.subscribe("log", SubscribeStart::Live).unwrap();
    let mut writer = engine.connect(Principal::embedded("writer"));

    hold_commits(true);
    let _release = Release;
    let synced_before = engine.metrics().fsyncs.get();
    for n in 1..=20u64 {
        let ack = writer.publish("log", format!("m{n}")).unwrap();
        assert_eq!(ack.seq, n);
        assert!(
            !ack.durable,
            "nothing is synced while the commit thread is held"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut delivered = 0;
    while delivered < 20 {
        let (_, messages) = subscriber
            .next_delivery(Duration::from_secs(20))
            .expect("deliveries do not wait for the interval fdatasync");
        delivered += messages.len();
    }
    let (head, page) = writer.history("log", HistoryQuery::Last, 50).unwrap();
    assert_eq!((head, page.len()), (20, 20));
    assert_eq!(
        engine.metrics().fsyncs.get(),
        synced_before,
        "the held fdatasync is not counted as done"
    );

    hold_commits(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if engine.metrics().fsyncs.get() > synced_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the interval sync never finished"
        );
    }
}

/// A stored message goes into its commit's fan-out only if its channel has
/// subscribers when it is appended. A subscription made while such a
/// message waits (in the commit whose fdatasync runs, or appended after it
/// and not yet written) still gets it, through its catch-up.
#[test]
fn a_subscription_gets_what_was_published_before_it_and_committed_after() {
    use starling_protocol::SubscribeStart;

    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path());
    hold_commits(true);
    let _release = Release;
    let publish = |name: &str, body: &'static str| {
        let mut writer = engine.connect(Principal::embedded(name));
        std::thread::spawn(move || writer.publish("quiet", body).unwrap().seq)
    };
    // The first is written and waits in the held fdatasync; the second is
    // appended meanwhile and waits for the next commit.
    let first = publish("first", "written, not durable");
    std::thread::sleep(Duration::from_millis(200));
    let second = publish("second", "appended, not written");
    std::thread::sleep(Duration::from_millis(200));
    let mut subscriber = engine.connect(Principal::embedded("subscriber"));
    let subscribing = std::thread::spawn(move || {
        let head = subscriber.subscribe("quiet", SubscribeStart::FromSeq(1));
        (subscriber, head)
    });
    std::thread::sleep(Duration::from_millis(200));

    hold_commits(false);
    assert_eq!(first.join().unwrap(), 1);
    assert_eq!(second.join().unwrap(), 2);
    let (mut subscriber, head) = subscribing.join().unwrap();
    assert_eq!(head.unwrap(), 2, "the catch-up waited for both");
    let mut bodies = Vec::new();
    while let Some((_, messages)) = subscriber.next_delivery(Duration::from_secs(2)) {
        bodies.extend(messages.iter().map(|m| (m.seq, m.body.clone())));
    }
    assert_eq!(
        bodies,
        [
            (1, bytes::Bytes::from_static(b"written, not durable")),
            (2, bytes::Bytes::from_static(b"appended, not written")),
        ]
    );
}

/// While the shard's flushes are short (`sync_on_loop_max_us`), its loop
/// runs them itself: a held commit thread holds up no acknowledgement, each
/// acknowledgement says durable, and every message is there after a restart.
#[test]
fn short_flushes_run_on_the_loop_without_the_commit_thread() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        sync_on_loop_max_us: u64::MAX,
        ..one_shard(dir.path())
    };
    let engine = Engine::start(config.clone(), Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
    hold_commits(true);
    let release = Release;
    let mut writer = engine.connect(Principal::embedded("writer"));
    let (acked, acks) = mpsc::channel();
    let publishing = std::thread::spawn(move || {
        for n in 1..=20u64 {
            let published = writer.publish("loop", format!("m{n}")).unwrap();
            acked.send((published.seq, published.durable)).unwrap();
        }
    });
    for n in 1..=20u64 {
        let ack = acks
            .recv_timeout(Duration::from_secs(20))
            .expect("acknowledged with the commit thread held");
        assert_eq!(ack, (n, true));
    }
    publishing.join().unwrap();
    drop(release);
    drop(engine);

    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
    let mut reader = engine.connect(Principal::embedded("reader"));
    let (head, page) = reader.history("loop", HistoryQuery::Last, 50).unwrap();
    assert_eq!(head, 20);
    let bodies: Vec<String> = page
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (1..=20).map(|n| format!("m{n}")).collect();
    assert_eq!(bodies, expected);
}
