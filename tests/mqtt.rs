//! The MQTT front end with real clients (`mosquitto_pub`/`mosquitto_sub`
//! from Debian's mosquitto-clients) and raw packets for bad input: each bad
//! packet closes its own connection with the right v5 reason code, and the
//! server carries on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{ChatClient, ChildGuard, Server};
use serde_json::json;
use starling_protocol::mqtt::{
    decode, Connect, Decoded, MqttLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, Will,
};

fn server(env: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    (dir, server)
}

fn mosquitto(program: &str, address: SocketAddr, args: &[&str]) -> ChildGuard {
    assert!(
        Command::new(program)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "{program} is missing: install Debian's mosquitto-clients (`.ci/run` does)"
    );
    ChildGuard::new(
        Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &address.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the mosquitto client runs"),
    )
}

/// Runs a client to completion (killed after 20 s) and returns its output.
fn finish(child: impl Into<std::process::Child>) -> (bool, String) {
    let (status, stdout, stderr) =
        common::wait_with_timeout(child, Duration::from_secs(20), "the mosquitto client");
    (status.success(), format!("{stdout}{stderr}"))
}

/// Starts `mosquitto_sub` with debug output and waits until the server has
/// acknowledged its subscription; returns the child and its message lines.
fn subscriber(
    address: SocketAddr,
    args: &[&str],
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    // Line-buffered, so the debug line about the SUBACK arrives when it
    // happens, not when the client exits.
    let mut child = ChildGuard::new(
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p"])
            .arg(address.port().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stdbuf and mosquitto_sub run (install mosquitto-clients)"),
    );
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("received SUBACK") {
                let _ = ready_tx.send(());
            } else if !line.starts_with("Client ") && !line.starts_with("Subscribed") {
                let _ = lines_tx.send(line);
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(20))
        .expect("mosquitto_sub got its SUBACK");
    (child, lines)
}

/// The next `count` message lines of a subscriber.
fn received(lines: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a message line")
        })
        .collect()
}

fn history_texts(server: &Server, channel: &str) -> Vec<String> {
    let mut client = ChatClient::connect(server.http, "reader");
    let page = client.ok(json!({"type": "history", "channel": channel, "limit": 100}));
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn mosquitto_clients_publish_and_subscribe_in_both_versions() {
    let (_dir, server) = server(&[]);
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("room-{version}");
        let (subscriber, lines) = subscriber(
            server.mqtt,
            &[
                "-t", &topic, "-V", version, "-u", "bob", "-C", "3", "-W", "20",
            ],
        );
        for qos in ["0", "1", "2"] {
            let publisher = mosquitto(
                "mosquitto_pub",
                server.mqtt,
                &[
                    "-t",
                    &topic,
                    "-m",
                    &format!("qos {qos}"),
                    "-q",
                    qos,
                    "-V",
                    version,
                    "-u",
                    "alice",
                ],
            );
            let (ok, output) = finish(publisher);
            assert!(ok, "mosquitto_pub {version} qos {qos} failed: {output}");
        }
        assert_eq!(
            received(&lines, 3),
            vec!["qos 0", "qos 1", "qos 2"],
            "{version}"
        );
        let (ok, output) = finish(subscriber);
        assert!(ok, "mosquitto_sub {version} failed: {output}");
        // Stored in the log, with the user name as sender.
        assert_eq!(
            history_texts(&server, &topic),
            vec!["qos 0", "qos 1", "qos 2"]
        );
    }
}

#[test]
fn mqtt_and_websocket_see_the_same_channel() {
    let (_dir, server) = server(&[]);
    let mut alice = ChatClient::connect(server.http, "alice");
    alice.ok(json!({"type": "subscribe", "channel": "bridge"}));
    let (first, first_lines) = subscriber(
        server.mqtt,
        &[
            "-t", "bridge", "-V", "mqttv5", "-u", "bob", "-C", "1", "-W", "20",
        ],
    );
    // MQTT in, WebSocket out.
    let (ok, output) = finish(mosquitto(
        "mosquitto_pub",
        server.mqtt,
        &["-t", "bridge", "-m", "from mqtt", "-q", "1", "-u", "carol"],
    ));
    assert!(ok, "{output}");
    let pushed = alice.next_of_kind("bridge", "message");
    assert_eq!(
        (pushed["text"].as_str(), pushed["sender"].as_str()),
        (Some("from mqtt"), Some("carol"))
    );
    // And the MQTT subscriber got it too; then WebSocket in, MQTT out.
    assert_eq!(received(&first_lines, 1), vec!["from mqtt"]);
    let (ok, output) = finish(first);
    assert!(ok, "{output}");
    let (second, second_lines) = subscriber(
        server.mqtt,
        &[
            "-t", "bridge", "-V", "mqttv311", "-u", "bob", "-C", "1", "-W", "20",
        ],
    );
    alice.ok(json!({"type": "publish", "channel": "bridge", "text": "from the web"}));
    assert_eq!(received(&second_lines, 1), vec!["from the web"]);
    let (ok, output) = finish(second);
    assert!(ok, "{output}");
}

/// Numbers the client ids of raw connections.
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A raw MQTT connection for bad-input tests.
struct Raw {
    stream: TcpStream,
    version: ProtocolVersion,
    buffer: BytesMut,
}

impl Raw {
    fn open(address: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            version,
            buffer: BytesMut::new(),
        }
    }

    fn connect(
        address: SocketAddr,
        version: ProtocolVersion,
        keep_alive_s: u16,
        will: Option<Will>,
    ) -> Raw {
        let mut raw = Raw::open(address, version);
        raw.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive_s,
            // A client id of its own: a second connection with the same id
            // would take the first one's session over.
            client_id: format!(
                "raw-{}",
                NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            will,
            username: Some("raw".into()),
            password: None,
            properties: Properties::default(),
        })));
        match raw.next() {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    fn next(&mut self) -> Option<Packet> {
        loop {
            let limits = MqttLimits::default();
            if let Ok(Decoded::Complete { packet, used }) =
                decode(&self.buffer, self.version, &limits)
            {
                let _ = self.buffer.split_to(used);
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("reading from the server: {error}"),
            }
        }
    }

    /// Expects a DISCONNECT with `code`, then the end of the connection.
    fn expect_disconnect(&mut self, code: ReasonCode) {
        match self.next() {
            Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason_code, code),
            other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
        }
        assert!(
            self.next().is_none(),
            "the connection stays open after DISCONNECT"
        );
    }
}

fn publish(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

#[test]
fn bad_packets_close_their_connection_with_reason_codes() {
    let (_dir, server) = server(&[("STARLING_MQTT_PACKET_BYTES_MAX", "1024")]);
    let v5 = ProtocolVersion::V5;

    // A packet before CONNECT: closed without a word.
    let mut raw = Raw::open(server.mqtt, v5);
    raw.send_raw(&[0xc0, 0x00]); // PINGREQ
    assert!(raw.next().is_none());

    // A second CONNECT: protocol error.
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol: v5,
        clean_start: true,
        keep_alive_s: 0,
        client_id: "again".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })));
    raw.expect_disconnect(ReasonCode::ProtocolError);

    // A wildcard in a PUBLISH topic: topic name invalid (written by hand,
    // since the encoder refuses to produce it).
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send_raw(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00]);
    raw.expect_disconnect(ReasonCode::TopicNameInvalid);

    // Invalid UTF-8 in a topic: malformed packet.
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send_raw(&[0x30, 0x06, 0x00, 0x03, b'a', 0xff, b'b', 0x00]);
    raw.expect_disconnect(ReasonCode::MalformedPacket);

    // A packet over the maximum size, refused from its fixed header alone.
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send_raw(&[0x30, 0x80, 0x10]); // remaining length 2048, body never sent
    raw.expect_disconnect(ReasonCode::PacketTooLarge);

    // A malformed remaining length (five bytes).
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send_raw(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    raw.expect_disconnect(ReasonCode::MalformedPacket);

    // A v3.1.1 client is closed without a DISCONNECT (that version has none
    // from the server).
    let mut raw = Raw::connect(server.mqtt, ProtocolVersion::V311, 0, None);
    raw.send_raw(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'#', 0x00]);
    assert!(raw.next().is_none());

    // An unsupported protocol level: CONNACK 0x01 (v3.1.1 shape), closed.
    let mut raw = Raw::open(server.mqtt, ProtocolVersion::V311);
    raw.send_raw(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ]);
    match raw.next() {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code.to_v311_connect_return_code() as u8, 1)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.next().is_none());

    // Through all of this the server kept serving.
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send(&Packet::PingReq);
    assert_eq!(raw.next(), Some(Packet::PingResp));
    raw.send(&publish("steady", b"still here"));
    raw.send(&Packet::Disconnect(Default::default()));
    assert!(raw.next().is_none());
    assert_eq!(history_texts(&server, "steady"), vec!["still here"]);
}

/// One SUBSCRIBE of more topic filters than the server takes at once is
/// refused with DISCONNECT 0x97 (each filter is checked against the others:
/// a packet of 200,000 held the shard for minutes); a thousand are fine.
#[test]
fn a_subscribe_of_too_many_filters_is_refused() {
    let (_dir, server) = server(&[]);
    let v5 = ProtocolVersion::V5;
    let filters = |count: usize| -> Vec<(String, starling_protocol::mqtt::SubscriptionOptions)> {
        (0..count)
            .map(|n| (format!("many/{n}"), Default::default()))
            .collect()
    };
    let mut raw = Raw::connect(server.mqtt, v5, 0, None);
    raw.send(&Packet::Subscribe(starling_protocol::mqtt::Subscribe {
        packet_id: 1,
        filters: filters(1000),
        properties: Properties::default(),
    }));
    match raw.next() {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes.len(), 1000),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw.send(&Packet::Subscribe(starling_protocol::mqtt::Subscribe {
        packet_id: 2,
        filters: filters(1025),
        properties: Properties::default(),
    }));
    raw.expect_disconnect(ReasonCode::QuotaExceeded);
}

#[test]
fn will_is_published_when_a_client_vanishes_not_when_it_disconnects() {
    let (_dir, server) = server(&[]);
    let will = |payload: &'static [u8]| Will {
        topic: "status".into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    };
    let mut polite = Raw::connect(
        server.mqtt,
        ProtocolVersion::V5,
        0,
        Some(will(b"polite gone")),
    );
    polite.send(&Packet::Disconnect(Default::default()));
    assert!(polite.next().is_none());
    let vanished = Raw::connect(
        server.mqtt,
        ProtocolVersion::V311,
        0,
        Some(will(b"vanished")),
    );
    drop(vanished);
    // The will is appended when the server notices the end of the connection.
    let mut texts = Vec::new();
    for _ in 0..200 {
        texts = history_texts(&server, "status");
        if !texts.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(texts, vec!["vanished"]);
}

/// A retained will stays as its topic's retained message (MQTT 3.1.2.5):
/// a client that subscribes after it went out still gets it, right away,
/// by its topic and by a wildcard; and after a restart. Its delayed form
/// (MQTT 5 Will Delay Interval) too.
#[test]
fn a_retained_will_is_kept_as_the_retained_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let vanish = |server: &Server, client_id: &str, delay: &[&str]| {
        let mut args = vec!["-t", "ignored", "-i", client_id, "-V", "mqttv5"];
        let topic = format!("status/{client_id}");
        args.extend(["--will-topic", &topic, "--will-payload", "offline"]);
        args.extend(["--will-retain", "--will-qos", "1"]);
        args.extend(delay);
        let mut willer = mosquitto("mosquitto_sub", server.mqtt, &args);
        std::thread::sleep(Duration::from_millis(500));
        willer.kill().unwrap();
        willer.wait().unwrap();
    };
    let retained = |server: &Server, filter: &str| {
        let child = mosquitto(
            "mosquitto_sub",
            server.mqtt,
            &["-t", filter, "-v", "-C", "1", "-W", "10"],
        );
        let (_, stdout, stderr) =
            common::wait_with_timeout(child, Duration::from_secs(30), "mosquitto_sub");
        assert!(
            !stdout.is_empty(),
            "no retained message for {filter}: {stderr}"
        );
        stdout.trim().to_string()
    };
    vanish(&server, "now", &[]);
    vanish(
        &server,
        "later",
        &["-D", "will", "will-delay-interval", "1"],
    );
    // The will is published when the server sees the connection end (the
    // delayed one a second later): wait for the retained copies.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while history_texts(&server, "status/later").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the delayed will never went out"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(retained(&server, "status/now"), "status/now offline");
    assert_eq!(retained(&server, "status/later"), "status/later offline");
    let server = {
        drop(server);
        Server::start(dir.path(), &[])
    };
    let child = mosquitto(
        "mosquitto_sub",
        server.mqtt,
        &["-t", "status/+", "-v", "-C", "2", "-W", "10"],
    );
    let (_, stdout, stderr) =
        common::wait_with_timeout(child, Duration::from_secs(30), "mosquitto_sub");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["status/later offline", "status/now offline"],
        "{stderr}"
    );
}

