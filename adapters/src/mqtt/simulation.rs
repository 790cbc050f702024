//! A seeded simulation of a persistent MQTT subscriber against the
//! sans-IO harness: messages are published to its topics while the
//! session's requests reach the log in a random order (first come, first
//! served per channel, as one shard serves a channel), the client answers
//! late or loses its answers with the connection, connections drop or are
//! taken over by a newer connection of the client id (the older one
//! half-open), and the server crashes (what had not reached the log is lost). The client, in
//! MQTT 5 or 3.1.1, also publishes QoS 2 messages of its own and answers
//! out of order now and then, and in MQTT 5 now and then starts a new
//! session (clean start) and subscribes again; now and then a message that
//! is not in the log (seq 0) reaches the live connection. At the end every message
//! published after the last SUBACK reached the client (a QoS 1 topic's at
//! least once, a QoS 2 topic's exactly once), no QoS 2 message reached it
//! twice, and every QoS 2 message the client published is in the log
//! exactly once (at most once for those it gave up at a clean start).
//!
//! `STARLING_MODEL_SEEDS=N` runs seeds 1..=N (a failing seed is named in the
//! panic; its run is reproducible but for the order of a few hash maps'
//! iteration inside the session), `STARLING_MODEL_FIRST_SEED` starts later,
//! and `STARLING_SIMULATION_TRACE` prints the runs.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use starling_broker::command::cursor_channel;
use starling_broker::Command;
use starling_protocol::mqtt::{
    Connect, MqttLimits, Packet, Properties, ProtocolVersion, Publish, PublishResponse, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use starling_protocol::HistoryQuery;

use super::harness::{publish, route, Driver, Log};
use super::MqttProtocol;

/// SplitMix64: a seeded generator small enough to keep here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const CLIENT_ID: &str = "simulated";
/// The topics and the QoS of the client's subscription to each.
const FILTERS: [(&str, QoS); 3] = [
    ("sim/one", QoS::AtLeastOnce),
    ("sim/two", QoS::ExactlyOnce),
    ("wild/+", QoS::ExactlyOnce),
];
/// The topics published to, and the QoS the client gets them with.
const TOPICS: [(&str, QoS); 4] = [
    ("sim/one", QoS::AtLeastOnce),
    ("sim/two", QoS::ExactlyOnce),
    ("wild/a", QoS::ExactlyOnce),
    ("wild/b", QoS::ExactlyOnce),
];
/// Where the client publishes (QoS 2); nobody subscribes.
const INBOUND_TOPIC: &str = "sim/in";
/// The client's QoS 2 publishes in flight at most.
const CLIENT_IN_FLIGHT_MAX: usize = 4;

/// Where one of the client's own QoS 2 publishes is (MQTT 4.3.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sending {
    /// PUBLISH sent, no PUBREC yet.
    Published,
    /// PUBREC received, PUBREL sent, no PUBCOMP yet.
    Released,
}

/// The client's side: what its application got, and its QoS 2 state, which
/// outlives its connections (a persistent session on both sides).
#[derive(Default)]
struct Client {
    /// Payloads passed on to the application, per topic, in order.
    got: HashMap<String, Vec<Bytes>>,
    /// QoS 2 packet ids received and not released yet (MQTT 4.3.3, method
    /// B: the message was passed on at PUBLISH).
    qos2_received: HashSet<u16>,
    /// Answers not sent yet; lost when the connection ends.
    answers: Vec<Packet>,
    /// The client's own QoS 2 publishes in flight, by packet id.
    sending: BTreeMap<u16, (Bytes, Sending)>,
    next_packet_id: u16,
    /// Payloads of messages not in the log received (at QoS 0).
    live_only: HashSet<Bytes>,
    /// The Receive Maximum the client announces (MQTT 5 only).
    window: Option<usize>,
    /// QoS 1 and 2 PUBLISHes received on this connection that the client
    /// has not sent PUBACK or PUBCOMP for: never more than `window`
    /// (MQTT-3.3.4-9), counted again on every connection.
    unacked: HashSet<u16>,
}

