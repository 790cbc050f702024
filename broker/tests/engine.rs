//! The embedded engine through its public API: publish, subscribe (live,
//! from a seq, last N) with no gap and no duplicate at the seam, history,
//! cursors, idempotent publish, ephemeral messages, restart, authorization.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_broker::{
    Action, Authorizer, BrokerError, Command, Denied, Durability, Engine, EngineConfig,
    LocalClient, LoopbackAuthorizer, Principal,
};
use starling_protocol::{kind, HistoryQuery, Message, SubscribeStart};

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        shards: 2,
        partitions: 8,
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    }
}

fn start(config: EngineConfig) -> Engine {
    Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).expect("engine starts")
}

fn user(engine: &Engine, name: &str) -> LocalClient {
    engine.connect(Principal::embedded(name))
}

/// Receives deliveries of `channel` until `count` messages arrived.
fn receive(client: &mut LocalClient, channel: &str, count: usize) -> Vec<Message> {
    let mut received = Vec::new();
    while received.len() < count {
        let (name, messages) = client
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("timed out with {} of {count} messages", received.len()));
        assert_eq!(&*name, channel);
        received.extend(messages.iter().cloned());
    }
    received
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn nothing_more(client: &mut LocalClient) {
    if let Some((channel, messages)) = client.next_delivery(Duration::from_millis(200)) {
        panic!("unexpected delivery on {channel}: {:?}", seqs(&messages));
    }
}

#[test]
fn publish_then_live_delivery_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut publisher = user(&engine, "alice");
    let mut subscriber = user(&engine, "bob");
    // Enough channels that both shards own some and both clients' shards differ from owners.
    let channels: Vec<String> = (0..8).map(|i| format!("room-{i}")).collect();
    for channel in &channels {
        assert_eq!(
            subscriber.subscribe(channel, SubscribeStart::Live).unwrap(),
            0
        );
    }
    for round in 1..=3u64 {
        for channel in &channels {
            let ack = publisher
                .publish(channel, format!("{channel} #{round}"))
                .unwrap();
            assert_eq!(ack.seq, round);
            assert!(ack.durable, "fsync policy acks are durable");
        }
    }
    let mut per_channel: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut total = 0;
    while total < 24 {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .expect("delivery");
        for message in messages.iter() {
            assert_eq!(&message.sender[..], b"alice");
            per_channel
                .entry(channel.to_string())
                .or_default()
                .push(message.seq);
            total += 1;
        }
    }
    for channel in &channels {
        assert_eq!(per_channel[channel], vec![1, 2, 3], "{channel}");
    }
    nothing_more(&mut subscriber);
}

#[test]
fn last_n_then_live_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut publisher = user(&engine, "alice");
    for i in 1..=10 {
        publisher.publish("general", format!("m{i}")).unwrap();
    }
    let mut subscriber = user(&engine, "bob");
    assert_eq!(
        subscriber
            .subscribe("general", SubscribeStart::LastN(4))
            .unwrap(),
        10
    );
    for i in 11..=15 {
        publisher.publish("general", format!("m{i}")).unwrap();
    }
    let received = receive(&mut subscriber, "general", 9);
    assert_eq!(seqs(&received), (7..=15).collect::<Vec<_>>());
    assert_eq!(&received[0].body[..], b"m7");
    nothing_more(&mut subscriber);
}

#[test]
fn catch_up_from_seq_pages_through_a_backlog_while_publishing_continues() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        page_messages_max: 7,
        ..config(dir.path())
    });
    let mut publisher = user(&engine, "alice");
    for i in 1..=100 {
        publisher.publish("backlog", format!("m{i}")).unwrap();
    }
    let mut subscriber = user(&engine, "bob");
    subscriber
        .subscribe("backlog", SubscribeStart::FromSeq(3))
        .unwrap();
    // Keep publishing from another thread while the subscriber catches up.
    let writer = std::thread::spawn(move || {
        for i in 101..=200 {
            publisher.publish("backlog", format!("m{i}")).unwrap();
        }
    });
    let received = receive(&mut subscriber, "backlog", 198);
    writer.join().unwrap();
    assert_eq!(seqs(&received), (3..=200).collect::<Vec<_>>());
    for message in &received {
        assert_eq!(message.body, Bytes::from(format!("m{}", message.seq)));
    }
    nothing_more(&mut subscriber);
}