/// MQTT 5's Maximum Packet Size of a client (3.1.2.24): a message whose
/// PUBLISH would be larger is not sent to it (and holds nothing up); the
/// smaller ones still come, and other clients get the large one. At QoS 0
/// too, where plain subscribers share one encoding of each message.
#[test]
fn a_message_larger_than_the_clients_maximum_packet_size_is_not_sent() {
    let (_dir, server) = server(&[]);
    let small_subscriber = |qos: &str| {
        subscriber(
            server.mqtt,
            &[
                "-t",
                "mps/#",
                "-V",
                "mqttv5",
                "-q",
                qos,
                "-v",
                "-D",
                "connect",
                "maximum-packet-size",
                "200",
            ],
        )
    };
    let (_small, small_lines) = small_subscriber("1");
    let (_small0, small0_lines) = small_subscriber("0");
    let (_large, large_lines) = subscriber(
        server.mqtt,
        &["-t", "mps/#", "-V", "mqttv5", "-q", "1", "-v"],
    );
    let big = "x".repeat(500);
    for (topic, payload) in [
        ("mps/one", "small"),
        ("mps/big", big.as_str()),
        ("mps/two", "small"),
    ] {
        let mut publisher = mosquitto(
            "mosquitto_pub",
            server.mqtt,
            &["-t", topic, "-m", payload, "-q", "1", "-V", "mqttv5"],
        );
        assert!(publisher.wait().unwrap().success());
    }
    assert_eq!(
        received(&small_lines, 2),
        ["mps/one small", "mps/two small"],
        "the 500-byte message is not sent to a client that takes 200-byte packets"
    );
    assert_eq!(
        received(&small0_lines, 2),
        ["mps/one small", "mps/two small"],
        "nor at QoS 0"
    );
    let large = received(&large_lines, 3);
    assert_eq!(large[1], format!("mps/big {big}"));
}

/// MQTT 5 enhanced authentication is not offered: a CONNECT that names an
/// authentication method gets CONNACK 0x8C with the reason, not a session.
#[test]
fn an_enhanced_authentication_method_is_refused() {
    let (_dir, server) = server(&[]);
    let publisher = mosquitto(
        "mosquitto_pub",
        server.mqtt,
        &[
            "-V",
            "mqttv5",
            "-t",
            "x",
            "-m",
            "y",
            "-d",
            "-D",
            "connect",
            "authentication-method",
            "SCRAM-SHA-1",
        ],
    );
    let (ok, output) = finish(publisher);
    assert!(!ok, "{output}");
    assert!(output.contains("CONNACK (140)"), "0x8C: {output}");
    assert!(!output.contains("sending PUBLISH"), "{output}");
}

#[test]
fn keep_alive_timeout_disconnects() {
    let (_dir, server) = server(&[]);
    let mut raw = Raw::connect(server.mqtt, ProtocolVersion::V5, 1, None);
    // Silent for more than one and a half keep-alive periods.
    raw.expect_disconnect(ReasonCode::KeepAliveTimeout);
}

#[test]
fn wildcard_subscriptions_receive_every_matching_topic_once() {
    let (_dir, server) = server(&[]);
    let (subscriber, lines) = subscriber(
        server.mqtt,
        &[
            "-t",
            "sensors/#",
            "-t",
            "sensors/+/temp",
            "-V",
            "mqttv5",
            "-u",
            "bob",
            "-C",
            "3",
            "-W",
            "20",
            "-v",
        ],
    );
    for (topic, message) in [
        ("sensors/hall/temp", "21"),
        ("lights/hall", "on"),
        ("sensors", "root"),
        ("sensors/door", "open"),
    ] {
        let (ok, output) = finish(mosquitto(
            "mosquitto_pub",
            server.mqtt,
            &["-t", topic, "-m", message, "-q", "1", "-u", "alice"],
        ));
        assert!(ok, "{output}");
    }
    // Matching two filters, sensors/hall/temp still arrives once per
    // connection; lights/hall matches neither.
    assert_eq!(
        received(&lines, 3),
        vec!["sensors/hall/temp 21", "sensors root", "sensors/door open"]
    );
    let (ok, output) = finish(subscriber);
    assert!(ok, "{output}");
}

fn subscribe(raw: &mut Raw, filter: &str, qos: QoS) {
    let options = starling_protocol::mqtt::SubscriptionOptions {
        qos,
        ..Default::default()
    };
    raw.send(&Packet::Subscribe(starling_protocol::mqtt::Subscribe {
        packet_id: 1,
        filters: vec![(filter.into(), options)],
        properties: Properties::default(),
    }));
    match raw.next() {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![ReasonCode::granted(qos)]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The next PUBLISH: (packet id, QoS, payload).
fn next_publish(raw: &mut Raw) -> (Option<u16>, QoS, Bytes) {
    match raw.next() {
        Some(Packet::Publish(publish)) => (publish.packet_id, publish.qos, publish.payload),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn outbound_qos1_respects_the_clients_receive_maximum() {
    let (_dir, server) = server(&[]);
    let mut raw = Raw::open(server.mqtt, ProtocolVersion::V5);
    let properties = Properties {
        receive_maximum: Some(2),
        ..Properties::default()
    };
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive_s: 0,
        client_id: "slow".into(),
        will: None,
        username: Some("slow".into()),
        password: None,
        properties,
    })));
    assert!(matches!(raw.next(), Some(Packet::ConnAck(_))));
    subscribe(&mut raw, "orders/#", QoS::AtLeastOnce);
    let mut publisher = ChatClient::connect(server.http, "shop");
    for n in 1..=5 {
        publisher
            .ok(json!({"type": "publish", "channel": "orders/eu", "text": format!("order {n}")}));
    }
    // Two in flight, then one more per acknowledgement, in order.
    let first = next_publish(&mut raw);
    let second = next_publish(&mut raw);
    assert_eq!((first.1, &first.2[..]), (QoS::AtLeastOnce, &b"order 1"[..]));
    assert_eq!(&second.2[..], b"order 2");
    assert_ne!(first.0, second.0);
    let mut received = vec![first.2, second.2];
    let mut to_ack = vec![first.0.unwrap(), second.0.unwrap()];
    while received.len() < 5 {
        let packet_id = to_ack.remove(0);
        raw.send(&Packet::PubAck(
            starling_protocol::mqtt::PublishResponse::success(packet_id),
        ));
        let (id, qos, payload) = next_publish(&mut raw);
        assert_eq!(qos, QoS::AtLeastOnce);
        to_ack.push(id.unwrap());
        received.push(payload);
    }
    let texts: Vec<&[u8]> = received.iter().map(|b| &b[..]).collect();
    assert_eq!(
        texts,
        vec![
            &b"order 1"[..],
            b"order 2",
            b"order 3",
            b"order 4",
            b"order 5"
        ]
    );
}

#[test]
fn outbound_qos2_completes_the_four_way_handshake() {
    let (_dir, server) = server(&[]);
    let mut raw = Raw::connect(server.mqtt, ProtocolVersion::V311, 0, None);
    subscribe(&mut raw, "ledger", QoS::ExactlyOnce);
    let mut publisher = ChatClient::connect(server.http, "bank");
    publisher.ok(json!({"type": "publish", "channel": "ledger", "text": "credit 10"}));
    let (id, qos, payload) = next_publish(&mut raw);
    assert_eq!((qos, &payload[..]), (QoS::ExactlyOnce, &b"credit 10"[..]));
    let id = id.unwrap();
    pubrec_then_pubrel(&mut raw, id);
    raw.send(&Packet::PubComp(
        starling_protocol::mqtt::PublishResponse::success(id),
    ));
    raw.send(&Packet::PingReq);
    assert_eq!(raw.next(), Some(Packet::PingResp));
    // mosquitto_sub at QoS 2 receives through the same handshake.
    let (child, lines) = subscriber(
        server.mqtt,
        &[
            "-t", "ledger", "-q", "2", "-V", "mqttv5", "-u", "auditor", "-C", "1", "-W", "20",
        ],
    );
    publisher.ok(json!({"type": "publish", "channel": "ledger", "text": "debit 3"}));
    assert_eq!(received(&lines, 1), vec!["debit 3"]);
    let (ok, output) = finish(child);
    assert!(ok, "{output}");
}

#[test]
fn v5_message_properties_reach_subscribers_through_the_log() {
    let (_dir, server) = server(&[]);
    let mut responder = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut responder, "service/requests", QoS::AtLeastOnce);
    let mut requester = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    let properties = Properties {
        response_topic: Some("service/replies/42".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        content_type: Some("application/json".into()),
        message_expiry_interval_s: Some(3600),
        payload_format_indicator: Some(starling_protocol::mqtt::PayloadFormat::Utf8),
        user_properties: vec![
            ("trace".into(), "abc".into()),
            ("trace".into(), "def".into()),
        ],
        ..Properties::default()
    };
    requester.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "service/requests".into(),
        packet_id: Some(9),
        properties: properties.clone(),
        payload: Bytes::from_static(b"{\"ask\":1}"),
    }));
    assert!(matches!(requester.next(), Some(Packet::PubAck(ack)) if ack.packet_id == 9));
    let delivered = match responder.next() {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    let got = delivered.properties;
    assert_eq!(got.response_topic, properties.response_topic);
    assert_eq!(got.correlation_data, properties.correlation_data);
    assert_eq!(got.content_type, properties.content_type);
    assert_eq!(
        got.payload_format_indicator,
        properties.payload_format_indicator
    );
    assert_eq!(got.user_properties, properties.user_properties);
    let left = got.message_expiry_interval_s.expect("the expiry travels");
    assert!((1..=3600).contains(&left), "{left}");
    // A WebSocket reader of the same channel sees the message too.
    let texts = history_texts(&server, "service/requests");
    assert_eq!(texts, vec!["{\"ask\":1}"]);
}

#[test]
fn retained_messages_are_kept_in_the_log_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for (topic, message) in [
        ("status/door", "open"),
        ("status/window", "shut"),
        ("status/fan", "on"),
    ] {
        let (ok, output) = finish(mosquitto(
            "mosquitto_pub",
            server.mqtt,
            &["-t", topic, "-m", message, "-r", "-q", "1", "-u", "alice"],
        ));
        assert!(ok, "{output}");
    }
    // A retained message with an empty payload clears the topic's.
    let (ok, output) = finish(mosquitto(
        "mosquitto_pub",
        server.mqtt,
        &["-t", "status/fan", "-n", "-r", "-q", "1", "-u", "alice"],
    ));
    assert!(ok, "{output}");
    server.kill();
    // After a SIGKILL and a restart on the same data, new subscribers get
    // the retained messages, flagged as retained.
    let server = Server::start(dir.path(), &[]);
    let mut exact = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut exact, "status/door", QoS::AtLeastOnce);
    match exact.next() {
        Some(Packet::Publish(publish)) => {
            assert!(publish.retain);
            assert_eq!(
                (&publish.topic[..], &publish.payload[..]),
                ("status/door", &b"open"[..])
            );
            assert_eq!(publish.qos, QoS::AtLeastOnce);
        }
        other => panic!("expected the retained PUBLISH, got {other:?}"),
    }
    let (subscriber, lines) = subscriber(
        server.mqtt,
        &[
            "-t", "status/#", "-V", "mqttv311", "-u", "bob", "-C", "2", "-W", "20", "-v",
        ],
    );
    let mut got = received(&lines, 2);
    got.sort();
    assert_eq!(got, vec!["status/door open", "status/window shut"]);
    let (ok, output) = finish(subscriber);
    assert!(ok, "{output}");
    // Retain handling 2: nothing is sent on subscribe.
    let mut quiet = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    let options = starling_protocol::mqtt::SubscriptionOptions {
        retain_handling: starling_protocol::mqtt::RetainHandling::DoNotSend,
        ..Default::default()
    };
    quiet.send(&Packet::Subscribe(starling_protocol::mqtt::Subscribe {
        packet_id: 3,
        filters: vec![("status/door".into(), options)],
        properties: Properties::default(),
    }));
    assert!(matches!(quiet.next(), Some(Packet::SubAck(_))));
    quiet.send(&Packet::PingReq);
    assert_eq!(quiet.next(), Some(Packet::PingResp));
}

