//! The MQTT 3.1.1 and 5.0 front end: MQTT packets in, broker commands out.
//! A topic is a channel of the same name, so what an MQTT client publishes
//! to `general` is a chat message of `general`, and the other way round.
//!
//! What this first version does: CONNECT (both versions; user name and
//! password go to the authorizer; server-assigned client ids; keep-alive),
//! PUBLISH in at QoS 0, 1 and 2 (acknowledged once the record is durable
//! under the engine's policy), SUBSCRIBE and UNSUBSCRIBE to topic names
//! and to filters with `+` and `#`, deliveries at QoS 0, 1 and 2 within the
//! client's Receive Maximum, retained messages and persistent sessions kept in
//! the log, PINGREQ, DISCONNECT, and the will message. Not yet: shared
//! subscriptions (refused with their v5 reason code), session takeover and
//! expiry, topic aliases, will delay. Bad input closes
//! only its own connection, with a v5 DISCONNECT that carries the reason
//! code. `docs/PROTOCOL.md` has the details.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use starling_broker::{
    pattern, BrokerError, Close, Command, Protocol, Reply, Session, SessionContext,
};
use starling_protocol::headers::{decode_headers, encode_headers, name};
use starling_protocol::mqtt::PayloadFormat;
use starling_protocol::mqtt::{
    decode, decode_connect, ConnAck, Connect, Decoded, Disconnect, MqttError, MqttLimits, Packet,
    Properties, ProtocolVersion, Publish, PublishResponse, QoS, ReasonCode, RetainHandling, SubAck,
    UnsubAck, Will,
};
use starling_protocol::{kind, ErrorCode, HistoryQuery, Message};

/// Longest client id the server assigns or accepts.
const CLIENT_ID_BYTES_MAX: usize = 256;
/// QoS 2 messages a client may have between PUBREC and PUBREL (the v5
/// Receive Maximum the server announces).
pub const RECEIVE_MAXIMUM: u16 = 1024;
/// QoS 1 and 2 messages the server sends before it waits for
/// acknowledgements, at most (a v5 client may ask for fewer with its own
/// Receive Maximum).
pub const OUTBOUND_INFLIGHT_MAX: u16 = 1024;
/// Messages held while the in-flight window is full. A client that falls
/// this far behind is disconnected (v5: 0x97 quota exceeded) rather than
/// held in memory without bound.
pub const HELD_MESSAGES_MAX: usize = 16 * 1024;

/// The MQTT listener's protocol.
pub struct MqttProtocol {
    limits: MqttLimits,
    v311: Arc<dyn Protocol>,
    v5: Arc<dyn Protocol>,
}

impl MqttProtocol {
    pub fn new(limits: MqttLimits) -> MqttProtocol {
        MqttProtocol {
            limits,
            v311: Arc::new(MqttDeliveries {
                version: ProtocolVersion::V311,
            }),
            v5: Arc::new(MqttDeliveries {
                version: ProtocolVersion::V5,
            }),
        }
    }
}

impl Protocol for MqttProtocol {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn new_session(&self, peer: SocketAddr) -> Box<dyn Session> {
        Box::new(MqttSession {
            limits: self.limits,
            peer,
            v311: self.v311.clone(),
            v5: self.v5.clone(),
            state: None,
        })
    }

    fn encode_delivery(&self, _channel: &str, _messages: &[Message]) -> Bytes {
        // Before CONNECT nothing is subscribed; afterwards the session's
        // version decides the encoding (see `MqttDeliveries`).
        Bytes::new()
    }
}

/// Deliveries as QoS 0 PUBLISH packets of one version, encoded once and
/// shared by every subscriber of that version on a core.
struct MqttDeliveries {
    version: ProtocolVersion,
}

impl Protocol for MqttDeliveries {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        unreachable!("MQTT sessions start from MqttProtocol")
    }

    fn encode_delivery(&self, channel: &str, messages: &[Message]) -> Bytes {
        let mut out = BytesMut::new();
        let now_ms = wall_clock_ms();
        for message in messages.iter().filter(|m| is_application_message(m)) {
            if let Some(packet) = publish_packet(channel, message, QoS::AtMostOnce, None, now_ms) {
                packet.encode(self.version, &mut out);
            }
        }
        out.freeze()
    }

    fn per_connection_delivery(&self) -> bool {
        // Sessions with QoS 1 or 2 subscriptions number their deliveries.
        true
    }
}

/// Chat bookkeeping (typing, read notices, presence) is not an application
/// message for MQTT subscribers.
fn is_application_message(message: &Message) -> bool {
    !matches!(message.kind, kind::TYPING | kind::CURSOR | kind::PRESENCE)
}

/// The PUBLISH that delivers `message`, with the v5 properties its
/// publisher set; `None` when the message has expired.
fn publish_packet(
    channel: &str,
    message: &Message,
    qos: QoS,
    packet_id: Option<u16>,
    now_ms: u64,
) -> Option<Packet> {
    let properties = properties_of(&message.headers, now_ms)?;
    Some(Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: channel.to_string(),
        packet_id,
        properties,
        payload: message.body.clone(),
    }))
}

/// The message properties of a v5 PUBLISH, kept with the record as its
/// header block (so they reach subscribers of any protocol, and MQTT
/// subscribers as properties). The expiry interval becomes an absolute
/// time.
fn headers_of(properties: &Properties, now_ms: u64) -> Bytes {
    let mut headers: Vec<(String, Bytes)> = Vec::new();
    if let Some(format) = properties.payload_format_indicator {
        headers.push((name::PAYLOAD_FORMAT.into(), Bytes::from(vec![format as u8])));
    }
    if let Some(expiry_s) = properties.message_expiry_interval_s {
        let expires_at_ms = now_ms + u64::from(expiry_s) * 1000;
        let value = Bytes::copy_from_slice(&expires_at_ms.to_le_bytes());
        headers.push((name::EXPIRES_AT_MS.into(), value));
    }
    if let Some(content_type) = &properties.content_type {
        headers.push((name::CONTENT_TYPE.into(), Bytes::from(content_type.clone())));
    }
    if let Some(topic) = &properties.response_topic {
        headers.push((name::RESPONSE_TOPIC.into(), Bytes::from(topic.clone())));
    }
    if let Some(data) = &properties.correlation_data {
        headers.push((name::CORRELATION_DATA.into(), data.clone()));
    }
    for (key, value) in &properties.user_properties {
        headers.push((
            format!("{}{key}", name::USER_PREFIX),
            Bytes::from(value.clone()),
        ));
    }
    encode_headers(&headers)
}