#[test]
fn last_n_larger_than_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        page_messages_max: 5,
        ..config(dir.path())
    });
    let mut publisher = user(&engine, "alice");
    for i in 1..=30 {
        publisher.publish("c", format!("m{i}")).unwrap();
    }
    let mut subscriber = user(&engine, "bob");
    subscriber
        .subscribe("c", SubscribeStart::LastN(12))
        .unwrap();
    publisher.publish("c", "m31").unwrap();
    let received = receive(&mut subscriber, "c", 13);
    assert_eq!(seqs(&received), (19..=31).collect::<Vec<_>>());
}

#[test]
fn history_pages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut client = user(&engine, "alice");
    for i in 1..=20 {
        client.publish("h", format!("m{i}")).unwrap();
    }
    let (head, page) = client.history("h", HistoryQuery::Last, 5).unwrap();
    assert_eq!(head, 20);
    assert_eq!(seqs(&page), vec![16, 17, 18, 19, 20]);
    let (_, page) = client.history("h", HistoryQuery::Before(16), 5).unwrap();
    assert_eq!(seqs(&page), vec![11, 12, 13, 14, 15]);
    let (_, page) = client.history("h", HistoryQuery::From(18), 50).unwrap();
    assert_eq!(seqs(&page), vec![18, 19, 20]);
    let (head, page) = client.history("empty", HistoryQuery::Last, 5).unwrap();
    assert_eq!((head, page.len()), (0, 0));
}

#[test]
fn cursors_are_durable_per_consumer() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = start(config(dir.path()));
        let mut client = user(&engine, "alice");
        assert_eq!(client.cursor_get("alice-phone", "general").unwrap(), 0);
        client.cursor_set("alice-phone", "general", 41).unwrap();
        client.cursor_set("alice-phone", "general", 42).unwrap();
        client.cursor_set("alice-laptop", "general", 7).unwrap();
        assert_eq!(client.cursor_get("alice-phone", "general").unwrap(), 42);
        engine.shutdown().unwrap();
    }
    let engine = start(config(dir.path()));
    let mut client = user(&engine, "alice");
    assert_eq!(client.cursor_get("alice-phone", "general").unwrap(), 42);
    assert_eq!(client.cursor_get("alice-laptop", "general").unwrap(), 7);
    assert_eq!(client.cursor_get("alice-laptop", "random").unwrap(), 0);
}

/// A cursor whose consumer and channel names together are longer than a
/// channel name may be (each within its own limit: an MQTT client id and a
/// long topic) is kept too, apart from one of a channel that differs at
/// the end.
#[test]
fn cursors_of_long_names_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let consumer = format!("mqtt.{}", "c".repeat(700));
    let channel = |end: &str| format!("{}{end}", "t".repeat(900));
    {
        let engine = start(config(dir.path()));
        let mut client = user(&engine, "alice");
        client.cursor_set(&consumer, &channel("a"), 41).unwrap();
        client.cursor_set(&consumer, &channel("b"), 7).unwrap();
        assert_eq!(client.cursor_get(&consumer, &channel("a")).unwrap(), 41);
        engine.shutdown().unwrap();
    }
    let engine = start(config(dir.path()));
    let mut client = user(&engine, "alice");
    assert_eq!(client.cursor_get(&consumer, &channel("a")).unwrap(), 41);
    assert_eq!(client.cursor_get(&consumer, &channel("b")).unwrap(), 7);
    assert_eq!(client.cursor_get(&consumer, &channel("c")).unwrap(), 0);
}

fn publish_with_id(
    client: &mut LocalClient,
    channel: &str,
    id: &str,
    body: &str,
) -> starling_broker::Published {
    client
        .publish_command(Command::Publish {
            channel: channel.into(),
            ephemeral: false,
            kind: kind::MESSAGE,
            client_message_id: Bytes::from(id.to_string()),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from(body.to_string()),
        })
        .unwrap()
}