#[test]
fn sys_topics_report_broker_statistics() {
    let (_dir, server) = server(&[("STARLING_MQTT_SYS_INTERVAL_S", "1")]);
    let (mut child, lines) = subscriber(
        server.mqtt,
        &[
            "-t",
            "$SYS/broker/clients/connected",
            "-t",
            "$SYS/broker/version",
            "-u",
            "ops",
            "-W",
            "60",
            "-v",
        ],
    );
    // Each round of `$SYS` values is a snapshot taken before it is
    // published, so the first count to arrive may predate this connection
    // (the first round is taken as the server starts, right when the
    // subscriber connects). Wait until a count includes the subscriber.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counts = Vec::new();
    let mut version = None;
    while version.is_none() || counts.last().is_none_or(|&count| count == 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no count of at least 1 and a version within 30 s: counts {counts:?}, \
                 version {version:?}"
            )
        });
        if let Some(count) = line.strip_prefix("$SYS/broker/clients/connected ") {
            counts.push(count.parse::<u64>().expect("the count is a number"));
        } else if let Some(text) = line.strip_prefix("$SYS/broker/version ") {
            version = Some(text.to_string());
        } else {
            panic!("a line of neither topic: {line:?}");
        }
    }
    assert!(
        version.as_deref().unwrap().starts_with("starling "),
        "{version:?}"
    );
    // The count is of connections, not of MQTT clients; nothing else is
    // connected, and in-process clients (the `$SYS` publisher itself) are
    // not counted.
    assert_eq!(counts.last(), Some(&1), "counts so far: {counts:?}");
    child.kill().expect("stop mosquitto_sub");
    child.wait().expect("reap mosquitto_sub");
    // `#` does not reach `$SYS`, as MQTT requires.
    let (everything, all_lines) = subscriber(server.mqtt, &["-t", "#", "-u", "ops", "-W", "3"]);
    let _ = finish(everything);
    assert!(all_lines.try_recv().is_err());
}

/// A new `$SYS` subscriber gets the current values at once, as retained
/// messages, without waiting for the next round (Mosquitto retains them, so
/// dashboards show values as soon as they subscribe).
#[test]
fn a_new_sys_subscriber_gets_the_current_values_at_once() {
    // One round as the server starts, the next in an hour.
    let (_dir, server) = server(&[("STARLING_MQTT_SYS_INTERVAL_S", "3600")]);
    let port = server.mqtt.port().to_string();
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "counted",
            "-m",
            "x",
        ])
        .status()
        .expect("mosquitto_pub is installed (Debian's mosquitto-clients; `.ci/run` does)");
    assert!(published.success());
    let subscribe = || {
        let output = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", "ops", "-V", "mqttv5"])
            .args([
                "-t",
                "$SYS/broker/#",
                "-C",
                "8",
                "-W",
                "10",
                "-F",
                "%r %t %p",
            ])
            .output()
            .expect("mosquitto_sub is installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut text = subscribe();
    if text.lines().any(|line| line.starts_with("0 $SYS/broker/")) {
        // The round taken at the start was still being published (a busy
        // machine: every test of this file starts a server): its values
        // came live. Once it is over, nothing is published for an hour.
        text = subscribe();
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "all eight values within 10 s: {text}");
    assert!(
        lines.iter().all(|line| line.starts_with("1 $SYS/broker/")),
        "every one retained: {text}"
    );
    let value = |topic: &str| {
        lines
            .iter()
            .find_map(|line| line.strip_prefix(&format!("1 $SYS/broker/{topic} ")))
            .unwrap_or_else(|| panic!("no {topic}: {text}"))
    };
    assert!(value("version").starts_with("starling "), "{text}");
    // Current, not the round taken at the start: this subscriber is
    // connected, and the publish before it was received.
    assert_eq!(value("clients/connected"), "1", "{text}");
    assert!(
        value("messages/received").parse::<u64>().unwrap() >= 1,
        "{text}"
    );
}

#[test]
fn mqtt_over_websocket_at_slash_mqtt() {
    let (_dir, server) = server(&[]);
    // A WebSocket client offering the `mqtt` subprotocol, speaking MQTT 5
    // in binary frames split at odd places.
    let stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/mqtt",
        server.http
    ))
    .unwrap();
    let mut request = request;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut socket, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "mqtt"
    );
    let mut packets = BytesMut::new();
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive_s: 0,
        client_id: "web".into(),
        will: None,
        username: Some("web".into()),
        password: None,
        properties: Properties::default(),
    }))
    .encode(ProtocolVersion::V5, &mut packets);
    Packet::Subscribe(starling_protocol::mqtt::Subscribe {
        packet_id: 1,
        filters: vec![("ws/+".into(), Default::default())],
        properties: Properties::default(),
    })
    .encode(ProtocolVersion::V5, &mut packets);
    let (first, second) = packets.split_at(5);
    socket
        .send(tungstenite::Message::binary(first.to_vec()))
        .unwrap();
    socket
        .send(tungstenite::Message::binary(second.to_vec()))
        .unwrap();
    let mut received = BytesMut::new();
    let mut next_packet = |socket: &mut tungstenite::WebSocket<TcpStream>| loop {
        if let Ok(Decoded::Complete { packet, used }) =
            decode(&received, ProtocolVersion::V5, &MqttLimits::default())
        {
            let _ = received.split_to(used);
            return packet;
        }
        match socket.read().expect("a frame") {
            tungstenite::Message::Binary(bytes) => received.extend_from_slice(&bytes),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    };
    assert!(matches!(next_packet(&mut socket), Packet::ConnAck(_)));
    assert!(matches!(next_packet(&mut socket), Packet::SubAck(_)));
    // A message from the chat side arrives as a PUBLISH in a binary frame.
    let mut chat = ChatClient::connect(server.http, "alice");
    chat.ok(json!({"type": "publish", "channel": "ws/lobby", "text": "hello over ws"}));
    match next_packet(&mut socket) {
        Packet::Publish(publish) => {
            assert_eq!(publish.topic, "ws/lobby");
            assert_eq!(&publish.payload[..], b"hello over ws");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // Without the subprotocol the upgrade is refused.
    let (status, _, _) = common::raw_http(
        server.http,
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(status, 400);
}

/// Connects `client_id`, with or without clean start; returns the
/// connection and whether the server had a session.
fn connect_session(
    address: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    clean: bool,
) -> (Raw, bool) {
    let mut raw = Raw::open(address, version);
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: clean,
        keep_alive_s: 0,
        client_id: client_id.into(),
        will: None,
        username: Some("worker".into()),
        password: None,
        properties: Properties::default(),
    })));
    match raw.next() {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::Success);
            (raw, ack.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn publish_acked(server: &Server, topic: &str, texts: &[String], qos: QoS) {
    let mut publisher = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    for (index, text) in texts.iter().enumerate() {
        let packet_id = index as u16 + 1;
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: Bytes::from(text.clone()),
        }));
        match (qos, publisher.next()) {
            (QoS::AtLeastOnce, Some(Packet::PubAck(ack))) => assert_eq!(ack.packet_id, packet_id),
            (QoS::ExactlyOnce, Some(Packet::PubRec(rec))) => {
                assert_eq!(rec.packet_id, packet_id);
                publisher.send(&Packet::PubRel(
                    starling_protocol::mqtt::PublishResponse::success(packet_id),
                ));
                assert!(matches!(publisher.next(), Some(Packet::PubComp(_))));
            }
            (_, other) => panic!("expected the acknowledgement, got {other:?}"),
        }
    }
    publisher.send(&Packet::Disconnect(Default::default()));
}

#[test]
fn persistent_session_gets_offline_messages_from_the_log_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (mut worker, present) =
        connect_session(server.mqtt, ProtocolVersion::V311, "durable", false);
    assert!(!present);
    subscribe(&mut worker, "jobs", QoS::AtLeastOnce);
    worker.send(&Packet::Disconnect(Default::default()));
    assert!(worker.next().is_none());

    let jobs: Vec<String> = (0..10).map(|i| format!("job {i}")).collect();
    publish_acked(&server, "jobs", &jobs, QoS::AtLeastOnce);
    server.kill();

    let server = Server::start(dir.path(), &[]);
    let (mut worker, present) =
        connect_session(server.mqtt, ProtocolVersion::V311, "durable", false);
    assert!(present, "the session survived the SIGKILL");
    let mut got = Vec::new();
    while got.len() < jobs.len() {
        let (id, qos, payload) = next_publish(&mut worker);
        assert_eq!(qos, QoS::AtLeastOnce);
        worker.send(&Packet::PubAck(
            starling_protocol::mqtt::PublishResponse::success(id.unwrap()),
        ));
        got.push(String::from_utf8(payload.to_vec()).unwrap());
    }
    assert_eq!(got, jobs, "every acknowledged job, once, in order");
    worker.send(&Packet::PingReq);
    assert_eq!(worker.next(), Some(Packet::PingResp));
    worker.send(&Packet::Disconnect(Default::default()));
    assert!(worker.next().is_none());

    // What was acknowledged is not sent again; only what came since.
    let more: Vec<String> = (10..13).map(|i| format!("job {i}")).collect();
    publish_acked(&server, "jobs", &more, QoS::AtLeastOnce);
    let (mut worker, present) =
        connect_session(server.mqtt, ProtocolVersion::V311, "durable", false);
    assert!(present);
    let mut got = Vec::new();
    while got.len() < more.len() {
        let (id, _, payload) = next_publish(&mut worker);
        worker.send(&Packet::PubAck(
            starling_protocol::mqtt::PublishResponse::success(id.unwrap()),
        ));
        got.push(String::from_utf8(payload.to_vec()).unwrap());
    }
    assert_eq!(got, more);
    worker.send(&Packet::PingReq);
    assert_eq!(worker.next(), Some(Packet::PingResp));

    // A clean start forgets the session.
    worker.send(&Packet::Disconnect(Default::default()));
    let (_fresh, present) = connect_session(server.mqtt, ProtocolVersion::V5, "durable", true);
    assert!(!present);
}