impl Client {
    fn take_packets(&mut self, driver: &mut Driver) {
        for packet in driver.packets() {
            trace(|| format!("  client <- {}", brief(&packet)));
            match packet {
                Packet::Publish(publish) => {
                    let got = self.got.entry(publish.topic.clone()).or_default();
                    let packet_id = publish.packet_id.unwrap_or(0);
                    if publish.qos != QoS::AtMostOnce {
                        self.unacked.insert(packet_id);
                        if let Some(window) = self.window {
                            assert!(
                                self.unacked.len() <= window,
                                "{} PUBLISHes unacknowledged, Receive Maximum {window}",
                                self.unacked.len()
                            );
                        }
                    }
                    match publish.qos {
                        QoS::AtLeastOnce => {
                            got.push(publish.payload);
                            self.answers
                                .push(Packet::PubAck(PublishResponse::success(packet_id)));
                        }
                        QoS::ExactlyOnce => {
                            if self.qos2_received.insert(packet_id) {
                                got.push(publish.payload);
                            }
                            self.answers
                                .push(Packet::PubRec(PublishResponse::success(packet_id)));
                        }
                        QoS::AtMostOnce => {
                            // Only messages not in the log go out at QoS 0.
                            assert!(
                                publish.payload.starts_with(b"live "),
                                "a QoS 0 delivery of a stored message: {publish:?}"
                            );
                            assert!(
                                self.live_only.insert(publish.payload.clone()),
                                "a live-only message twice: {publish:?}"
                            );
                        }
                    }
                }
                Packet::PubRel(release) => {
                    self.qos2_received.remove(&release.packet_id);
                    self.answers
                        .push(Packet::PubComp(PublishResponse::success(release.packet_id)));
                }
                Packet::PubRec(received) => {
                    assert!(!received.reason_code.is_error(), "{received:?}");
                    if let Some((_, stage)) = self.sending.get_mut(&received.packet_id) {
                        *stage = Sending::Released;
                        let release = PublishResponse::success(received.packet_id);
                        self.answers.push(Packet::PubRel(release));
                    }
                }
                Packet::PubComp(complete) => {
                    self.sending.remove(&complete.packet_id);
                }
                Packet::ConnAck(ack) => assert_eq!(ack.reason_code, ReasonCode::Success),
                Packet::SubAck(_) => {}
                other => panic!("unexpected packet {other:?}"),
            }
        }
    }

    /// Publishes `payload` at QoS 2 (sent with the next answers).
    fn publish(&mut self, payload: Bytes) {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        let packet_id = self.next_packet_id;
        self.answers
            .push(own_publish(packet_id, payload.clone(), false));
        self.sending
            .insert(packet_id, (payload, Sending::Published));
    }

    /// A new connection: what the client's own publishes still need goes
    /// again (MQTT 4.4), in order, after the CONNECT.
    /// A clean start: the client forgets its own session state too.
    fn forget_session(&mut self) {
        self.unacked.clear();
        self.qos2_received.clear();
        self.sending.clear();
        self.answers.clear();
    }

    /// The Receive Maximum of the next connection (1 to 8): a client may
    /// come back with a smaller one than its session has in flight.
    fn next_window(&mut self, rng: &mut Rng, version: ProtocolVersion) -> u16 {
        let receive_maximum = 1 + (rng.next() % 8) as u16;
        self.window = (version == ProtocolVersion::V5).then_some(usize::from(receive_maximum));
        receive_maximum
    }

    fn reconnected(&mut self) {
        self.unacked.clear();
        self.answers.clear();
        for (packet_id, (payload, stage)) in &self.sending {
            self.answers.push(match stage {
                Sending::Published => own_publish(*packet_id, payload.clone(), true),
                Sending::Released => Packet::PubRel(PublishResponse::success(*packet_id)),
            });
        }
    }

    fn send_answers(&mut self, driver: &mut Driver, count: usize) {
        let count = count.min(self.answers.len());
        for packet in self.answers.drain(..count) {
            trace(|| format!("  client -> {}", brief(&packet)));
            if let Packet::PubAck(done) | Packet::PubComp(done) = &packet {
                self.unacked.remove(&done.packet_id);
            }
            driver.send(&packet);
        }
    }
}

fn own_publish(packet_id: u16, payload: Bytes, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: INBOUND_TOPIC.into(),
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload,
    })
}

