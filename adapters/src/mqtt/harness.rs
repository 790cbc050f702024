//! Tests that drive MQTT sessions without a shard or a socket: an in-memory
//! log answers their broker commands, a test client speaks MQTT to them, and
//! the test decides which requests reach the log before a simulated crash.
//! A request that was not answered before the crash never happened: the
//! log keeps only what was answered, as a real log keeps only what was
//! durable when it acknowledged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use starling_broker::command::cursor_channel;
use starling_broker::{
    pattern, BrokerError, Command, ConnRef, LoopbackAuthorizer, Metrics, Principal, Protocol,
    Reply, Session, SessionContext, SessionEvent,
};
use starling_protocol::mqtt::{decode, Decoded, MqttLimits, Packet, ProtocolVersion};
use starling_protocol::{kind, HistoryQuery, Message, SubscribeStart};

use super::MqttProtocol;

/// The broker's log as the sessions see it: channels of messages.
#[derive(Default)]
pub(super) struct Log {
    channels: HashMap<String, Vec<Message>>,
    /// The seq of each publish with a client message id, by channel and
    /// id: a retry gets the original (the broker's idempotent publish,
    /// here without its window).
    published: HashMap<(String, Bytes), u64>,
}

impl Log {
    fn append(&mut self, channel: &str, kind: u8, relation: u64, body: Bytes) -> Message {
        self.append_with(channel, kind, relation, Bytes::new(), body)
    }

    fn append_with(
        &mut self,
        channel: &str,
        kind: u8,
        relation: u64,
        headers: Bytes,
        body: Bytes,
    ) -> Message {
        let messages = self.channels.entry(channel.to_string()).or_default();
        let message = Message {
            seq: messages.len() as u64 + 1,
            offset: 0,
            timestamp_ms: super::wall_clock_ms(),
            kind,
            sender: Bytes::from_static(b"test"),
            client_message_id: Bytes::new(),
            relation,
            headers,
            body,
        };
        messages.push(message.clone());
        message
    }

    pub(super) fn head(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |m| m.len() as u64)
    }

    pub(super) fn read(&self, channel: &str, query: HistoryQuery, limit: u32) -> Vec<Message> {
        let messages = self.channels.get(channel).map_or(&[][..], Vec::as_slice);
        let limit = limit as usize;
        let (start, end) = match query {
            HistoryQuery::From(seq) => {
                let start = (seq.max(1) - 1) as usize;
                (start, start.saturating_add(limit))
            }
            HistoryQuery::Before(seq) => {
                let end = (seq.max(1) - 1) as usize;
                (end.saturating_sub(limit), end)
            }
            HistoryQuery::Last => (messages.len().saturating_sub(limit), messages.len()),
        };
        let end = end.min(messages.len());
        messages[start.min(end)..end].to_vec()
    }

    /// Carries out `command` and answers it as the broker would, with the
    /// messages a subscription made by it catches up on.
    pub(super) fn apply(&mut self, command: &Command) -> (Reply, Vec<Message>) {
        match command {
            Command::Publish {
                channel,
                kind,
                relation,
                headers,
                body,
                client_message_id,
                ..
            } => {
                let key = (channel.to_string(), client_message_id.clone());
                let original = self.published.get(&key).copied();
                let seq = match original {
                    Some(seq) => seq,
                    None => {
                        let (headers, body) = (headers.clone(), body.clone());
                        self.append_with(channel, *kind, *relation, headers, body)
                            .seq
                    }
                };
                if !client_message_id.is_empty() {
                    self.published.insert(key, seq);
                }
                let reply = Reply::Published {
                    seq,
                    offset: 0,
                    timestamp_ms: 1,
                    durable: true,
                    duplicate: original.is_some(),
                };
                (reply, Vec::new())
            }
            Command::Subscribe { channel, start } => {
                let head_seq = self.head(channel);
                let catch_up = match *start {
                    SubscribeStart::Live => Vec::new(),
                    SubscribeStart::FromSeq(seq) => {
                        self.read(channel, HistoryQuery::From(seq), u32::MAX)
                    }
                    SubscribeStart::LastN(count) => {
                        let count = u32::try_from(count).unwrap_or(u32::MAX);
                        self.read(channel, HistoryQuery::Last, count)
                    }
                };
                (Reply::Subscribed { head_seq }, catch_up)
            }
            Command::SubscribePattern { .. } => (Reply::Subscribed { head_seq: 0 }, Vec::new()),
            Command::Unsubscribe { .. } | Command::UnsubscribePattern { .. } => {
                (Reply::Unsubscribed, Vec::new())
            }
            Command::History {
                channel,
                query,
                limit,
            } => {
                let reply = Reply::History {
                    channel: Arc::from(channel.as_str()),
                    head_seq: self.head(channel),
                    messages: self.read(channel, *query, *limit),
                };
                (reply, Vec::new())
            }
            Command::CursorSet {
                consumer,
                channel,
                seq,
            } => {
                let cursor = cursor_channel(consumer, channel);
                let body = Bytes::copy_from_slice(&seq.to_le_bytes());
                self.append(&cursor, kind::CURSOR, *seq, body);
                (Reply::CursorAck, Vec::new())
            }
            Command::CursorGet { consumer, channel } => {
                let cursor = cursor_channel(consumer, channel);
                let seq = self
                    .channels
                    .get(&cursor)
                    .and_then(|records| records.last())
                    .map_or(0, |record| record.relation);
                (Reply::Cursor { seq }, Vec::new())
            }
        }
    }
}

/// One client connection to a session, with the requests the session made
/// that were not answered yet.
pub(super) struct Driver {
    session: Box<dyn Session>,
    principal: Option<Principal>,
    version: ProtocolVersion,
    /// What the session sent the client and the client did not read yet.
    received: BytesMut,
    pub(super) unanswered: Vec<(u32, Command)>,
    subscriptions: Vec<String>,
    patterns: Vec<String>,
    /// This connection, as notifications address it.
    conn: ConnRef,
    /// Notifications to other connections, not routed yet (`route`).
    notifications: Vec<(ConnRef, SessionEvent)>,
    /// The session asked to close, or the connection closed.
    pub(super) closed: bool,
    /// What the connection read and the session left there (the start of
    /// a packet), as the shard keeps it (`send_bytes`).
    input: BytesMut,
}

/// Numbers the drivers' connections.
static NEXT_SLOT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl Driver {
    /// A new connection to the server `protocol` (a server process: a
    /// crash is a new `MqttProtocol` on the same `Log`).
    pub(super) fn open(protocol: &MqttProtocol, version: ProtocolVersion) -> Driver {
        Driver {
            session: protocol.new_session(peer()),
            principal: None,
            version,
            received: BytesMut::new(),
            unanswered: Vec::new(),
            subscriptions: Vec::new(),
            patterns: Vec::new(),
            conn: ConnRef {
                shard: 0,
                slot: NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                generation: 0,
            },
            notifications: Vec::new(),
            closed: false,
            input: BytesMut::new(),
        }
    }

    /// Runs one call of the session with a fresh context, keeping what it
    /// sent and asked for.
    fn call(
        &mut self,
        action: impl FnOnce(&mut dyn Session, &mut SessionContext<'_>) -> Option<Bytes>,
    ) {
        let mut out = BytesMut::new();
        let mut commands = Vec::new();
        let authorizer = LoopbackAuthorizer;
        let metrics = Metrics::default();
        let (delivered, server_commands, notifications) = {
            let mut context = SessionContext::new(
                &mut out,
                &mut commands,
                &mut self.principal,
                &authorizer,
                peer(),
                &metrics,
                std::time::Instant::now(),
            );
            context.set_conn(self.conn);
            let delivered = action(&mut *self.session, &mut context);
            (
                delivered,
                context.take_server_commands(),
                context.take_notifications(),
            )
        };
        commands.extend(server_commands);
        self.notifications.extend(notifications);
        self.received.extend_from_slice(&out);
        if let Some(bytes) = delivered {
            self.received.extend_from_slice(&bytes);
        }
        self.unanswered.extend(commands);
    }

    /// The client's bytes arrive (any part of packets): what the session
    /// leaves in the input stays for the next bytes, as in the shard.
    pub(super) fn send_bytes(&mut self, bytes: &[u8]) {
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(bytes);
        self.call(|session, context| {
            session
                .on_input(&mut input, context)
                .expect("the session takes the bytes");
            None
        });
        self.input = input;
    }

    /// The client sends `packet`.
    pub(super) fn send(&mut self, packet: &Packet) {
        let mut input = BytesMut::new();
        packet.encode(self.version, &mut input);
        self.call(|session, context| {
            session
                .on_input(&mut input, context)
                .expect("the session takes the packet");
            None
        });
    }

    /// The client sends `packet`, which the session refuses: it asks to
    /// close, and the connection closes (as the shard does).
    pub(super) fn send_refused(&mut self, packet: &Packet) {
        let mut input = BytesMut::new();
        packet.encode(self.version, &mut input);
        self.call(|session, context| {
            let refused = session.on_input(&mut input, context).is_err();
            assert!(refused, "the session takes {packet:?}");
            None
        });
        self.close();
    }

    /// Answers the session's requests from `log`, and those they lead to,
    /// except the ones `hold` picks (left in `unanswered`).
    pub(super) fn answer(&mut self, log: &mut Log, mut hold: impl FnMut(&Command) -> bool) {
        let mut held = Vec::new();
        while !self.unanswered.is_empty() {
            for (request_id, command) in std::mem::take(&mut self.unanswered) {
                if hold(&command) {
                    held.push((request_id, command));
                    continue;
                }
                // As the broker: a channel subscribed already is refused.
                if let Command::Subscribe { channel, .. } = &command {
                    if self.subscriptions.contains(channel) {
                        let error = BrokerError::AlreadySubscribed(channel.clone());
                        let reply = Reply::Error(error);
                        self.call(|session, context| {
                            session
                                .on_reply(request_id, &reply, context)
                                .expect("the session takes the reply");
                            None
                        });
                        continue;
                    }
                }
                let (reply, catch_up) = log.apply(&command);
                match &command {
                    Command::Subscribe { channel, .. } => self.subscriptions.push(channel.clone()),
                    Command::SubscribePattern { pattern } => self.patterns.push(pattern.clone()),
                    Command::Unsubscribe { channel } => self.subscriptions.retain(|c| c != channel),
                    Command::UnsubscribePattern { pattern } => {
                        self.patterns.retain(|p| p != pattern)
                    }
                    _ => {}
                }
                self.call(|session, context| {
                    session
                        .on_reply(request_id, &reply, context)
                        .expect("the session takes the reply");
                    None
                });
                if let Command::Subscribe { channel, .. } = &command {
                    if !catch_up.is_empty() {
                        self.deliver(channel, &catch_up);
                    }
                }
            }
        }
        self.unanswered = held;
    }

    /// Answers the unanswered requests that `pick` picks with `error`, as
    /// a broker that refuses them (the others stay unanswered).
    pub(super) fn refuse(&mut self, pick: impl Fn(&Command) -> bool, error: BrokerError) {
        let (refused, kept) = std::mem::take(&mut self.unanswered)
            .into_iter()
            .partition::<Vec<_>, _>(|(_, command)| pick(command));
        self.unanswered = kept;
        for (request_id, _) in refused {
            let reply = Reply::Error(error.clone());
            let mut close = false;
            self.call(|session, context| {
                close = session.on_reply(request_id, &reply, context).is_err();
                None
            });
            if close {
                // As the shard does with a session that asks to close.
                self.close();
            }
        }
    }

    /// Delivers `messages` of `channel` live, once, when the session
    /// subscribed to it or to a pattern that matches it (as the broker
    /// does).
    pub(super) fn deliver(&mut self, channel: &str, messages: &[Message]) {
        let subscribed = self.subscriptions.iter().any(|c| c == channel)
            || self.patterns.iter().any(|p| pattern::matches(p, channel));
        if !subscribed {
            return;
        }
        self.call(|session, context| {
            session
                .on_delivery(channel, messages, context)
                .expect("the session takes the delivery")
        });
    }

    /// The connection closes.
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.call(|session, context| {
            session.on_closed(context);
            None
        });
    }

    /// Hands the session an event from another connection; a session that
    /// asks to close is closed (as the shard does).
    fn event(&mut self, event: SessionEvent) {
        if self.closed {
            return;
        }
        let mut close = false;
        self.call(|session, context| {
            close = session.on_event(event, context).is_err();
            None
        });
        if close {
            self.close();
        }
    }

    /// Whether the session wants no more input now (the shard would stop
    /// reading the socket).
    pub(super) fn input_paused(&self) -> bool {
        self.session.input_paused()
    }

    /// The packets the client received since the last call.
    pub(super) fn packets(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Ok(Decoded::Complete { packet, used }) =
            decode(&self.received, self.version, &MqttLimits::default())
        {
            let _ = self.received.split_to(used);
            packets.push(packet);
        }
        assert!(self.received.is_empty(), "a partial packet was sent");
        packets
    }
}