/// A persistent session with more records than a snapshot waits for (70
/// subscriptions) on the real server: its resume writes a snapshot, a
/// later resume (after a SIGKILL too) reads back to it, and the session is
/// whole either way: every topic's messages from while it was away come.
#[test]
fn a_session_with_many_records_resumes_whole_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topics: Vec<String> = (0..70).map(|n| format!("many/{n}")).collect();
    let (mut worker, _) = connect_session(server.mqtt, ProtocolVersion::V311, "many", false);
    for topic in &topics {
        subscribe(&mut worker, topic, QoS::AtLeastOnce);
    }
    worker.send(&Packet::Disconnect(Default::default()));
    assert!(worker.next().is_none());
    let snapshots = |server: &Server| {
        let mut reader = starling_adapters::client::Client::connect(server.address, "r", "")
            .expect("native connect");
        let page = reader
            .history(
                "$mqtt/session/many",
                starling_protocol::HistoryQuery::Last,
                500,
            )
            .unwrap();
        page.messages
            .iter()
            .filter(|m| m.body.windows(17).any(|w| w == br#""type":"snapshot""#))
            .count()
    };
    let mut server = server;
    for round in 0..3 {
        let away: Vec<String> = vec![format!("away {round}")];
        publish_acked(&server, &topics[69], &away, QoS::AtLeastOnce);
        publish_acked(&server, &topics[0], &away, QoS::AtLeastOnce);
        if round == 2 {
            server.kill();
            server = Server::start(dir.path(), &[]);
        }
        let (mut worker, present) =
            connect_session(server.mqtt, ProtocolVersion::V311, "many", false);
        assert!(present, "round {round}");
        let mut got = Vec::new();
        while got.len() < 2 {
            let (id, _, payload) = next_publish(&mut worker);
            worker.send(&Packet::PubAck(
                starling_protocol::mqtt::PublishResponse::success(id.unwrap()),
            ));
            got.push(String::from_utf8(payload.to_vec()).unwrap());
        }
        assert_eq!(got, [away[0].clone(), away[0].clone()], "round {round}");
        worker.send(&Packet::PingReq);
        assert_eq!(worker.next(), Some(Packet::PingResp));
        worker.send(&Packet::Disconnect(Default::default()));
        assert!(worker.next().is_none());
        // The first resume folded 70 records and wrote the snapshot; the
        // later ones fold a few past it and write none.
        assert_eq!(snapshots(&server), 1, "round {round}");
    }
}

/// A client that resumes its session and subscribes again at once (as
/// `mosquitto_sub -c` does) still gets what came while it was away: its
/// SUBSCRIBE used to reach the broker before the restored subscription
/// (which waits for the topic's cursor) and keep that one out.
#[test]
fn a_resumed_session_that_subscribes_again_gets_what_came_while_it_was_away() {
    let (_dir, server) = server(&[]);
    for round in 0..3 {
        let (mut worker, _) = connect_session(server.mqtt, ProtocolVersion::V311, "again", false);
        if round == 0 {
            subscribe(&mut worker, "again", QoS::AtLeastOnce);
        }
        worker.send(&Packet::Disconnect(Default::default()));
        assert!(worker.next().is_none());
        let away = vec![format!("while away {round}")];
        publish_acked(&server, "again", &away, QoS::AtLeastOnce);

        let (mut worker, present) =
            connect_session(server.mqtt, ProtocolVersion::V311, "again", false);
        assert!(present);
        let options = starling_protocol::mqtt::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        worker.send(&Packet::Subscribe(starling_protocol::mqtt::Subscribe {
            packet_id: 7,
            filters: vec![("again".into(), options)],
            properties: Properties::default(),
        }));
        let (mut acked, mut got) = (false, Vec::new());
        while !acked || got.is_empty() {
            match worker.next() {
                Some(Packet::SubAck(ack)) => {
                    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
                    acked = true;
                }
                Some(Packet::Publish(publish)) => {
                    worker.send(&Packet::PubAck(response(publish.packet_id.unwrap())));
                    got.push(String::from_utf8(publish.payload.to_vec()).unwrap());
                }
                other => panic!("expected SUBACK or PUBLISH, got {other:?}"),
            }
        }
        assert_eq!(got, away, "round {round}");
        worker.send(&Packet::PingReq);
        assert_eq!(worker.next(), Some(Packet::PingResp), "nothing twice");
        worker.send(&Packet::Disconnect(Default::default()));
    }
}

#[test]
fn qos2_delivery_is_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (mut ledger, _) = connect_session(server.mqtt, ProtocolVersion::V5, "ledger", false);
    subscribe(&mut ledger, "payments", QoS::ExactlyOnce);
    let payments: Vec<String> = (0..3).map(|i| format!("payment {i}")).collect();
    publish_acked(&server, "payments", &payments, QoS::ExactlyOnce);
    // The first two go through PUBREC/PUBREL; the third is received but
    // not acknowledged when the server dies.
    let mut ids = Vec::new();
    for expected in &payments {
        let (id, qos, payload) = next_publish(&mut ledger);
        assert_eq!((qos, &payload[..]), (QoS::ExactlyOnce, expected.as_bytes()));
        ids.push(id.unwrap());
    }
    for id in &ids[..2] {
        pubrec_then_pubrel(&mut ledger, *id);
    }
    server.kill();
    drop(ledger);
    let server = Server::start(dir.path(), &[]);
    let (mut ledger, present) = connect_session(server.mqtt, ProtocolVersion::V5, "ledger", false);
    assert!(present);
    // The two released ones get their PUBREL again (MQTT 4.4), in order,
    // not their PUBLISH.
    for id in &ids[..2] {
        match ledger.next() {
            Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, *id),
            other => panic!("expected PUBREL again, got {other:?}"),
        }
        ledger.send(&Packet::PubComp(
            starling_protocol::mqtt::PublishResponse::success(*id),
        ));
    }
    let (_, _, payload) = next_publish(&mut ledger);
    assert_eq!(
        &payload[..],
        b"payment 2",
        "only the unacknowledged one comes again"
    );
    ledger.send(&Packet::PingReq);
    assert_eq!(ledger.next(), Some(Packet::PingResp), "and nothing else");
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let (_dir, server) = server(&[]);
    let (mut first, _) = connect_session(server.mqtt, ProtocolVersion::V5, "phone", true);
    let (mut second, _) = connect_session(server.mqtt, ProtocolVersion::V5, "phone", true);
    first.expect_disconnect(ReasonCode::SessionTakenOver);
    second.send(&Packet::PingReq);
    assert_eq!(second.next(), Some(Packet::PingResp));
    // The newer connection keeps the id: a third takes it from the second.
    let (_third, _) = connect_session(server.mqtt, ProtocolVersion::V311, "phone", true);
    second.expect_disconnect(ReasonCode::SessionTakenOver);
}

/// Receives `count` PUBLISH packets, keyed by payload: (packet id, DUP).
fn publishes_by_payload(
    raw: &mut Raw,
    count: usize,
) -> std::collections::HashMap<String, (u16, bool)> {
    (0..count)
        .map(|_| match raw.next() {
            Some(Packet::Publish(publish)) => (
                String::from_utf8(publish.payload.to_vec()).unwrap(),
                (publish.packet_id.unwrap(), publish.dup),
            ),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

fn response(packet_id: u16) -> starling_protocol::mqtt::PublishResponse {
    starling_protocol::mqtt::PublishResponse::success(packet_id)
}

/// Sends PUBREC for outbound QoS 2 message `packet_id` and expects its
/// PUBREL.
fn pubrec_then_pubrel(raw: &mut Raw, packet_id: u16) {
    raw.send(&Packet::PubRec(response(packet_id)));
    match raw.next() {
        Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
}

#[test]
fn reconnect_resends_unacknowledged_messages_with_dup_and_pubrel_with_their_ids() {
    let (_dir, server) = server(&[]);
    let v311 = ProtocolVersion::V311;
    let (mut first, _) = connect_session(server.mqtt, v311, "resender", false);
    subscribe(&mut first, "tasks", QoS::AtLeastOnce);
    subscribe(&mut first, "transfers", QoS::ExactlyOnce);
    publish_acked(&server, "tasks", &["task a".into()], QoS::AtLeastOnce);
    let transfers = ["transfer x".to_string(), "transfer y".to_string()];
    publish_acked(&server, "transfers", &transfers, QoS::ExactlyOnce);
    let sent = publishes_by_payload(&mut first, 3);
    assert!(sent.values().all(|(_, dup)| !dup), "{sent:?}");
    let (task, _) = sent["task a"];
    let (x, _) = sent["transfer x"];
    let (y, _) = sent["transfer y"];
    // "task a" is not acknowledged, "transfer x" is PUBREC'd (its PUBREL
    // comes) but not completed, "transfer y" is not acknowledged.
    pubrec_then_pubrel(&mut first, x);

    // The client comes back while the server still holds the first
    // connection: the second takes the session over with what was in flight.
    let (mut second, present) = connect_session(server.mqtt, v311, "resender", false);
    assert!(present);
    let mut resent_publishes = std::collections::HashMap::new();
    let mut resent_pubrel = None;
    for _ in 0..3 {
        match second.next() {
            Some(Packet::Publish(publish)) => {
                assert!(publish.dup, "a resent message has DUP set: {publish:?}");
                let text = String::from_utf8(publish.payload.to_vec()).unwrap();
                resent_publishes.insert(text, (publish.packet_id.unwrap(), publish.qos));
            }
            Some(Packet::PubRel(rel)) => resent_pubrel = Some(rel.packet_id),
            other => panic!("expected a resent PUBLISH or PUBREL, got {other:?}"),
        }
    }
    assert_eq!(resent_pubrel, Some(x), "PUBREL again, with its packet id");
    assert_eq!(resent_publishes["task a"], (task, QoS::AtLeastOnce));
    assert_eq!(resent_publishes["transfer y"], (y, QoS::ExactlyOnce));
    assert!(first.next().is_none(), "the first connection was closed");
    second.send(&Packet::PubAck(response(task)));
    second.send(&Packet::PubComp(response(x)));
    pubrec_then_pubrel(&mut second, y);
    second.send(&Packet::PubComp(response(y)));
    // Nothing comes twice: the log's redelivery skips what the client has.
    second.send(&Packet::PingReq);
    assert_eq!(second.next(), Some(Packet::PingResp));

    // Leaving with a message in flight and coming back after the server
    // closed the connection: the same again.
    publish_acked(&server, "tasks", &["task b".into()], QoS::AtLeastOnce);
    let sent = publishes_by_payload(&mut second, 1);
    let (task_b, _) = sent["task b"];
    second.send(&Packet::Disconnect(Default::default()));
    assert!(second.next().is_none());
    let (mut third, present) = connect_session(server.mqtt, v311, "resender", false);
    assert!(present);
    assert_eq!(
        publishes_by_payload(&mut third, 1)["task b"],
        (task_b, true)
    );
    third.send(&Packet::PubAck(response(task_b)));
    third.send(&Packet::PingReq);
    assert_eq!(third.next(), Some(Packet::PingResp));
    third.send(&Packet::Disconnect(Default::default()));
    assert!(third.next().is_none());

    // Everything acknowledged: a reconnect gets nothing again.
    let (mut fourth, present) = connect_session(server.mqtt, v311, "resender", false);
    assert!(present);
    fourth.send(&Packet::PingReq);
    assert_eq!(fourth.next(), Some(Packet::PingResp));
}

/// Opens a v5 connection with CONNECT `properties`; returns it and the
/// CONNACK.
fn connect_v5(
    address: SocketAddr,
    client_id: &str,
    clean_start: bool,
    properties: Properties,
    will: Option<Will>,
) -> (Raw, starling_protocol::mqtt::ConnAck) {
    let mut raw = Raw::open(address, ProtocolVersion::V5);
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start,
        keep_alive_s: 0,
        client_id: client_id.into(),
        will,
        username: Some(client_id.into()),
        password: None,
        properties,
    })));
    match raw.next() {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::Success);
            (raw, ack)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A clean v5 connection with CONNECT `properties`; returns it and the
/// CONNACK's properties.
fn connect_v5_with(
    address: SocketAddr,
    client_id: &str,
    properties: Properties,
) -> (Raw, Properties) {
    let (raw, ack) = connect_v5(address, client_id, true, properties, None);
    (raw, ack.properties)
}

fn publish_with_alias(topic: &str, alias: u16, packet_id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: Some(packet_id),
        properties: Properties {
            topic_alias: Some(alias),
            ..Properties::default()
        },
        payload: Bytes::from_static(payload),
    })
}