#[test]
fn idempotent_publish_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = start(config(dir.path()));
        let mut client = user(&engine, "alice");
        let first = publish_with_id(&mut client, "g", "msg-1", "hello");
        let other = publish_with_id(&mut client, "g", "msg-2", "again");
        let retry = publish_with_id(&mut client, "g", "msg-1", "hello");
        assert_eq!((first.seq, other.seq), (1, 2));
        assert_eq!(retry.seq, 1);
        assert!(retry.duplicate && !first.duplicate);
        // Another sender may use the same id.
        let mut bob = user(&engine, "bob");
        assert_eq!(publish_with_id(&mut bob, "g", "msg-1", "bob's").seq, 3);
        engine.shutdown().unwrap();
    }
    let engine = start(config(dir.path()));
    let mut client = user(&engine, "alice");
    let retry = publish_with_id(&mut client, "g", "msg-2", "again");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 2);
    let (head, _) = client.history("g", HistoryQuery::Last, 10).unwrap();
    assert_eq!(head, 3);
}

#[test]
fn ephemeral_messages_are_delivered_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut subscriber = user(&engine, "bob");
    subscriber
        .subscribe("typing", SubscribeStart::Live)
        .unwrap();
    let mut publisher = user(&engine, "alice");
    let ack = publisher
        .publish_command(Command::Publish {
            channel: "typing".into(),
            ephemeral: true,
            kind: kind::TYPING,
            client_message_id: Bytes::new(),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from_static(b"alice is typing"),
        })
        .unwrap();
    assert_eq!(ack.seq, 0);
    assert!(!ack.durable);
    let received = receive(&mut subscriber, "typing", 1);
    assert_eq!((received[0].seq, received[0].kind), (0, kind::TYPING));
    let (head, page) = publisher.history("typing", HistoryQuery::Last, 10).unwrap();
    assert_eq!((head, page.len()), (0, 0));
}

#[test]
fn restart_keeps_history_and_continues_seqs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = start(config(dir.path()));
        let mut client = user(&engine, "alice");
        for i in 1..=5 {
            client.publish("persist", format!("m{i}")).unwrap();
        }
        engine.shutdown().unwrap();
    }
    // A different shard count: channels move between shards, data does not.
    let engine = start(EngineConfig {
        shards: 1,
        partitions: 99,
        ..config(dir.path())
    });
    assert_eq!(
        engine.routing().partitions,
        8,
        "the stored partition count wins"
    );
    let mut client = user(&engine, "alice");
    assert_eq!(client.publish("persist", "m6").unwrap().seq, 6);
    let (_, page) = client
        .history("persist", HistoryQuery::From(1), 10)
        .unwrap();
    assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(&page[4].body[..], b"m5");
}

#[test]
fn invalid_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        body_bytes_max: 1000,
        ..config(dir.path())
    });
    let mut client = user(&engine, "alice");
    match client.publish("$cursor/x/y", "sneaky") {
        Err(BrokerError::InvalidArgument(text)) => assert!(text.contains("reserved"), "{text}"),
        other => panic!("{other:?}"),
    }
    match client.publish("big", vec![0u8; 1001]) {
        Err(BrokerError::TooLarge {
            size: 1001,
            limit: 1000,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.publish("", "x"),
        Err(BrokerError::InvalidArgument(_))
    ));
    client.subscribe("dup", SubscribeStart::Live).unwrap();
    assert!(matches!(
        client.subscribe("dup", SubscribeStart::Live),
        Err(BrokerError::AlreadySubscribed(_))
    ));
    assert!(matches!(
        client.unsubscribe("never"),
        Err(BrokerError::NotSubscribed(_))
    ));
    client.unsubscribe("dup").unwrap();
    // Nothing was stored by the refused requests.
    assert_eq!(client.publish("big", "fits").unwrap().seq, 1);
}

struct ReadOnly;