/// The v5 properties of a delivery from the record's header block; `None`
/// once the message has expired. Headers that are not MQTT's are left out,
/// and so is a block that does not parse (it was written by another front
/// end, and the message still goes out).
fn properties_of(headers: &Bytes, now_ms: u64) -> Option<Properties> {
    let mut properties = Properties::default();
    let Ok(headers) = decode_headers(headers) else {
        return Some(properties);
    };
    for (key, value) in headers {
        match key.as_str() {
            name::PAYLOAD_FORMAT => {
                properties.payload_format_indicator = match value.first() {
                    Some(1) => Some(PayloadFormat::Utf8),
                    Some(0) => Some(PayloadFormat::Unspecified),
                    _ => None,
                };
            }
            name::EXPIRES_AT_MS => {
                let Ok(bytes) = <[u8; 8]>::try_from(&value[..]) else {
                    continue;
                };
                let expires_at_ms = u64::from_le_bytes(bytes);
                if expires_at_ms <= now_ms {
                    return None;
                }
                // What is left, rounded up, as MQTT 5 asks.
                let left_s = (expires_at_ms - now_ms).div_ceil(1000);
                properties.message_expiry_interval_s = Some(left_s.min(u64::from(u32::MAX)) as u32);
            }
            name::CONTENT_TYPE => properties.content_type = String::from_utf8(value.to_vec()).ok(),
            name::RESPONSE_TOPIC => {
                properties.response_topic = String::from_utf8(value.to_vec()).ok()
            }
            name::CORRELATION_DATA => properties.correlation_data = Some(value),
            other => {
                if let (Some(user_key), Ok(text)) = (
                    other.strip_prefix(name::USER_PREFIX),
                    String::from_utf8(value.to_vec()),
                ) {
                    properties
                        .user_properties
                        .push((user_key.to_string(), text));
                }
            }
        }
    }
    Some(properties)
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Where an outbound QoS 1 or 2 message is in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outbound {
    /// QoS 1, sent, waiting for PUBACK.
    Qos1Sent,
    /// QoS 2, sent, waiting for PUBREC.
    Qos2Sent,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Qos2Released,
}

/// What a pending broker request answers.
enum Pending {
    /// A QoS 0 publish: nobody waits.
    Fire,
    PubAck(u16),
    PubRec(u16),
    /// One filter of a SUBSCRIBE (packet id, index of the filter, QoS
    /// granted when the broker accepts it).
    Subscribe(u16, usize, QoS, String),
    Unsubscribe(u16, usize),
    /// The retained copy of a topic was stored (index it when it is the
    /// topic's first).
    Retained(String),
    /// A page of the retained-topic index, read for a wildcard filter.
    RetainedIndex {
        filter: String,
        qos: QoS,
    },
    /// The retained message of a topic, read for a new subscription.
    RetainedRead {
        topic: String,
        qos: QoS,
    },
    /// A page of the session's records, read before the CONNACK.
    SessionRead,
    /// The cursor past an outbound QoS 2 message is durable: send PUBREL.
    PubRelAfter(u16),
    /// The cursor of a restored subscription.
    RestoreCursor {
        topic: String,
    },
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for the replies of its filters.
struct Collecting {
    codes: Vec<Option<ReasonCode>>,
    /// Filters whose retained messages to send once the SUBACK is out:
    /// (filter, granted QoS).
    retained: Vec<(String, QoS)>,
    /// Filters the broker accepted (recorded in a persistent session).
    granted: Vec<(String, QoS)>,
}

struct Connected {
    version: ProtocolVersion,
    client_id: String,
    keep_alive: Option<Duration>,
    last_packet: Instant,
    will: Option<Will>,
    next_request_id: u32,
    pending: HashMap<u32, Pending>,
    subscribes: HashMap<u16, Collecting>,
    unsubscribes: HashMap<u16, Collecting>,
    /// QoS 2 packet ids received and stored, waiting for PUBREL (or being
    /// stored): a retransmitted PUBLISH with one of them is not stored again.
    qos2_received: HashSet<u16>,
    /// Subscribed filters (topic names or patterns) and their granted QoS.
    filters: Vec<(String, QoS)>,
    /// Outbound QoS 1 and 2 messages not yet acknowledged, by packet id.
    outbound: HashMap<u16, Outbound>,
    /// The most outbound messages in flight (the client's Receive Maximum,
    /// capped).
    window: u16,
    next_packet_id: u16,
    /// Messages waiting for room in the window: (topic, message, QoS).
    /// Messages waiting for room in the window: (topic, message, QoS,
    /// retain flag).
    held: VecDeque<(Arc<str>, Message, QoS, bool)>,
    /// The session outlives the connection: subscriptions are recorded in
    /// `$mqtt/session/<client id>` and delivery positions in cursors.
    persistent: bool,
    /// The CONNACK waits for the session's state to be read; packets that
    /// arrive meanwhile wait here.
    restoring: bool,
    waiting_input: BytesMut,
    connack_properties: Properties,
    /// Session records read so far while restoring.
    session_records: Vec<Message>,
    /// Outbound stored messages in flight, by packet id: (topic, seq), for
    /// the cursors of a persistent session.
    positions: HashMap<u16, (Arc<str>, u64)>,
    /// The last cursor written per topic.
    cursors: HashMap<Arc<str>, u64>,
}

impl Connected {
    /// The QoS to deliver `channel` at: the highest granted by a matching
    /// filter.
    fn delivery_qos(&self, channel: &str) -> QoS {
        self.filters
            .iter()
            .filter(|(filter, _)| filter == channel || pattern::matches(filter, channel))
            .map(|(_, qos)| *qos)
            .max()
            .unwrap_or(QoS::AtMostOnce)
    }

    /// A free packet id for an outbound message.
    fn take_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.outbound.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// Encodes `message` at `qos` into `out`, or holds it when the window is
    /// full (or others wait before it, to keep the order). Returns false
    /// when too much is held.
    fn send_or_hold(
        &mut self,
        channel: &Arc<str>,
        message: &Message,
        qos: QoS,
        retain: bool,
        out: &mut BytesMut,
    ) -> bool {
        if qos != QoS::AtMostOnce
            && (self.outbound.len() >= usize::from(self.window) || !self.held.is_empty())
        {
            if self.held.len() >= HELD_MESSAGES_MAX {
                return false;
            }
            self.held
                .push_back((channel.clone(), message.clone(), qos, retain));
            return true;
        }
        self.send_now(channel, message, qos, retain, out);
        true
    }

    /// Sends `message` now, numbered when its QoS needs it; a message that
    /// expired while it waited is dropped.
    fn send_now(
        &mut self,
        channel: &str,
        message: &Message,
        qos: QoS,
        retain: bool,
        out: &mut BytesMut,
    ) {
        let Some(properties) = properties_of(&message.headers, wall_clock_ms()) else {
            return;
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let packet_id = self.take_packet_id();
                let state = if qos == QoS::AtLeastOnce {
                    Outbound::Qos1Sent
                } else {
                    Outbound::Qos2Sent
                };
                self.outbound.insert(packet_id, state);
                if self.persistent && message.seq > 0 {
                    self.positions
                        .insert(packet_id, (Arc::from(channel), message.seq));
                }
                Some(packet_id)
            }
        };
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: channel.to_string(),
            packet_id,
            properties,
            payload: message.body.clone(),
        })
        .encode(self.version, out);
    }

    /// The client took responsibility for outbound message `packet_id`
    /// (PUBACK, or PUBREC for QoS 2): in a persistent session, move the
    /// topic's cursor up to the highest seq below which nothing is still in
    /// flight or held.
    /// Returns the request id of the cursor write, when there is one.
    fn acknowledged(&mut self, packet_id: u16, context: &mut SessionContext<'_>) -> Option<u32> {
        let (channel, seq) = self.positions.remove(&packet_id)?;
        let lowest_open = self
            .positions
            .values()
            .filter(|(c, _)| *c == channel)
            .map(|(_, s)| *s)
            .chain(
                self.held
                    .iter()
                    .filter(|(c, m, _, _)| *c == channel && m.seq > 0)
                    .map(|(_, m, _, _)| m.seq),
            )
            .min();
        let cursor = match lowest_open {
            Some(open) if open < seq => open - 1,
            _ => seq,
        };
        let written = self.cursors.get(&channel).copied().unwrap_or(0);
        if cursor <= written {
            return None;
        }
        self.cursors.insert(channel.clone(), cursor);
        let request_id = next_request(self, Pending::Fire);
        context.submit(
            request_id,
            Command::CursorSet {
                consumer: session_consumer(&self.client_id),
                channel: channel.to_string(),
                seq: cursor,
            },
        );
        Some(request_id)
    }

    /// Records a change of a persistent session's subscriptions.
    fn record(&mut self, event: serde_json::Value, context: &mut SessionContext<'_>) {
        if !self.persistent {
            return;
        }
        let request_id = next_request(self, Pending::Fire);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: session_channel(&self.client_id),
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Bytes::from(event.to_string()),
            },
        );
    }

    /// Sends held messages, oldest first, while the window has room.
    fn release_held(&mut self, out: &mut BytesMut) {
        while self.outbound.len() < usize::from(self.window) {
            let Some((channel, message, qos, retain)) = self.held.pop_front() else {
                return;
            };
            self.send_now(&channel, &message, qos, retain, out);
        }
    }
}