#[test]
fn topic_aliases_both_ways() {
    let (_dir, server) = server(&[]);
    // Inbound: the CONNACK announces the room; an alias set with a topic
    // stands for it afterwards.
    let (mut client, connack) = connect_v5_with(server.mqtt, "aliaser", Properties::default());
    let maximum = connack
        .topic_alias_maximum
        .expect("Topic Alias Maximum announced");
    assert!(maximum >= 1);
    client.send(&publish_with_alias("fleet/truck-7", 1, 1, b"first"));
    assert!(matches!(client.next(), Some(Packet::PubAck(ack)) if ack.packet_id == 1));
    client.send(&publish_with_alias("", 1, 2, b"by alias"));
    assert!(matches!(client.next(), Some(Packet::PubAck(ack)) if ack.packet_id == 2));
    assert_eq!(
        history_texts(&server, "fleet/truck-7"),
        vec!["first", "by alias"]
    );
    // An alias above the maximum: 0x94, topic alias invalid.
    client.send(&publish_with_alias(
        "fleet/truck-8",
        maximum + 1,
        3,
        b"too far",
    ));
    client.expect_disconnect(ReasonCode::TopicAliasInvalid);
    // An alias never set, with an empty topic: protocol error.
    let (mut client, _) = connect_v5_with(server.mqtt, "aliaser", Properties::default());
    client.send(&publish_with_alias("", 2, 1, b"unknown"));
    client.expect_disconnect(ReasonCode::ProtocolError);

    // Outbound: a client with room for two aliases gets topics named by
    // alias after their first PUBLISH; a third topic goes out in full.
    let room = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    let (mut subscriber, _) = connect_v5_with(server.mqtt, "alias-reader", room);
    subscribe(&mut subscriber, "fleet/+", QoS::AtLeastOnce);
    let (mut publisher, _) = connect_v5_with(server.mqtt, "alias-writer", Properties::default());
    for (packet_id, topic) in [
        (1, "fleet/a"),
        (2, "fleet/a"),
        (3, "fleet/b"),
        (4, "fleet/c"),
        (5, "fleet/b"),
    ] {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: Bytes::from(topic.to_string()),
        }));
        assert!(matches!(publisher.next(), Some(Packet::PubAck(_))));
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        match subscriber.next() {
            Some(Packet::Publish(publish)) => {
                subscriber.send(&Packet::PubAck(response(publish.packet_id.unwrap())));
                seen.push((
                    publish.topic,
                    publish.properties.topic_alias,
                    String::from_utf8(publish.payload.to_vec()).unwrap(),
                ));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let expected = [
        ("fleet/a", Some(1), "fleet/a"),
        ("", Some(1), "fleet/a"),
        ("fleet/b", Some(2), "fleet/b"),
        ("fleet/c", None, "fleet/c"),
        ("", Some(2), "fleet/b"),
    ];
    let expected: Vec<(String, Option<u16>, String)> = expected
        .iter()
        .map(|(topic, alias, text)| (topic.to_string(), *alias, text.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

fn session_expiry(seconds: u32) -> Properties {
    Properties {
        session_expiry_interval_s: Some(seconds),
        ..Properties::default()
    }
}

/// Connects `client_id` without clean start; returns the connection and
/// whether the server had its session.
fn resume_v5(address: SocketAddr, client_id: &str, expiry_s: u32) -> (Raw, bool) {
    let (raw, ack) = connect_v5(address, client_id, false, session_expiry(expiry_s), None);
    (raw, ack.session_present)
}

fn disconnect_with_expiry(raw: &mut Raw, expiry_s: Option<u32>) {
    raw.send(&Packet::Disconnect(starling_protocol::mqtt::Disconnect {
        reason_code: ReasonCode::Success,
        properties: Properties {
            session_expiry_interval_s: expiry_s,
            ..Properties::default()
        },
    }));
    assert!(raw.next().is_none());
}

#[test]
fn session_expiry_decides_how_long_a_session_outlives_its_connection() {
    let (_dir, server) = server(&[]);
    // Expiry 0 (the default): the session ends with the connection, even
    // without clean start.
    let (mut raw, _) = resume_v5(server.mqtt, "brief", 0);
    subscribe(&mut raw, "expiry/brief", QoS::AtLeastOnce);
    disconnect_with_expiry(&mut raw, None);
    let (mut raw, present) = resume_v5(server.mqtt, "brief", 3600);
    assert!(!present, "a session with expiry 0 ended at the disconnect");
    // Expiry 3600: kept; a DISCONNECT that sets 0 ends it.
    subscribe(&mut raw, "expiry/brief", QoS::AtLeastOnce);
    disconnect_with_expiry(&mut raw, None);
    let (mut raw, present) = resume_v5(server.mqtt, "brief", 3600);
    assert!(present, "kept for an hour");
    disconnect_with_expiry(&mut raw, Some(0));
    let (mut raw, present) = resume_v5(server.mqtt, "brief", 1);
    assert!(!present, "DISCONNECT set the expiry to 0");

    // Expiry 1 s: after longer than that, the session and what was
    // published for it meanwhile are gone.
    subscribe(&mut raw, "expiry/short", QoS::AtLeastOnce);
    disconnect_with_expiry(&mut raw, None);
    std::thread::sleep(Duration::from_millis(2500));
    publish_acked(
        &server,
        "expiry/short",
        &["too late".into()],
        QoS::AtLeastOnce,
    );
    let (mut raw, present) = resume_v5(server.mqtt, "brief", 3600);
    assert!(!present, "the session expired");
    raw.send(&Packet::PingReq);
    assert_eq!(raw.next(), Some(Packet::PingResp), "nothing delivered");

    // A session that was to end with its connection cannot be given a life
    // at DISCONNECT: protocol error.
    let (mut raw, _) = connect_v5(server.mqtt, "brief", true, Properties::default(), None);
    raw.send(&Packet::Disconnect(starling_protocol::mqtt::Disconnect {
        reason_code: ReasonCode::Success,
        properties: session_expiry(60),
    }));
    raw.expect_disconnect(ReasonCode::ProtocolError);
}

/// A v5 will on `topic` with a Will Delay Interval.
fn delayed_will(topic: &str, payload: &'static [u8], delay_s: u32) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval_s: Some(delay_s),
            ..Properties::default()
        },
    }
}

/// The payload of the next PUBLISH, acknowledged.
fn next_payload(raw: &mut Raw) -> String {
    let (id, _, payload) = next_publish(raw);
    if let Some(id) = id {
        raw.send(&Packet::PubAck(response(id)));
    }
    String::from_utf8(payload.to_vec()).unwrap()
}

#[test]
fn will_delay_waits_for_a_reconnect_or_the_end_of_the_session() {
    let (_dir, server) = server(&[]);
    let (mut watcher, _) = connect_v5_with(server.mqtt, "will-watcher", Properties::default());
    subscribe(&mut watcher, "presence/#", QoS::AtLeastOnce);

    // The delay passes without a reconnect: the will goes out.
    let will = delayed_will("presence/a", b"a is gone", 1);
    let (doomed, _) = connect_v5(server.mqtt, "a", true, session_expiry(3600), Some(will));
    drop(doomed);
    assert_eq!(next_payload(&mut watcher), "a is gone");

    // The session ends before the delay: the will goes out then.
    let will = delayed_will("presence/b", b"b's session ended", 3600);
    let (doomed, _) = connect_v5(server.mqtt, "b", true, session_expiry(1), Some(will));
    drop(doomed);
    assert_eq!(next_payload(&mut watcher), "b's session ended");

    // A reconnect that starts a new session ends the old one: its will
    // goes out at once.
    let will = delayed_will("presence/c", b"c started over", 3600);
    let (doomed, _) = connect_v5(server.mqtt, "c", true, session_expiry(3600), Some(will));
    drop(doomed);
    let (_c, _) = connect_v5(server.mqtt, "c", true, session_expiry(3600), None);
    assert_eq!(next_payload(&mut watcher), "c started over");

    // A reconnect to the session within the delay: no will at all (after
    // the delay, the next message on the topic is an ordinary one).
    let will = delayed_will("presence/d", b"d is gone", 1);
    let (doomed, _) = connect_v5(server.mqtt, "d", true, session_expiry(3600), Some(will));
    drop(doomed);
    let (_d, present) = resume_v5(server.mqtt, "d", 3600);
    assert!(present);
    std::thread::sleep(Duration::from_millis(2500));
    publish_acked(
        &server,
        "presence/d",
        &["d is back".into()],
        QoS::AtLeastOnce,
    );
    assert_eq!(next_payload(&mut watcher), "d is back");
}

/// Receives `count` PUBLISH packets, acknowledging each; returns their
/// "topic payload" lines, sorted.
fn receive_acked(raw: &mut Raw, count: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..count)
        .map(|_| match raw.next() {
            Some(Packet::Publish(publish)) => {
                if let Some(id) = publish.packet_id {
                    raw.send(&Packet::PubAck(response(id)));
                }
                format!(
                    "{} {}",
                    publish.topic,
                    String::from_utf8_lossy(&publish.payload)
                )
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn persistent_wildcard_subscriptions_get_offline_messages_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let v311 = ProtocolVersion::V311;
    // A topic with history from before the subscription.
    publish_acked(
        &server,
        "rooms/old/chat",
        &["old 0".into()],
        QoS::AtLeastOnce,
    );
    let (mut roamer, _) = connect_session(server.mqtt, v311, "roamer", false);
    subscribe(&mut roamer, "rooms/+/chat", QoS::AtLeastOnce);
    publish_acked(&server, "rooms/a/chat", &["a 1".into()], QoS::AtLeastOnce);
    assert_eq!(receive_acked(&mut roamer, 1), vec!["rooms/a/chat a 1"]);
    roamer.send(&Packet::Disconnect(Default::default()));
    assert!(roamer.next().is_none());

    // While it is away: a topic it saw, a new topic, a topic that existed
    // before, and one its filter does not match.
    publish_acked(&server, "rooms/a/chat", &["a 2".into()], QoS::AtLeastOnce);
    publish_acked(&server, "rooms/b/chat", &["b 1".into()], QoS::AtLeastOnce);
    publish_acked(
        &server,
        "rooms/old/chat",
        &["old 1".into()],
        QoS::AtLeastOnce,
    );
    publish_acked(&server, "rooms/c/notes", &["c 1".into()], QoS::AtLeastOnce);
    let (mut roamer, present) = connect_session(server.mqtt, v311, "roamer", false);
    assert!(present);
    assert_eq!(
        receive_acked(&mut roamer, 3),
        vec![
            "rooms/a/chat a 2",
            "rooms/b/chat b 1",
            "rooms/old/chat old 1"
        ]
    );
    roamer.send(&Packet::PingReq);
    assert_eq!(roamer.next(), Some(Packet::PingResp), "nothing twice");
    // Live messages still arrive once.
    publish_acked(&server, "rooms/b/chat", &["b 2".into()], QoS::AtLeastOnce);
    assert_eq!(receive_acked(&mut roamer, 1), vec!["rooms/b/chat b 2"]);
    roamer.send(&Packet::Disconnect(Default::default()));
    assert!(roamer.next().is_none());

    // Across a SIGKILL too.
    publish_acked(&server, "rooms/a/chat", &["a 3".into()], QoS::AtLeastOnce);
    server.kill();
    let server = Server::start(dir.path(), &[]);
    publish_acked(&server, "rooms/d/chat", &["d 1".into()], QoS::AtLeastOnce);
    let (mut roamer, present) = connect_session(server.mqtt, v311, "roamer", false);
    assert!(present);
    assert_eq!(
        receive_acked(&mut roamer, 2),
        vec!["rooms/a/chat a 3", "rooms/d/chat d 1"]
    );
    roamer.send(&Packet::PingReq);
    assert_eq!(roamer.next(), Some(Packet::PingResp), "nothing twice");
}

/// Reads a connection's PUBLISHes on a thread of its own (acknowledging
/// them when `ack`), until the connection ends; returns their payloads and
/// a handle that ends the connection.
fn read_publishes(mut raw: Raw, ack: bool) -> (std::sync::mpsc::Receiver<String>, TcpStream) {
    let handle = raw.stream.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(packet) = raw.next() {
            if let Packet::Publish(publish) = packet {
                if let (true, Some(id)) = (ack, publish.packet_id) {
                    raw.send(&Packet::PubAck(response(id)));
                }
                let text = String::from_utf8(publish.payload.to_vec()).unwrap();
                if tx.send(text).is_err() {
                    return;
                }
            }
        }
    });
    (rx, handle)
}

/// Collects payloads from `members` until every one of `expected` arrived;
/// returns what each member got.
fn collect_until(
    members: &[&std::sync::mpsc::Receiver<String>],
    expected: &[String],
) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); members.len()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let missing = |got: &Vec<Vec<String>>| {
        expected
            .iter()
            .any(|text| !got.iter().flatten().any(|g| g == text))
    };
    while missing(&got) {
        assert!(
            std::time::Instant::now() < deadline,
            "not everything arrived: {got:?}"
        );
        for (index, member) in members.iter().enumerate() {
            while let Ok(text) = member.try_recv() {
                got[index].push(text);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    got
}

fn texts(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n}")).collect()
}

#[test]
fn shared_subscriptions_give_each_message_to_one_member() {
    let (_dir, server) = server(&[]);
    // Two v5 members, one v3.1.1 member (accepted, as Mosquitto does), and
    // an ordinary subscriber of the same filter.
    let mut members = Vec::new();
    for version in [
        ProtocolVersion::V5,
        ProtocolVersion::V5,
        ProtocolVersion::V311,
    ] {
        let mut raw = Raw::connect(server.mqtt, version, 0, None);
        subscribe(&mut raw, "$share/workers/jobs/+", QoS::AtLeastOnce);
        members.push(read_publishes(raw, true));
    }
    let mut watcher = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut watcher, "jobs/+", QoS::AtMostOnce);
    let (watcher, _) = read_publishes(watcher, true);
    let jobs = texts("job", 0..30);
    publish_acked(&server, "jobs/a", &jobs[..15], QoS::AtLeastOnce);
    publish_acked(&server, "jobs/b", &jobs[15..], QoS::AtLeastOnce);
    let receivers: Vec<_> = members.iter().map(|(rx, _)| rx).collect();
    let got = collect_until(&receivers, &jobs);
    let mut all: Vec<&String> = got.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        got.iter().map(Vec::len).sum::<usize>(),
        jobs.len(),
        "each job went to one member: {got:?}"
    );
    assert!(
        got.iter().filter(|g| !g.is_empty()).count() >= 2,
        "the jobs were spread: {got:?}"
    );
    // The ordinary subscription gets every message.
    assert_eq!(collect_until(&[&watcher], &jobs)[0].len(), jobs.len());
}