impl Authorizer for ReadOnly {
    fn authenticate(
        &self,
        _: &str,
        token: &str,
        address: Option<std::net::SocketAddr>,
    ) -> Result<Principal, Denied> {
        LoopbackAuthorizer.authenticate("", token, address)
    }

    fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        channel: &str,
    ) -> Result<(), Denied> {
        if action == Action::Publish && &*principal.user != "admin" {
            Err(Denied(format!(
                "{} may not publish to {channel}",
                principal.user
            )))
        } else {
            Ok(())
        }
    }
}

#[test]
fn the_authorizer_decides() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path()), Arc::new(ReadOnly), Vec::new()).unwrap();
    let mut guest = user(&engine, "guest");
    match guest.publish("news", "hi") {
        Err(BrokerError::Denied(text)) => assert!(text.contains("guest may not publish"), "{text}"),
        other => panic!("{other:?}"),
    }
    guest.subscribe("news", SubscribeStart::Live).unwrap();
    let mut admin = user(&engine, "admin");
    assert_eq!(admin.publish("news", "hi").unwrap().seq, 1);
    assert_eq!(receive(&mut guest, "news", 1)[0].seq, 1);
    assert_eq!(engine.metrics().denied.get(), 1);
}

#[test]
fn durability_policies_say_what_they_promise() {
    for (durability, durable) in [(Durability::Fsync, true), (Durability::None, false)] {
        let dir = tempfile::tempdir().unwrap();
        let engine = start(EngineConfig {
            durability,
            ..config(dir.path())
        });
        let mut client = user(&engine, "alice");
        assert_eq!(
            client.publish("d", "x").unwrap().durable,
            durable,
            "{durability:?}"
        );
    }
}

#[test]
fn the_interval_policy_acknowledges_before_syncing_and_syncs_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        durability: Durability::Interval,
        interval_ms: 1000,
        ..config(dir.path())
    });
    let mut client = user(&engine, "alice");
    // Two quick writes: at most the first finds the interval already
    // elapsed; the second is acknowledged before any fdatasync covers it.
    client.publish("i", "first").unwrap();
    let second = client.publish("i", "second").unwrap();
    assert!(!second.durable, "an interval ack is not durable yet");
    let synced_at_ack = engine.metrics().fsyncs.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.metrics().fsyncs.get() == synced_at_ack {
        assert!(
            std::time::Instant::now() < deadline,
            "the interval timer never synced"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, page) = client.history("i", HistoryQuery::Last, 10).unwrap();
    assert_eq!(seqs(&page), vec![1, 2]);
}

#[test]
fn a_second_engine_cannot_open_a_locked_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = start(config(dir.path()));
    let error = match Engine::start(config(dir.path()), Arc::new(LoopbackAuthorizer), Vec::new()) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a second engine opened a locked directory"),
    };
    assert!(error.contains("locked"), "{error}");
}

#[test]
fn resubscribing_does_not_mix_in_pages_of_the_earlier_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        page_messages_max: 3,
        ..config(dir.path())
    });
    let mut publisher = user(&engine, "alice");
    for i in 1..=30 {
        publisher.publish("re", format!("m{i}")).unwrap();
    }
    let mut subscriber = user(&engine, "bob");
    subscriber
        .subscribe("re", SubscribeStart::FromSeq(1))
        .unwrap();
    subscriber.unsubscribe("re").unwrap();
    // Drop whatever the first subscription delivered before it ended.
    while subscriber
        .next_delivery(Duration::from_millis(200))
        .is_some()
    {}
    assert_eq!(
        subscriber.subscribe("re", SubscribeStart::Live).unwrap(),
        30
    );
    nothing_more(&mut subscriber);
    publisher.publish("re", "m31").unwrap();
    assert_eq!(seqs(&receive(&mut subscriber, "re", 1)), vec![31]);
    nothing_more(&mut subscriber);
}

