//! The native protocol over real loopback sockets: the handshake, every
//! command, bad input closing only the offending connection, and the
//! slow-consumer policy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use starling_adapters::client::{Client, ClientError, PublishRequest};
use starling_adapters::native::NativeProtocol;
use starling_broker::{Engine, EngineConfig, Listener, LoopbackAuthorizer};
use starling_protocol::{
    decode, kind, Decoded, Envelope, ErrorCode, Frame, HistoryQuery, Limits, SubscribeStart,
};

fn server(dir: &std::path::Path, tweak: impl FnOnce(&mut EngineConfig)) -> (Engine, SocketAddr) {
    let mut config = EngineConfig {
        shards: 2,
        partitions: 4,
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    };
    tweak(&mut config);
    let listener = Listener {
        address: "127.0.0.1:0".parse().unwrap(),
        protocol: Arc::new(NativeProtocol::new("test", 64 * 1024)),
        tls: None,
        allow_from: Vec::new(),
    };
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), vec![listener]).unwrap();
    let address = engine.local_address("native").unwrap();
    (engine, address)
}

/// Reads frames from a raw socket until the server closes it; returns them.
fn read_until_closed(stream: &mut TcpStream) -> Vec<Envelope> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("read failed: {error}"),
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while let Decoded::Complete { envelope, used } =
        decode(&buffer[at..], &Limits::default()).unwrap()
    {
        frames.push(envelope);
        at += used;
    }
    frames
}

/// Encodes one frame and writes it to a raw socket.
fn send(stream: &mut TcpStream, request_id: u32, frame: Frame) {
    let mut out = BytesMut::new();
    Envelope { request_id, frame }.encode(&mut out);
    stream.write_all(&out).unwrap();
}

fn hello(stream: &mut TcpStream) {
    let hello = Frame::Hello {
        version: 1,
        client_name: "raw".into(),
        token: "".into(),
    };
    send(stream, 1, hello);
}

fn last_error(frames: &[Envelope]) -> (ErrorCode, String) {
    match frames.last().map(|e| &e.frame) {
        Some(Frame::Error { code, message, .. }) => (*code, message.clone()),
        other => panic!("expected an Error frame last, got {other:?}"),
    }
}

#[test]
fn every_command_over_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, address) = server(dir.path(), |_| {});
    let mut alice = Client::connect(address, "alice-laptop", "alice").unwrap();
    assert_eq!(alice.server_name(), "test");
    let mut bob = Client::connect(address, "bob-phone", "bob").unwrap();
    assert_eq!(bob.subscribe("general", SubscribeStart::Live).unwrap(), 0);

    let ack = alice
        .publish("general", kind::MESSAGE, "hello bob")
        .unwrap();
    assert_eq!(ack.seq, 1);
    assert!(ack.durable && !ack.duplicate);
    let (channel, messages) = bob.next_delivery(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(channel, "general");
    assert_eq!(&messages[0].body[..], b"hello bob");
    assert_eq!(&messages[0].sender[..], b"alice");

    let reply = PublishRequest {
        relation: 1,
        client_message_id: "r-1".into(),
        ..PublishRequest::new("general", kind::REPLY, "hi alice")
    };
    let first = bob.publish_with(reply.clone()).unwrap();
    let retry = bob.publish_with(reply).unwrap();
    assert_eq!((first.seq, retry.seq, retry.duplicate), (2, 2, true));

    let page = alice.history("general", HistoryQuery::Last, 10).unwrap();
    assert_eq!(page.head_seq, 2);
    assert_eq!(page.messages[1].relation, 1);
    assert_eq!(page.messages[1].kind, kind::REPLY);

    alice.cursor_set("alice-laptop", "general", 2).unwrap();
    assert_eq!(
        alice.cursor_get("alice-laptop", "general").unwrap(),
        Some(2)
    );
    assert_eq!(alice.cursor_get("alice-phone", "general").unwrap(), None);
    alice.ping().unwrap();

    bob.unsubscribe("general").unwrap();
    match bob.unsubscribe("general") {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotSubscribed),
        other => panic!("{other:?}"),
    }
    match alice.publish(
        "general",
        kind::MESSAGE,
        vec![0u8; 60 * 1024].as_slice().to_vec(),
    ) {
        Ok(ack) => assert_eq!(ack.seq, 3),
        Err(error) => panic!("a 60 KiB body fits the 1 MiB body limit: {error}"),
    }
}