#[test]
fn shared_subscription_members_can_leave_and_join_without_losing_qos1_messages() {
    let (_dir, server) = server(&[]);
    let mut a = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut a, "$share/g/work", QoS::AtLeastOnce);
    let (a, _) = read_publishes(a, true);
    // B never acknowledges, then vanishes.
    let mut b = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut b, "$share/g/work", QoS::AtLeastOnce);
    let (b, b_socket) = read_publishes(b, false);
    let first = texts("first", 0..20);
    publish_acked(&server, "work", &first, QoS::AtLeastOnce);
    let got = collect_until(&[&a, &b], &first);
    assert!(!got[1].is_empty(), "B had some: {got:?}");
    b_socket.shutdown(std::net::Shutdown::Both).unwrap();
    // What B had and never acknowledged reaches A.
    let again = collect_until(&[&a], &got[1]);
    assert!(got[1].iter().all(|text| again[0].contains(text)));
    // C joins; messages from now on reach A or C, none is lost.
    let mut c = Raw::connect(server.mqtt, ProtocolVersion::V311, 0, None);
    subscribe(&mut c, "$share/g/work", QoS::AtLeastOnce);
    let (c, _) = read_publishes(c, true);
    let second = texts("second", 0..20);
    publish_acked(&server, "work", &second, QoS::AtLeastOnce);
    let got = collect_until(&[&a, &c], &second);
    assert!(!got[1].is_empty(), "C had some: {got:?}");
}

/// Two topics whose channels the server's default routing (16 partitions, 2
/// shards in tests) puts on different shards, so their records become
/// durable in different loop turns.
fn topics_on_two_shards(prefix: &str) -> [String; 2] {
    let routing = starling_broker::Routing::new(16, 2);
    let first = format!("{prefix}/0");
    let other = (1..)
        .map(|n| format!("{prefix}/{n}"))
        .find(|topic| routing.shard_of(topic) != routing.shard_of(&first))
        .expect("some topic lives on the other shard");
    [first, other]
}

/// Publishes `qos_of(i)` messages `0..count` alternating between the two
/// topics in one write, then checks that the acknowledgements come back in
/// the order the PUBLISH packets were sent (MQTT 4.6). Returns the packet
/// ids of the QoS 2 messages, in order.
fn acks_come_in_publish_order(
    raw: &mut Raw,
    topics: &[String; 2],
    count: u16,
    qos_of: impl Fn(u16) -> QoS,
) -> Vec<u16> {
    let mut bytes = BytesMut::new();
    let mut expected = Vec::new();
    for i in 0..count {
        let qos = qos_of(i);
        let packet_id = (qos != QoS::AtMostOnce).then_some(i + 1);
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topics[usize::from(i % 2)].clone(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from(format!("message {i}")),
        })
        .encode(raw.version, &mut bytes);
        if let Some(packet_id) = packet_id {
            expected.push((qos, packet_id));
        }
    }
    raw.send_raw(&bytes);
    let acks: Vec<(QoS, u16)> = expected
        .iter()
        .map(|_| match raw.next() {
            Some(Packet::PubAck(ack)) => (QoS::AtLeastOnce, ack.packet_id),
            Some(Packet::PubRec(rec)) => (QoS::ExactlyOnce, rec.packet_id),
            other => panic!("expected PUBACK or PUBREC, got {other:?}"),
        })
        .collect();
    assert_eq!(acks, expected, "acknowledgements in publish order");
    expected
        .into_iter()
        .filter(|(qos, _)| *qos == QoS::ExactlyOnce)
        .map(|(_, packet_id)| packet_id)
        .collect()
}

#[test]
fn acknowledgements_keep_the_order_of_the_publishes_across_shards() {
    let (_dir, server) = server(&[]);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let topics = topics_on_two_shards(&format!("order-{version:?}"));
        let mut raw = Raw::connect(server.mqtt, version, 0, None);
        // QoS 1 only, then QoS 0, 1 and 2 mixed (QoS 0 has no answer).
        acks_come_in_publish_order(&mut raw, &topics, 400, |_| QoS::AtLeastOnce);
        let qos2 = acks_come_in_publish_order(&mut raw, &topics, 400, |i| match i % 4 {
            0 => QoS::AtMostOnce,
            1 | 2 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        });
        for packet_id in qos2 {
            raw.send(&Packet::PubRel(
                starling_protocol::mqtt::PublishResponse::success(packet_id),
            ));
            match raw.next() {
                Some(Packet::PubComp(comp)) => assert_eq!(comp.packet_id, packet_id),
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        }
    }
}

/// A QoS 1 or 2 PUBLISH of `payload` to `topic`.
fn publish_numbered(topic: &str, qos: QoS, packet_id: u16, dup: bool, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from(payload.to_string()),
    })
}

/// A retained message whose topic is too long for its copy's channel
/// (`$retained/<topic>`, channel names are 1,024 bytes at most) is refused
/// with Topic Name invalid before anything is stored, and says the limit;
/// without RETAIN the same topic is stored; a v3.1.1 client is closed; a
/// CONNECT with such a retained will is refused.
/// Before, the message was stored and acknowledged, and its retained copy
/// refused with a line in the log only.
#[test]
fn a_retained_message_whose_copy_would_not_fit_is_refused_before_it_is_stored() {
    let (_dir, server) = server(&[]);
    let topic = format!("long/{}", "x".repeat(1010));
    let Packet::Publish(mut retained) = publish_numbered(&topic, QoS::AtLeastOnce, 1, false, "r")
    else {
        unreachable!()
    };
    retained.retain = true;
    let retained = Packet::Publish(retained);
    let mut raw = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    raw.send(&retained);
    match raw.next() {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
            let reason = ack.properties.reason_string.unwrap_or_default();
            assert!(reason.contains("at most 1014 bytes"), "{reason}");
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    raw.send(&publish_numbered(
        &topic,
        QoS::AtLeastOnce,
        2,
        false,
        "plain",
    ));
    assert!(
        matches!(raw.next(), Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::Success)
    );
    let mut old = Raw::connect(server.mqtt, ProtocolVersion::V311, 0, None);
    old.send(&retained);
    assert!(
        old.next().is_none(),
        "v3.1.1 has no way to refuse but closing"
    );
    let mut reader = starling_adapters::client::Client::connect(server.address, "reader", "")
        .expect("native connect");
    let stored = reader
        .history(&topic, starling_protocol::HistoryQuery::Last, 10)
        .unwrap();
    let bodies: Vec<&[u8]> = stored.messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [&b"plain"[..]]);

    // A retained will to such a topic is refused at the CONNECT (it could
    // not be kept when it goes out); one that is not retained is taken.
    for (retain, expected) in [
        (true, ReasonCode::TopicNameInvalid),
        (false, ReasonCode::Success),
    ] {
        let mut raw = Raw::open(server.mqtt, ProtocolVersion::V5);
        raw.send(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive_s: 0,
            client_id: format!("long-will-{retain}"),
            will: Some(Will {
                topic: topic.clone(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain,
                properties: Properties::default(),
            }),
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        match raw.next() {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, expected);
                let reason = ack.properties.reason_string.unwrap_or_default();
                assert!(!retain || reason.contains("at most 1014 bytes"), "{reason}");
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

#[test]
fn a_refused_publish_and_a_retransmission_keep_their_place_among_the_acknowledgements() {
    let (_dir, server) = server(&[]);
    let topics = topics_on_two_shards("places");
    let mut raw = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    let mut bytes = BytesMut::new();
    for packet in [
        publish_numbered(&topics[0], QoS::AtLeastOnce, 1, false, "one"),
        publish_numbered(&topics[1], QoS::ExactlyOnce, 2, false, "two"),
        // The broker refuses control characters in channel names.
        publish_numbered("places/\u{1}", QoS::AtLeastOnce, 3, false, "refused"),
        // A retransmission while the original is being stored: the
        // original's PUBREC answers both.
        publish_numbered(&topics[1], QoS::ExactlyOnce, 2, true, "two"),
        publish_numbered(&topics[0], QoS::AtLeastOnce, 4, false, "four"),
        // '$' topics belong to the server: refused in the acknowledgement,
        // the connection stays.
        publish_numbered("$SYS/mine", QoS::AtLeastOnce, 5, false, "reserved"),
        publish_numbered("$mine", QoS::ExactlyOnce, 6, false, "reserved"),
        publish_numbered(&topics[0], QoS::AtLeastOnce, 7, false, "seven"),
    ] {
        packet.encode(raw.version, &mut bytes);
    }
    raw.send_raw(&bytes);
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(match raw.next() {
            Some(Packet::PubAck(ack)) => ("PUBACK", ack.packet_id, ack.reason_code),
            Some(Packet::PubRec(rec)) => ("PUBREC", rec.packet_id, rec.reason_code),
            other => panic!("expected PUBACK or PUBREC, got {other:?}"),
        });
    }
    assert_eq!(
        answers,
        vec![
            ("PUBACK", 1, ReasonCode::Success),
            ("PUBREC", 2, ReasonCode::Success),
            ("PUBACK", 3, ReasonCode::TopicNameInvalid),
            ("PUBACK", 4, ReasonCode::Success),
            ("PUBACK", 5, ReasonCode::TopicNameInvalid),
            ("PUBREC", 6, ReasonCode::TopicNameInvalid),
            ("PUBACK", 7, ReasonCode::Success),
        ]
    );
    assert_eq!(
        history_texts(&server, &topics[0]),
        vec!["one", "four", "seven"]
    );

    // A real client is told why.
    let text = common::mosquitto_pub_v5_stderr(server.mqtt, "$SYS/mine", "refused");
    assert!(
        text.contains("Topic Name invalid") && text.contains("belong to the server"),
        "mosquitto_pub says: {text}"
    );
    raw.send(&Packet::PubRel(
        starling_protocol::mqtt::PublishResponse::success(2),
    ));
    assert!(matches!(raw.next(), Some(Packet::PubComp(comp)) if comp.packet_id == 2));
    assert_eq!(
        history_texts(&server, &topics[1]),
        vec!["two"],
        "stored once"
    );
}

/// Sends `packet` and expects the answer `expected` names (PUBREC, PUBCOMP)
/// for `packet_id`, with `reason`.
fn exchange(raw: &mut Raw, packet: Packet, expected: &str, packet_id: u16, reason: ReasonCode) {
    raw.send(&packet);
    let answer = match raw.next() {
        Some(Packet::PubRec(rec)) => ("PUBREC", rec.packet_id, rec.reason_code),
        Some(Packet::PubComp(comp)) => ("PUBCOMP", comp.packet_id, comp.reason_code),
        other => panic!("expected {expected}, got {other:?}"),
    };
    assert_eq!(answer, (expected, packet_id, reason));
}

fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(starling_protocol::mqtt::PublishResponse::success(packet_id))
}

#[test]
fn inbound_qos2_is_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topic = "ledger/in";
    let qos2 = QoS::ExactlyOnce;
    let success = ReasonCode::Success;
    let (mut payer, _) = connect_session(server.mqtt, ProtocolVersion::V5, "payer", false);
    // 7 and 9 are stored and not released when the server dies; 8 is
    // released.
    let pay_1 = publish_numbered(topic, qos2, 7, false, "pay 1");
    exchange(&mut payer, pay_1, "PUBREC", 7, success);
    let pay_2 = publish_numbered(topic, qos2, 8, false, "pay 2");
    exchange(&mut payer, pay_2, "PUBREC", 8, success);
    exchange(&mut payer, pubrel(8), "PUBCOMP", 8, success);
    let pay_3 = publish_numbered(topic, qos2, 9, false, "pay 3");
    exchange(&mut payer, pay_3, "PUBREC", 9, success);
    server.kill();
    drop(payer);

    let server = Server::start(dir.path(), &[]);
    let mut watcher = Raw::connect(server.mqtt, ProtocolVersion::V5, 0, None);
    subscribe(&mut watcher, topic, QoS::AtLeastOnce);
    let (mut payer, present) = connect_session(server.mqtt, ProtocolVersion::V5, "payer", false);
    assert!(present, "the session survived the SIGKILL");
    // The client did not see the PUBREC of 7 and sends the PUBLISH again
    // (DUP): it is not stored again, and its PUBREL is known.
    let again = publish_numbered(topic, qos2, 7, true, "pay 1");
    exchange(&mut payer, again, "PUBREC", 7, success);
    exchange(&mut payer, pubrel(7), "PUBCOMP", 7, success);
    // The client saw the PUBREC of 9: it sends PUBREL only.
    exchange(&mut payer, pubrel(9), "PUBCOMP", 9, success);
    // A released id used again is a new message.
    let pay_4 = publish_numbered(topic, qos2, 8, false, "pay 4");
    exchange(&mut payer, pay_4, "PUBREC", 8, success);
    exchange(&mut payer, pubrel(8), "PUBCOMP", 8, success);
    // And an id never used is unknown (v5 says so in the PUBCOMP).
    let unknown = ReasonCode::PacketIdentifierNotFound;
    exchange(&mut payer, pubrel(10), "PUBCOMP", 10, unknown);

    let (id, _, payload) = next_publish(&mut watcher);
    assert_eq!(&payload[..], b"pay 4", "the retransmission reached nobody");
    watcher.send(&Packet::PubAck(
        starling_protocol::mqtt::PublishResponse::success(id.unwrap()),
    ));
    assert_eq!(
        history_texts(&server, topic),
        vec!["pay 1", "pay 2", "pay 3", "pay 4"],
        "each message in the log once"
    );
}

#[test]
fn outbound_pubrel_is_sent_again_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topic = "ledger/out";
    let (mut ledger, _) = connect_session(server.mqtt, ProtocolVersion::V5, "ledger-out", false);
    subscribe(&mut ledger, topic, QoS::ExactlyOnce);
    publish_acked(&server, topic, &["pay 1".to_string()], QoS::AtLeastOnce);
    let (id, qos, payload) = next_publish(&mut ledger);
    assert_eq!((qos, &payload[..]), (QoS::ExactlyOnce, &b"pay 1"[..]));
    let id = id.unwrap();
    pubrec_then_pubrel(&mut ledger, id);
    // The server dies before the client's PUBCOMP.
    server.kill();
    drop(ledger);

    let server = Server::start(dir.path(), &[]);
    let (mut ledger, present) =
        connect_session(server.mqtt, ProtocolVersion::V5, "ledger-out", false);
    assert!(present, "the session survived the SIGKILL");
    match ledger.next() {
        Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, id, "PUBREL again, same id"),
        other => panic!("expected PUBREL again, not the message, got {other:?}"),
    }
    ledger.send(&Packet::PubComp(
        starling_protocol::mqtt::PublishResponse::success(id),
    ));
    ledger.send(&Packet::PingReq);
    assert_eq!(ledger.next(), Some(Packet::PingResp), "and nothing else");
    // Completed: a later restart sends nothing again, and new messages go
    // on.
    publish_acked(&server, topic, &["pay 2".to_string()], QoS::AtLeastOnce);
    let (next_id, _, payload) = next_publish(&mut ledger);
    assert_eq!(&payload[..], b"pay 2");
    pubrec_then_pubrel(&mut ledger, next_id.unwrap());
    ledger.send(&Packet::PubComp(
        starling_protocol::mqtt::PublishResponse::success(next_id.unwrap()),
    ));
    ledger.send(&Packet::PingReq);
    assert_eq!(ledger.next(), Some(Packet::PingResp));
    wait_until_settled(&server, "ledger-out", &[topic]);
    server.kill();
    drop(ledger);
    let server = Server::start(dir.path(), &[]);
    let (mut ledger, present) =
        connect_session(server.mqtt, ProtocolVersion::V5, "ledger-out", false);
    assert!(present);
    ledger.send(&Packet::PingReq);
    assert_eq!(ledger.next(), Some(Packet::PingResp), "nothing to resend");
}