pub struct MqttSession {
    limits: MqttLimits,
    peer: SocketAddr,
    v311: Arc<dyn Protocol>,
    v5: Arc<dyn Protocol>,
    state: Option<Connected>,
}

fn close(reason: impl Into<String>) -> Close {
    Close {
        reason: reason.into(),
    }
}

impl Session for MqttSession {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        self.process(input, context)
    }

    fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let Some(pending) = state.pending.remove(&request_id) else {
            return Ok(());
        };
        let version = state.version;
        let error = match reply {
            Reply::Error(error) => Some(error),
            _ => None,
        };
        match pending {
            Pending::Fire => {
                if let Some(error) = error {
                    log::debug!(
                        "mqtt {} (client {:?}): QoS 0 publish refused: {error}",
                        self.peer,
                        state.client_id
                    );
                }
            }
            Pending::PubAck(packet_id) | Pending::PubRec(packet_id) => {
                let qos2 = matches!(pending, Pending::PubRec(_));
                let reason = match error {
                    None => ReasonCode::Success,
                    Some(error) => {
                        if qos2 {
                            state.qos2_received.remove(&packet_id);
                        }
                        if version == ProtocolVersion::V311 {
                            // v3.1.1 has no way to refuse a publish but to
                            // close the connection.
                            return Err(close(format!("publish refused: {error}")));
                        }
                        publish_reason(error)
                    }
                };
                let response = PublishResponse {
                    packet_id,
                    reason_code: reason,
                    properties: reason_string(version, error),
                };
                let packet = if qos2 {
                    Packet::PubRec(response)
                } else {
                    Packet::PubAck(response)
                };
                packet.encode(version, context.out());
            }
            Pending::Subscribe(packet_id, index, qos, filter) => {
                if error.is_none() {
                    // A persistent session's stored subscriptions start at
                    // the head: after a reconnect they resume from there.
                    if let Reply::Subscribed { head_seq } = reply {
                        if state.persistent && qos != QoS::AtMostOnce {
                            let channel: Arc<str> = Arc::from(filter.as_str());
                            if let std::collections::hash_map::Entry::Vacant(entry) =
                                state.cursors.entry(channel)
                            {
                                entry.insert(*head_seq);
                                let request_id = next_request(state, Pending::Fire);
                                context.submit(
                                    request_id,
                                    Command::CursorSet {
                                        consumer: session_consumer(&state.client_id),
                                        channel: filter.clone(),
                                        seq: *head_seq,
                                    },
                                );
                            }
                        }
                    }
                    if let Some(collecting) = state.subscribes.get_mut(&packet_id) {
                        collecting.granted.push((filter, qos));
                    }
                }
                let granted = match error {
                    None | Some(BrokerError::AlreadySubscribed(_)) => ReasonCode::granted(qos),
                    Some(BrokerError::Denied(_)) => ReasonCode::NotAuthorized,
                    Some(BrokerError::InvalidArgument(_)) => ReasonCode::TopicFilterInvalid,
                    Some(_) => ReasonCode::UnspecifiedError,
                };
                if let Some(done) = collect(&mut state.subscribes, packet_id, index, granted) {
                    send_suback(state, packet_id, done, context);
                }
            }
            Pending::Unsubscribe(packet_id, index) => {
                let code = match error {
                    None => ReasonCode::Success,
                    Some(BrokerError::NotSubscribed(_)) => ReasonCode::NoSubscriptionExisted,
                    Some(_) => ReasonCode::UnspecifiedError,
                };
                if let Some(done) = collect(&mut state.unsubscribes, packet_id, index, code) {
                    Packet::UnsubAck(UnsubAck {
                        packet_id,
                        reason_codes: done.codes.into_iter().flatten().collect(),
                        properties: Properties::default(),
                    })
                    .encode(version, context.out());
                }
            }
            Pending::PubRelAfter(packet_id) => {
                if let Some(error) = error {
                    log::warn!(
                        "mqtt {}: a session cursor was not stored: {error}",
                        self.peer
                    );
                }
                Packet::PubRel(PublishResponse::success(packet_id)).encode(version, context.out());
            }
            Pending::SessionRead => {
                let Reply::History {
                    head_seq, messages, ..
                } = reply
                else {
                    let reason = format!("the session could not be read: {reply:?}");
                    let mut properties = Properties::default();
                    if version == ProtocolVersion::V5 {
                        properties.reason_string = Some(cut(&reason));
                    }
                    Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::ServerUnavailable,
                        properties,
                    })
                    .encode(version, context.out());
                    return Err(close(reason));
                };
                state.session_records.extend(messages.iter().cloned());
                if let Some(last) = messages.last() {
                    if last.seq < *head_seq {
                        let request_id = next_request(state, Pending::SessionRead);
                        context.submit(
                            request_id,
                            Command::History {
                                channel: session_channel(&state.client_id),
                                query: HistoryQuery::From(last.seq + 1),
                                limit: SESSION_PAGE,
                            },
                        );
                        return Ok(());
                    }
                }
                return self.resume(context);
            }
            Pending::RestoreCursor { topic } => {
                let seq = match reply {
                    Reply::Cursor { seq } => *seq,
                    _ => 0,
                };
                state.cursors.insert(Arc::from(topic.as_str()), seq);
                let request_id = next_request(state, Pending::Fire);
                context.submit(
                    request_id,
                    Command::Subscribe {
                        channel: topic,
                        start: starling_protocol::SubscribeStart::FromSeq(seq + 1),
                    },
                );
            }
            Pending::Retained(topic) => {
                // The topic's first retained message: list it in the index
                // that wildcard subscriptions read (the client message id
                // keeps a retried append from listing it twice).
                if let Reply::Published { seq: 1, .. } = reply {
                    let request_id = next_request(state, Pending::Fire);
                    context.submit_as_server(
                        request_id,
                        Command::Publish {
                            channel: RETAINED_INDEX.to_string(),
                            ephemeral: false,
                            kind: kind::MESSAGE,
                            client_message_id: Bytes::from(topic.clone()),
                            relation: 0,
                            headers: Bytes::new(),
                            body: Bytes::from(topic),
                        },
                    );
                } else if let Some(error) = error {
                    log::warn!(
                        "mqtt {}: retained message of {topic:?} not kept: {error}",
                        self.peer
                    );
                }
            }
            Pending::RetainedIndex { filter, qos } => {
                if let Reply::History {
                    head_seq, messages, ..
                } = reply
                {
                    let mut topics: Vec<String> = messages
                        .iter()
                        .filter_map(|m| std::str::from_utf8(&m.body).ok())
                        .filter(|topic| pattern::matches(&filter, topic))
                        .map(str::to_string)
                        .collect();
                    topics.sort();
                    topics.dedup();
                    for topic in topics {
                        read_retained(state, topic, qos, context);
                    }
                    if let Some(last) = messages.last() {
                        if last.seq < *head_seq {
                            read_retained_index(state, filter, qos, last.seq + 1, context);
                        }
                    }
                }
            }
            Pending::RetainedRead { topic, qos } => {
                if let Reply::History { messages, .. } = reply {
                    if let Some(message) = messages.last().filter(|m| !m.body.is_empty()) {
                        let topic: Arc<str> = Arc::from(topic);
                        if !state.send_or_hold(&topic, message, qos, true, context.out()) {
                            return Err(close(
                                "MQTT: the client does not acknowledge its messages",
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let Some(state) = self.state.as_ref() else {
            return Ok(());
        };
        let Some(keep_alive) = state.keep_alive else {
            return Ok(());
        };
        // The spec's grace: one and a half keep-alive periods.
        let deadline = state.last_packet + keep_alive + keep_alive / 2;
        if context.now() >= deadline {
            let version = state.version;
            disconnect(version, ReasonCode::KeepAliveTimeout, context.out());
            return Err(close("keep-alive timeout"));
        }
        context.set_timer(deadline);
        Ok(())
    }

    fn on_server_close(&mut self, code: ErrorCode, reason: &str, out: &mut BytesMut) {
        if let Some(state) = self.state.as_ref() {
            let reason_code = match code {
                ErrorCode::SlowConsumer => ReasonCode::QuotaExceeded,
                ErrorCode::Unavailable => ReasonCode::ServerShuttingDown,
                _ => ReasonCode::UnspecifiedError,
            };
            disconnect_with(state.version, reason_code, reason, out);
        }
    }

    fn on_delivery(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        let Some(state) = self.state.as_mut() else {
            return Ok(None);
        };
        let qos = state.delivery_qos(channel);
        if qos == QoS::AtMostOnce {
            // The shared QoS 0 encoding serves.
            return Ok(None);
        }
        let channel: Arc<str> = Arc::from(channel);
        let mut out = BytesMut::new();
        for message in messages.iter().filter(|m| is_application_message(m)) {
            if !state.send_or_hold(&channel, message, qos, false, &mut out) {
                let version = state.version;
                disconnect_with(
                    version,
                    ReasonCode::QuotaExceeded,
                    "too many unacknowledged messages; acknowledge what you receive",
                    context.out(),
                );
                return Err(close("MQTT: the client does not acknowledge its messages"));
            }
        }
        Ok(Some(out.freeze()))
    }

    fn on_closed(&mut self, context: &mut SessionContext<'_>) {
        // The will is published when the connection ends without a
        // DISCONNECT (which clears it).
        if let Some(will) = self.state.as_mut().and_then(|state| state.will.take()) {
            context.submit(
                0,
                Command::Publish {
                    channel: will.topic,
                    ephemeral: false,
                    kind: kind::MESSAGE,
                    client_message_id: Bytes::new(),
                    relation: 0,
                    headers: headers_of(&will.properties, wall_clock_ms()),
                    body: will.payload,
                },
            );
        }
    }
}

impl MqttSession {
    /// Handles the complete packets at the front of `input`. While a
    /// resumed session's state is read, packets wait.
    fn process(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        loop {
            if let Some(state) = self.state.as_mut() {
                if state.restoring {
                    state.waiting_input.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
            }
            // The decoder refuses an oversized packet as soon as its fixed
            // header is in, before the body is buffered.
            let decoded = match &self.state {
                None => decode_connect(input, &self.limits),
                Some(state) => decode(input, state.version, &self.limits),
            };
            let (packet, used) = match decoded {
                Ok(Decoded::Complete { packet, used }) => (packet, used),
                Ok(Decoded::NeedMore { .. }) => return Ok(()),
                Err(error) => {
                    let reason = error.reason_code();
                    return self.refuse(reason, &error.to_string(), &error, context);
                }
            };
            input.advance(used);
            if let Some(state) = self.state.as_mut() {
                state.last_packet = context.now();
            }
            self.handle(packet, context)?;
        }
    }

    /// Closes the connection for bad input: a v5 client is told why with a
    /// DISCONNECT reason code; a v3.1.1 client just loses the connection, as
    /// that version says.
    fn refuse(
        &mut self,
        reason_code: ReasonCode,
        reason: &str,
        error: &MqttError,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        match (&self.state, error) {
            (None, MqttError::UnsupportedProtocolVersion { .. }) => {
                // The CONNACK for an unknown version is in the v3.1.1 shape.
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: ReasonCode::UnsupportedProtocolVersion,
                    properties: Properties::default(),
                })
                .encode(ProtocolVersion::V311, context.out());
            }
            (Some(state), _) => {
                disconnect_with(state.version, reason_code, reason, context.out());
            }
            _ => {}
        }
        Err(close(format!("MQTT: {reason}")))
    }

    /// Closes the connection for a protocol violation the decoder cannot
    /// see (it depends on the session's state).
    fn violation(
        &mut self,
        reason_code: ReasonCode,
        reason: &str,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        if let Some(state) = &self.state {
            disconnect_with(state.version, reason_code, reason, context.out());
        }
        Err(close(format!("MQTT: {reason}")))
    }

    fn handle(&mut self, packet: Packet, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let Some(state) = self.state.as_mut() else {
            let Packet::Connect(connect) = packet else {
                return Err(close("the first packet was not CONNECT"));
            };
            return self.connect(*connect, context);
        };
        let version = state.version;
        match packet {
            Packet::Connect(_) => self.violation(
                ReasonCode::ProtocolError,
                "a second CONNECT on one connection is a protocol error",
                context,
            ),
            Packet::Publish(publish) => self.publish(publish, context),
            Packet::PubRel(response) => {
                let known = state.qos2_received.remove(&response.packet_id);
                let reason = if known || version == ProtocolVersion::V311 {
                    ReasonCode::Success
                } else {
                    // After a reconnect the id may be gone; completing is
                    // still right, and v5 says why.
                    ReasonCode::PacketIdentifierNotFound
                };
                Packet::PubComp(PublishResponse {
                    packet_id: response.packet_id,
                    reason_code: reason,
                    properties: Properties::default(),
                })
                .encode(version, context.out());
                Ok(())
            }
            Packet::PubAck(response) => {
                if state.outbound.get(&response.packet_id) == Some(&Outbound::Qos1Sent) {
                    state.outbound.remove(&response.packet_id);
                    let _ = state.acknowledged(response.packet_id, context);
                    state.release_held(context.out());
                }
                Ok(())
            }
            Packet::PubRec(response) => {
                let packet_id = response.packet_id;
                let known = state.outbound.get(&packet_id) == Some(&Outbound::Qos2Sent);
                if known && response.reason_code.is_error() {
                    // The client refused the message: the exchange ends here.
                    state.outbound.remove(&packet_id);
                    state.release_held(context.out());
                    return Ok(());
                }
                if known {
                    state.outbound.insert(packet_id, Outbound::Qos2Released);
                    // In a persistent session the PUBREL waits for the
                    // cursor to be durable: after a crash the message is
                    // not sent again (exactly once).
                    if let Some(request_id) = state.acknowledged(packet_id, context) {
                        state
                            .pending
                            .insert(request_id, Pending::PubRelAfter(packet_id));
                        return Ok(());
                    }
                }
                let reason = if known || version == ProtocolVersion::V311 {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                Packet::PubRel(PublishResponse {
                    packet_id,
                    reason_code: reason,
                    properties: Properties::default(),
                })
                .encode(version, context.out());
                Ok(())
            }
            Packet::PubComp(response) => {
                if state.outbound.get(&response.packet_id) == Some(&Outbound::Qos2Released) {
                    state.outbound.remove(&response.packet_id);
                    state.release_held(context.out());
                }
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                let packet_id = subscribe.packet_id;
                let mut codes = vec![None; subscribe.filters.len()];
                let mut commands = Vec::new();
                let mut wants_retained = Vec::new();
                for (index, (filter, options)) in subscribe.filters.into_iter().enumerate() {
                    if filter.starts_with("$share/") {
                        codes[index] = Some(ReasonCode::SharedSubscriptionsNotSupported);
                    } else {
                        state.filters.retain(|(f, _)| *f != filter);
                        state.filters.push((filter.clone(), options.qos));
                        if options.retain_handling != RetainHandling::DoNotSend {
                            wants_retained.push((filter.clone(), options.qos));
                        }
                        commands.push((index, filter, options.qos));
                    }
                }
                state.subscribes.insert(
                    packet_id,
                    Collecting {
                        codes,
                        retained: wants_retained,
                        granted: Vec::new(),
                    },
                );
                for (index, filter, qos) in commands {
                    let request_id = next_request(
                        state,
                        Pending::Subscribe(packet_id, index, qos, filter.clone()),
                    );
                    // A filter with wildcards is a broker channel pattern
                    // as it stands (the same rules).
                    let command = if pattern::is_pattern(&filter) {
                        Command::SubscribePattern { pattern: filter }
                    } else {
                        Command::Subscribe {
                            channel: filter,
                            start: starling_protocol::SubscribeStart::Live,
                        }
                    };
                    context.submit(request_id, command);
                }
                self.finish_subscribe(packet_id, context);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                let packet_id = unsubscribe.packet_id;
                let codes = vec![None; unsubscribe.filters.len()];
                state.unsubscribes.insert(
                    packet_id,
                    Collecting {
                        codes,
                        retained: Vec::new(),
                        granted: Vec::new(),
                    },
                );
                for (index, filter) in unsubscribe.filters.into_iter().enumerate() {
                    state.filters.retain(|(f, _)| *f != filter);
                    state.record(
                        serde_json::json!({"type": "unsubscribe", "filter": filter}),
                        context,
                    );
                    let request_id = next_request(state, Pending::Unsubscribe(packet_id, index));
                    let command = if pattern::is_pattern(&filter) {
                        Command::UnsubscribePattern { pattern: filter }
                    } else {
                        Command::Unsubscribe { channel: filter }
                    };
                    context.submit(request_id, command);
                }
                Ok(())
            }
            Packet::PingReq => {
                Packet::PingResp.encode(version, context.out());
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                // A normal DISCONNECT discards the will; v5's "disconnect
                // with will message" keeps it.
                if disconnect.reason_code != ReasonCode::DisconnectWithWillMessage {
                    state.will = None;
                }
                Err(close("the client disconnected"))
            }
            Packet::Auth(_) => self.violation(
                ReasonCode::BadAuthenticationMethod,
                "extended authentication (AUTH) is not supported",
                context,
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                let reason = format!("{:?} is sent by servers, not clients", packet.packet_type());
                self.violation(ReasonCode::ProtocolError, &reason, context)
            }
        }
    }

    /// The session's records are read: answer the CONNACK, subscribe again
    /// (topics with QoS 1 or 2 from their cursors, so what was published
    /// while the client was away comes from the log), then handle the
    /// packets that waited.
    fn resume(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let records = std::mem::take(&mut state.session_records);
        let filters = fold_session(&records);
        Packet::ConnAck(ConnAck {
            session_present: !records.is_empty(),
            reason_code: ReasonCode::Success,
            properties: std::mem::take(&mut state.connack_properties),
        })
        .encode(state.version, context.out());
        state.restoring = false;
        for (filter, qos) in filters {
            state.filters.push((filter.clone(), qos));
            if pattern::is_pattern(&filter) {
                let request_id = next_request(state, Pending::Fire);
                context.submit(request_id, Command::SubscribePattern { pattern: filter });
            } else if qos == QoS::AtMostOnce {
                let request_id = next_request(state, Pending::Fire);
                context.submit(
                    request_id,
                    Command::Subscribe {
                        channel: filter,
                        start: starling_protocol::SubscribeStart::Live,
                    },
                );
            } else {
                let consumer = session_consumer(&state.client_id);
                let request_id = next_request(
                    state,
                    Pending::RestoreCursor {
                        topic: filter.clone(),
                    },
                );
                context.submit(
                    request_id,
                    Command::CursorGet {
                        consumer,
                        channel: filter,
                    },
                );
            }
        }
        let mut waiting = std::mem::take(&mut state.waiting_input);
        self.process(&mut waiting, context)
    }

    /// Sends the SUBACK at once when no filter needed the broker.
    fn finish_subscribe(&mut self, packet_id: u16, context: &mut SessionContext<'_>) {
        let state = self.state.as_mut().expect("connected");
        let complete = state
            .subscribes
            .get(&packet_id)
            .is_some_and(|c| c.codes.iter().all(Option::is_some));
        if complete {
            let done = state.subscribes.remove(&packet_id).expect("present");
            send_suback(state, packet_id, done, context);
        }
    }

    fn connect(&mut self, connect: Connect, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let version = connect.protocol;
        let refuse = |code: ReasonCode, reason: &str, out: &mut BytesMut| {
            let mut properties = Properties::default();
            if version == ProtocolVersion::V5 {
                properties.reason_string = Some(cut(reason));
            }
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties,
            })
            .encode(version, out);
            Err(close(format!("CONNECT refused: {reason}")))
        };
        let mut client_id = connect.client_id.clone();
        let mut assigned = None;
        if client_id.is_empty() {
            if version == ProtocolVersion::V311 && !connect.clean_start {
                return refuse(
                    ReasonCode::ClientIdentifierNotValid,
                    "an empty client id needs clean session",
                    context.out(),
                );
            }
            client_id = format!("starling-{:016x}", random_id());
            assigned = Some(client_id.clone());
        }
        if client_id.len() > CLIENT_ID_BYTES_MAX {
            return refuse(
                ReasonCode::ClientIdentifierNotValid,
                "the client id is longer than 256 bytes",
                context.out(),
            );
        }
        // The password is the token when there is one; otherwise the user
        // name stands for it (on a loopback server it is the user's name).
        let token = match (&connect.password, &connect.username) {
            (Some(password), _) => String::from_utf8_lossy(password).into_owned(),
            (None, Some(username)) => username.clone(),
            (None, None) => String::new(),
        };
        if let Err(denied) = context.authenticate(&client_id, &token) {
            let code = if connect.username.is_some() {
                ReasonCode::BadUserNameOrPassword
            } else {
                ReasonCode::NotAuthorized
            };
            return refuse(code, &denied.0, context.out());
        }
        let keep_alive = match connect.keep_alive_s {
            0 => None,
            seconds => Some(Duration::from_secs(u64::from(seconds))),
        };
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            properties.assigned_client_identifier = assigned;
            properties.shared_subscription_available = Some(false);
            properties.maximum_packet_size_bytes = Some(self.limits.packet_bytes_max);
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
        }
        // The session outlives the connection when the client resumes one
        // (clean start off) or, in v5, asks for a session expiry.
        let persistent = !connect.clean_start
            || connect
                .properties
                .session_expiry_interval_s
                .is_some_and(|seconds| seconds > 0);
        let restoring = !connect.clean_start;
        if !restoring {
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: std::mem::take(&mut properties),
            })
            .encode(version, context.out());
        }
        context.set_protocol(match version {
            ProtocolVersion::V311 => self.v311.clone(),
            ProtocolVersion::V5 => self.v5.clone(),
        });
        let now = context.now();
        if let Some(keep_alive) = keep_alive {
            context.set_timer(now + keep_alive + keep_alive / 2);
        }
        self.state = Some(Connected {
            version,
            client_id,
            keep_alive,
            last_packet: now,
            will: connect.will,
            next_request_id: 1,
            pending: HashMap::new(),
            subscribes: HashMap::new(),
            unsubscribes: HashMap::new(),
            qos2_received: HashSet::new(),
            filters: Vec::new(),
            outbound: HashMap::new(),
            window: connect
                .properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(OUTBOUND_INFLIGHT_MAX),
            next_packet_id: 0,
            held: VecDeque::new(),
            persistent,
            restoring,
            waiting_input: BytesMut::new(),
            connack_properties: properties,
            session_records: Vec::new(),
            positions: HashMap::new(),
            cursors: HashMap::new(),
        });
        let state = self.state.as_mut().expect("just set");
        if restoring {
            // The CONNACK says whether a session was found: read it first.
            let request_id = next_request(state, Pending::SessionRead);
            context.submit(
                request_id,
                Command::History {
                    channel: session_channel(&state.client_id),
                    query: HistoryQuery::From(1),
                    limit: SESSION_PAGE,
                },
            );
        } else if persistent {
            // A clean start that keeps its session: forget the old one.
            state.record(serde_json::json!({"type": "start"}), context);
        }
        Ok(())
    }

    fn publish(&mut self, publish: Publish, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let version = state.version;
        if publish.properties.topic_alias.is_some() {
            disconnect_with(
                version,
                ReasonCode::TopicAliasInvalid,
                "topic aliases are not supported (Topic Alias Maximum is 0)",
                context.out(),
            );
            return Err(close("MQTT: a topic alias was sent"));
        }
        if publish.topic.starts_with('$') {
            disconnect_with(
                version,
                ReasonCode::TopicNameInvalid,
                "topics starting with '$' belong to the server",
                context.out(),
            );
            return Err(close("publish to a '$' topic"));
        }
        let pending = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => Pending::Fire,
            (QoS::AtLeastOnce, Some(id)) => Pending::PubAck(id),
            (QoS::ExactlyOnce, Some(id)) => {
                if state.qos2_received.contains(&id) {
                    // A retransmission of a message already stored (or being
                    // stored): acknowledge again, store nothing.
                    if !state
                        .pending
                        .values()
                        .any(|p| matches!(p, Pending::PubRec(p) if *p == id))
                    {
                        Packet::PubRec(PublishResponse::success(id)).encode(version, context.out());
                    }
                    return Ok(());
                }
                if state.qos2_received.len() >= usize::from(RECEIVE_MAXIMUM) {
                    disconnect_with(
                        version,
                        ReasonCode::ReceiveMaximumExceeded,
                        "more QoS 2 messages in flight than the Receive Maximum",
                        context.out(),
                    );
                    return Err(close("receive maximum exceeded"));
                }
                state.qos2_received.insert(id);
                Pending::PubRec(id)
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        };
        let headers = headers_of(&publish.properties, wall_clock_ms());
        if publish.retain {
            // The topic's retained message is kept in the log beside it (an
            // empty payload clears it), so it survives a restart.
            let request_id = next_request(state, Pending::Retained(publish.topic.clone()));
            context.submit_as_server(
                request_id,
                Command::Publish {
                    channel: retained_channel(&publish.topic),
                    ephemeral: false,
                    kind: kind::MESSAGE,
                    client_message_id: Bytes::new(),
                    relation: 0,
                    headers: headers.clone(),
                    body: publish.payload.clone(),
                },
            );
        }
        let request_id = next_request(state, pending);
        context.submit(
            request_id,
            Command::Publish {
                channel: publish.topic,
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers,
                body: publish.payload,
            },
        );
        Ok(())
    }
}