#[test]
fn pattern_subscriptions_get_every_matching_channel_on_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut publisher = user(&engine, "alice");
    let mut subscriber = user(&engine, "bob");
    let subscribe = |client: &mut LocalClient, pattern: &str| {
        client.request(Command::SubscribePattern {
            pattern: pattern.to_string(),
        })
    };
    assert!(matches!(
        subscribe(&mut subscriber, "rooms/#/x"),
        Err(BrokerError::InvalidArgument(_))
    ));
    subscribe(&mut subscriber, "rooms/+").unwrap();
    assert!(matches!(
        subscribe(&mut subscriber, "rooms/+"),
        Err(BrokerError::AlreadySubscribed(_))
    ));
    // Channels spread over both shards' partitions; the reply came after
    // every shard counted the subscription, so nothing published now is
    // missed.
    let names: Vec<String> = (0..20).map(|i| format!("rooms/{i}")).collect();
    for name in &names {
        publisher.publish(name, Bytes::from_static(b"hi")).unwrap();
    }
    publisher.publish("rooms/1/deeper", Bytes::new()).unwrap();
    publisher.publish("other", Bytes::new()).unwrap();
    let mut seen = Vec::new();
    while seen.len() < names.len() {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .expect("a delivery");
        assert_eq!(messages.len(), 1, "{channel}");
        seen.push(channel.to_string());
    }
    seen.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(seen, expected);
    nothing_more(&mut subscriber);

    subscriber
        .request(Command::UnsubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    publisher.publish("rooms/1", Bytes::new()).unwrap();
    nothing_more(&mut subscriber);
}

#[test]
fn in_process_clients_are_not_counted_as_connections() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        shards: 1,
        ..config(dir.path())
    });
    drop(user(&engine, "gone"));
    // One shard reads its inbox in order: once the next client is attached
    // and answered, the first one's detach was handled.
    let mut next = user(&engine, "next");
    next.publish("count", "x").unwrap();
    // The connection counters are of sockets (`clients/connected` is
    // opened − closed): a detached in-process client must not lower it.
    assert_eq!(engine.metrics().connections_opened.get(), 0);
    assert_eq!(engine.metrics().connections_closed.get(), 0);
}

/// Names of the threads that ran the idle-memory hook.
static IDLE_HOOK_THREADS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn record_idle_hook() {
    let name = std::thread::current().name().unwrap_or("").to_string();
    IDLE_HOOK_THREADS.lock().unwrap().push(name);
}

/// After a burst, each shard frees its turn buffers and calls the hook on
/// its own thread (where a thread-caching allocator must be asked to give
/// the memory back); the engine works as before afterwards.
#[test]
fn idle_shards_run_the_memory_hook_on_their_own_threads() {
    // Other tests of this binary may run the hook too; it only records.
    starling_broker::set_idle_memory_hook(record_idle_hook);
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(dir.path()));
    let mut client = user(&engine, "alice");
    for i in 0..200 {
        client.publish(&format!("burst-{}", i % 50), "x").unwrap();
    }
    let ran_on = |shard: &str| IDLE_HOOK_THREADS.lock().unwrap().iter().any(|t| t == shard);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(ran_on("starling-shard-0") && ran_on("starling-shard-1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "idle shards never ran the hook: {:?}",
            IDLE_HOOK_THREADS.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..50 {
        client.publish(&format!("burst-{i}"), "y").unwrap();
        let (_, page) = client
            .history(&format!("burst-{i}"), HistoryQuery::Last, 10)
            .unwrap();
        assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5]);
    }
}