/// Waits until what a restart would read of `client_id`'s session says
/// everything was answered: its last QoS note lists nothing in flight, and
/// the cursor of each of `topics` is at the topic's last message. Answers
/// are not waited for by the client, so a test that kills the server right
/// after them waits here (records are readable once durable).
fn wait_until_settled(server: &Server, client_id: &str, topics: &[&str]) {
    use starling_protocol::HistoryQuery;
    let mut client = starling_adapters::client::Client::connect(server.address, "test", "")
        .expect("a native client");
    let consumer = format!("mqtt.{client_id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = client
            .history(&format!("$mqtt/qos2/{client_id}"), HistoryQuery::Last, 1)
            .unwrap();
        let note_settled = page.messages.last().is_some_and(|note| {
            let note: serde_json::Value = serde_json::from_slice(&note.body).unwrap();
            ["received", "released", "sent"]
                .iter()
                .all(|key| note[key].as_array().is_none_or(Vec::is_empty))
        });
        let cursors_settled = topics.iter().all(|topic| {
            let head = client
                .history(topic, HistoryQuery::Last, 1)
                .unwrap()
                .head_seq;
            client.cursor_get(&consumer, topic).unwrap() == Some(head)
        });
        if note_settled && cursors_settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the answers of {client_id} were not durable within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A persistent session's cursor is written about once per durable write,
/// not once per PUBACK: a burst of 200 PUBACKs (one TCP write) leaves a
/// couple of cursor records (the first PUBACK's, then the latest position
/// when that write returns), the cursor still reaches the last message, and
/// after a SIGKILL nothing acknowledged comes again.
#[test]
fn a_burst_of_pubacks_writes_a_few_cursor_records_not_one_each() {
    use starling_protocol::HistoryQuery;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topic = "burst";
    let (mut reader, _) = connect_session(server.mqtt, ProtocolVersion::V5, "burst", false);
    subscribe(&mut reader, topic, QoS::AtLeastOnce);
    let texts: Vec<String> = (0..200).map(|i| format!("burst {i}")).collect();
    publish_acked(&server, topic, &texts, QoS::AtLeastOnce);
    let mut packet_ids = Vec::new();
    while packet_ids.len() < texts.len() {
        let (packet_id, qos, payload) = next_publish(&mut reader);
        assert_eq!(qos, QoS::AtLeastOnce);
        assert_eq!(payload, texts[packet_ids.len()].as_bytes());
        packet_ids.push(packet_id.unwrap());
    }
    let mut client = starling_adapters::client::Client::connect(server.address, "test", "")
        .expect("a native client");
    let cursor_channel = format!("$cursor/mqtt.burst/{topic}");
    let mut cursor_records = || {
        client
            .history(&cursor_channel, HistoryQuery::Last, 1)
            .unwrap()
            .head_seq
    };
    let before = cursor_records();
    let mut acks = BytesMut::new();
    for packet_id in &packet_ids {
        Packet::PubAck(response(*packet_id)).encode(ProtocolVersion::V5, &mut acks);
    }
    reader.send_raw(&acks);
    reader.send(&Packet::PingReq);
    assert_eq!(reader.next(), Some(Packet::PingResp));
    wait_until_settled(&server, "burst", &[topic]);
    let written = cursor_records() - before;
    assert!(
        (1..=3).contains(&written),
        "200 PUBACKs in one burst wrote {written} cursor records (one per PUBACK before \
         cursor writes were coalesced)"
    );

    server.kill();
    drop(reader);
    let server = Server::start(dir.path(), &[]);
    let (mut reader, present) = connect_session(server.mqtt, ProtocolVersion::V5, "burst", false);
    assert!(present);
    reader.send(&Packet::PingReq);
    assert_eq!(
        reader.next(),
        Some(Packet::PingResp),
        "nothing acknowledged comes again"
    );
}

/// The next packet, which must be a PUBLISH with DUP set: (packet id, QoS,
/// payload).
fn next_resent_publish(raw: &mut Raw) -> (u16, QoS, String) {
    match raw.next() {
        Some(Packet::Publish(publish)) => {
            assert!(publish.dup, "a resent message has DUP set: {publish:?}");
            let text = String::from_utf8(publish.payload.to_vec()).unwrap();
            (publish.packet_id.unwrap(), publish.qos, text)
        }
        other => panic!("expected a resent PUBLISH, got {other:?}"),
    }
}

/// MQTT 4.4 across a SIGKILL: a persistent session's QoS 1 and 2 PUBLISHes
/// that the client received and did not answer come again after the
/// restart with their original packet ids and DUP set, in the order first
/// sent, once (the redelivery from the cursors skips them), so a client that
/// passes QoS 2 messages on at PUBLISH time does not pass one on twice.
#[test]
fn unanswered_deliveries_come_again_with_their_packet_ids_after_sigkill() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[]);
        let client_id = format!("inbox-{version:?}");
        let (two, one) = ("inbox/two", "inbox/one");
        let (mut inbox, _) = connect_session(server.mqtt, version, &client_id, false);
        subscribe(&mut inbox, two, QoS::ExactlyOnce);
        subscribe(&mut inbox, one, QoS::AtLeastOnce);
        let texts = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        };
        publish_acked(&server, two, &texts(&["two a", "two b"]), QoS::AtLeastOnce);
        publish_acked(&server, one, &texts(&["one a"]), QoS::AtLeastOnce);
        let mut sent = Vec::new();
        for _ in 0..3 {
            match inbox.next() {
                Some(Packet::Publish(publish)) => {
                    assert!(!publish.dup, "{publish:?}");
                    let text = String::from_utf8(publish.payload.to_vec()).unwrap();
                    sent.push((publish.packet_id.unwrap(), publish.qos, text));
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        let names: Vec<&str> = sent.iter().map(|(_, _, text)| text.as_str()).collect();
        assert_eq!(names, ["two a", "two b", "one a"]);
        // "two a" is PUBREC'd (its PUBREL comes); "two b" and "one a" are
        // received and not answered when the server dies.
        pubrec_then_pubrel(&mut inbox, sent[0].0);
        server.kill();
        drop(inbox);

        let server = Server::start(dir.path(), &[]);
        let (mut inbox, present) = connect_session(server.mqtt, version, &client_id, false);
        assert!(present, "the session survived the SIGKILL");
        match inbox.next() {
            Some(Packet::PubRel(rel)) => assert_eq!(rel.packet_id, sent[0].0),
            other => panic!("expected PUBREL again, got {other:?}"),
        }
        assert_eq!(next_resent_publish(&mut inbox), sent[1], "{version:?}");
        assert_eq!(next_resent_publish(&mut inbox), sent[2], "{version:?}");
        inbox.send(&Packet::PubComp(response(sent[0].0)));
        pubrec_then_pubrel(&mut inbox, sent[1].0);
        inbox.send(&Packet::PubComp(response(sent[1].0)));
        inbox.send(&Packet::PubAck(response(sent[2].0)));
        // Nothing comes twice: the next PUBLISH is a new message.
        publish_acked(&server, two, &texts(&["two c"]), QoS::AtLeastOnce);
        let (id, _, payload) = next_publish(&mut inbox);
        assert_eq!(&payload[..], b"two c", "{version:?}: no second copy");
        pubrec_then_pubrel(&mut inbox, id.unwrap());
        inbox.send(&Packet::PubComp(response(id.unwrap())));
        inbox.send(&Packet::PingReq);
        assert_eq!(inbox.next(), Some(Packet::PingResp));

        // Everything answered: a later restart resends nothing.
        wait_until_settled(&server, &client_id, &[two, one]);
        server.kill();
        drop(inbox);
        let server = Server::start(dir.path(), &[]);
        let (mut inbox, present) = connect_session(server.mqtt, version, &client_id, false);
        assert!(present);
        inbox.send(&Packet::PingReq);
        assert_eq!(inbox.next(), Some(Packet::PingResp), "nothing to resend");
    }
}

/// A client that completes a later QoS 2 message while an earlier one is
/// still open (the topic's cursor cannot pass it) does not get the later one
/// again, as a new message, after a SIGKILL: the session's note lists what
/// was acknowledged above the cursor. (It came again before.)
#[test]
fn a_qos2_message_completed_out_of_order_is_not_sent_again_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topic = "ledger/entries";
    let (mut ledger, _) = connect_session(server.mqtt, ProtocolVersion::V5, "ledger", false);
    subscribe(&mut ledger, topic, QoS::ExactlyOnce);
    let texts: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|text| text.to_string())
        .collect();
    publish_acked(&server, topic, &texts, QoS::AtLeastOnce);
    let ids: Vec<u16> = texts
        .iter()
        .map(|text| {
            let (id, _, payload) = next_publish(&mut ledger);
            assert_eq!(&payload[..], text.as_bytes());
            id.unwrap()
        })
        .collect();
    // "first" and "third" are completed; "second" is left open.
    for id in [ids[0], ids[2]] {
        pubrec_then_pubrel(&mut ledger, id);
        ledger.send(&Packet::PubComp(response(id)));
    }
    ledger.send(&Packet::PingReq);
    assert_eq!(ledger.next(), Some(Packet::PingResp));
    server.kill();
    drop(ledger);

    let server = Server::start(dir.path(), &[]);
    let (mut ledger, present) = connect_session(server.mqtt, ProtocolVersion::V5, "ledger", false);
    assert!(present, "the session survived the SIGKILL");
    let second = loop {
        match ledger.next() {
            // The PUBCOMP of "third" may not have been noted yet: its PUBREL
            // comes again, and is answered again.
            Some(Packet::PubRel(rel)) if rel.packet_id == ids[2] => {
                ledger.send(&Packet::PubComp(response(ids[2])));
            }
            Some(Packet::Publish(publish)) => break publish,
            other => panic!("expected the open PUBLISH again, got {other:?}"),
        }
    };
    assert!(second.dup, "{second:?}");
    assert_eq!(
        (second.packet_id, &second.payload[..]),
        (Some(ids[1]), &b"second"[..])
    );
    pubrec_then_pubrel(&mut ledger, ids[1]);
    ledger.send(&Packet::PubComp(response(ids[1])));
    // The next PUBLISH is a new message, not "third" once more.
    publish_acked(&server, topic, &["fourth".to_string()], QoS::AtLeastOnce);
    let (_, _, payload) = next_publish(&mut ledger);
    assert_eq!(&payload[..], b"fourth", "\"third\" came twice");
}