/// Records the reason code of filter `index` of SUBSCRIBE or UNSUBSCRIBE
/// `packet_id`; returns every filter's code once all are in.
fn collect(
    collecting: &mut HashMap<u16, Collecting>,
    packet_id: u16,
    index: usize,
    code: ReasonCode,
) -> Option<Collecting> {
    let entry = collecting.get_mut(&packet_id)?;
    entry.codes[index] = Some(code);
    if entry.codes.iter().all(Option::is_some) {
        collecting.remove(&packet_id)
    } else {
        None
    }
}

/// Where a persistent session's subscriptions are recorded.
fn session_channel(client_id: &str) -> String {
    format!("$mqtt/session/{client_id}")
}

/// The cursor consumer of a persistent session (cursor consumer names may
/// not hold `/`).
fn session_consumer(client_id: &str) -> String {
    format!("mqtt.{}", client_id.replace('%', "%25").replace('/', "%2F"))
}

/// A session's subscriptions: its records folded in order (`start` clears).
fn fold_session(records: &[Message]) -> Vec<(String, QoS)> {
    let mut filters: Vec<(String, QoS)> = Vec::new();
    for record in records {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&record.body) else {
            continue;
        };
        let filter = event["filter"].as_str().unwrap_or_default().to_string();
        match event["type"].as_str() {
            Some("start") => filters.clear(),
            Some("subscribe") => {
                let qos = match event["qos"].as_u64() {
                    Some(2) => QoS::ExactlyOnce,
                    Some(1) => QoS::AtLeastOnce,
                    _ => QoS::AtMostOnce,
                };
                filters.retain(|(f, _)| *f != filter);
                filters.push((filter, qos));
            }
            Some("unsubscribe") => filters.retain(|(f, _)| *f != filter),
            _ => {}
        }
    }
    filters
}