/// An engine of 50-message pages, `alice` publishing and `bob` following
/// `rooms/+`, which got the 3,000 messages of `rooms/a` so far live: the
/// engine, the two clients and the backlog.
fn pattern_with_backlog(dir: &std::path::Path) -> (Engine, LocalClient, LocalClient, u64) {
    let engine = start(EngineConfig {
        page_messages_max: 50,
        durability: Durability::None,
        ..config(dir)
    });
    let mut publisher = user(&engine, "alice");
    let mut subscriber = user(&engine, "bob");
    subscriber
        .request(Command::SubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    let backlog = 3_000u64;
    for n in 0..backlog {
        publisher.publish("rooms/a", format!("m{n}")).unwrap();
    }
    assert_eq!(
        receive(&mut subscriber, "rooms/a", backlog as usize).len(),
        backlog as usize
    );
    (engine, publisher, subscriber, backlog)
}

#[test]
fn a_channel_catching_up_is_not_also_delivered_live_through_a_pattern_of_the_same_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut publisher, mut subscriber, backlog) = pattern_with_backlog(dir.path());
    // The channel itself from its first message, paged from the log (60
    // pages; the reply comes with the first), while more is published: what
    // the pattern would bring live meanwhile, the pages bring, so each
    // message comes once, in order.
    subscriber
        .subscribe("rooms/a", SubscribeStart::FromSeq(1))
        .unwrap();
    let live = 500;
    receive_in_order_while_publishing(&mut publisher, &mut subscriber, live, backlog + live, 1);
    nothing_more(&mut subscriber);
}

/// Publishes `live` messages to `rooms/a` while `subscriber` receives
/// `count` messages of it, which must be seqs `first`, `first + 1`, … once
/// each and in order.
fn receive_in_order_while_publishing(
    publisher: &mut LocalClient,
    subscriber: &mut LocalClient,
    live: u64,
    count: u64,
    first: u64,
) {
    std::thread::scope(|scope| {
        let publishing = scope.spawn(|| {
            for n in 0..live {
                publisher.publish("rooms/a", format!("live {n}")).unwrap();
            }
        });
        let got = seqs(&receive(subscriber, "rooms/a", count as usize));
        if let Some(at) = (0..got.len()).find(|&i| got[i] != i as u64 + first) {
            panic!(
                "message {} came as seq {}: {:?}",
                at as u64 + first,
                got[at],
                &got[at..got.len().min(at + 20)]
            );
        }
        publishing.join().unwrap();
    });
}

/// As above for the last N messages, which take many pages: once the
/// first page is in, its start is known, and what the pattern would bring
/// live meanwhile the pages bring. Before, the pattern delivered the new
/// messages as well, before the rest of the backlog, and the pages again.
#[test]
fn a_channel_catching_up_its_last_n_is_not_also_delivered_live_through_a_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut publisher, mut subscriber, backlog) = pattern_with_backlog(dir.path());
    subscriber
        .subscribe("rooms/a", SubscribeStart::LastN(backlog))
        .unwrap();
    // The first page is in: publishing starts while the other 59 come.
    let first = receive(&mut subscriber, "rooms/a", 50);
    assert_eq!(seqs(&first), (1..=50).collect::<Vec<u64>>());
    let live = 500;
    receive_in_order_while_publishing(
        &mut publisher,
        &mut subscriber,
        live,
        backlog + live - 50,
        51,
    );
    nothing_more(&mut subscriber);
}

