//! What an in-process client costs in memory: its event queue grows with
//! the events waiting and gives the memory back as they are read, so a
//! client that is attached and idle costs little however large its bound
//! (`EngineConfig::local_events_max`). Its own test binary: it reads the
//! process's resident memory, which other tests running beside it would
//! move.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_broker::{Engine, EngineConfig, LocalClient, LoopbackAuthorizer, Principal};
use starling_protocol::SubscribeStart;

/// Anonymous resident memory of this process, from `/proc/self/status`.
fn resident_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("RssAnon in kB");
    kib * 1024
}

/// Receives `count` messages of any channel.
fn receive(client: &mut LocalClient, count: usize) {
    let mut received = 0;
    while received < count {
        let (_, messages) = client
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("timed out with {received} of {count} messages"));
        received += messages.len();
    }
}

#[test]
fn attached_in_process_clients_hold_no_preallocated_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        shards: 2,
        partitions: 8,
        data_dir: dir.path().to_path_buf(),
        ..EngineConfig::default()
    };
    let local_events_max = config.local_events_max;
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
    let mut publisher = engine.connect(Principal::embedded("publisher"));
    publisher.publish("warm", Bytes::from_static(b"x")).unwrap();

    // 64 clients, each subscribed and each having received a message: with
    // a queue of `local_events_max` slots allocated at attach (~5 MB each,
    // the default), this is ~320 MB.
    const CLIENTS: usize = 64;
    let before = resident_anon_bytes();
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let mut client = engine.connect(Principal::embedded(&format!("user-{index}")));
        client
            .subscribe("lobby", SubscribeStart::Live)
            .expect("subscribes");
        clients.push(client);
    }
    publisher
        .publish("lobby", Bytes::from_static(b"hello"))
        .unwrap();
    for client in &mut clients {
        receive(client, 1);
    }
    let grown = resident_anon_bytes().saturating_sub(before);
    let per_client = grown / CLIENTS as u64;
    assert!(
        per_client < 64 * 1024,
        "{CLIENTS} in-process clients grew resident memory by {grown} bytes \
         ({per_client} each, bound {local_events_max} events)"
    );

    // A client behind by thousands of events still gets them all, in one
    // queue that grows, and its replies beside them.
    let mut slow = engine.connect(Principal::embedded("slow"));
    slow.subscribe("burst", SubscribeStart::Live).unwrap();
    const BURST: usize = 5_000;
    for index in 0..BURST {
        publisher
            .publish("burst", Bytes::from(index.to_string()))
            .unwrap();
    }
    assert_eq!(slow.cursor_get("reader", "burst").unwrap(), 0);
    receive(&mut slow, BURST);
}