/// Where a topic's retained message is kept: its last record (an empty body
/// means none).
fn retained_channel(topic: &str) -> String {
    format!("$retained/{topic}")
}

/// The index of topics that have (or had) a retained message, one record
/// each, for wildcard subscriptions.
const RETAINED_INDEX: &str = "$retained";

/// Sends the SUBACK of a completed SUBSCRIBE, then asks for the retained
/// messages of the filters granted (so they follow the SUBACK).
fn send_suback(
    state: &mut Connected,
    packet_id: u16,
    done: Collecting,
    context: &mut SessionContext<'_>,
) {
    let codes: Vec<ReasonCode> = done.codes.into_iter().flatten().collect();
    for (filter, qos) in &done.granted {
        let event = serde_json::json!({"type": "subscribe", "filter": filter, "qos": *qos as u8});
        state.record(event, context);
    }
    Packet::SubAck(SubAck {
        packet_id,
        reason_codes: codes,
        properties: Properties::default(),
    })
    .encode(state.version, context.out());
    for (filter, qos) in done.retained {
        if pattern::is_pattern(&filter) {
            read_retained_index(state, filter, qos, 1, context);
        } else {
            read_retained(state, filter, qos, context);
        }
    }
}

fn read_retained(state: &mut Connected, topic: String, qos: QoS, context: &mut SessionContext<'_>) {
    let channel = retained_channel(&topic);
    let request_id = next_request(state, Pending::RetainedRead { topic, qos });
    context.submit(
        request_id,
        Command::History {
            channel,
            query: HistoryQuery::Last,
            limit: 1,
        },
    );
}

