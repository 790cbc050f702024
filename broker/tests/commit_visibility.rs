//! Under `fsync` a shard's journal fdatasync runs on its commit thread while
//! the shard's loop goes on. A record written but not yet durable must not
//! be acknowledged, and must not be read: a read that comes meanwhile waits
//! for the commit. (Its own test binary: the hold on commit threads is
//! process-wide.)

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use starling_broker::{Engine, EngineConfig, LoopbackAuthorizer, Principal};
use starling_protocol::HistoryQuery;
use starling_storage::journal::hold_commits;

/// Releases the commit threads when dropped.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        hold_commits(false);
    }
}

#[test]
fn a_read_waits_for_the_commit_of_what_it_would_see() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        shards: 1,
        partitions: 2,
        data_dir: dir.path().to_path_buf(),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
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