#[test]
fn requests_before_hello_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, address) = server(dir.path(), |_| {});
    let mut stream = TcpStream::connect(address).unwrap();
    send(&mut stream, 5, Frame::Ping);
    let frames = read_until_closed(&mut stream);
    let (code, message) = last_error(&frames);
    assert_eq!(code, ErrorCode::Denied);
    assert!(message.contains("Hello"), "{message}");
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, address) = server(dir.path(), |_| {});
    let mut good = Client::connect(address, "good", "").unwrap();
    good.publish("c", kind::MESSAGE, "before").unwrap();

    // An unknown frame type.
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    let mut bad = BytesMut::new();
    bad.put_u32_le(5);
    bad.put_u8(0x7f);
    bad.put_u32_le(9);
    stream.write_all(&bad).unwrap();
    let frames = read_until_closed(&mut stream);
    assert!(matches!(frames[0].frame, Frame::Welcome { .. }));
    assert_eq!(last_error(&frames).0, ErrorCode::Malformed);

    // A length over the limit is refused before the body is sent.
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    let mut huge = BytesMut::new();
    huge.put_u32_le(10 * 1024 * 1024);
    stream.write_all(&huge).unwrap();
    let (code, message) = last_error(&read_until_closed(&mut stream));
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(message.contains("frame_bytes_max"), "{message}");

    // A second Hello.
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    hello(&mut stream);
    assert_eq!(
        last_error(&read_until_closed(&mut stream)).0,
        ErrorCode::Malformed
    );

    // A server-to-client frame from a client.
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    send(&mut stream, 2, Frame::Pong);
    assert_eq!(
        last_error(&read_until_closed(&mut stream)).0,
        ErrorCode::Malformed
    );

    // The well-behaved client carries on and nothing acknowledged is lost.
    assert_eq!(good.publish("c", kind::MESSAGE, "after").unwrap().seq, 2);
    let page = good.history("c", HistoryQuery::From(1), 10).unwrap();
    assert_eq!(page.messages.len(), 2);
}

#[test]
fn a_slow_consumer_is_disconnected_with_a_reason_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| config.outbound_bytes_max = 64 * 1024);
    // A subscriber that never reads.
    let mut slow = TcpStream::connect(address).unwrap();
    slow.set_nodelay(true).unwrap();
    hello(&mut slow);
    send(
        &mut slow,
        2,
        Frame::Subscribe {
            channel: "firehose".into(),
            start: SubscribeStart::Live,
        },
    );
    let mut fast = Client::connect(address, "fast", "").unwrap();
    fast.subscribe("firehose", SubscribeStart::Live).unwrap();
    let mut publisher = Client::connect(address, "publisher", "").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let body = vec![b'x'; 16 * 1024];
    let total = 400;
    let mut received = 0;
    for i in 0..total {
        publisher
            .publish("firehose", kind::MESSAGE, body.clone())
            .unwrap();
        // The fast subscriber keeps up.
        while let Some((_, messages)) = fast.next_delivery(Duration::from_millis(1)).unwrap() {
            received += messages.len();
        }
        if engine.metrics().slow_consumer_disconnects.get() > 0 && i > 100 {
            break;
        }
    }
    assert_eq!(engine.metrics().slow_consumer_disconnects.get(), 1);
    let published = publisher
        .history("firehose", HistoryQuery::Last, 1)
        .unwrap()
        .head_seq as usize;
    while received < published {
        let (_, messages) = fast
            .next_delivery(Duration::from_secs(10))
            .unwrap()
            .expect("fast subscriber gets everything");
        received += messages.len();
    }
    assert_eq!(received, published);
    // The slow one finds the reason at the end of what was queued for it.
    let frames = read_until_closed(&mut slow);
    let (code, message) = last_error(&frames);
    assert_eq!(code, ErrorCode::SlowConsumer);
    assert!(message.contains("slow consumer"), "{message}");
}