/// Records read per page of the retained-topic index.
const RETAINED_INDEX_PAGE: u32 = 500;
/// Records read per page of a session's records.
const SESSION_PAGE: u32 = 500;

fn read_retained_index(
    state: &mut Connected,
    filter: String,
    qos: QoS,
    from: u64,
    context: &mut SessionContext<'_>,
) {
    let request_id = next_request(state, Pending::RetainedIndex { filter, qos });
    context.submit(
        request_id,
        Command::History {
            channel: RETAINED_INDEX.to_string(),
            query: HistoryQuery::From(from),
            limit: RETAINED_INDEX_PAGE,
        },
    );
}

fn next_request(state: &mut Connected, pending: Pending) -> u32 {
    let request_id = state.next_request_id;
    state.next_request_id = state.next_request_id.wrapping_add(1).max(1);
    state.pending.insert(request_id, pending);
    request_id
}

/// The v5 reason code for a refused publish.
fn publish_reason(error: &BrokerError) -> ReasonCode {
    match error {
        BrokerError::Denied(_) => ReasonCode::NotAuthorized,
        BrokerError::InvalidArgument(_) => ReasonCode::TopicNameInvalid,
        BrokerError::TooLarge { .. } => ReasonCode::PacketTooLarge,
        BrokerError::ShuttingDown => ReasonCode::ServerShuttingDown,
        _ => ReasonCode::ImplementationSpecificError,
    }
}

fn reason_string(version: ProtocolVersion, error: Option<&BrokerError>) -> Properties {
    let mut properties = Properties::default();
    if let (ProtocolVersion::V5, Some(error)) = (version, error) {
        properties.reason_string = Some(cut(&error.to_string()));
    }
    properties
}

fn disconnect(version: ProtocolVersion, reason_code: ReasonCode, out: &mut BytesMut) {
    disconnect_with(version, reason_code, "", out);
}

fn disconnect_with(
    version: ProtocolVersion,
    reason_code: ReasonCode,
    reason: &str,
    out: &mut BytesMut,
) {
    if version == ProtocolVersion::V5 {
        let mut properties = Properties::default();
        if !reason.is_empty() {
            properties.reason_string = Some(cut(reason));
        }
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
        .encode(version, out);
    }
}

/// Reason strings are for people; keep them short.
fn cut(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A client id the server assigns: unique enough within a process run.
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