/// A client that unsubscribes from a channel while its pages still catch
/// up, and whose pattern matches it, still gets through the pattern what
/// came live meanwhile (the pattern had left those to the pages; before,
/// they were lost).
#[test]
fn unsubscribing_a_channel_catching_up_keeps_what_the_pattern_left_to_it() {
    let dir = tempfile::tempdir().unwrap();
    // Few deliveries may wait for the client: its pages come only as it
    // reads, so the catch-up is still on when it unsubscribes.
    let engine = start(EngineConfig {
        page_messages_max: 50,
        local_events_max: 16,
        durability: Durability::None,
        ..config(dir.path())
    });
    let mut publisher = user(&engine, "alice");
    let mut subscriber = user(&engine, "bob");
    let backlog = 3_000u64;
    for n in 0..backlog {
        publisher.publish("rooms/a", format!("m{n}")).unwrap();
    }
    subscriber
        .request(Command::SubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    subscriber
        .subscribe("rooms/a", SubscribeStart::FromSeq(1))
        .unwrap();
    // Live messages while the pages catch up: the pattern leaves them to
    // the pages. Then the client ends the subscription.
    let live = 20u64;
    for n in 0..live {
        publisher.publish("rooms/a", format!("live {n}")).unwrap();
    }
    subscriber.unsubscribe("rooms/a").unwrap();
    let wanted: Vec<u64> = (backlog + 1..=backlog + live).collect();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wanted.iter().all(|seq| got.contains(seq)) {
        assert!(
            std::time::Instant::now() < deadline,
            "live messages missing: {:?}",
            wanted
                .iter()
                .filter(|s| !got.contains(s))
                .collect::<Vec<_>>()
        );
        if let Some((channel, messages)) = subscriber.next_delivery(Duration::from_millis(200)) {
            if &*channel == "rooms/a" {
                got.extend(messages.iter().map(|m| m.seq).filter(|seq| *seq > backlog));
            }
        }
    }
    assert_eq!(got, wanted, "each once, in order");
    // The pattern goes on: the next message comes once.
    publisher.publish("rooms/a", "after").unwrap();
    let next = receive(&mut subscriber, "rooms/a", 1);
    assert_eq!(seqs(&next), [backlog + live + 1]);
}

/// An engine under `catch_up` whose in-process clients may leave 16
/// deliveries waiting, a publisher, and a client subscribed to `rooms/+`.
fn slow_pattern_subscriber(dir: &std::path::Path) -> (Engine, LocalClient, LocalClient) {
    let engine = start(EngineConfig {
        slow_consumer: starling_broker::SlowConsumerPolicy::CatchUp,
        local_events_max: 16,
        page_messages_max: 20,
        durability: Durability::None,
        ..config(dir)
    });
    let publisher = user(&engine, "alice");
    let mut subscriber = user(&engine, "bob");
    subscriber
        .request(Command::SubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    (engine, publisher, subscriber)
}

/// Under `catch_up`, an in-process client subscribed to a pattern that
/// stops reading is not closed: each channel it falls behind on is read
/// from the log once it reads again, every message once, in order; then
/// the pattern delivers live again.
#[test]
fn under_catch_up_a_slow_pattern_subscriber_reads_on_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut publisher, mut subscriber) = slow_pattern_subscriber(dir.path());
    // One event per message (each publish is acknowledged before the
    // next), far more than the 16 the client may leave waiting.
    let channels = ["rooms/a", "rooms/b", "rooms/c"];
    let each = 200u64;
    for n in 0..each * 3 {
        let channel = channels[n as usize % 3];
        publisher.publish(channel, format!("m{n}")).unwrap();
    }
    assert!(engine.metrics().catch_up_fallbacks.get() > 0, "fell behind");
    // Behind, it still gets its replies; the subscriptions the broker made
    // for its pattern are not its own.
    subscriber.publish("elsewhere", "still here").unwrap();
    assert!(matches!(
        subscriber.unsubscribe("rooms/a"),
        Err(BrokerError::NotSubscribed(_))
    ));
    let mut next = [1u64; 3];
    while next.iter().any(|&n| n <= each) {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("every message comes; next seqs {next:?}"));
        let index = channels.iter().position(|c| **c == *channel).unwrap();
        for message in messages.iter() {
            assert_eq!(message.seq, next[index], "{channel}: in order, once");
            next[index] += 1;
        }
    }
    assert_eq!(engine.metrics().slow_consumer_disconnects.get(), 0);
    assert!(subscriber.closed_reason().is_none());
    // Live again through the pattern: the next message comes once.
    let seq = publisher.publish("rooms/b", "live").unwrap().seq;
    assert_eq!(seq, each + 1);
    let received = receive(&mut subscriber, "rooms/b", 1);
    assert_eq!(seqs(&received), [seq]);
    nothing_more(&mut subscriber);
    // Without the pattern, nothing of those channels comes any more.
    subscriber
        .request(Command::UnsubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    publisher.publish("rooms/a", "after").unwrap();
    nothing_more(&mut subscriber);
}