#[test]
fn under_catch_up_a_slow_subscriber_reads_on_from_the_log_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| {
        config.outbound_bytes_max = 64 * 1024;
        config.slow_consumer = starling_broker::SlowConsumerPolicy::CatchUp;
    });
    // Subscribed, then not read from while the messages come.
    let mut slow = Client::connect(address, "slow", "").unwrap();
    slow.subscribe("firehose", SubscribeStart::Live).unwrap();
    let mut publisher = Client::connect(address, "publisher", "").unwrap();
    let body = vec![b'x'; 16 * 1024];
    // Until the kernel's socket buffers and the 64 KiB bound are full and
    // the subscription falls behind (however large this machine's buffers
    // grow), then some more, which it reads from the log.
    let mut total = 0u64;
    let mut after_fallback = 0;
    while after_fallback < 200 && total < 8_000 {
        publisher
            .publish("firehose", kind::MESSAGE, body.clone())
            .unwrap();
        total += 1;
        if engine.metrics().catch_up_fallbacks.get() > 0 {
            after_fallback += 1;
        }
    }
    assert!(engine.metrics().catch_up_fallbacks.get() > 0, "fell behind");
    let mut next = 1;
    while next <= total {
        let (channel, messages) = slow
            .next_delivery(Duration::from_secs(10))
            .unwrap()
            .expect("the slow subscriber gets every message");
        assert_eq!(channel, "firehose");
        for message in messages {
            assert_eq!(message.seq, next, "in order, without gap or repeat");
            assert_eq!(message.body.len(), body.len());
            next += 1;
        }
    }
    assert_eq!(engine.metrics().slow_consumer_disconnects.get(), 0);
    // Live again: the next message comes at once, once.
    let seq = publisher
        .publish("firehose", kind::MESSAGE, "live")
        .unwrap()
        .seq;
    let (_, messages) = slow
        .next_delivery(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [seq]);
    assert_eq!(seq, total + 1);
}

#[test]
fn requests_sent_before_end_of_stream_are_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, address) = server(dir.path(), |_| {});
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    let mut out = BytesMut::new();
    for request_id in 2..12 {
        Envelope {
            request_id,
            frame: Frame::Publish {
                ephemeral: false,
                kind: kind::MESSAGE,
                channel: "eof".into(),
                client_message_id: Default::default(),
                relation: 0,
                headers: Default::default(),
                body: format!("m{request_id}").into(),
            },
        }
        .encode(&mut out);
    }
    stream.write_all(&out).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_closed(&mut stream);
    let acks: Vec<u64> = frames
        .iter()
        .filter_map(|e| match e.frame {
            Frame::PublishAck { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, (1..=10).collect::<Vec<_>>(), "{frames:?}");
}

/// A subscribe and an unsubscribe of the same channel in one write: the
/// unsubscribe comes before the subscription's first page from the
/// channel's owner. Both are answered (the subscribe with an error that
/// says why), in order, before the connection closes after its end of
/// stream: before, the subscribe was never answered (the connection counted
/// it in flight for good, and closed only when its linger ran out).
#[test]
fn a_subscribe_unsubscribed_before_it_started_is_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, address) = server(dir.path(), |_| {});
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    let mut out = BytesMut::new();
    for (index, channel) in ["early-0", "early-1", "early-2", "early-3"]
        .iter()
        .enumerate()
    {
        let request_id = 2 + 2 * index as u32;
        let subscribe = Frame::Subscribe {
            channel: channel.to_string(),
            start: SubscribeStart::FromSeq(1),
        };
        Envelope {
            request_id,
            frame: subscribe,
        }
        .encode(&mut out);
        let unsubscribe = Frame::Unsubscribe {
            channel: channel.to_string(),
        };
        Envelope {
            request_id: request_id + 1,
            frame: unsubscribe,
        }
        .encode(&mut out);
    }
    stream.write_all(&out).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_closed(&mut stream);
    let answered: Vec<u32> = frames
        .iter()
        .filter(|e| !matches!(e.frame, Frame::Welcome { .. }))
        .map(|e| e.request_id)
        .collect();
    assert_eq!(answered, (2..10).collect::<Vec<_>>(), "{frames:?}");
    let mut ended = 0;
    for envelope in frames.iter().filter(|e| e.request_id >= 2) {
        match (&envelope.frame, envelope.request_id % 2) {
            (Frame::Error { message, .. }, 0) => {
                assert!(message.contains("ended by an unsubscribe"), "{message}");
                ended += 1;
            }
            // A page from this shard itself may come first.
            (Frame::Subscribed { .. }, 0) | (Frame::Unsubscribed, 1) => {}
            (frame, _) => panic!("unexpected answer {frame:?}"),
        }
    }
    assert!(
        ended > 0,
        "no subscribe was unsubscribed before it started: {frames:?}"
    );
}

