//! A seeded simulation of a persistent MQTT subscriber against the
//! sans-IO harness: messages are published to its topics while the
//! session's requests reach the log in a random order (first come, first
//! served per channel, as one shard serves a channel), the client answers
//! late or loses its answers with the connection, connections drop, and the
//! server crashes (what had not reached the log is lost). At the end every
//! message published after the SUBACK reached the client: a QoS 1 topic's at
//! least once, a QoS 2 topic's exactly once.
//!
//! `STARLING_MODEL_SEEDS=N` runs seeds 1..=N (a failing seed is named in the
//! panic; its run is reproducible but for the order of a few hash maps'
//! iteration inside the session).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use starling_broker::command::cursor_channel;
use starling_broker::Command;
use starling_protocol::mqtt::{
    Connect, MqttLimits, Packet, Properties, ProtocolVersion, PublishResponse, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};

use super::harness::{publish, Driver, Log};
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
const TOPICS: [(&str, QoS); 2] = [("sim/one", QoS::AtLeastOnce), ("sim/two", QoS::ExactlyOnce)];

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
}

impl Client {
    fn take_packets(&mut self, driver: &mut Driver) {
        for packet in driver.packets() {
            trace(|| format!("  client <- {}", brief(&packet)));
            match packet {
                Packet::Publish(publish) => {
                    let packet_id = publish.packet_id.expect("QoS 1 and 2 only here");
                    let got = self.got.entry(publish.topic.clone()).or_default();
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
                        QoS::AtMostOnce => panic!("a QoS 0 delivery: {publish:?}"),
                    }
                }
                Packet::PubRel(release) => {
                    self.qos2_received.remove(&release.packet_id);
                    self.answers
                        .push(Packet::PubComp(PublishResponse::success(release.packet_id)));
                }
                Packet::ConnAck(ack) => assert_eq!(ack.reason_code, ReasonCode::Success),
                Packet::SubAck(_) => {}
                other => panic!("unexpected packet {other:?}"),
            }
        }
    }

    fn send_answers(&mut self, driver: &mut Driver, count: usize) {
        let count = count.min(self.answers.len());
        for packet in self.answers.drain(..count) {
            trace(|| format!("  client -> {}", brief(&packet)));
            driver.send(&packet);
        }
    }
}

fn connect(receive_maximum: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive_s: 0,
        client_id: CLIENT_ID.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval_s: Some(u32::MAX),
            receive_maximum: Some(receive_maximum),
            ..Properties::default()
        },
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
    published: u64,
}

/// One run: returns when every invariant held, panics (naming the seed)
/// when one did not.
fn run(seed: u64, steps: u64, stats: &mut Stats) {
    let mut rng = Rng(seed);
    let receive_maximum = 1 + (rng.next() % 8) as u16;
    let mut log = Log::default();
    let mut server = MqttProtocol::new(MqttLimits::default());
    let mut client = Client::default();
    // Requests of closed connections still on their way to the log.
    let mut orphans: Vec<(u32, Command)> = Vec::new();

    let mut driver = Driver::open(&server, ProtocolVersion::V5);
    driver.send(&connect(receive_maximum));
    driver.answer(&mut log, |_| false);
    let filters = TOPICS
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
    driver.answer(&mut log, |_| false);
    client.take_packets(&mut driver);

    let mut published: HashMap<&str, Vec<Bytes>> = HashMap::new();
    let mut connected = true;
    for step in 0..steps {
        let roll = rng.next() % 100;
        trace(|| format!("step {step} roll {roll} connected {connected}"));
        match roll {
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
            55..=69 if connected => client.take_packets(&mut driver),
            70..=84 if connected => {
                let count = (rng.next() % 4) as usize;
                client.send_answers(&mut driver, count);
            }
            85..=89 => {
                // Some of the closed connections' requests reach the log.
                let count = (rng.next() % 3) as usize;
                apply_orphans(&mut log, &mut orphans, count);
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
                client.answers.clear();
                server = MqttProtocol::new(MqttLimits::default());
                connected = false;
                stats.crashes += 1;
            }
            _ if !connected => {
                if std::env::var_os("STARLING_SIMULATION_ORPHANS_FIRST").is_some() {
                    let count = orphans.len();
                    apply_orphans(&mut log, &mut orphans, count);
                }
                driver = Driver::open(&server, ProtocolVersion::V5);
                driver.send(&connect(receive_maximum));
                connected = true;
            }
            _ => {}
        }
    }

    // Settle: a last connection, every request answered, every answer
    // sent, until nothing moves.
    if connected {
        driver.close();
        orphans.append(&mut driver.unanswered);
        client.answers.clear();
    }
    let count = orphans.len();
    apply_orphans(&mut log, &mut orphans, count);
    let mut driver = Driver::open(&server, ProtocolVersion::V5);
    driver.send(&connect(receive_maximum));
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
        client.answers.is_empty() && driver.unanswered.is_empty(),
        "seed {seed}: the session did not settle"
    );
    for (topic, qos) in TOPICS {
        let sent = published.remove(topic).unwrap_or_default();
        let got = client.got.remove(topic).unwrap_or_default();
        let got_set: HashSet<&Bytes> = got.iter().collect();
        let lost: Vec<&Bytes> = sent.iter().filter(|m| !got_set.contains(m)).collect();
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
    assert!(stats.crashes > seeds && stats.drops > seeds, "{stats:?}");
}