fn connect(version: ProtocolVersion, receive_maximum: u16, clean_start: bool) -> Packet {
    let properties = match version {
        ProtocolVersion::V5 => Properties {
            session_expiry_interval_s: Some(u32::MAX),
            receive_maximum: Some(receive_maximum),
            ..Properties::default()
        },
        ProtocolVersion::V311 => Properties::default(),
    };
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start,
        keep_alive_s: 0,
        client_id: CLIENT_ID.into(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

fn tracing() -> bool {
    std::env::var_os("STARLING_SIMULATION_TRACE").is_some()
}

/// Prints a line of the run with `STARLING_SIMULATION_TRACE` set.
fn trace(line: impl FnOnce() -> String) {
    if tracing() {
        eprintln!("{}", line());
    }
}

fn brief(packet: &Packet) -> String {
    match packet {
        Packet::Publish(p) => format!(
            "PUBLISH {} {:?} id {:?} dup {} {:?}",
            p.topic, p.qos, p.packet_id, p.dup, p.payload
        ),
        Packet::PubAck(r) => format!("PUBACK {}", r.packet_id),
        Packet::PubRec(r) => format!("PUBREC {}", r.packet_id),
        Packet::PubRel(r) => format!("PUBREL {}", r.packet_id),
        Packet::PubComp(r) => format!("PUBCOMP {}", r.packet_id),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

fn brief_command(command: &Command) -> String {
    match command {
        Command::Publish { channel, body, .. } => {
            format!("publish {channel} {}", String::from_utf8_lossy(body))
        }
        Command::CursorSet { channel, seq, .. } => format!("cursor set {channel} {seq}"),
        Command::CursorGet { channel, .. } => format!("cursor get {channel}"),
        other => format!("{other:?}").chars().take(100).collect(),
    }
}

/// The channel whose order a command keeps (one shard serves it).
fn channel_of(command: &Command) -> String {
    match command {
        Command::CursorSet {
            consumer, channel, ..
        }
        | Command::CursorGet { consumer, channel } => cursor_channel(consumer, channel),
        other => other.channel().to_string(),
    }
}

#[derive(Debug, Default)]
struct Stats {
    crashes: u64,
    drops: u64,
    clean_starts: u64,
    takeovers: u64,
    published: u64,
    /// Messages not in the log that reached the client.
    live_only: u64,
}

/// One run: returns when every invariant held, panics (naming the seed)
/// when one did not.
fn run(seed: u64, steps: u64, stats: &mut Stats) {
    let mut rng = Rng(seed);
    let version = if rng.chance(25) {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let mut log = Log::default();
    let mut server = MqttProtocol::new(MqttLimits::default());
    let mut client = Client::default();
    // Requests of closed connections still on their way to the log.
    let mut orphans: Vec<(u32, Command)> = Vec::new();

    let window = client.next_window(&mut rng, version);
    let mut driver = start_session(&server, &mut log, &mut client, version, window);

    let mut published: HashMap<&str, Vec<Bytes>> = HashMap::new();
    let mut published_by_client = Vec::new();
    // Messages before these indexes of `published` (per topic) and of
    // `published_by_client` were published before the last clean start.
    let mut session_start: HashMap<&str, usize> = HashMap::new();
    let mut client_session_start = 0;
    let mut connected = true;
    // A connection taken over by a newer one of the client id, until it
    // has closed and handed its state over.
    let mut previous: Option<Driver> = None;
    for step in 0..steps {
        if let Some(old) = previous.as_mut() {
            route(&mut [old, &mut driver]);
            if old.closed {
                orphans.append(&mut old.unanswered);
                previous = None;
            }
        }
        let roll = rng.next() % 100;
        trace(|| format!("step {step} roll {roll} connected {connected}"));
        match roll {
            0..=2 if connected => {
                // A message not in the log (an ephemeral one, or a live-only
                // QoS 0 one): delivered at once at QoS 0, or not at all.
                let (topic, _) = TOPICS[(rng.next() % TOPICS.len() as u64) as usize];
                let body = Bytes::from(format!("live {seed}/{step}"));
                let message = super::test_message(0, super::wall_clock_ms(), body);
                driver.deliver(topic, &[message]);
            }
            0..=24 => {
                let (topic, _) = TOPICS[(rng.next() % TOPICS.len() as u64) as usize];
                let body = Bytes::from(format!("{seed}/{step}"));
                published.entry(topic).or_default().push(body.clone());
                stats.published += 1;
                let live: &mut [&mut Driver] = if connected {
                    &mut [&mut driver]
                } else {
                    &mut []
                };
                publish(&mut log, topic, body, live);
                if log.head(topic) == 1 {
                    // As an MQTT publisher's first message of a topic does.
                    index_topic(&mut log, topic);
                }
            }
            25..=54 if connected => {
                let mut blocked = HashSet::new();
                driver.answer(&mut log, |command| {
                    let channel = channel_of(command);
                    // Held: this one, and what follows it on its channel.
                    if blocked.contains(&channel) || rng.chance(30) {
                        blocked.insert(channel);
                        return true;
                    }
                    trace(|| format!("  log: {}", brief_command(command)));
                    false
                });
            }
            55..=64 if connected => client.take_packets(&mut driver),
            65..=66 if client.sending.len() < CLIENT_IN_FLIGHT_MAX => {
                let payload = Bytes::from(format!("in {seed}/{step}"));
                published_by_client.push(payload.clone());
                client.publish(payload);
            }
            67..=69 if client.answers.len() > 1 => {
                // Answers out of order (MQTT asks for them in order; the
                // server copes anyway).
                let last = client.answers.len() - 1;
                client.answers.swap(last - 1, last);
            }
            70..=84 if connected => {
                let count = (rng.next() % 4) as usize;
                client.send_answers(&mut driver, count);
            }
            85..=89 => {
                // Some of the closed connections' requests reach the log.
                let count = (rng.next() % 3) as usize;
                apply_orphans(&mut log, &mut orphans, count);
            }
            93..=94 if connected && previous.is_none() => {
                // The client connects again while the server still holds
                // its connection (a half-open one): the newer takes the
                // session over.
                if rng.chance(50) {
                    client.take_packets(&mut driver);
                }
                let newer = if version == ProtocolVersion::V5 && rng.chance(30) {
                    // A new session takes the older one's connection over.
                    client.forget_session();
                    let window = client.next_window(&mut rng, version);
                    let newer = start_session(&server, &mut log, &mut client, version, window);
                    for (topic, _) in TOPICS {
                        session_start.insert(topic, published.get(topic).map_or(0, Vec::len));
                    }
                    client_session_start = published_by_client.len();
                    stats.clean_starts += 1;
                    newer
                } else {
                    let mut newer = Driver::open(&server, version);
                    let window = client.next_window(&mut rng, version);
                    newer.send(&connect(version, window, false));
                    client.reconnected();
                    newer
                };
                let mut older = std::mem::replace(&mut driver, newer);
                route(&mut [&mut older, &mut driver]);
                previous = Some(older);
                stats.takeovers += 1;
            }
            90..=94 if connected => {
                // The connection drops; the server lives on.
                if rng.chance(50) {
                    client.take_packets(&mut driver);
                }
                driver.close();
                orphans.append(&mut driver.unanswered);
                client.answers.clear();
                connected = false;
                stats.drops += 1;
            }
            95..=97 => {
                // The server is killed: what did not reach the log is gone.
                if connected && rng.chance(50) {
                    client.take_packets(&mut driver);
                }
                orphans.clear();
                previous = None;
                client.answers.clear();
                server = MqttProtocol::new(MqttLimits::default());
                connected = false;
                stats.crashes += 1;
            }
            98..=99 if !connected && version == ProtocolVersion::V5 => {
                // A new session (the client forgets its own too), while
                // the older one's last requests may still land.
                client.forget_session();
                let window = client.next_window(&mut rng, version);
                driver = start_session(&server, &mut log, &mut client, version, window);
                for (topic, _) in TOPICS {
                    session_start.insert(topic, published.get(topic).map_or(0, Vec::len));
                }
                client_session_start = published_by_client.len();
                connected = true;
                stats.clean_starts += 1;
            }
            _ if !connected => {
                if std::env::var_os("STARLING_SIMULATION_ORPHANS_FIRST").is_some() {
                    let count = orphans.len();
                    apply_orphans(&mut log, &mut orphans, count);
                }
                driver = Driver::open(&server, version);
                let window = client.next_window(&mut rng, version);
                driver.send(&connect(version, window, false));
                client.reconnected();
                connected = true;
            }
            _ => {}
        }
    }

    // Settle: a last connection, every request answered, every answer
    // sent, until nothing moves.
    if let Some(mut old) = previous.take() {
        route(&mut [&mut old, &mut driver]);
        if !old.closed {
            old.close();
        }
        orphans.append(&mut old.unanswered);
    }
    if connected {
        driver.close();
        orphans.append(&mut driver.unanswered);
        client.answers.clear();
    }
    let count = orphans.len();
    apply_orphans(&mut log, &mut orphans, count);
    let mut driver = Driver::open(&server, version);
    let window = client.next_window(&mut rng, version);
    driver.send(&connect(version, window, false));
    client.reconnected();
    for _ in 0..1_000 {
        driver.answer(&mut log, |_| false);
        client.take_packets(&mut driver);
        if client.answers.is_empty() && driver.unanswered.is_empty() {
            break;
        }
        let count = client.answers.len();
        client.send_answers(&mut driver, count);
    }
    assert!(
        client.answers.is_empty() && driver.unanswered.is_empty() && client.sending.is_empty(),
        "seed {seed}: the session did not settle ({:?} still sending)",
        client.sending
    );
    stats.live_only += client.live_only.len() as u64;
    let stored: Vec<Bytes> = log
        .read(INBOUND_TOPIC, HistoryQuery::From(1), u32::MAX)
        .into_iter()
        .map(|message| message.body)
        .collect();
    for (index, payload) in published_by_client.iter().enumerate() {
        let copies = stored.iter().filter(|stored| *stored == payload).count();
        let given_up = index < client_session_start;
        assert!(
            copies == 1 || (given_up && copies == 0),
            "seed {seed} ({version:?}): the client's QoS 2 publish {payload:?} is in the log \
             {copies} times"
        );
    }
    assert_eq!(
        stored.len(),
        stored.iter().collect::<HashSet<_>>().len(),
        "seed {seed}: {stored:?}"
    );
    for (topic, qos) in TOPICS {
        let sent = published.remove(topic).unwrap_or_default();
        let got = client.got.remove(topic).unwrap_or_default();
        let got_set: HashSet<&Bytes> = got.iter().collect();
        let from = session_start.get(topic).copied().unwrap_or(0);
        let lost: Vec<&Bytes> = sent[from..]
            .iter()
            .filter(|m| !got_set.contains(m))
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: {topic} ({qos:?}) lost {lost:?} of {} published",
            sent.len()
        );
        if qos == QoS::ExactlyOnce {
            assert_eq!(
                got.len(),
                got_set.len(),
                "seed {seed}: {topic} (QoS 2) passed a message on twice: {got:?}"
            );
        }
    }
}

/// Connects a new session of the client (clean start in MQTT 5), subscribes it to
/// `FILTERS` with every request answered, and waits a millisecond, so that
/// every message from then on is published in a later millisecond than the
/// subscriptions (a wildcard filter's offline messages are found by their
/// timestamps, strictly after the filter's).
fn start_session(
    server: &MqttProtocol,
    log: &mut Log,
    client: &mut Client,
    version: ProtocolVersion,
    receive_maximum: u16,
) -> Driver {
    let mut driver = Driver::open(server, version);
    // MQTT 3.1.1's clean session ends the session with the connection.
    let clean_start = version == ProtocolVersion::V5;
    driver.send(&connect(version, receive_maximum, clean_start));
    driver.answer(log, |_| false);
    let filters = FILTERS
        .iter()
        .map(|(topic, qos)| {
            let options = SubscriptionOptions {
                qos: *qos,
                ..Default::default()
            };
            (topic.to_string(), options)
        })
        .collect();
    driver.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters,
        properties: Properties::default(),
    }));
    driver.answer(log, |_| false);
    client.take_packets(&mut driver);
    std::thread::sleep(std::time::Duration::from_millis(2));
    driver
}

/// Lists `topic` in the MQTT topic index.
fn index_topic(log: &mut Log, topic: &str) {
    log.apply(&Command::Publish {
        channel: super::offline::TOPIC_INDEX.into(),
        ephemeral: false,
        kind: starling_protocol::kind::MESSAGE,
        client_message_id: Bytes::from(topic.to_string()),
        relation: 0,
        headers: Bytes::new(),
        body: Bytes::from(topic.to_string()),
    });
}

/// Applies the first `count` orphaned requests to the log (their replies
/// go to no one).
fn apply_orphans(log: &mut Log, orphans: &mut Vec<(u32, Command)>, count: usize) {
    let count = count.min(orphans.len());
    for (_, command) in orphans.drain(..count) {
        trace(|| format!("  log (orphan): {}", brief_command(&command)));
        log.apply(&command);
    }
}

#[test]
fn a_persistent_subscriber_gets_every_message_through_drops_and_crashes() {
    let seeds: u64 = std::env::var("STARLING_MODEL_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("STARLING_MODEL_FIRST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1);
    let mut stats = Stats::default();
    for seed in first..=seeds {
        run(seed, 300, &mut stats);
    }
    eprintln!("{stats:?}");
    assert!(
        stats.crashes > seeds && stats.drops > seeds && stats.live_only > seeds,
        "{stats:?}"
    );
}