/// A client that subscribes to a channel that it gets through a pattern it
/// fell behind on gets what it asked for: the channel from the seq it gave,
/// once, in order.
#[test]
fn subscribing_to_a_channel_a_slow_pattern_reads_on_replaces_that_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut publisher, mut subscriber) = slow_pattern_subscriber(dir.path());
    let count = 100u64;
    for n in 0..count {
        publisher.publish("rooms/a", format!("m{n}")).unwrap();
    }
    assert!(engine.metrics().catch_up_fallbacks.get() > 0, "fell behind");
    subscriber
        .subscribe("rooms/a", SubscribeStart::FromSeq(1))
        .unwrap();
    // What the pattern delivered before it fell behind, then the channel
    // from seq 1 to its head, each once.
    let mut got = Vec::new();
    while got.last() != Some(&count) || !got.contains(&1) || got.len() <= count as usize {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("more to come after {} messages", got.len()));
        assert_eq!(&*channel, "rooms/a");
        got.extend(messages.iter().map(|m| m.seq));
    }
    let restart = (1..got.len())
        .find(|&i| got[i] <= got[i - 1])
        .expect("seq 1 again");
    assert_eq!(got[..restart], (1..=restart as u64).collect::<Vec<_>>()[..]);
    assert_eq!(got[restart..], (1..=count).collect::<Vec<_>>()[..]);
    nothing_more(&mut subscriber);
    // Its own subscription stays (live now): the next message comes once.
    let seq = publisher.publish("rooms/a", "live").unwrap().seq;
    assert_eq!(seqs(&receive(&mut subscriber, "rooms/a", 1)), [seq]);
    subscriber.unsubscribe("rooms/a").unwrap();
}

/// As above with a live subscription, which starts after what the
/// pattern's reading had not brought yet: the subscription starts there
/// instead (before, those messages were lost to the client).
#[test]
fn subscribing_live_to_a_channel_a_slow_pattern_reads_on_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut publisher, mut subscriber) = slow_pattern_subscriber(dir.path());
    let count = 100u64;
    for n in 0..count {
        publisher.publish("rooms/a", format!("m{n}")).unwrap();
    }
    assert!(engine.metrics().catch_up_fallbacks.get() > 0, "fell behind");
    subscriber
        .subscribe("rooms/a", SubscribeStart::Live)
        .unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&count) {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("more to come after {:?}", got.last()));
        assert_eq!(&*channel, "rooms/a");
        got.extend(messages.iter().map(|m| m.seq));
    }
    assert_eq!(got, (1..=count).collect::<Vec<_>>(), "each once, in order");
    nothing_more(&mut subscriber);
}

/// A history page stays within half the connection's outbound bound (at
/// least one message), as catch-up pages do: forward from a seq it keeps
/// the oldest, back from the head (or a seq) the newest. Before, a page of
/// `page_messages_max` large messages was one reply of any size.
#[test]
fn history_pages_of_large_messages_stay_within_the_outbound_bound() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(EngineConfig {
        outbound_bytes_max: 64 * 1024,
        ..config(dir.path())
    });
    let mut client = user(&engine, "reader");
    for _ in 0..10 {
        client
            .publish("big", Bytes::from(vec![b'x'; 10_000]))
            .unwrap();
    }
    let (head, last) = client.history("big", HistoryQuery::Last, 10).unwrap();
    assert_eq!(head, 10);
    let newest = seqs(&last);
    assert!(!newest.is_empty() && newest.len() < 10, "{newest:?}");
    assert_eq!(newest.last(), Some(&10));
    assert!(newest.windows(2).all(|w| w[1] == w[0] + 1), "{newest:?}");
    let (_, from) = client.history("big", HistoryQuery::From(1), 10).unwrap();
    let oldest = seqs(&from);
    assert_eq!(oldest, (1..=oldest.len() as u64).collect::<Vec<_>>());
    assert!(oldest.len() < 10);
    let (_, before) = client.history("big", HistoryQuery::Before(6), 10).unwrap();
    assert_eq!(seqs(&before).last(), Some(&5));
    // One message larger than the bound still comes, alone.
    client
        .publish("huge", Bytes::from(vec![b'y'; 40_000]))
        .unwrap();
    client
        .publish("huge", Bytes::from(vec![b'y'; 40_000]))
        .unwrap();
    let (_, huge) = client.history("huge", HistoryQuery::Last, 2).unwrap();
    assert_eq!(seqs(&huge), [2]);
}