/// Many QoS 2 deliveries in flight at a SIGKILL (noted together, a few per
/// note) all come again after the restart, in the order first sent, with
/// their packet ids and DUP, and nothing else does.
#[test]
fn many_unanswered_qos2_deliveries_come_again_in_order_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let topic = "orders/many";
    let (mut shop, _) = connect_session(server.mqtt, ProtocolVersion::V5, "shop", false);
    subscribe(&mut shop, topic, QoS::ExactlyOnce);
    let orders: Vec<String> = (0..20).map(|i| format!("order {i}")).collect();
    // Published from another thread while the deliveries go out, so that
    // several are noted at once.
    let publishing = {
        let (mqtt, orders) = (server.mqtt, orders.clone());
        std::thread::spawn(move || {
            let mut publisher = Raw::connect(mqtt, ProtocolVersion::V5, 0, None);
            for (index, order) in orders.iter().enumerate() {
                let packet_id = index as u16 + 1;
                publisher.send(&publish_numbered(
                    topic,
                    QoS::AtLeastOnce,
                    packet_id,
                    false,
                    order,
                ));
            }
            for _ in &orders {
                assert!(matches!(publisher.next(), Some(Packet::PubAck(_))));
            }
        })
    };
    let mut sent = Vec::new();
    for order in &orders {
        let (id, qos, payload) = next_publish(&mut shop);
        assert_eq!((qos, &payload[..]), (QoS::ExactlyOnce, order.as_bytes()));
        sent.push((id.unwrap(), qos, order.clone()));
    }
    publishing.join().unwrap();
    server.kill();
    drop(shop);

    let server = Server::start(dir.path(), &[]);
    let (mut shop, present) = connect_session(server.mqtt, ProtocolVersion::V5, "shop", false);
    assert!(present);
    for expected in &sent {
        assert_eq!(&next_resent_publish(&mut shop), expected);
    }
    for (id, _, _) in &sent {
        pubrec_then_pubrel(&mut shop, *id);
        shop.send(&Packet::PubComp(response(*id)));
    }
    publish_acked(&server, topic, &["order 20".to_string()], QoS::AtLeastOnce);
    let (_, _, payload) = next_publish(&mut shop);
    assert_eq!(&payload[..], b"order 20", "no second copy of any order");
}

/// The types of the records of `client_id`'s MQTT session, once `done`
/// says they are complete (polled: the server writes them after the
/// connection's end, which the client does not see).
fn session_records_until(
    server: &Server,
    client_id: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The native protocol reads reserved channels (the chat one does not).
    let mut client = starling_adapters::client::Client::connect(server.address, "reader", "")
        .expect("a native connection");
    loop {
        let channel = format!("$mqtt/session/{client_id}");
        let page = client
            .history(&channel, starling_protocol::HistoryQuery::From(1), 100)
            .expect("the session's records");
        let types: Vec<String> = page
            .messages
            .iter()
            .map(|m| {
                let record: serde_json::Value = serde_json::from_slice(&m.body).unwrap_or_default();
                let will = if record["will"].is_object() {
                    "+will"
                } else {
                    ""
                };
                format!("{}{will}", record["type"].as_str().unwrap_or_default())
            })
            .collect();
        if done(&types) {
            return types;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session records of {client_id:?} did not become complete: {types:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The texts of `channel` once there are `count` (polled, as above).
fn history_once(server: &Server, channel: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let texts = history_texts(server, channel);
        if texts.len() >= count {
            return texts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{channel} has {texts:?}, not {count} messages"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_delayed_will_pending_at_a_sigkill_goes_out_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let will = delayed_will("presence/e", b"e is gone", 2);
    let (doomed, _) = connect_v5(server.mqtt, "e", true, session_expiry(3600), Some(will));
    drop(doomed);
    let last_is =
        |wanted: &'static str| move |types: &[String]| types.last().is_some_and(|t| t == wanted);
    session_records_until(&server, "e", last_is("left+will"));
    server.kill();

    let server = Server::start(dir.path(), &[]);
    assert_eq!(history_once(&server, "presence/e", 1), vec!["e is gone"]);
    // Recorded as sent, so a later restart does not send it again.
    let types = session_records_until(&server, "e", last_is("will-sent"));
    assert_eq!(types, vec!["start", "left+will", "will-sent"]);
    server.kill();
    let server = Server::start(dir.path(), &[]);
    let (_e, present) = resume_v5(server.mqtt, "e", 3600);
    assert!(present, "sending the will did not end the session");
}

#[test]
fn a_session_resumed_after_a_sigkill_cancels_its_delayed_will() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let delay = Duration::from_secs(4);
    let will = delayed_will("presence/f", b"f is gone", delay.as_secs() as u32);
    let (doomed, _) = connect_v5(server.mqtt, "f", true, session_expiry(3600), Some(will));
    drop(doomed);
    let left_at = std::time::Instant::now();
    let last_is =
        |wanted: &'static str| move |types: &[String]| types.last().is_some_and(|t| t == wanted);
    session_records_until(&server, "f", last_is("left+will"));
    server.kill();

    let server = Server::start(dir.path(), &[]);
    let (_f, present) = resume_v5(server.mqtt, "f", 3600);
    assert!(present);
    session_records_until(&server, "f", last_is("back"));
    // Past the will's time, the next message on its topic is an ordinary
    // one.
    std::thread::sleep(
        (left_at + delay + Duration::from_secs(1))
            .saturating_duration_since(std::time::Instant::now()),
    );
    publish_acked(
        &server,
        "presence/f",
        &["f is back".into()],
        QoS::AtLeastOnce,
    );
    assert_eq!(history_once(&server, "presence/f", 1), vec!["f is back"]);
}

/// Connects `client_id` to a persistent session (v3.1.1: clean session 0;
/// v5: no clean start, an hour of session expiry) subscribed to `topic` at
/// QoS 1, disconnects, then connects with a clean start that keeps nothing
/// (v3.1.1: clean session 1; v5: clean start, session expiry 0) and
/// disconnects again.
fn persistent_then_clean(
    address: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    topic: &str,
) {
    let (mut raw, present) = match version {
        ProtocolVersion::V311 => connect_session(address, version, client_id, false),
        ProtocolVersion::V5 => resume_v5(address, client_id, 3600),
    };
    assert!(!present, "{client_id}: a new session");
    subscribe(&mut raw, topic, QoS::AtLeastOnce);
    raw.send(&Packet::Disconnect(Default::default()));
    assert!(raw.next().is_none());
    let (mut clean, present) = connect_session(address, version, client_id, true);
    assert!(!present, "{client_id}: a clean start has no session");
    clean.send(&Packet::Disconnect(Default::default()));
    assert!(clean.next().is_none());
}

/// After [`persistent_then_clean`] and a message to `topic`: a persistent
/// connect finds no session, and the old subscription delivers nothing.
fn old_session_is_gone(server: &Server, version: ProtocolVersion, client_id: &str, topic: &str) {
    publish_acked(server, topic, &["while away".into()], QoS::AtLeastOnce);
    let (mut raw, present) = match version {
        ProtocolVersion::V311 => connect_session(server.mqtt, version, client_id, false),
        ProtocolVersion::V5 => resume_v5(server.mqtt, client_id, 3600),
    };
    assert!(
        !present,
        "{client_id} ({version:?}): the clean start discarded the older session"
    );
    raw.send(&Packet::PingReq);
    assert_eq!(
        raw.next(),
        Some(Packet::PingResp),
        "{client_id}: nothing of the older session is delivered"
    );
    raw.send(&Packet::Disconnect(Default::default()));
}

#[test]
fn a_clean_start_ends_an_older_persistent_session_also_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let versions = [ProtocolVersion::V311, ProtocolVersion::V5];
    for version in versions {
        let (live, restarted) = (
            format!("live-{version:?}"),
            format!("restarted-{version:?}"),
        );
        persistent_then_clean(server.mqtt, version, &live, &format!("{live}/jobs"));
        persistent_then_clean(
            server.mqtt,
            version,
            &restarted,
            &format!("{restarted}/jobs"),
        );
        old_session_is_gone(&server, version, &live, &format!("{live}/jobs"));
    }
    // What the clean starts did is in the log: a SIGKILL and a restart do
    // not bring the older sessions back.
    server.kill();
    let server = Server::start(dir.path(), &[]);
    for version in versions {
        let restarted = format!("restarted-{version:?}");
        old_session_is_gone(&server, version, &restarted, &format!("{restarted}/jobs"));
    }
}

#[test]
fn qos0_messages_of_live_only_topics_skip_the_log() {
    let (_dir, server) = server(&[("STARLING_MQTT_LIVE_ONLY_QOS0", r#"["sensors/#"]"#)]);
    let (subscriber, lines) = subscriber(server.mqtt, &["-t", "sensors/t", "-C", "3", "-W", "20"]);
    for (payload, qos) in [("a", "0"), ("b", "1"), ("c", "0")] {
        let publisher = mosquitto(
            "mosquitto_pub",
            server.mqtt,
            &["-t", "sensors/t", "-m", payload, "-q", qos],
        );
        let (ok, output) = finish(publisher);
        assert!(ok, "mosquitto_pub qos {qos} failed: {output}");
    }
    assert_eq!(received(&lines, 3), vec!["a", "b", "c"]);
    let (ok, output) = finish(subscriber);
    assert!(ok, "mosquitto_sub failed: {output}");
    // Only the QoS 1 message is in the log.
    assert_eq!(history_texts(&server, "sensors/t"), vec!["b"]);
    // Other topics' QoS 0 messages are.
    let publisher = mosquitto(
        "mosquitto_pub",
        server.mqtt,
        &["-t", "room/t", "-m", "kept"],
    );
    assert!(finish(publisher).0);
    assert_eq!(history_texts(&server, "room/t"), vec!["kept"]);
}