/// Hands the notifications the drivers sent each other to their
/// addressees, until none is left (one to a closed or unknown connection
/// is dropped, as the shard drops it).
pub(super) fn route(drivers: &mut [&mut Driver]) {
    loop {
        let mut pending = Vec::new();
        for driver in drivers.iter_mut() {
            pending.append(&mut driver.notifications);
        }
        if pending.is_empty() {
            return;
        }
        for (conn, event) in pending {
            if let Some(driver) = drivers.iter_mut().find(|driver| driver.conn == conn) {
                driver.event(event);
            }
        }
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

/// Publishes `body` to `topic` in `log` and delivers it to `drivers`.
pub(super) fn publish(log: &mut Log, topic: &str, body: Bytes, drivers: &mut [&mut Driver]) {
    let message = log.append(topic, kind::MESSAGE, 0, body);
    for driver in drivers {
        driver.deliver(topic, std::slice::from_ref(&message));
    }
}

#[cfg(test)]
mod tests {
    use starling_protocol::mqtt::{
        Connect, PacketType, Properties, PublishResponse, QoS, ReasonCode, Subscribe,
        SubscriptionOptions, Unsubscribe,
    };

    use super::super::store;
    use super::*;

    fn connect(client_id: &str) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive_s: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval_s: Some(3600),
                ..Properties::default()
            },
        }))
    }

    /// A new server process on `log` (after a crash or a close), and
    /// `client_id` back to its session: the server, the connection and
    /// every packet it got after the CONNACK once the session's reads are
    /// answered.
    fn back_again(log: &mut Log, client_id: &str) -> (MqttProtocol, Driver, Vec<Packet>) {
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, mut packets) = connected(&server, log, client_id, true);
        client.answer(log, |_| false);
        packets.extend(client.packets());
        (server, client, packets)
    }

    /// A persistent session `client_id` subscribed to `t` at QoS 2, with
    /// `body` published and sent to it, not acknowledged: the connection and
    /// the PUBLISH's packet id.
    fn qos2_in_flight(
        server: &MqttProtocol,
        log: &mut Log,
        client_id: &str,
        body: &'static [u8],
    ) -> (Driver, u16) {
        let (mut client, _) = connected(server, log, client_id, false);
        subscribe(&mut client, log, "t", QoS::ExactlyOnce);
        publish(log, "t", Bytes::from_static(body), &mut [&mut client]);
        client.answer(log, |_| false);
        let packet_id = delivered_packet_id(&mut client);
        (client, packet_id)
    }

    /// The packet id of the one PUBLISH the client got.
    fn delivered_packet_id(client: &mut Driver) -> u16 {
        match &client.packets()[..] {
            [Packet::Publish(publish)] => publish.packet_id.expect("QoS 1 or 2"),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }
    }

    /// Connects `client_id` to `server` on `log` and checks the CONNACK:
    /// the connection and what came after the CONNACK.
    fn connected(
        server: &MqttProtocol,
        log: &mut Log,
        client_id: &str,
        present: bool,
    ) -> (Driver, Vec<Packet>) {
        let mut client = Driver::open(server, ProtocolVersion::V5);
        client.send(&connect(client_id));
        client.answer(log, |_| false);
        let mut packets = client.packets();
        match packets.first() {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::Success);
                assert_eq!(ack.session_present, present);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        packets.remove(0);
        (client, packets)
    }

    /// A persistent session's reconnect reads its records back to the last
    /// snapshot only: an old session without one is read whole (page after
    /// page, back from the newest) and its resume writes one; from then on
    /// a reconnect reads one page however many records the client id
    /// wrote before, and the session comes back whole, changes made after
    /// the snapshot included.
    #[test]
    fn a_reconnect_reads_the_session_back_to_its_last_snapshot() {
        let mut log = Log::default();
        let client_id = "often";
        let record = store::session_channel(client_id);
        let topics = store::SESSION_PAGE as usize + 100;
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, client_id, false);
        for n in 0..topics {
            subscribe(&mut client, &mut log, &format!("t/{n}"), QoS::AtLeastOnce);
        }
        drop(client);
        // Reconnects as a new server would: the session's reads, counted.
        let reconnect = |log: &mut Log| {
            let server = MqttProtocol::new(MqttLimits::default());
            let mut client = Driver::open(&server, ProtocolVersion::V5);
            client.send(&connect(client_id));
            let mut reads = 0;
            client.answer(log, |command| {
                let read =
                    matches!(command, Command::History { channel, .. } if *channel == record);
                reads += usize::from(read);
                false
            });
            let packets = client.packets();
            assert!(
                matches!(packets.first(), Some(Packet::ConnAck(ack)) if ack.session_present),
                "{packets:?}"
            );
            (client, reads)
        };
        let (client, reads) = reconnect(&mut log);
        assert_eq!(
            reads, 2,
            "the records of a session without a snapshot, page by page"
        );
        assert_eq!(client.subscriptions.len(), topics);
        drop(client);
        let (mut client, reads) = reconnect(&mut log);
        assert_eq!(reads, 1, "back to the snapshot in one page");
        assert_eq!(client.subscriptions.len(), topics);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["t/0".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::UnsubAck(_)]));
        subscribe(&mut client, &mut log, "x/#", QoS::AtLeastOnce);
        drop(client);
        for _ in 0..3 {
            let (client, reads) = reconnect(&mut log);
            assert_eq!(reads, 1);
            let subscribed = &client.subscriptions;
            assert_eq!(subscribed.len(), topics - 1);
            assert!(!subscribed.iter().any(|topic| topic == "t/0"));
            assert_eq!(client.patterns, ["x/#"]);
        }
        let snapshots = log
            .read(&record, HistoryQuery::From(1), u32::MAX)
            .iter()
            .filter(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body)
                    .is_ok_and(|event| event["type"] == "snapshot")
            })
            .count();
        assert_eq!(snapshots, 1, "one snapshot: the records after it are few");
    }

    fn subscribe(client: &mut Driver, log: &mut Log, topic: &str, qos: QoS) {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(topic.into(), options)],
            properties: Properties::default(),
        }));
        client.answer(log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::SubAck(_)]));
    }

    /// A topic listed twice in the retained-topic index, on two of its
    /// pages (retained again after the index's dedupe window), is read and
    /// sent once to a new wildcard subscription.
    #[test]
    fn a_retained_topic_listed_on_two_index_pages_is_sent_once() {
        let mut log = Log::default();
        let mut retain = |topic: &str| {
            let body = Bytes::from(format!("last of {topic}"));
            log.append(&store::retained_channel(topic), kind::MESSAGE, 0, body);
            let name = Bytes::copy_from_slice(topic.as_bytes());
            log.append(store::RETAINED_INDEX, kind::MESSAGE, 0, name);
        };
        retain("r/x");
        for n in 0..store::RETAINED_INDEX_PAGE {
            retain(&format!("r/{n}"));
        }
        retain("r/x");
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "wild", false);
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("r/#".into(), SubscriptionOptions::default())],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        assert_each_topic_once(client.packets(), store::RETAINED_INDEX_PAGE as usize + 1);
    }

    /// `packets` publish `topics` different topics, each once.
    fn assert_each_topic_once(packets: Vec<Packet>, topics: usize) {
        let mut sent: Vec<String> = packets
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish.topic.to_string()),
                _ => None,
            })
            .collect();
        let count = sent.len();
        sent.sort();
        sent.dedup();
        assert_eq!(sent.len(), topics, "every topic");
        assert_eq!(count, topics, "each once");
    }

    /// A persistent session's SUBACK waits until the record of its
    /// subscription is durable: a restart right after the SUBACK still has
    /// the subscription.
    #[test]
    fn a_persistent_suback_waits_for_the_subscription_record() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "recorded", false);
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: vec![("t".into(), options)],
            properties: Properties::default(),
        }));
        let is_record = |command: &Command| matches!(command, Command::Publish { channel, .. } if channel == "$mqtt/session/recorded");
        client.answer(&mut log, is_record);
        assert!(client.packets().is_empty(), "no SUBACK before the record");
        client.answer(&mut log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::SubAck(_)]));

        // A crash: the subscription is there after the restart.
        drop(client);
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "recorded", true);
        publish(
            &mut log,
            "t",
            Bytes::from_static(b"after"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        assert!(matches!(&client.packets()[..], [Packet::Publish(p)] if p.payload == "after"));
    }

    /// A persistent session unsubscribes `filter`, messages of `topic` come,
    /// and it subscribes to `filter` again: after a reconnect those
    /// messages (from while it was not subscribed) are not sent as missed.
    fn subscribed_again_gets_nothing_from_while_unsubscribed(filter: &str, topic: &str) {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "again", false);
        subscribe(&mut client, &mut log, filter, QoS::AtLeastOnce);
        publish(
            &mut log,
            topic,
            Bytes::from_static(b"one"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        let first = client.packets();
        assert_eq!(acknowledge_all(&mut client, &mut log, first).len(), 1);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![filter.into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::UnsubAck(_)]));
        for body in [&b"while-away-1"[..], b"while-away-2"] {
            publish(
                &mut log,
                topic,
                Bytes::from_static(body),
                &mut [&mut client],
            );
        }
        client.answer(&mut log, |_| false);
        assert!(client.packets().is_empty(), "not subscribed");
        // Later by the clock too (a wildcard filter looks back from the
        // time it was subscribed, in ms).
        std::thread::sleep(std::time::Duration::from_millis(3));
        subscribe(&mut client, &mut log, filter, QoS::AtLeastOnce);
        client.close();

        let (_server, _client, packets) = back_again(&mut log, "again");
        assert_eq!(
            payloads(packets),
            Vec::<Bytes>::new(),
            "nothing from while unsubscribed"
        );
    }

    #[test]
    fn a_topic_subscribed_again_does_not_replay_what_came_while_unsubscribed() {
        subscribed_again_gets_nothing_from_while_unsubscribed("t", "t");
    }

    #[test]
    fn a_wildcard_subscribed_again_does_not_replay_what_came_while_unsubscribed() {
        subscribed_again_gets_nothing_from_while_unsubscribed("w/+", "w/a");
    }

    /// A session subscribed to `w/+` gets a live message of `w/a` whose
    /// first message came before the filter: the topic is looked up for
    /// earlier ones (a history read), and the live message waits for that
    /// catch-up. Returns the log, the server (which the connection needs)
    /// and the connection.
    fn looking_back(client_id: &str) -> (Log, MqttProtocol, Driver) {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, client_id, false);
        log.append("w/a", kind::MESSAGE, 0, Bytes::from_static(b"before"));
        // Before the filter by the clock too (timestamps are in ms): the
        // look-back starts at the subscription's time.
        std::thread::sleep(std::time::Duration::from_millis(3));
        subscribe(&mut client, &mut log, "w/+", QoS::AtLeastOnce);
        publish(
            &mut log,
            "w/a",
            Bytes::from_static(b"live"),
            &mut [&mut client],
        );
        assert!(
            client.packets().is_empty(),
            "the live message waits for the look-back"
        );
        (log, server, client)
    }

    /// The payloads of the PUBLISH packets among `packets`.
    fn payloads(packets: Vec<Packet>) -> Vec<Bytes> {
        packets
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish.payload),
                _ => None,
            })
            .collect()
    }

    /// A client whose roles do not allow reading the topic's history still
    /// gets the live message, not nothing.
    #[test]
    fn a_refused_look_back_still_delivers_the_live_message() {
        let (mut log, _server, mut client) = looking_back("looker");
        let is_look_back = |command: &Command| matches!(command, Command::History { channel, .. } if channel == "w/a");
        assert!(client.unanswered.iter().any(|(_, c)| is_look_back(c)));
        client.refuse(is_look_back, BrokerError::Denied("history of w/a".into()));
        client.answer(&mut log, |_| false);
        assert_eq!(payloads(client.packets()), [Bytes::from_static(b"live")]);
    }

    /// The client unsubscribes the filter while the look-back of a topic
    /// it reached is under way: the topic is not followed or subscribed to
    /// for a filter that is gone.
    #[test]
    fn a_look_back_answered_after_its_filter_went_follows_nothing() {
        let (mut log, _server, mut client) = looking_back("gone");
        let is_look_back = |command: &Command| matches!(command, Command::History { channel, .. } if channel == "w/a");
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["w/+".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, is_look_back);
        assert!(client.unanswered.iter().any(|(_, c)| is_look_back(c)));
        let mut asked = Vec::new();
        client.answer(&mut log, |command| {
            asked.push(command.clone());
            false
        });
        let follows = |command: &Command| match command {
            Command::Subscribe { channel, .. } => channel == "w/a",
            Command::Publish { body, .. } => {
                std::str::from_utf8(body).is_ok_and(|b| b.contains("\"topic\""))
            }
            _ => false,
        };
        assert!(!asked.iter().any(follows), "{asked:?}");
    }

    /// A message that is not in the log (an ephemeral one, or a live-only
    /// QoS 0 one: seq 0) of a topic being caught up goes out at once: no
    /// catch-up would bring it, and it says nothing of where the catch-up
    /// starts.
    #[test]
    fn a_message_not_in_the_log_is_not_held_for_a_catch_up() {
        let (mut log, _server, mut client) = looking_back("typist");
        let now_ms = super::super::wall_clock_ms();
        let ephemeral = super::super::test_message(0, now_ms, Bytes::from_static(b"now"));
        client.deliver("w/a", &[ephemeral]);
        assert_eq!(payloads(client.packets()), [Bytes::from_static(b"now")]);
        client.answer(&mut log, |_| false);
        assert_eq!(payloads(client.packets()), [Bytes::from_static(b"live")]);
    }

    fn is_cursor_write(command: &Command) -> bool {
        matches!(command, Command::CursorSet { .. })
    }

    /// A QoS 2 delivery whose PUBREC moved the cursor: the note of its
    /// release can be durable before the cursor write past it (they are two
    /// records, possibly on two shards). After a crash between the two, the
    /// resumed session sends PUBREL again and not the message: the note
    /// lists it as done above the durable cursor.
    #[test]
    fn a_released_qos2_delivery_is_not_sent_again_when_its_cursor_write_was_lost() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, packet_id) = qos2_in_flight(&server, &mut log, "keeper", b"once");
        client.send(&Packet::PubRec(PublishResponse::success(packet_id)));
        client.answer(&mut log, is_cursor_write);
        assert!(
            client.unanswered.iter().any(|(_, c)| is_cursor_write(c)),
            "the PUBREC moved the cursor"
        );
        assert_eq!(
            client.packets(),
            [Packet::PubRel(PublishResponse::success(packet_id))],
            "the PUBREL waits for the note of the release only"
        );

        // A crash: a new server process on what reached the log.
        drop(client);
        let server = MqttProtocol::new(MqttLimits::default());
        let (_client, packets) = connected(&server, &mut log, "keeper", true);
        assert_eq!(
            packets,
            [Packet::PubRel(PublishResponse::success(packet_id))],
            "the PUBREL again, and not the message"
        );
    }

    /// A QoS 2 delivery the client refuses in its PUBREC (v5, a reason code
    /// of 0x80 or more) ends there: its topic's position moves past it, so
    /// it does not come again after a reconnect (the position stayed before
    /// it, and held back every later one's too).
    #[test]
    fn a_qos2_delivery_refused_in_its_pubrec_does_not_come_again() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, packet_id) = qos2_in_flight(&server, &mut log, "refuser", b"unwanted");
        client.send(&Packet::PubRec(PublishResponse {
            packet_id,
            reason_code: ReasonCode::UnspecifiedError,
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        assert!(
            client.packets().is_empty(),
            "no PUBREL for a refused message"
        );
        client.close();

        let (_server, _client, packets) = back_again(&mut log, "refuser");
        assert_eq!(
            payloads(packets),
            Vec::<Bytes>::new(),
            "the refused message again"
        );
    }

    /// A persistent v5 session's QoS 2 PUBLISH waits for a durable note;
    /// a QoS 0 PUBLISH of the same topic sent meanwhile (a message not in
    /// the log) goes first. Topic aliases: no packet uses an alias that a
    /// packet before it in the stream did not set (the waiting PUBLISH set
    /// one, and the QoS 0 one used it first).
    #[test]
    fn a_publish_waiting_for_its_note_sets_no_alias_used_before_it() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = Driver::open(&server, ProtocolVersion::V5);
        let Packet::Connect(mut hello) = connect("aliases") else {
            unreachable!()
        };
        hello.properties.topic_alias_maximum = Some(10);
        client.send(&Packet::Connect(hello));
        client.answer(&mut log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::ConnAck(_)]));
        subscribe(&mut client, &mut log, "t", QoS::ExactlyOnce);
        let is_note = |command: &Command| matches!(command, Command::Publish { channel, .. } if channel.starts_with("$mqtt/"));
        publish(
            &mut log,
            "t",
            Bytes::from_static(b"stored"),
            &mut [&mut client],
        );
        client.answer(&mut log, is_note);
        let now_ms = super::super::wall_clock_ms();
        let ephemeral = super::super::test_message(0, now_ms, Bytes::from_static(b"now"));
        client.deliver("t", &[ephemeral]);
        client.answer(&mut log, |_| false);
        let mut known = std::collections::HashSet::new();
        let mut payloads = Vec::new();
        for packet in client.packets() {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            if let Some(alias) = publish.properties.topic_alias {
                if publish.topic.is_empty() {
                    assert!(
                        known.contains(&alias),
                        "alias {alias} used before it was set"
                    );
                } else {
                    known.insert(alias);
                }
            }
            payloads.push(publish.payload);
        }
        assert_eq!(
            payloads,
            [Bytes::from_static(b"now"), Bytes::from_static(b"stored")]
        );
    }

    /// A QoS 2 message in flight to a persistent session expires while the
    /// server restarts: it is sent again all the same (with the least expiry
    /// left), with its packet id. Dropped, its packet id was reused while the
    /// client still held it, and the client took the next message for it.
    #[test]
    fn an_expired_qos2_message_in_flight_is_sent_again_after_a_restart() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "expiring", false);
        subscribe(&mut client, &mut log, "t", QoS::ExactlyOnce);
        let mut publisher = one_in_flight(&server, &mut log, "publisher");
        publisher.send(&Packet::Publish(starling_protocol::mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(1),
            properties: Properties {
                message_expiry_interval_s: Some(1),
                ..Properties::default()
            },
            payload: Bytes::from_static(b"soon stale"),
        }));
        publisher.answer(&mut log, |_| false);
        let stored = log.read("t", HistoryQuery::Last, 1);
        assert!(!stored[0].headers.is_empty(), "the expiry is kept");
        client.deliver("t", &stored);
        client.answer(&mut log, |_| false);
        let packet_id = delivered_packet_id(&mut client);
        // A crash, and the message expires before the client is back.
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(1_200));
        let (_server, _client, packets) = back_again(&mut log, "expiring");
        let again = packets.iter().any(|packet| {
            matches!(packet, Packet::Publish(p) if p.dup && p.packet_id == Some(packet_id))
        });
        assert!(again, "{packets:?}");
    }

    /// Connects `client_id` (persistent) taking `receive_maximum` messages
    /// in flight; what came after the CONNACK once the reads are answered.
    fn resumed_with_window(
        server: &MqttProtocol,
        log: &mut Log,
        client_id: &str,
        receive_maximum: u16,
    ) -> (Driver, Vec<Packet>) {
        resumed_with(server, log, client_id, |hello| {
            hello.properties.receive_maximum = Some(receive_maximum)
        })
    }

    /// Connects `client_id` (persistent) with its CONNECT changed by
    /// `adjust`; what came after the CONNACK once the reads are answered.
    fn resumed_with(
        server: &MqttProtocol,
        log: &mut Log,
        client_id: &str,
        adjust: impl FnOnce(&mut Connect),
    ) -> (Driver, Vec<Packet>) {
        let mut client = Driver::open(server, ProtocolVersion::V5);
        let Packet::Connect(mut hello) = connect(client_id) else {
            unreachable!()
        };
        adjust(&mut hello);
        client.send(&Packet::Connect(hello));
        client.answer(log, |_| false);
        let mut packets = client.packets();
        assert!(
            matches!(packets.first(), Some(Packet::ConnAck(ack)) if ack.session_present),
            "{packets:?}"
        );
        packets.remove(0);
        client.answer(log, |_| false);
        packets.extend(client.packets());
        (client, packets)
    }

    /// Completes every delivery as a client with a Receive Maximum of
    /// `window` does, one at a time, oldest first, checking that never more
    /// than `window` PUBLISHes are unacknowledged: the bodies, in the
    /// order they came.
    fn take_all_within(
        client: &mut Driver,
        log: &mut Log,
        mut packets: Vec<Packet>,
        window: usize,
    ) -> Vec<Bytes> {
        let mut open: std::collections::VecDeque<(u16, QoS)> = Default::default();
        let mut bodies = Vec::new();
        for _ in 0..1000 {
            for packet in packets.drain(..) {
                match packet {
                    Packet::Publish(publish) => {
                        open.push_back((publish.packet_id.unwrap(), publish.qos));
                        bodies.push(publish.payload);
                        assert!(
                            open.len() <= window,
                            "{} in flight, window {window}",
                            open.len()
                        );
                    }
                    Packet::PubRel(rel) => {
                        client.send(&Packet::PubComp(PublishResponse::success(rel.packet_id)));
                        open.retain(|(id, _)| *id != rel.packet_id);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            client.answer(log, |_| false);
            packets = client.packets();
            if !packets.is_empty() {
                continue;
            }
            match open.front().copied() {
                None => return bodies,
                Some((id, QoS::ExactlyOnce)) => {
                    client.send(&Packet::PubRec(PublishResponse::success(id)))
                }
                Some((id, _)) => {
                    open.pop_front();
                    client.send(&Packet::PubAck(PublishResponse::success(id)));
                }
            }
            client.answer(log, |_| false);
            packets = client.packets();
        }
        panic!("the deliveries did not settle");
    }

    /// A session resumed by a client with a smaller Receive Maximum than
    /// the messages it has in flight gets them again within that window,
    /// the rest as acknowledgements make room, with their packet ids
    /// (MQTT-3.3.4-9). Before, every one was sent at once: the client
    /// disconnects with 0x93 (Receive Maximum exceeded).
    #[test]
    fn a_resumed_session_is_sent_again_within_the_new_receive_maximum() {
        for (qos, restart) in [
            (QoS::AtLeastOnce, false),
            (QoS::ExactlyOnce, false),
            (QoS::ExactlyOnce, true),
        ] {
            let mut log = Log::default();
            let server = MqttProtocol::new(MqttLimits::default());
            let (mut client, _) = connected(&server, &mut log, "narrow", false);
            subscribe(&mut client, &mut log, "t", qos);
            let sent: Vec<Bytes> = (0..6).map(|n| Bytes::from(format!("m{n}"))).collect();
            for body in &sent {
                publish(&mut log, "t", body.clone(), &mut [&mut client]);
            }
            client.answer(&mut log, |_| false);
            let first: Vec<u16> = client
                .packets()
                .iter()
                .filter_map(|packet| match packet {
                    Packet::Publish(publish) => publish.packet_id,
                    _ => None,
                })
                .collect();
            assert_eq!(first.len(), sent.len(), "{qos:?}");
            let (server, window) = if restart {
                drop(client);
                (MqttProtocol::new(MqttLimits::default()), 2)
            } else {
                client.close();
                (server, 2)
            };
            let (mut client, packets) = resumed_with_window(&server, &mut log, "narrow", window);
            let again: Vec<u16> = packets
                .iter()
                .filter_map(|packet| match packet {
                    Packet::Publish(publish) => {
                        assert!(publish.dup, "{publish:?}");
                        publish.packet_id
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(again, first[..2], "{qos:?} restart {restart}");
            let bodies = take_all_within(&mut client, &mut log, packets, usize::from(window));
            assert_eq!(bodies, sent, "{qos:?} restart {restart}");
        }
    }

    /// A session resumed by a client with a smaller Maximum Packet Size
    /// than a message it has in flight: that one is not sent again (MQTT
    /// 3.1.2.25: discarded, as if its sending had completed), the others
    /// are, within the Receive Maximum, and what comes next flows. Before,
    /// it was sent anyway, and the client disconnects (0x95).
    #[test]
    fn a_resumed_session_does_not_resend_what_became_too_large() {
        const MAX: usize = 200;
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for restart in [false, true] {
                for window in [1, 8] {
                    let case = format!("{qos:?} restart {restart} window {window}");
                    let mut log = Log::default();
                    let server = MqttProtocol::new(MqttLimits::default());
                    let (mut client, _) = connected(&server, &mut log, "small", false);
                    subscribe(&mut client, &mut log, "t", qos);
                    let large = Bytes::from(vec![b'x'; 2 * MAX]);
                    let sent = [Bytes::from("s0"), large.clone(), Bytes::from("s1"), large];
                    for body in &sent {
                        publish(&mut log, "t", body.clone(), &mut [&mut client]);
                    }
                    client.answer(&mut log, |_| false);
                    assert_eq!(payloads(client.packets()).len(), 4, "{case}");
                    let server = if restart {
                        drop(client);
                        MqttProtocol::new(MqttLimits::default())
                    } else {
                        client.close();
                        server
                    };
                    let (mut client, packets) = resumed_with(&server, &mut log, "small", |hello| {
                        hello.properties.receive_maximum = Some(window);
                        hello.properties.maximum_packet_size_bytes = Some(MAX as u32);
                    });
                    let bodies = take_all_within(&mut client, &mut log, packets, window.into());
                    assert_eq!(bodies, [sent[0].clone(), sent[2].clone()], "{case}");
                    if !restart {
                        // Completed, the last one too: a later connection
                        // without the limit, after a restart, does not get
                        // it (the cursor passed it, or the session's note
                        // lists it as done).
                        client.close();
                        let server = MqttProtocol::new(MqttLimits::default());
                        let (again, packets) = resumed_with(&server, &mut log, "small", |_| {});
                        assert_eq!(payloads(packets), Vec::<Bytes>::new(), "{case}");
                        client = again;
                    }
                    publish(&mut log, "t", Bytes::from("s2"), &mut [&mut client]);
                    client.answer(&mut log, |_| false);
                    let packets = client.packets();
                    let next = take_all_within(&mut client, &mut log, packets, window.into());
                    assert_eq!(next, [Bytes::from("s2")], "{case}");
                    assert!(!client.closed, "{case}");
                }
            }
        }
    }

    /// While a cursor write is in flight, PUBACKs only move the position;
    /// the latest is written when the write returns. What the client
    /// acknowledged meanwhile is in the notes (`done`), and a connection
    /// that closes writes the position it reached.
    #[test]
    fn pubacks_share_a_cursor_write_in_flight() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "reader", false);
        subscribe(&mut client, &mut log, "t", QoS::AtLeastOnce);
        let cursor_writes = |client: &Driver| {
            client
                .unanswered
                .iter()
                .filter_map(|(_, command)| match command {
                    Command::CursorSet { seq, .. } => Some(*seq),
                    _ => None,
                })
                .collect::<Vec<u64>>()
        };
        for _ in 0..5 {
            publish(&mut log, "t", Bytes::from_static(b"m"), &mut [&mut client]);
        }
        client.answer(&mut log, is_cursor_write);
        let packet_ids: Vec<u16> = client
            .packets()
            .iter()
            .map(|packet| match packet {
                Packet::Publish(publish) => publish.packet_id.unwrap(),
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect();
        assert_eq!(packet_ids.len(), 5);
        for packet_id in &packet_ids {
            client.send(&Packet::PubAck(PublishResponse::success(*packet_id)));
        }
        assert_eq!(cursor_writes(&client), [1], "one write in flight");
        // The notes say what was acknowledged above the durable cursor.
        client.answer(&mut log, is_cursor_write);
        let note = log.read("$mqtt/qos2/reader", HistoryQuery::Last, 1);
        let note = super::super::qos2::Note::read(&note[0].body);
        assert_eq!(note.done, [("t".to_string(), 1, 5)]);
        assert!(note.sent.is_empty());
        // The write returns: the latest position goes next.
        client.answer(
            &mut log,
            |command| matches!(command, Command::CursorSet { seq, .. } if *seq == 5),
        );
        assert_eq!(cursor_writes(&client), [5]);
        // Two more acknowledged while that one is in flight, then the
        // connection closes: the position it reached is written.
        for _ in 0..2 {
            publish(&mut log, "t", Bytes::from_static(b"m"), &mut [&mut client]);
        }
        client.answer(&mut log, is_cursor_write);
        for packet in client.packets() {
            let Packet::Publish(publish) = packet else {
                panic!("expected PUBLISH, got {packet:?}");
            };
            client.send(&Packet::PubAck(PublishResponse::success(
                publish.packet_id.unwrap(),
            )));
        }
        assert_eq!(cursor_writes(&client), [5]);
        client.close();
        assert_eq!(cursor_writes(&client), [5, 7]);
    }

    /// A v5 client with a clean start and no session expiry, its CONNECT
    /// changed further by `edit`, connected (the CONNACK taken).
    fn clean_client(
        server: &MqttProtocol,
        log: &mut Log,
        client_id: &str,
        edit: impl FnOnce(&mut Connect),
    ) -> Driver {
        let mut client = Driver::open(server, ProtocolVersion::V5);
        let Packet::Connect(mut hello) = connect(client_id) else {
            unreachable!()
        };
        hello.clean_start = true;
        hello.properties = Properties::default();
        edit(&mut hello);
        client.send(&Packet::Connect(hello));
        client.answer(log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::ConnAck(_)]));
        client
    }

    /// A reason string that would take a refusal over the client's
    /// Maximum Packet Size is left out (MQTT 3.4.2-2, 3.14.2-3): the
    /// refusing PUBACK and the DISCONNECT fit; a client without a limit
    /// gets the reason.
    #[test]
    fn reason_strings_stay_within_the_clients_maximum_packet_size() {
        const MAX: usize = 24;
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        for limit in [Some(MAX as u32), None] {
            let mut client = clean_client(&server, &mut log, "small", |hello| {
                hello.properties.maximum_packet_size_bytes = limit;
            });
            let publish = |qos, packet_id| {
                Packet::Publish(starling_protocol::mqtt::Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: "$reserved".into(),
                    packet_id,
                    properties: Properties::default(),
                    payload: Bytes::from_static(b"x"),
                })
            };
            client.send(&publish(QoS::AtLeastOnce, Some(1)));
            client.answer(&mut log, |_| false);
            let bytes = client.received.len();
            let Packet::PubAck(ack) = client.packets().remove(0) else {
                panic!("expected PUBACK")
            };
            assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
            assert_eq!(ack.properties.reason_string.is_some(), limit.is_none());
            assert!(limit.is_none() || bytes <= MAX, "{bytes} bytes");
            // QoS 0 to a reserved topic: DISCONNECT 0x90.
            client.send_refused(&publish(QoS::AtMostOnce, None));
            let bytes = client.received.len();
            let Packet::Disconnect(disconnect) = client.packets().remove(0) else {
                panic!("expected DISCONNECT")
            };
            assert_eq!(disconnect.reason_code, ReasonCode::TopicNameInvalid);
            assert_eq!(
                disconnect.properties.reason_string.is_some(),
                limit.is_none()
            );
            assert!(limit.is_none() || bytes <= MAX, "{bytes} bytes");
        }
    }

    /// Messages from other front ends reach MQTT subscribers as packets an
    /// MQTT client takes: headers that are not valid MQTT strings (a
    /// response topic with a wildcard, U+0000 in a user property) are left
    /// out, the others kept; a channel named with `+` or `#` (which a `#`
    /// filter matches) is not sent at all, at QoS 0 and 1. Before, these
    /// went out as packets the client must refuse (and panicked the
    /// encoder's check in debug builds).
    #[test]
    fn deliveries_from_other_front_ends_are_valid_mqtt() {
        use starling_broker::Protocol;
        use starling_protocol::headers::{encode_headers, name};
        let mut log = Log::default();
        let headers = encode_headers(&[
            (name::CONTENT_TYPE.into(), Bytes::from_static(b"text/plain")),
            (
                name::RESPONSE_TOPIC.into(),
                Bytes::from_static(b"replies/#"),
            ),
            (
                format!("{}ok", name::USER_PREFIX),
                Bytes::from_static(b"fine"),
            ),
            (
                format!("{}bad", name::USER_PREFIX),
                Bytes::from_static(b"a\0b"),
            ),
        ]);
        let room = log.append_with(
            "native/room",
            kind::MESSAGE,
            0,
            headers,
            Bytes::from_static(b"hi"),
        );
        let wild = log.append("a+b", kind::MESSAGE, 0, Bytes::from_static(b"x"));
        let check = |packets: Vec<Packet>| {
            let [Packet::Publish(publish)] = &packets[..] else {
                panic!("expected one PUBLISH, got {packets:?}")
            };
            let properties = &publish.properties;
            assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
            assert_eq!(properties.response_topic, None);
            let ok = ("ok".to_string(), "fine".to_string());
            assert_eq!(properties.user_properties, [ok]);
        };
        // QoS 1: encoded for the connection.
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "reader", |_| {});
        subscribe(&mut client, &mut log, "#", QoS::AtLeastOnce);
        client.deliver("native/room", std::slice::from_ref(&room));
        client.deliver("a+b", std::slice::from_ref(&wild));
        client.answer(&mut log, |_| false);
        check(client.packets());
        // QoS 0: the encoding every plain subscriber shares.
        let shared = super::super::MqttDeliveries {
            version: ProtocolVersion::V5,
        };
        let decoded = |bytes: Bytes| {
            let mut packets = Vec::new();
            let mut at = 0;
            while let Ok(Decoded::Complete { packet, used }) =
                decode(&bytes[at..], ProtocolVersion::V5, &MqttLimits::default())
            {
                at += used;
                packets.push(packet);
            }
            assert_eq!(at, bytes.len());
            packets
        };
        check(decoded(shared.encode_delivery("native/room", &[room])));
        assert!(shared.encode_delivery("a+b", &[wild]).is_empty());
    }

    /// No PUBLISH passes the client's Maximum Packet Size when it takes topic
    /// aliases (the first use of an alias carries the topic and the alias)
    /// or has many subscription identifiers on a message; messages near
    /// the limit are sent or left out, never sent too large.
    #[test]
    fn publishes_near_the_maximum_packet_size_stay_within_it() {
        const MAX: usize = 200;
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "edge", |hello| {
            hello.properties.maximum_packet_size_bytes = Some(MAX as u32);
            hello.properties.topic_alias_maximum = Some(10);
        });
        subscribe(&mut client, &mut log, "edge/topic", QoS::AtLeastOnce);
        let mut sent = 0;
        // Largest first: the first that fits sets the alias, with the topic.
        for size in (150..MAX).rev() {
            let topic = "edge/topic";
            let body = Bytes::from(vec![b'x'; size]);
            publish(&mut log, topic, body, &mut [&mut client]);
            client.answer(&mut log, |_| false);
            for packet in client.packets() {
                let mut encoded = BytesMut::new();
                packet.encode(ProtocolVersion::V5, &mut encoded);
                assert!(encoded.len() <= MAX, "{} bytes: {packet:?}", encoded.len());
                if let Packet::Publish(publish) = packet {
                    sent += 1;
                    let ack = PublishResponse::success(publish.packet_id.unwrap());
                    client.send(&Packet::PubAck(ack));
                    client.answer(&mut log, |_| false);
                }
            }
        }
        assert!(sent > 0, "those that fit are sent");
    }

    /// A SUBSCRIBE and an UNSUBSCRIBE of the same filter in one write (the
    /// broker answers the subscription after the unsubscribe was handled):
    /// the session does not have it, not after a resume either. Before,
    /// the late answer recorded the subscription after its `unsubscribe`
    /// record, and the resume brought it back.
    #[test]
    fn an_unsubscribe_before_the_subscriptions_answer_holds() {
        for filter in ["a/#", "a/b"] {
            let mut log = Log::default();
            let server = MqttProtocol::new(MqttLimits::default());
            let (mut client, _) = connected(&server, &mut log, "quick", false);
            send_subscribe(&mut client, 1, filter);
            client.send(&Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec![filter.into()],
                properties: Properties::default(),
            }));
            client.answer(&mut log, |_| false);
            let kinds: Vec<PacketType> = client.packets().iter().map(Packet::packet_type).collect();
            assert!(kinds.contains(&PacketType::SubAck) && kinds.contains(&PacketType::UnsubAck));
            drop(client);
            let (_server, client, packets) = back_again(&mut log, "quick");
            assert_eq!(packets, [], "{filter}");
            assert!(
                client.patterns.is_empty(),
                "{filter}: {:?}",
                client.patterns
            );
            assert!(
                client.subscriptions.is_empty(),
                "{filter}: {:?}",
                client.subscriptions
            );
        }
    }

    /// A SUBSCRIBE again of a filter the session holds, refused by the
    /// broker (the client's roles changed): the SUBACK says so, and the
    /// subscription it held stays (the broker and the session's records
    /// still have it). Before, the session dropped it in memory only and
    /// silently left out every message of the topic.
    #[test]
    fn a_refused_subscribe_again_keeps_the_subscription_held() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "held", |_| {});
        subscribe(&mut client, &mut log, "t", QoS::ExactlyOnce);
        send_subscribe(&mut client, 2, "t");
        let is_subscribe = |command: &Command| matches!(command, Command::Subscribe { .. });
        client.refuse(is_subscribe, BrokerError::Denied("roles changed".into()));
        let packets = client.packets();
        let [Packet::SubAck(ack)] = &packets[..] else {
            panic!("expected SUBACK, got {packets:?}")
        };
        assert_eq!(ack.reason_codes, [ReasonCode::NotAuthorized]);
        publish(
            &mut log,
            "t",
            Bytes::from_static(b"still"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        let packets = client.packets();
        let [Packet::Publish(delivered)] = &packets[..] else {
            panic!("expected the PUBLISH, got {packets:?}")
        };
        assert_eq!(delivered.qos, QoS::ExactlyOnce, "as the subscription held");
        // Refused again, but an UNSUBSCRIBE came before the refusal: gone.
        let ack = PublishResponse::success(delivered.packet_id.unwrap());
        client.send(&Packet::PubRec(ack));
        client.answer(&mut log, |_| false);
        client.packets();
        send_subscribe(&mut client, 3, "t");
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["t".into()],
            properties: Properties::default(),
        }));
        client.refuse(is_subscribe, BrokerError::Denied("roles changed".into()));
        client.answer(&mut log, |_| false);
        client.packets();
        publish(
            &mut log,
            "t",
            Bytes::from_static(b"gone"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        assert_eq!(payloads(client.packets()), Vec::<Bytes>::new());
    }

    /// A QoS 2 delivery in flight at a crash whose message is gone from the
    /// log by the resume is not sent again, but its packet id stays taken
    /// and is released (PUBREL): the client may hold it (its PUBREC lost)
    /// and would take a new message with that id for the old one. Before,
    /// the id went to the next message.
    #[test]
    fn a_qos2_id_whose_message_is_gone_is_released_not_reused() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let (client, held) = qos2_in_flight(&server, &mut log, "gone", b"old");
        drop(client);
        // Retention took the message.
        log.channels.get_mut("t").unwrap().clear();
        let (_server, mut client, packets) = back_again(&mut log, "gone");
        assert!(
            packets
                .iter()
                .any(|p| matches!(p, Packet::PubRel(r) if r.packet_id == held)),
            "{packets:?}"
        );
        assert!(
            !packets.iter().any(|p| matches!(p, Packet::Publish(_))),
            "{packets:?}"
        );
        publish(
            &mut log,
            "t",
            Bytes::from_static(b"new"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        match &client.packets()[..] {
            [Packet::Publish(publish)] => assert_ne!(publish.packet_id, Some(held)),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }
    }

    /// A v5 client with a clean start that takes one message in flight
    /// at a time (Receive Maximum 1), connected.
    fn one_in_flight(server: &MqttProtocol, log: &mut Log, client_id: &str) -> Driver {
        clean_client(server, log, client_id, |hello| {
            hello.properties.receive_maximum = Some(1)
        })
    }

    /// A QoS 2 retained message sent at a SUBSCRIBE and not completed
    /// before a crash is sent again after the restart, with its packet id.
    /// Before, its note entry was left out (its seq is 0): it was not sent
    /// again, and its packet id went to a new message, which a client still
    /// holding the id takes for the old one (lost).
    #[test]
    fn a_retained_qos2_message_in_flight_is_sent_again_after_a_restart() {
        let mut log = Log::default();
        let body = Bytes::from_static(b"last state");
        log.append(
            &store::retained_channel("r"),
            kind::MESSAGE,
            0,
            body.clone(),
        );
        let name = Bytes::from_static(b"r");
        log.append(store::RETAINED_INDEX, kind::MESSAGE, 0, name);
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "keeper", false);
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                "r".into(),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        let packet_id = client
            .packets()
            .iter()
            .find_map(|packet| match packet {
                Packet::Publish(publish) if publish.retain => publish.packet_id,
                _ => None,
            })
            .expect("the retained message");
        drop(client);
        let (_server, _client, packets) = back_again(&mut log, "keeper");
        let again = packets.iter().find_map(|packet| match packet {
            Packet::Publish(publish) if publish.packet_id == Some(packet_id) => Some(publish),
            _ => None,
        });
        let again = again.unwrap_or_else(|| panic!("not sent again: {packets:?}"));
        assert!(again.dup && again.retain, "{again:?}");
        assert_eq!(again.payload, body);
    }

    /// A client that asks for no problem information (v5 Request Problem
    /// Information 0) gets no reason string on a refusing PUBACK
    /// (MQTT-3.1.2-29); one that does not ask gets it.
    #[test]
    fn reason_strings_only_for_clients_that_take_them() {
        for (asked, expected) in [(Some(false), false), (None, true)] {
            let mut log = Log::default();
            let server = MqttProtocol::new(MqttLimits::default());
            let mut client = clean_client(&server, &mut log, "quiet", |hello| {
                hello.properties.request_problem_information = asked
            });
            client.send(&Packet::Publish(starling_protocol::mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "$reserved".into(),
                packet_id: Some(3),
                properties: Properties::default(),
                payload: Bytes::from_static(b"x"),
            }));
            client.answer(&mut log, |_| false);
            match &client.packets()[..] {
                [Packet::PubAck(ack)] => {
                    assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
                    assert_eq!(
                        ack.properties.reason_string.is_some(),
                        expected,
                        "{asked:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A will to a `$` topic (the server's) is refused by the broker; its
    /// retained copy, written as the server, is not kept either.
    #[test]
    fn a_retained_will_to_a_server_topic_keeps_no_copy() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "dollar", |hello| {
            hello.will = Some(starling_protocol::mqtt::Will {
                topic: "$mqtt/forged".into(),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
            })
        });
        client.close();
        let copies: Vec<String> = client
            .unanswered
            .iter()
            .filter_map(|(_, command)| match command {
                Command::Publish { channel, .. } if channel.starts_with("$retained") => {
                    Some(channel.to_string())
                }
                _ => None,
            })
            .collect();
        assert!(copies.is_empty(), "{copies:?}");
    }

    /// A persistent session that follows a topic at QoS 0 and subscribes
    /// it again at QoS 1 gets a position for it at that moment: after a
    /// reconnect it gets what came since, not the topic's whole history
    /// (the broker answers "already subscribed", which says no head).
    #[test]
    fn a_topic_raised_from_qos0_to_qos1_starts_at_its_head() {
        let mut log = Log::default();
        for n in 0..3 {
            log.append("t", kind::MESSAGE, 0, Bytes::from(format!("old {n}")));
        }
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "raiser", false);
        subscribe(&mut client, &mut log, "t", QoS::AtMostOnce);
        subscribe(&mut client, &mut log, "t", QoS::AtLeastOnce);
        client.answer(&mut log, |_| false);
        let _ = client.packets();
        client.close();
        client.answer(&mut log, |_| false);
        log.append("t", kind::MESSAGE, 0, Bytes::from_static(b"while away"));
        let (_server, _client, packets) = back_again(&mut log, "raiser");
        let bodies: Vec<Bytes> = packets
            .iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish.payload.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, [Bytes::from_static(b"while away")]);
    }

    /// While a persistent session is restored before its CONNACK, what the
    /// client sends waits in the session, a packet's worth at most: then
    /// the session asks the shard to stop reading (before, a client
    /// streaming through a slow restore grew it without bound).
    #[test]
    fn input_before_the_connack_waits_in_the_kernel_past_a_packet() {
        let mut log = Log::default();
        let limits = MqttLimits {
            packet_bytes_max: 4096,
        };
        let server = MqttProtocol::new(limits);
        let mut client = Driver::open(&server, ProtocolVersion::V5);
        client.send(&connect("slow"));
        assert!(!client.input_paused());
        // The session's reads are not answered: it is still restoring.
        let pings: Vec<u8> = [0xc0u8, 0x00].repeat(1024);
        client.send_bytes(&pings);
        assert!(!client.input_paused(), "2 KiB wait");
        client.send_bytes(&pings);
        assert!(client.input_paused(), "4 KiB: no more is read");
        client.answer(&mut log, |_| false);
        assert!(!client.input_paused(), "after the CONNACK it reads again");
        let pongs = client
            .packets()
            .iter()
            .filter(|p| matches!(p, Packet::PingResp))
            .count();
        assert_eq!(pongs, 2048);
    }

    /// Two publishers' retained messages of one topic whose copies land in
    /// the other order than their messages (each copy is written after its
    /// publisher's answer, from the publisher's shard): the topic's retained
    /// message is the newer one, for a new subscriber and after a clear.
    #[test]
    fn the_retained_message_is_the_newest_whatever_order_its_copies_land_in() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let retained_publish = |payload: &'static [u8]| {
            Packet::Publish(starling_protocol::mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "state".into(),
                packet_id: Some(1),
                properties: Properties::default(),
                payload: Bytes::from_static(payload),
            })
        };
        let copies = store::retained_channel("state");
        let is_copy = |command: &Command| matches!(command, Command::Publish { channel, .. } if **channel == *copies);
        let index = Bytes::from_static(b"state");
        log.append(store::RETAINED_INDEX, kind::MESSAGE, 0, index);
        let read = |log: &mut Log, filter: &str| {
            let mut reader = clean_client(&server, log, "reader", |_| {});
            payloads(subscribe_all(
                &mut reader,
                log,
                &[filter.to_string()],
                QoS::AtMostOnce,
            ))
        };
        for (older, newer) in [(&b"older"[..], &b"newer"[..]), (b"again", b"")] {
            let mut first = clean_client(&server, &mut log, "first", |_| {});
            let mut second = clean_client(&server, &mut log, "second", |_| {});
            first.send(&retained_publish(older));
            first.answer(&mut log, is_copy);
            second.send(&retained_publish(newer));
            second.answer(&mut log, |_| false);
            // The older message's copy lands last.
            first.answer(&mut log, |_| false);
            assert_eq!(log.read(&copies, HistoryQuery::Last, 1)[0].body, older);
            let expected: Vec<&[u8]> = [newer].into_iter().filter(|p| !p.is_empty()).collect();
            assert_eq!(read(&mut log, "state"), expected);
            assert_eq!(read(&mut log, "#"), expected);
        }
    }

    /// A QoS 2 retained PUBLISH sent again (DUP) while the first is still
    /// being stored, in a session that is not persistent, is stored once:
    /// the check for a store in flight did not see through the retained
    /// copy's wrapping, so the retransmission was stored a second time.
    #[test]
    fn a_retained_qos2_retransmission_is_stored_once() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "passing", |_| {});
        let publish = |dup| {
            Packet::Publish(starling_protocol::mqtt::Publish {
                dup,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "r".into(),
                packet_id: Some(7),
                properties: Properties::default(),
                payload: Bytes::from_static(b"state"),
            })
        };
        client.send(&publish(false));
        client.send(&publish(true));
        client.answer(&mut log, |_| false);
        let recs: Vec<_> = client
            .packets()
            .into_iter()
            .filter(|p| matches!(p, Packet::PubRec(_)))
            .collect();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(log.read("r", HistoryQuery::Last, 10).len(), 1);
    }

    /// A client with one message in flight (Receive Maximum 1) and a QoS 1
    /// wildcard filter: `HELD_BEFORE_CATCH_UP` messages of `w/a` wait,
    /// and a message of `w/b` comes. Returns the log, the server, the
    /// client and the packet in flight.
    fn fallen_behind_on_a_second_topic() -> (Log, MqttProtocol, Driver, Vec<Packet>) {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "behind");
        subscribe(&mut client, &mut log, "w/+", QoS::AtLeastOnce);
        for n in 0..=super::super::HELD_BEFORE_CATCH_UP {
            publish(
                &mut log,
                "w/a",
                Bytes::from(format!("a{n}")),
                &mut [&mut client],
            );
        }
        let in_flight = client.packets();
        assert_eq!(in_flight.len(), 1, "one in flight, the rest waits");
        publish(
            &mut log,
            "w/b",
            Bytes::from_static(b"b0"),
            &mut [&mut client],
        );
        // It does not wait with the others: `w/b` is read from the log.
        let reads: Vec<_> = client
            .unanswered
            .iter()
            .filter_map(|(_, command)| match command {
                Command::Subscribe { channel, start } => Some((channel.clone(), *start)),
                _ => None,
            })
            .collect();
        assert_eq!(reads, [("w/b".to_string(), SubscribeStart::FromSeq(1))]);
        // Meanwhile the filter brings the next one: the subscription from
        // seq 1 covers it.
        publish(
            &mut log,
            "w/b",
            Bytes::from_static(b"b1"),
            &mut [&mut client],
        );
        (log, server, client, in_flight)
    }

    /// Acknowledges each message as it comes (from those of `pending`)
    /// until none is left; returns (topic, payload) of each.
    fn acknowledge_all(
        client: &mut Driver,
        log: &mut Log,
        mut pending: Vec<Packet>,
    ) -> Vec<(String, Bytes)> {
        let mut received = Vec::new();
        loop {
            let packets = std::mem::take(&mut pending);
            if packets.is_empty() {
                return received;
            }
            for packet in packets {
                let Packet::Publish(publish) = packet else {
                    panic!("expected PUBLISH, got {packet:?}");
                };
                assert!(!publish.dup);
                received.push((publish.topic.clone(), publish.payload.clone()));
                let packet_id = publish.packet_id.expect("QoS 1");
                client.send(&Packet::PubAck(PublishResponse::success(packet_id)));
            }
            client.answer(log, |_| false);
            pending = client.packets();
        }
    }

    #[test]
    fn a_wildcard_subscriber_that_falls_behind_reads_the_topic_on_from_the_log() {
        let (mut log, _server, mut client, in_flight) = fallen_behind_on_a_second_topic();
        let received = acknowledge_all(&mut client, &mut log, in_flight);
        assert!(!client.closed);
        let of = |topic: &str| -> Vec<Bytes> {
            received
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, payload)| payload.clone())
                .collect()
        };
        let expected_a: Vec<Bytes> = (0..=super::super::HELD_BEFORE_CATCH_UP)
            .map(|n| Bytes::from(format!("a{n}")))
            .collect();
        let got_a = of("w/a");
        assert!(
            got_a == expected_a,
            "w/a: {} of {}",
            got_a.len(),
            expected_a.len()
        );
        assert_eq!(
            of("w/b"),
            [Bytes::from_static(b"b0"), Bytes::from_static(b"b1")]
        );
        // Its own subscription goes when no filter matches the topic.
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["w/+".into()],
            properties: Properties::default(),
        }));
        let unsubscribed: Vec<_> = client
            .unanswered
            .iter()
            .filter_map(|(_, command)| match command {
                Command::Unsubscribe { channel } => Some(channel.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(unsubscribed, ["w/b"]);
    }

    #[test]
    fn a_wildcard_subscriber_that_cannot_read_on_from_the_log_is_disconnected() {
        let (_log, _server, mut client, _) = fallen_behind_on_a_second_topic();
        let denied = BrokerError::Denied("no".into());
        client.refuse(
            |command| matches!(command, Command::Subscribe { .. }),
            denied,
        );
        assert!(client.closed);
        let packets = client.packets();
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::QuotaExceeded),
            "{:?}",
            packets.last()
        );
    }

    /// The client unsubscribes the wildcard filter before the topic it fell
    /// behind on is subscribed on its own: the session ends that topic
    /// subscription itself, and the broker's answer that it ended before it
    /// started is no reason to disconnect.
    #[test]
    fn a_fall_behind_subscription_ended_by_an_unsubscribe_keeps_the_connection() {
        let (mut log, _server, mut client, _) = fallen_behind_on_a_second_topic();
        let is_subscribe = |command: &Command| matches!(command, Command::Subscribe { .. });
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["w/+".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, is_subscribe);
        client.refuse(is_subscribe, BrokerError::EndedBeforeStart("w/b".into()));
        assert!(!client.closed, "disconnected");
        let packets = client.packets();
        assert!(
            !packets.iter().any(|p| matches!(p, Packet::Disconnect(_))),
            "{:?}",
            packets.last()
        );
    }

    /// The client sends a SUBSCRIBE to `filter` at QoS 1 (not answered).
    fn send_subscribe(client: &mut Driver, packet_id: u16, filter: &str) {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        client.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter.into(), options)],
            properties: Properties::default(),
        }));
    }

    /// A read of the retained-topic index.
    fn is_index_read(command: &Command) -> bool {
        matches!(command, Command::History { channel, .. } if channel == store::RETAINED_INDEX)
    }

    /// Retained messages for topics `r/0` … `r/{count - 1}`, listed in the
    /// retained-topic index.
    fn retain_topics(log: &mut Log, count: usize) {
        for n in 0..count {
            let topic = format!("r/{n}");
            let body = Bytes::from(format!("last of {topic}"));
            log.append(&store::retained_channel(&topic), kind::MESSAGE, 0, body);
            let name = Bytes::copy_from_slice(topic.as_bytes());
            log.append(store::RETAINED_INDEX, kind::MESSAGE, 0, name);
        }
    }

    /// `count` retained topics `r/0`… in the log, and a client with one
    /// message in flight that just subscribed to `r/#` at QoS 1: the log,
    /// the server, the client and what it got after the SUBACK.
    fn subscribed_to_many_retained(count: usize) -> (Log, MqttProtocol, Driver, Vec<Packet>) {
        subscribed_to_retained(count, |_| false)
    }

    /// The same, with the requests that `hold` picks left unanswered.
    fn subscribed_to_retained(
        count: usize,
        hold: impl FnMut(&Command) -> bool,
    ) -> (Log, MqttProtocol, Driver, Vec<Packet>) {
        let mut log = Log::default();
        retain_topics(&mut log, count);
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "retained");
        send_subscribe(&mut client, 1, "r/#");
        client.answer(&mut log, hold);
        let mut first = client.packets();
        assert!(matches!(first.remove(0), Packet::SubAck(_)));
        (log, server, client, first)
    }

    /// An UNSUBSCRIBE of a filter the session does not have (another share
    /// group's name for a topic filter it has, or the plain one of a shared
    /// subscription) changes nothing: UNSUBACK 0x11, and the subscription
    /// it has still gets its messages (its broker subscription stays).
    #[test]
    fn unsubscribing_a_filter_not_held_keeps_the_subscription_held() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "keeps");
        subscribe(&mut client, &mut log, "a/b", QoS::AtLeastOnce);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["$share/x/a/b".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        let packets = client.packets();
        let no_subscription = |p: &Packet| matches!(p, Packet::UnsubAck(ack) if ack.reason_codes == [ReasonCode::NoSubscriptionExisted]);
        assert!(
            packets.len() == 1 && no_subscription(&packets[0]),
            "{packets:?}"
        );
        publish(
            &mut log,
            "a/b",
            Bytes::from_static(b"still"),
            &mut [&mut client],
        );
        assert_eq!(payloads(client.packets()), [Bytes::from_static(b"still")]);
    }

    /// A v5 DISCONNECT that gives a session with expiry 0 a life is a
    /// protocol error, not a normal disconnection: the connection closes
    /// with 0x82, and the will is published as for any error.
    #[test]
    fn an_invalid_disconnect_keeps_the_will() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = clean_client(&server, &mut log, "will-kept", |hello| {
            hello.will = Some(starling_protocol::mqtt::Will {
                topic: "w/last".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            })
        });
        client.send_refused(&Packet::Disconnect(starling_protocol::mqtt::Disconnect {
            reason_code: ReasonCode::Success,
            properties: Properties {
                session_expiry_interval_s: Some(10),
                ..Properties::default()
            },
        }));
        let packets = client.packets();
        let refused = |p: &Packet| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::ProtocolError);
        assert!(packets.len() == 1 && refused(&packets[0]), "{packets:?}");
        let will = |command: &Command| matches!(command, Command::Publish { channel, .. } if &**channel == "w/last");
        assert!(
            client.unanswered.iter().any(|(_, c)| will(c)),
            "{:?}",
            client.unanswered
        );
    }

    /// Every refusal of a publish is answered with a reason code that a
    /// PUBACK and a PUBREC may carry (a client would take another as a
    /// malformed packet).
    #[test]
    fn refused_publishes_get_reason_codes_a_puback_may_carry() {
        let errors = [
            BrokerError::Denied("no".into()),
            BrokerError::InvalidArgument("bad".into()),
            BrokerError::TooLarge {
                what: "channel name",
                size: 2000,
                limit: 1024,
            },
            BrokerError::TooLarge {
                what: "message headers",
                size: 70_000,
                limit: 65_536,
            },
            BrokerError::StorageFailed {
                partition: 1,
                reason: "disk".into(),
            },
            BrokerError::ShuttingDown,
            BrokerError::RateLimited("slow".into()),
            BrokerError::StorageFull {
                path: "/".into(),
                free_bytes: 0,
                min_bytes: 1,
            },
        ];
        for error in errors {
            let code = super::super::publish_reason(&error);
            for packet in [PacketType::PubAck, PacketType::PubRec] {
                assert!(
                    code.is_allowed_in(packet),
                    "{code:?} for {error:?} in {packet:?}"
                );
            }
        }
    }

    /// A client that sends CONNECT and, without waiting for the CONNACK,
    /// the first part of a SUBSCRIBE (its rest in a later segment): the
    /// packets that wait for the session to be read keep that part, and the
    /// SUBSCRIBE is whole when the rest comes (it was lost, and the rest
    /// read as a packet of its own).
    #[test]
    fn a_packet_split_before_the_connack_is_read_whole() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = Driver::open(&server, ProtocolVersion::V5);
        let mut bytes = BytesMut::new();
        connect("split").encode(ProtocolVersion::V5, &mut bytes);
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("split/topic".into(), options)],
            properties: Properties::default(),
        })
        .encode(ProtocolVersion::V5, &mut bytes);
        let cut = bytes.len() - 5;
        client.send_bytes(&bytes[..cut]);
        // The session's records are read: CONNACK, and the part waits.
        client.answer(&mut log, |_| false);
        assert!(matches!(client.packets()[..], [Packet::ConnAck(_)]));
        client.send_bytes(&bytes[cut..]);
        client.answer(&mut log, |_| false);
        let packets = client.packets();
        assert!(matches!(packets[..], [Packet::SubAck(_)]), "{packets:?}");
        assert!(!client.closed);
    }

    /// A SUBSCRIBE that reuses the packet identifier of one still waiting
    /// for the replies of its filters is a protocol error: the connection
    /// closes (v5: 0x82). The two were mixed before, and the first one's
    /// late reply indexed past the second one's filters (a panic).
    #[test]
    fn a_subscribe_reusing_a_packet_identifier_in_use_closes_the_connection() {
        let mut log = Log::default();
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "reuse");
        let options = SubscriptionOptions::default();
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![("x".into(), options), ("y/#".into(), options)],
            properties: Properties::default(),
        }));
        let is_pattern = |command: &Command| matches!(command, Command::SubscribePattern { .. });
        client.answer(&mut log, is_pattern);
        assert!(
            client.packets().is_empty(),
            "no SUBACK before every filter is in"
        );
        client.send_refused(&Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![("z".into(), options)],
            properties: Properties::default(),
        }));
        let packets = client.packets();
        let refused = |packet: &Packet| matches!(packet, Packet::Disconnect(d) if d.reason_code == ReasonCode::ProtocolError);
        assert!(packets.len() == 1 && refused(&packets[0]), "{packets:?}");

        // The same for UNSUBSCRIBE.
        let mut client = one_in_flight(&server, &mut log, "reuse-unsubscribe");
        subscribe(&mut client, &mut log, "a/#", QoS::AtMostOnce);
        let unsubscribe = Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: vec!["a/#".into()],
            properties: Properties::default(),
        });
        client.send(&unsubscribe);
        assert!(
            client.packets().is_empty(),
            "no UNSUBACK before the broker answers"
        );
        client.send_refused(&unsubscribe);
        let packets = client.packets();
        assert!(packets.len() == 1 && refused(&packets[0]), "{packets:?}");
    }

    /// An UNSUBSCRIBE of a topic whose subscription the broker had not
    /// started yet: the broker ends it and says so in the subscribe's
    /// answer. The SUBACK grants it (the client's own UNSUBSCRIBE ended it),
    /// and nothing of it is kept: no record, no retained message.
    #[test]
    fn a_subscription_unsubscribed_before_it_started_is_granted_and_gone() {
        let mut log = Log::default();
        retain_topics(&mut log, 1);
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "ended", false);
        let is_subscribe = |command: &Command| matches!(command, Command::Subscribe { .. });
        send_subscribe(&mut client, 1, "r/0");
        client.answer(&mut log, is_subscribe);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["r/0".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, is_subscribe);
        let ended = BrokerError::EndedBeforeStart("r/0".into());
        client.refuse(is_subscribe, ended);
        client.answer(&mut log, |_| false);
        let packets = client.packets();
        let granted = |p: &Packet| matches!(p, Packet::SubAck(ack) if ack.reason_codes == [ReasonCode::GrantedQoS1]);
        assert!(
            matches!(&packets[..], [Packet::UnsubAck(_), suback] if granted(suback)),
            "{packets:?}"
        );
        let record = store::session_channel("ended");
        let records = log.read(&record, HistoryQuery::From(1), 100);
        let subscribed = records
            .iter()
            .filter(|m| std::str::from_utf8(&m.body).is_ok_and(|b| b.contains("\"subscribe\"")))
            .count();
        assert_eq!(subscribed, 0, "no subscription record");
    }

    /// A new subscription to one topic reads its retained message from the
    /// log; a message of the topic that reaches the client live before that
    /// read is answered is newer, so the retained one is not sent after it
    /// (the client would keep the older as the topic's value).
    #[test]
    fn a_live_message_before_the_retained_read_of_a_topic_supersedes_it() {
        let mut log = Log::default();
        retain_topics(&mut log, 1);
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "exact");
        let retained = store::retained_channel("r/0");
        let is_retained_read = |command: &Command| match command {
            Command::History { channel, .. } => **channel == *retained,
            _ => false,
        };
        send_subscribe(&mut client, 1, "r/0");
        client.answer(&mut log, is_retained_read);
        assert!(matches!(client.packets()[..], [Packet::SubAck(_)]));
        assert!(client.unanswered.iter().any(|(_, c)| is_retained_read(c)));
        publish(
            &mut log,
            "r/0",
            Bytes::from_static(b"live"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        let first = client.packets();
        let received = acknowledge_all(&mut client, &mut log, first);
        let live = ("r/0".to_string(), Bytes::from_static(b"live"));
        assert_eq!(received, [live], "the older retained message after it");
    }

    /// As above at QoS 0, whose live messages go out in the encoding all
    /// subscribers share: the retained message read meanwhile is not sent
    /// after them either (before, that path did not mark the topic).
    #[test]
    fn a_live_qos0_message_before_the_retained_read_supersedes_it() {
        let mut log = Log::default();
        retain_topics(&mut log, 1);
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "plain");
        let retained = store::retained_channel("r/0");
        let is_retained_read = |command: &Command| match command {
            Command::History { channel, .. } => **channel == *retained,
            _ => false,
        };
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("r/0".into(), SubscriptionOptions::default())],
            properties: Properties::default(),
        }));
        client.answer(&mut log, is_retained_read);
        assert!(matches!(client.packets()[..], [Packet::SubAck(_)]));
        // Delivered in the shared encoding (which this harness does not
        // show): the session sends nothing of its own for it.
        publish(
            &mut log,
            "r/0",
            Bytes::from_static(b"live"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        let after: Vec<Packet> = client.packets();
        assert!(
            !after
                .iter()
                .any(|p| matches!(p, Packet::Publish(p) if p.retain)),
            "the older retained message after the live one: {after:?}"
        );
    }

    /// Retained messages for `count` topics `a/b/c/d/{n}`, listed in the
    /// retained-topic index, and 32 different filters that each match them
    /// all (`a`, `b`, `c`, `d` or `+`, then `+` or `#`): every page of the
    /// index read for any of them brings a page of retained messages.
    fn retain_for_overlapping_filters(log: &mut Log, count: usize) -> Vec<String> {
        for n in 0..count {
            let topic = format!("a/b/c/d/{n}");
            let body = Bytes::from(format!("last of {topic}"));
            log.append(&store::retained_channel(&topic), kind::MESSAGE, 0, body);
            let name = Bytes::copy_from_slice(topic.as_bytes());
            log.append(store::RETAINED_INDEX, kind::MESSAGE, 0, name);
        }
        let mut filters = Vec::new();
        for mask in 0..32 {
            let level = |bit: usize, name: &str| {
                if mask & (1 << bit) == 0 {
                    name.to_string()
                } else {
                    "+".to_string()
                }
            };
            let last = if mask & 16 == 0 { "+" } else { "#" };
            let (a, b, c, d) = (level(0, "a"), level(1, "b"), level(2, "c"), level(3, "d"));
            filters.push(format!("{a}/{b}/{c}/{d}/{last}"));
        }
        filters
    }

    /// Sends one SUBSCRIBE of `filters` at `qos` and answers it: what came
    /// after the SUBACK.
    fn subscribe_all(
        client: &mut Driver,
        log: &mut Log,
        filters: &[String],
        qos: QoS,
    ) -> Vec<Packet> {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: filters.iter().map(|f| (f.clone(), options)).collect(),
            properties: Properties::default(),
        }));
        client.answer(log, |_| false);
        let mut packets = client.packets();
        assert!(matches!(packets.remove(0), Packet::SubAck(_)));
        packets
    }

    /// One SUBSCRIBE of many wildcard filters whose retained messages
    /// together pass the hard limit: the pages of the index being read
    /// count as what they may bring, so the filters' first pages do not
    /// all start at once (they did, and the client was disconnected).
    #[test]
    fn many_wildcard_filters_at_once_get_their_retained_messages_as_the_client_acknowledges() {
        let mut log = Log::default();
        let count = store::RETAINED_INDEX_PAGE as usize + 100;
        let filters = retain_for_overlapping_filters(&mut log, count);
        assert!(filters.len() * count > super::super::HELD_MESSAGES_MAX);
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "many");
        let first = subscribe_all(&mut client, &mut log, &filters, QoS::AtLeastOnce);
        let received = acknowledge_all(&mut client, &mut log, first);
        assert!(!client.closed, "not disconnected");
        // Each subscription gets the retained messages it matches.
        assert_eq!(received.len(), filters.len() * count);
    }

    /// The same at QoS 0, where nothing is acknowledged: pages that had to
    /// wait are read as the retained reads before them are answered (they
    /// waited for an acknowledgement that never came).
    #[test]
    fn many_wildcard_filters_at_qos_0_get_all_their_retained_messages() {
        let mut log = Log::default();
        let count = store::RETAINED_INDEX_PAGE as usize + 100;
        let filters = retain_for_overlapping_filters(&mut log, count);
        let server = MqttProtocol::new(MqttLimits::default());
        let mut client = one_in_flight(&server, &mut log, "many-qos0");
        let packets = subscribe_all(&mut client, &mut log, &filters, QoS::AtMostOnce);
        assert!(!client.closed, "not disconnected");
        assert_eq!(payloads(packets).len(), filters.len() * count);
    }

    /// A persistent session's SUBACK waits for its subscription's record;
    /// the subscription is live before that. A message of the topic that
    /// comes meanwhile is newer than its retained one, read after the
    /// SUBACK: that is not sent after it.
    #[test]
    fn a_live_message_before_the_suback_supersedes_the_retained_one() {
        let mut log = Log::default();
        retain_topics(&mut log, 1);
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "persistent", false);
        let record = store::session_channel("persistent");
        let is_record = |command: &Command| matches!(command, Command::Publish { channel, .. } if **channel == *record);
        send_subscribe(&mut client, 1, "r/0");
        client.answer(&mut log, is_record);
        assert!(
            client.packets().is_empty(),
            "the SUBACK waits for the record"
        );
        publish(
            &mut log,
            "r/0",
            Bytes::from_static(b"live"),
            &mut [&mut client],
        );
        client.answer(&mut log, |_| false);
        let mut packets = client.packets();
        let live = packets.remove(0);
        assert!(
            matches!(&live, Packet::Publish(p) if p.payload == "live"),
            "{live:?}"
        );
        assert!(matches!(packets.remove(0), Packet::SubAck(_)));
        let received = acknowledge_all(&mut client, &mut log, packets);
        assert_eq!(
            received,
            [],
            "the older retained message after the live one"
        );
    }

    /// An UNSUBSCRIBE ends the reading of the filter's retained messages:
    /// a page being read when the client subscribes to the filter again
    /// reads no further, the new subscription reads its own, and each
    /// retained message comes once.
    #[test]
    fn a_page_read_before_an_unsubscribe_and_subscribe_again_reads_no_further() {
        let mut log = Log::default();
        retain_topics(&mut log, store::RETAINED_INDEX_PAGE as usize + 10);
        let server = MqttProtocol::new(MqttLimits::default());
        let (mut client, _) = connected(&server, &mut log, "again", false);
        let options = SubscriptionOptions::default();
        let subscribe = |packet_id| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: vec![("r/#".into(), options)],
                properties: Properties::default(),
            })
        };
        client.send(&subscribe(1));
        client.answer(&mut log, is_index_read);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["r/#".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, is_index_read);
        client.send(&subscribe(3));
        client.answer(&mut log, |_| false);
        assert_each_topic_once(client.packets(), store::RETAINED_INDEX_PAGE as usize + 10);
    }

    /// Pages of retained messages that wait for the client are not read
    /// once it unsubscribed the filter.
    #[test]
    fn an_unsubscribed_filter_reads_no_more_retained_pages() {
        let count = super::super::HELD_MESSAGES_MAX + 1_000;
        let (mut log, _server, mut client, first) = subscribed_to_many_retained(count);
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["r/#".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        let mut pending = first;
        pending.retain(|packet| matches!(packet, Packet::Publish(_)));
        pending.extend(
            client
                .packets()
                .into_iter()
                .filter(|packet| matches!(packet, Packet::Publish(_))),
        );
        let received = acknowledge_all(&mut client, &mut log, pending);
        assert!(!client.closed);
        // What was read before the UNSUBSCRIBE (within the 8,192 held),
        // not the rest.
        assert!(!received.is_empty());
        assert!(
            received.len() <= super::super::HELD_BEFORE_CATCH_UP + 1,
            "{} retained messages after the UNSUBSCRIBE",
            received.len()
        );
    }

    /// Nor the page that was being read when it unsubscribed.
    #[test]
    fn a_retained_page_read_when_the_filter_goes_sends_nothing() {
        let (mut log, _server, mut client, first) = subscribed_to_retained(10, is_index_read);
        assert!(first.is_empty());
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["r/#".into()],
            properties: Properties::default(),
        }));
        client.answer(&mut log, |_| false);
        let packets = client.packets();
        assert!(matches!(packets[..], [Packet::UnsubAck(_)]), "{packets:?}");
    }

    /// A client already behind subscribes to a wildcard: even the first
    /// page of its retained messages waits until it has taken some.
    #[test]
    fn the_first_retained_page_waits_for_a_client_already_behind() {
        let (mut log, _server, mut client, in_flight) = fallen_behind_on_a_second_topic();
        retain_topics(&mut log, 10);
        send_subscribe(&mut client, 2, "r/#");
        // An index read, if asked for, would stay unanswered here.
        client.answer(&mut log, is_index_read);
        assert!(matches!(client.packets()[..], [Packet::SubAck(_)]));
        assert!(!client.unanswered.iter().any(|(_, c)| is_index_read(c)));
        let received = acknowledge_all(&mut client, &mut log, in_flight);
        assert!(!client.closed);
        let retained = received.iter().filter(|(t, _)| t.starts_with("r/")).count();
        assert_eq!(retained, 10, "each retained message, once it had room");
    }

    /// More retained topics match a new wildcard subscription than the
    /// session may hold for a client with one message in flight: their
    /// pages are read as the client acknowledges, so it is not
    /// disconnected, and it gets each once. A topic that reaches it live
    /// before its retained message was read does not get that (older)
    /// retained message after.
    #[test]
    fn retained_messages_beyond_the_held_limit_are_read_as_the_client_acknowledges() {
        let count = super::super::HELD_MESSAGES_MAX + 1_000;
        let (mut log, _server, mut client, first) = subscribed_to_many_retained(count);
        // The last topic's page waits: a message of it comes live first.
        let last = format!("r/{}", count - 1);
        publish(
            &mut log,
            &last,
            Bytes::from_static(b"live"),
            &mut [&mut client],
        );
        let received = acknowledge_all(&mut client, &mut log, first);
        assert!(!client.closed, "not disconnected");
        let mut topics: Vec<&str> = received.iter().map(|(t, _)| t.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        assert_eq!(topics.len(), count, "every topic");
        assert_eq!(received.len(), count, "each once");
        let of_last: Vec<&Bytes> = received
            .iter()
            .filter(|(t, _)| *t == last)
            .map(|(_, payload)| payload)
            .collect();
        assert_eq!(of_last, [&Bytes::from_static(b"live")]);
    }
}