/// Names that quote long in an error (a control character escapes to five
/// bytes, past the 65,535 bytes an error message holds) are refused by
/// their size first, with an error that fits; the server carries on.
/// Before, encoding the error panicked the shard, and the server stopped.
#[test]
fn long_names_quoted_in_errors_are_refused_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |_| {});
    let mut client = Client::connect(address, "quoter", "").unwrap();
    let code = |error: &ClientError| match error {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    };
    let controls = "\u{1}".repeat(14_000);
    let error = client
        .subscribe(&controls, SubscribeStart::Live)
        .expect_err("refused");
    assert_eq!(
        code(&error),
        Some(ErrorCode::TooLarge),
        "{:.200}",
        error.to_string()
    );
    let consumer = format!("/{}", "\u{1}".repeat(14_000));
    let error = client.cursor_get(&consumer, "c").expect_err("refused");
    assert_eq!(
        code(&error),
        Some(ErrorCode::TooLarge),
        "{:.200}",
        error.to_string()
    );
    // The same connection, and the server, still work.
    assert_eq!(client.publish("after", kind::MESSAGE, "ok").unwrap().seq, 1);
    assert_eq!(engine.failed_shard(), None);
}

/// Resident memory of this process (the engine runs in it), in bytes.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A client that pipelines history requests and does not read its socket
/// holds at most its outbound bound in replies: the requests wait for room
/// (a page reserves its share of the bound while it is read), instead of
/// each queueing its page (500 pages of 16 messages of 60 KB: 480 MB).
/// Every request is still answered once the client reads.
#[test]
fn pipelined_history_requests_wait_for_room_instead_of_growing_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| config.shards = 1);
    let mut writer = Client::connect(address, "writer", "").unwrap();
    for _ in 0..16 {
        writer
            .publish("big", kind::MESSAGE, vec![b'x'; 60_000])
            .unwrap();
    }
    let before = resident_bytes();
    let mut greedy = TcpStream::connect(address).unwrap();
    hello(&mut greedy);
    let requests = 500u32;
    let mut out = BytesMut::new();
    for _ in 0..requests {
        // One request id for all, and a request answered at once with the
        // same id after each: the pages in flight are still counted.
        let frame = Frame::History {
            channel: "big".into(),
            query: HistoryQuery::Last,
            limit: 16,
        };
        Envelope {
            request_id: 2,
            frame,
        }
        .encode(&mut out);
        let frame = Frame::Unsubscribe {
            channel: "nothing".into(),
        };
        Envelope {
            request_id: 2,
            frame,
        }
        .encode(&mut out);
    }
    greedy.write_all(&out).unwrap();
    // One shard serves both connections in order: once this is answered,
    // every request of the greedy client has been taken up.
    let mut other = Client::connect(address, "other", "").unwrap();
    other.history("big", HistoryQuery::Last, 1).unwrap();
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 100 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    // Reading now, the client gets every answer.
    let (mut answered, mut refused) = (0, 0);
    read_frames_until(&mut greedy, |frame| {
        match frame {
            Frame::HistoryPage { messages, .. } => {
                assert!(!messages.is_empty());
                answered += 1;
            }
            Frame::Error { code, .. } => {
                assert_eq!(code, ErrorCode::NotSubscribed);
                refused += 1;
            }
            Frame::Welcome { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        answered == requests && refused == requests
    });
    engine.shutdown().unwrap();
}

/// As for history requests, subscriptions from a seq that a client sends
/// without reading wait for room for their first pages.
#[test]
fn pipelined_subscriptions_wait_for_room_for_their_first_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| config.shards = 1);
    let mut writer = Client::connect(address, "writer", "").unwrap();
    let channels = 60;
    for channel in 0..channels {
        for _ in 0..8 {
            let body = vec![b'x'; 60_000];
            writer
                .publish(&format!("c{channel}"), kind::MESSAGE, body)
                .unwrap();
        }
    }
    let before = resident_bytes();
    let mut greedy = TcpStream::connect(address).unwrap();
    hello(&mut greedy);
    let mut out = BytesMut::new();
    for channel in 0..channels {
        let frame = Frame::Subscribe {
            channel: format!("c{channel}"),
            start: SubscribeStart::FromSeq(1),
        };
        Envelope {
            request_id: 2 + channel,
            frame,
        }
        .encode(&mut out);
    }
    greedy.write_all(&out).unwrap();
    let mut other = Client::connect(address, "other", "").unwrap();
    other.history("c0", HistoryQuery::Last, 1).unwrap();
    let grown = resident_bytes().saturating_sub(before);
    // 150 MB before.
    assert!(
        grown < 60 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    // Reading now, every subscription is answered and catches up.
    let (mut subscribed, mut delivered) = (0, 0);
    read_frames_until(&mut greedy, |frame| {
        match frame {
            Frame::Subscribed { .. } => subscribed += 1,
            Frame::Deliver { messages, .. } => delivered += messages.len(),
            Frame::Welcome { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        subscribed == channels && delivered == channels as usize * 8
    });
    engine.shutdown().unwrap();
}

/// Reads frames from `stream` and hands them to `each` until it says done.
fn read_frames_until(stream: &mut TcpStream, mut each: impl FnMut(Frame) -> bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let limits = Limits {
        frame_bytes_max: u32::MAX,
    };
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        buffer.put_slice(&chunk[..n]);
        while let Decoded::Complete { envelope, used } = decode(&buffer, &limits).unwrap() {
            let _ = buffer.split_to(used);
            if each(envelope.frame) {
                return;
            }
        }
    }
}

/// A client that sends requests answered at once (pings) and never reads
/// is not read either once its output passes the outbound bound, instead
/// of its output growing as fast as it sends. Every ping is still answered
/// once it reads.
#[test]
fn a_client_that_does_not_read_its_answers_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| config.outbound_bytes_max = 64 * 1024);
    let mut stream = TcpStream::connect(address).unwrap();
    hello(&mut stream);
    let mut one = BytesMut::new();
    Envelope {
        request_id: 9,
        frame: Frame::Ping,
    }
    .encode(&mut one);
    let pings = (32 << 20) / one.len();
    let all: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * pings)
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&all).unwrap());
    // The server reads what the kernel holds, and then (before) went on:
    // it had read 16 MiB well within this bound on the wait.
    let read_in = || engine.metrics().bytes_in.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while read_in() < 16 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        read_in() < 16 << 20,
        "{} MiB of pings were read while no pong was",
        read_in() >> 20
    );
    let mut pongs = 0;
    read_frames_until(&mut stream, |frame| {
        match frame {
            Frame::Pong => pongs += 1,
            Frame::Welcome { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        pongs == pings
    });
    sender.join().unwrap();
    engine.shutdown().unwrap();
}

/// A subscription from a seq past the channel's head, on a connection
/// whose pattern matches the channel: a delivery that holds messages from
/// before that seq and after it (publishes committed together) brings them
/// all, once and in order (the subscription goes live at the head, and the
/// pattern leaves the delivery to it).
#[test]
fn a_subscription_from_past_the_head_leaves_the_pattern_what_comes_before() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address) = server(dir.path(), |config| config.shards = 1);
    let mut writer = Client::connect(address, "writer", "").unwrap();
    for n in 0..10 {
        writer
            .publish("rooms/a", kind::MESSAGE, format!("m{n}"))
            .unwrap();
    }
    let mut subscriber = engine.connect(starling_broker::Principal::embedded("bob"));
    subscriber
        .request(starling_broker::Command::SubscribePattern {
            pattern: "rooms/+".to_string(),
        })
        .unwrap();
    subscriber
        .subscribe("rooms/a", SubscribeStart::FromSeq(15))
        .unwrap();
    // Ten publishes in one write: one commit, one delivery of seqs 11–20.
    let mut raw = TcpStream::connect(address).unwrap();
    hello(&mut raw);
    let mut out = BytesMut::new();
    for n in 10..20u32 {
        let frame = PublishRequest::new("rooms/a", kind::MESSAGE, format!("m{n}")).to_frame();
        Envelope {
            request_id: 2 + n,
            frame,
        }
        .encode(&mut out);
    }
    raw.write_all(&out).unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let (channel, messages) = subscriber
            .next_delivery(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("only {got:?}"));
        assert_eq!(&*channel, "rooms/a");
        got.extend(messages.iter().map(|m| m.seq));
    }
    assert_eq!(got, (11..=20).collect::<Vec<u64>>(), "each once, in order");
    drop(subscriber);
    engine.shutdown().unwrap();
}
