//! The MQTT 3.1.1 and 5.0 front end: MQTT packets in, broker commands out.
//! A topic is a channel of the same name, so what an MQTT client publishes
//! to `general` is a chat message of `general`, and the other way round.
//!
//! What it does: CONNECT (both versions; user name and password go to the
//! authorizer; server-assigned client ids; keep-alive), PUBLISH in at QoS
//! 0, 1 and 2 (acknowledged once the record is durable under the engine's
//! policy, in the order the publishes arrived; QoS 2 exactly once also
//! across a restart, both ways), SUBSCRIBE and UNSUBSCRIBE to topic names
//! and to filters with `+` and `#`, deliveries at QoS 0, 1 and 2 within the client's Receive
//! Maximum, retained messages and persistent sessions kept in the log (also
//! for wildcard filters, and with what was in flight resent, with its
//! packet ids and DUP, when the client comes back, also after a restart),
//! session expiry,
//! PINGREQ, DISCONNECT, the will message (and its delay), v5 subscription
//! options (no-local, retain-as-published, retain handling, subscription
//! identifiers), topic aliases both ways, and shared subscriptions. Bad
//! input closes only its own connection, with a v5 DISCONNECT that carries
//! the reason code. `docs/PROTOCOL.md` has the details.
//!
//! Files: this one holds the session and the packets it handles itself;
//! `connect` (CONNECT, resuming a session), `inbound` (PUBLISH from the
//! client), `aliases` (v5 topic aliases), `subscribe` (SUBSCRIBE,
//! UNSUBSCRIBE, subscription options and how a delivery matches them),
//! `shared` (shared subscriptions), `replies` (the broker's answers),
//! `outbound` (QoS 1 and 2 deliveries, windows, cursors), `deliveries` (the
//! shared PUBLISH encoding and message properties), `store` (what is kept
//! in `$` channels), `offline` (offline messages for wildcard filters),
//! `parked` (a persistent session's in-flight state between its
//! connections), `qos2` (QoS 2 packet ids and deliveries in flight noted in
//! the log, for exactly once and redelivery with packet ids across a
//! restart), `expiry` (a session after its connection:
//! expiry, delayed wills, the keeper thread), `wills` (delayed wills in the
//! log, taken up again after a restart).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use starling_broker::{
    command::{cursor_channel, CHANNEL_BYTES_MAX},
    pattern, BrokerError, Close, Command, ConnRef, Protocol, Reply, Session, SessionContext,
    SessionEvent,
};
use starling_protocol::headers::{decode_headers, encode_headers, name};
use starling_protocol::mqtt::PayloadFormat;
use starling_protocol::mqtt::{
    decode, decode_connect, ConnAck, Connect, Decoded, Disconnect, MqttError, MqttLimits, Packet,
    Properties, ProtocolVersion, Publish, PublishResponse, QoS, ReasonCode, RetainHandling, SubAck,
    UnsubAck, Will,
};
use starling_protocol::{kind, ErrorCode, HistoryQuery, Message};

mod aliases;
mod connect;
mod deliveries;
mod expiry;
#[cfg(test)]
mod harness;
mod inbound;
mod offline;
mod outbound;
mod parked;
mod qos2;
mod replies;
mod shared;
#[cfg(test)]
mod simulation;
mod store;
mod subscribe;
mod wills;

use aliases::TopicAliases;
pub use aliases::{OUTBOUND_TOPIC_ALIASES_MAX, TOPIC_ALIAS_MAXIMUM};
use deliveries::{
    headers_of, is_application_message, mqtt_marks, properties_of, properties_to_resend,
    wall_clock_ms, Marks, MqttDeliveries,
};
use expiry::{DelayedWill, SharedTimers};
pub use expiry::{SessionKeeper, SCHEDULED_MAX};
pub use inbound::ACKS_WAITING_MAX;
use inbound::{AckQueue, Deferred};
use offline::TOPIC_INDEX;
pub use offline::WILDCARD_TOPICS_MAX;
use outbound::{InFlight, Outbound, Outgoing};
pub use parked::PARKED_SESSIONS_MAX;
use parked::{Handoff, ParkedSessions};
use qos2::{qos2_channel, received_message_id, Note, Noting, Received, NOTES_READ};
use shared::{Groups, MembershipChanged, ShareView, SharedHandover};
pub use shared::{SHARED_LEAVE_LOOKBACK_MS, SHARED_SKIPPED_MAX};
use store::{
    collect, collect_complete, fold_session, next_request, push_compact, read_history,
    read_last_own, read_retained, release_if_empty, retained_command, send_suback, send_unsuback,
    session_channel, session_consumer, stored_message, Reader, StoredSession, RETAINED_INDEX,
    SESSION_PAGE,
};
use subscribe::{subscribe_command, Route, Subscription};
use wills::StoredWill;

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
/// held in memory without bound. Only messages that cannot be read again
/// from the log get this far (those of wildcard subscriptions, retained
/// messages, hand-overs): see [`HELD_BEFORE_CATCH_UP`].
pub const HELD_MESSAGES_MAX: usize = 16 * 1024;
/// Topic filters one SUBSCRIBE or UNSUBSCRIBE may carry. Each filter is
/// checked against the session's others, so a packet of a megabyte of
/// filters (about 200,000) held the shard for minutes; clients subscribe a
/// handful at a time. More: DISCONNECT 0x97 (quota exceeded).
pub const FILTERS_PER_PACKET_MAX: usize = 1024;
/// Messages held while the in-flight window is full beyond which a
/// subscription to one topic stops taking live deliveries and reads on
/// from the log, as the client acknowledges (the session's
/// `delivery_room`): a client that acknowledges slower than messages come
/// falls behind instead of being disconnected.
pub const HELD_BEFORE_CATCH_UP: usize = HELD_MESSAGES_MAX / 2;

/// The MQTT listener's protocol.
pub struct MqttProtocol {
    listener: Arc<Listener>,
}

/// What the sessions of one listener share (one `Arc` per session, so an
/// idle connection carries one pointer, not seven).
struct Listener {
    limits: MqttLimits,
    v311: Arc<dyn Protocol>,
    v5: Arc<dyn Protocol>,
    clients: Clients,
    parked: ParkedSessions,
    timers: SharedTimers,
    groups: Groups,
    note_numbers: qos2::NoteNumbers,
    /// Topic filters whose QoS 0 messages skip the log
    /// ([`MqttProtocol::with_live_only_qos0`]).
    live_only_qos0: Vec<String>,
    /// The `$SYS` values sent as retained messages to a new subscription
    /// ([`MqttProtocol::serve_sys_values`]); unset, none are.
    sys: std::sync::OnceLock<crate::sys_topics::SysSource>,
}

impl Listener {
    /// True when a QoS 0 message to `topic` is delivered live only.
    fn live_only(&self, topic: &str) -> bool {
        self.live_only_qos0
            .iter()
            .any(|filter| pattern::matches(filter, topic))
    }
}

/// The connection of each connected client id, so a new connection with the
/// same id takes the session over (the old one is closed with 0x8E). Touched
/// at CONNECT and close only.
type Clients = Arc<parking_lot::Mutex<HashMap<Arc<str>, Client>>>;

/// A connected client id's connection, and the user it belongs to (with
/// authentication on): another user's CONNECT with the id is refused, not
/// handed the session.
struct Client {
    conn: ConnRef,
    owner: Option<Arc<str>>,
}

/// Sent to an older connection of a client id that connected again.
struct TakenOver;

impl MqttProtocol {
    pub fn new(limits: MqttLimits) -> MqttProtocol {
        MqttProtocol {
            listener: Arc::new(Listener {
                limits,
                v311: Arc::new(MqttDeliveries {
                    version: ProtocolVersion::V311,
                }),
                v5: Arc::new(MqttDeliveries {
                    version: ProtocolVersion::V5,
                }),
                clients: Clients::default(),
                parked: ParkedSessions::default(),
                timers: SharedTimers::default(),
                groups: Groups::default(),
                note_numbers: qos2::NoteNumbers::default(),
                live_only_qos0: Vec::new(),
                sys: std::sync::OnceLock::new(),
            }),
        }
    }

    /// From now on a new subscription whose filter matches `$SYS` topics
    /// gets their current values at once, as retained messages (the
    /// `$SYS` publisher only sends them every `mqtt.sys_interval_s`). Once.
    pub fn serve_sys_values(&self, source: crate::sys_topics::SysSource) {
        if self.listener.sys.set(source).is_err() {
            log::warn!("MQTT: $SYS values were already being served");
        }
    }

    /// QoS 0 messages to topics matching one of `filters` (MQTT topic
    /// filters) skip the log: they are delivered live only, as ephemeral
    /// messages (seq 0), as soon as their topic's shard has them, without
    /// waiting for a write or an fdatasync. They are then in no history,
    /// reach no offline session, and list no topic in the topic index; a
    /// retained copy is still kept in the log. For telemetry that only
    /// matters live. Fails on a filter that is not valid.
    pub fn with_live_only_qos0(mut self, filters: Vec<String>) -> Result<MqttProtocol, String> {
        for filter in &filters {
            pattern::validate(filter)
                .map_err(|error| format!("mqtt.live_only_qos0: {filter:?}: {error}"))?;
        }
        let listener =
            Arc::get_mut(&mut self.listener).expect("configured before its first session");
        listener.live_only_qos0 = filters;
        Ok(self)
    }
}

impl Protocol for MqttProtocol {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        // The peer's address is in every `SessionContext`.
        Box::new(MqttSession {
            listener: self.listener.clone(),
            state: None,
        })
    }

    fn encode_delivery(&self, _channel: &str, _messages: &[Message]) -> Bytes {
        // Before CONNECT nothing is subscribed; afterwards the session's
        // version decides the encoding (see `MqttDeliveries`).
        Bytes::new()
    }
}

/// What a retained publish keeps in the topic's `$retained/…` channel.
struct RetainedCopy {
    topic: String,
    headers: Bytes,
    payload: Bytes,
}

/// What a pending broker request answers.
enum Pending {
    /// Nobody waits (bookkeeping).
    Fire,
    /// A client's QoS 1 or 2 publish to a topic, answered with PUBACK or
    /// PUBREC (QoS 0 ones are `Publish0`); the topic's first message is
    /// listed in the topic index. `arrival` is the publish's place in the
    /// connection's acknowledgement queue.
    Acknowledge {
        qos: QoS,
        packet_id: u16,
        topic: String,
        arrival: u64,
    },
    Publish0(String),
    /// The acknowledgement of the publish at `arrival`, to queue once this
    /// request (the listing of its topic) is answered.
    AckAfter(u64, Box<Packet>),
    /// One filter of a SUBSCRIBE (packet id, index of the filter, the
    /// subscription made when the broker accepts it, the one of the same
    /// filter it replaced, which stays if the broker refuses).
    Subscribe(u16, usize, Subscription, Option<Box<Subscription>>),
    Unsubscribe(u16, usize),
    /// The retained copy of a topic was stored (index it when it is the
    /// topic's first).
    Retained(String),
    /// A client's retained publish to its topic: once the broker took it
    /// (the client may publish there, within its limits), its retained
    /// copy is stored; then as the inner request.
    ThenRetain(Box<(Pending, RetainedCopy)>),
    /// A page of the retained-topic index, read for a wildcard filter.
    RetainedIndex {
        paging: store::RetainedPaging,
        /// The matching topics of earlier pages, sorted: a topic listed
        /// again further on (retained anew after the index's dedupe window)
        /// is not read twice.
        read: Vec<String>,
    },
    /// The retained message of a topic, read for a new subscription
    /// (counted in `Extras::retained_reading`).
    RetainedRead {
        topic: String,
        qos: QoS,
        subscription_id: Option<u32>,
    },
    /// A page of the session's records, read before the CONNACK.
    SessionRead,
    /// A persistent session's cursor of `topic` at `seq` is written (see
    /// [`Qos::cursor_writes`]).
    CursorWritten {
        topic: Arc<str>,
        seq: u64,
    },
    /// The last note of a resumed session's QoS 2 state, read before the
    /// CONNACK.
    Qos2Read,
    /// The message of the noted delivery at this index of the resumed
    /// session's note (`Note::sent`), read before the CONNACK.
    NotedMessage(usize),
    /// A persistent session's note (`Noting`) is durable: what waited for
    /// it goes on.
    Noted,
    /// A clean start read the last record of the client id's session (an
    /// older one that did not end is ended before the CONNACK).
    OlderSessionRead,
    /// A clean start read the client id's last QoS 2 note (a note with
    /// packet ids is cleared before the CONNACK).
    OlderNoteRead,
    /// A clean start's record or note that ends the older session: the
    /// CONNACK waits for it.
    OlderSessionEnded,
    /// The broker subscription of a shared subscription restored with a
    /// session is in place: join its group.
    JoinShare(String),
    /// The records of a persistent session's new subscriptions are durable:
    /// send the SUBACK.
    SubAckAfter(Box<store::SubAckAfter>),
    /// The record that the session follows a topic for its wildcard
    /// filters is durable: its cursor can be written.
    Following(Arc<str>),
    /// The subscription of a topic of its own, made to catch up for a
    /// wildcard filter, is in place (`Extras::catching_up`).
    CaughtUp(String),
    /// The same, made because the client fell behind on a topic it gets
    /// through a wildcard filter (`fall_behind_on_topic`): its messages
    /// from there on come only through it.
    FellBehind(String),
    /// The head of a topic the persistent session already followed at
    /// QoS 0 and now follows at QoS 1 or 2: its cursor starts there (the
    /// broker's answer, already subscribed, does not say where).
    CursorStart(Arc<str>),
    /// The last records of a restored subscription's cursor (the highest
    /// is its position: see `CURSOR_RECORDS_READ`).
    RestoreCursor {
        topic: String,
        /// The session's records say its position starts here.
        floor: u64,
    },
    /// A page of the topic index, read for a resumed session's wildcard
    /// filters.
    TopicIndex,
    /// A page of a topic's history, read backwards for where a resumed
    /// session's offline messages start (`found`: that seq so far).
    OfflineStart {
        topic: String,
        since_ms: u64,
        found: Option<u64>,
    },
}

/// The acknowledgement a [`Collecting`] is for, by the packet id of its
/// SUBSCRIBE or UNSUBSCRIBE.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Awaiting {
    SubAck(u16),
    UnsubAck(u16),
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for the replies of its filters.
struct Collecting {
    codes: Vec<Option<ReasonCode>>,
    /// Subscriptions whose retained messages to send once the SUBACK is
    /// out.
    retained: Vec<Subscription>,
    /// Subscriptions the broker accepted (recorded in a persistent
    /// session).
    granted: Vec<Subscription>,
}

struct Connected {
    version: ProtocolVersion,
    /// Shared with the connection's entry in [`Listener::clients`].
    client_id: Arc<str>,
    /// 0: no keep-alive.
    keep_alive_s: u16,
    last_packet: Instant,
    /// Boxed: most connections have none.
    will: Option<Box<Will>>,
    next_request_id: u32,
    pending: HashMap<u32, Pending>,
    /// SUBSCRIBE and UNSUBSCRIBE packets waiting for the broker's replies.
    collecting: HashMap<Awaiting, Collecting>,
    /// The key of the last QoS 2 message received (they count up from a
    /// random number per connection).
    next_received_key: u64,
    /// The noted QoS 2 state of the session being resumed is read.
    qos2_read: bool,
    /// The subscriptions, one per filter (topic name or pattern).
    subscriptions: Vec<Subscription>,
    /// The Topic Alias Maximum the client announced (0: none).
    client_topic_alias_maximum: u16,
    /// What only some sessions use, allocated when first needed (an idle
    /// connection stays small).
    extras: Option<Box<Extras>>,
    /// QoS 1 and 2 state, both ways, allocated when first needed.
    qos: QosSlot,
    /// The most outbound messages in flight (the client's Receive Maximum,
    /// capped).
    window: u16,
    /// The client takes reason strings on acknowledgements (v5 Request
    /// Problem Information; without it only CONNACK, PUBLISH and
    /// DISCONNECT carry them, MQTT-3.1.2-29).
    problem_information: bool,
    /// The session outlives the connection: subscriptions are recorded in
    /// `$mqtt/session/<client id>` and delivery positions in cursors.
    persistent: bool,
    /// How long the session outlives the connection, in seconds: 0 ends it
    /// with the connection, `u32::MAX` never (v3.1.1's clean session 0).
    session_expiry_s: u32,
    /// What the connection keeps until its CONNACK, which waits for the
    /// session's state to be read (or an older session to be ended).
    restore: Option<Box<Restore>>,
    /// The client asked for a clean start (v3.1.1: clean session).
    clean_start: bool,
    /// The session's records are all read.
    session_read: bool,
    /// An older connection of the client id is handing its state over.
    awaiting_handoff: bool,
    /// The client id is this connection's: no other user's session has it
    /// (checked before anything of the session is touched), and the
    /// connection is registered in [`Listener::clients`]. Until then, an
    /// ending connection leaves nothing behind.
    claimed: bool,
}

/// QoS 1 and 2 state, both ways: a session that exchanges only QoS 0
/// messages never allocates it, and a session frees it once everything is
/// settled (see [`QosSlot`]).
#[derive(Default)]
struct Qos {
    /// PUBACK and PUBREC, written in the order the publishes arrived.
    acks: AckQueue,
    /// QoS 2 packet ids received, waiting for PUBREL (`received`): a
    /// retransmitted PUBLISH with one of them is not stored twice.
    qos2_received: HashMap<u16, Received>,
    /// Outbound QoS 1 and 2 messages not yet acknowledged, by packet id.
    outbound: HashMap<u16, InFlight>,
    /// Of `outbound`, those taken over from an earlier connection and not
    /// sent again yet (`InFlight::resend`).
    resends: usize,
    /// Numbers outbound messages in the order they are sent.
    next_order: u64,
    next_packet_id: u16,
    /// Messages waiting for room in the window, in order.
    held: VecDeque<Outgoing>,
    /// Outbound stored messages in flight, by packet id: (topic, seq), for
    /// the cursors of a persistent session.
    positions: HashMap<u16, (Arc<str>, u64)>,
    /// The cursor per topic: the seq up to which the client acknowledged
    /// everything. Written to the log at once, or, while a write of the
    /// topic's cursor is in flight, when that write returns.
    cursors: HashMap<Arc<str>, u64>,
    /// Cursor writes in flight, per topic: the highest seq asked for.
    /// While one is in flight a PUBACK or PUBREC only moves `cursors`, and
    /// the latest position is written when it returns: about one cursor
    /// record per durable write of the cursor's shard instead of one per
    /// acknowledgement. After a crash, the QoS 1 messages acknowledged since
    /// the last durable write come again, as MQTT allows; QoS 2 ones do not
    /// (the notes list them as done until a cursor write past them is
    /// durable).
    cursor_writes: HashMap<Arc<str>, u64>,
    /// A persistent session's notes of its deliveries in flight.
    noting: Noting,
}

impl Qos {
    /// Nothing in flight, waiting or remembered: the counters may start
    /// again (packet ids and orders only tell apart what is in flight).
    fn is_settled(&self) -> bool {
        self.acks.len() == 0
            && self.qos2_received.is_empty()
            && self.outbound.is_empty()
            && self.held.is_empty()
            && self.positions.is_empty()
            && self.cursors.is_empty()
            && self.cursor_writes.is_empty()
            && self.noting.is_idle()
    }
}

/// A session's [`Qos`], boxed while there is some. Reading an empty slot
/// sees an empty `Qos`; writing allocates it.
#[derive(Default)]
struct QosSlot(Option<Box<Qos>>);

impl std::ops::Deref for QosSlot {
    type Target = Qos;

    fn deref(&self) -> &Qos {
        static EMPTY: std::sync::OnceLock<Qos> = std::sync::OnceLock::new();
        self.0
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Qos::default))
    }
}

impl std::ops::DerefMut for QosSlot {
    fn deref_mut(&mut self) -> &mut Qos {
        self.0.get_or_insert_with(Box::default)
    }
}

impl QosSlot {
    /// Frees the state once it is settled.
    fn release_if_settled(&mut self) {
        if self.0.as_ref().is_some_and(|qos| qos.is_settled()) {
            self.0 = None;
        }
    }
}

/// What a connection needs only until its CONNACK.
struct Restore {
    connack_properties: Properties,
    /// Packets that arrive before the CONNACK wait here.
    waiting_input: BytesMut,
    /// The session's records, once read.
    session_records: Vec<Message>,
    /// Pages of them read so far, newest first (joined once all are in:
    /// prepending each would move every record at every page).
    session_pages: Vec<Vec<Message>>,
    /// The highest `through` of the `snapshot` records among them.
    session_snapshot: Option<u64>,
    /// The last records of the client id's note channel, until the
    /// session's records are read too (which of them counts depends on the
    /// session: `NoteNumbers::newest`).
    note_records: Option<Vec<Message>>,
    /// The noted QoS 2 state of the session being resumed.
    restored_note: Note,
    /// The messages of the noted deliveries (`restored_note.sent`), as they
    /// are read.
    noted_messages: Vec<Option<Message>>,
    /// Reads of noted messages not answered yet.
    noted_reads: usize,
    /// An older connection of this process handed its state over: it knows
    /// the deliveries in flight better than the note.
    taken_over: bool,
}

/// The parts of a session's state that only some sessions use.
struct Extras {
    /// v5 topic aliases, both ways.
    aliases: TopicAliases,
    /// The QoS 1 and 2 wildcard filters of a resumed session and when each
    /// was subscribed (its offline messages start there).
    wildcard_since_ms: Vec<(String, u64)>,
    /// Topics subscribed on their own to catch up for wildcard filters.
    caught_up: HashSet<String>,
    /// Those of `caught_up` whose own subscription is not in place yet,
    /// with the lowest seq of theirs that came live through a wildcard
    /// filter meanwhile (not sent: the topic's own subscription delivers
    /// it, see `follow_wildcard_topic`).
    catching_up: HashMap<String, Option<u64>>,
    /// Topics whose record of being followed is not durable yet: their
    /// cursors are not written before it is (`start_following`).
    recording: HashSet<Arc<str>>,
    /// The persistent session's id, from its `start` record (0: a session
    /// begun without one). Its records carry it, so that a late record of
    /// an older session of the client id (still on its way from a closed
    /// connection when a clean start began this one) is not taken for this
    /// session's (`fold_session`).
    session_id: u64,
    /// This member's view of the group of each shared subscription, by its
    /// filter.
    shares: HashMap<String, ShareView>,
    /// What older connections handed over before the CONNACK.
    handed_over: Vec<parked::Parked>,
    /// Seqs above the cursor the client was sent, per cursor topic: a
    /// redelivery from the log skips them.
    delivered: HashMap<Arc<str>, BTreeSet<u64>>,
    /// The Maximum Packet Size the client announced (0: none): a PUBLISH
    /// that would be larger is not sent (MQTT 3.1.2.24).
    client_packet_bytes_max: u32,
    /// Retained messages read for new subscriptions and not answered yet.
    retained_reading: usize,
    /// Pages of the retained-topic index read and not answered yet (each
    /// may bring a page of retained messages: `Connected::retained_room`).
    retained_index_reads: usize,
    /// Subscriptions granted or still being subscribed whose retained
    /// messages are to be read once the SUBACK is out: live messages that
    /// reach the client meanwhile supersede them already.
    retained_subscribing: usize,
    /// The wildcard filters whose retained-topic index is being read, with
    /// the id of that reading (an UNSUBSCRIBE ends it; see
    /// `store::RetainedPaging`).
    retained_pagings: Vec<(String, u64)>,
    /// The id of the next reading of the retained-topic index.
    retained_paging_next: u64,
    /// Pages of the retained-topic index waiting until the client has
    /// taken enough of what waits for it (`Connected::resume_retained`).
    retained_parked: VecDeque<store::ParkedIndexPage>,
    /// The start of a packet that came before the CONNACK, with packets
    /// that waited for the session to be read: the rest of it comes with
    /// the next input.
    partial_input: BytesMut,
    /// While retained messages are read: the topics that reached the
    /// client live meanwhile. Their retained message, older, is not sent
    /// after them.
    retained_superseded: HashSet<Arc<str>>,
}

impl Connected {
    /// The CONNACK is not sent yet: packets wait.
    fn restoring(&self) -> bool {
        self.restore.is_some()
    }

    /// The session's extras, allocated now if they were not.
    fn extras(&mut self) -> &mut Extras {
        let client_maximum = self.client_topic_alias_maximum;
        self.extras.get_or_insert_with(|| {
            Box::new(Extras {
                aliases: TopicAliases::new(Some(client_maximum)),
                wildcard_since_ms: Vec::new(),
                caught_up: HashSet::new(),
                catching_up: HashMap::new(),
                recording: HashSet::new(),
                session_id: 0,
                shares: HashMap::new(),
                handed_over: Vec::new(),
                delivered: HashMap::new(),
                client_packet_bytes_max: 0,
                retained_reading: 0,
                retained_index_reads: 0,
                retained_subscribing: 0,
                retained_pagings: Vec::new(),
                retained_paging_next: 0,
                retained_parked: VecDeque::new(),
                partial_input: BytesMut::new(),
                retained_superseded: HashSet::new(),
            })
        })
    }

    /// Who this session's packets go to.
    pub(super) fn peer(&self) -> Peer {
        Peer {
            version: self.version,
            packet_bytes_max: self.client_packet_bytes_max(),
        }
    }

    /// The client's Maximum Packet Size (`Extras::client_packet_bytes_max`).
    fn client_packet_bytes_max(&self) -> usize {
        self.extras
            .as_ref()
            .map_or(0, |extras| extras.client_packet_bytes_max as usize)
    }

    /// The session's id (`Extras::session_id`).
    fn session_id(&self) -> u64 {
        self.extras.as_ref().map_or(0, |extras| extras.session_id)
    }

    /// Sets the session's id (allocating the extras only for one).
    fn set_session_id(&mut self, session_id: u64) {
        if session_id != 0 || self.extras.is_some() {
            self.extras().session_id = session_id;
        }
    }

    /// This member's view of the group of shared subscription `filter`.
    fn share(&self, filter: &str) -> Option<&ShareView> {
        self.extras.as_ref()?.shares.get(filter)
    }
}

pub struct MqttSession {
    listener: Arc<Listener>,
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
        let result = self.process(input, context);
        self.settle(context);
        result
    }

    fn on_reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let result = self.reply(request_id, reply, context);
        self.settle(context);
        result
    }

    fn on_timer(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let Some(state) = self.state.as_ref() else {
            return Ok(());
        };
        if state.keep_alive_s == 0 {
            return Ok(());
        }
        let keep_alive = Duration::from_secs(u64::from(state.keep_alive_s));
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

    fn identified(&self) -> bool {
        self.state.is_some()
    }

    /// While the session is restored before its CONNACK, what the client
    /// sends waits in the session: at most a packet's worth, the rest in the
    /// kernel (a client streaming through a slow restore grew it without
    /// bound).
    fn input_paused(&self) -> bool {
        self.state
            .as_ref()
            .and_then(|state| state.restore.as_ref())
            .is_some_and(|restore| {
                restore.waiting_input.len() >= self.listener.limits.packet_bytes_max as usize
            })
    }

    fn delivery_room(&self) -> usize {
        let held = self.state.as_ref().map_or(0, |state| state.qos.held.len());
        HELD_BEFORE_CATCH_UP.saturating_sub(held)
    }

    fn on_server_close(&mut self, code: ErrorCode, reason: &str, out: &mut BytesMut) {
        if let Some(state) = self.state.as_ref() {
            let reason_code = match code {
                ErrorCode::SlowConsumer => ReasonCode::QuotaExceeded,
                ErrorCode::Unavailable => ReasonCode::ServerShuttingDown,
                _ => ReasonCode::UnspecifiedError,
            };
            disconnect_with(state.peer(), reason_code, reason, out);
        }
    }

    fn on_delivery(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        let result = self.deliver(channel, messages, context);
        self.settle(context);
        result
    }

    fn on_event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let result = self.event(event, context);
        self.settle(context);
        result
    }

    fn on_closed(&mut self, context: &mut SessionContext<'_>) {
        // The will (still there when the connection ended without a
        // DISCONNECT, which clears it) and the session's future.
        self.leave(context);
    }
}

impl MqttSession {
    /// A delivery of `messages` of `channel`, encoded for this connection.
    fn deliver(
        &mut self,
        channel: &str,
        messages: &[Message],
        context: &mut SessionContext<'_>,
    ) -> Result<Option<Bytes>, Close> {
        if !is_topic_name(channel) {
            // A channel another front end named with `+` or `#` (a wildcard
            // filter matches it): it has no MQTT topic name to go out as.
            return Ok(None);
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(None);
        };
        let mut out = BytesMut::new();
        // A group's membership may have changed since the last delivery.
        if !state.refresh_shares(&mut out) {
            return Err(too_much_held(state.peer(), context));
        }
        if let (Route::Shared, true) = (state.route(channel), out.is_empty()) {
            // Unless one may pass the client's Maximum Packet Size: the
            // shared bytes are not checked against it (`Connected::fits`).
            if state.all_fit_roughly(channel, messages) {
                // A retained read of the topic still out is older than
                // this: it is not sent after it (as for a message sent
                // one by one below).
                if messages.iter().any(is_application_message) {
                    state.supersede_retained_of(channel);
                }
                return Ok(None);
            }
        }
        let channel: Arc<str> = Arc::from(channel);
        for message in messages.iter().filter(|m| is_application_message(m)) {
            let Some(outgoing) = state.outgoing(&channel, message) else {
                continue;
            };
            if !state.follow_wildcard_topic(&outgoing, context) {
                continue;
            }
            if state.fall_behind_on_topic(&outgoing, context) {
                continue;
            }
            state.supersede_retained(&outgoing.topic);
            if !state.send_or_hold(outgoing, &mut out) {
                return Err(too_much_held(state.peer(), context));
            }
        }
        Ok(Some(out.freeze()))
    }

    /// An event sent to this connection.
    fn event(
        &mut self,
        event: SessionEvent,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let event = match event.downcast::<Handoff>() {
            Ok(handoff) => return self.on_handoff(*handoff, context),
            Err(event) => event,
        };
        let event = match event.downcast::<MembershipChanged>() {
            Ok(_) => {
                let Some(state) = self.state.as_mut() else {
                    return Ok(());
                };
                if !state.refresh_shares(context.out()) {
                    return Err(too_much_held(state.peer(), context));
                }
                return Ok(());
            }
            Err(event) => event,
        };
        let event = match event.downcast::<SharedHandover>() {
            Ok(handover) => {
                let Some(state) = self.state.as_mut() else {
                    return Ok(());
                };
                for outgoing in handover.0 {
                    if !state.send_or_hold(outgoing, context.out()) {
                        return Err(too_much_held(state.peer(), context));
                    }
                }
                return Ok(());
            }
            Err(event) => event,
        };
        if event.downcast::<TakenOver>().is_ok() {
            if let Some(state) = self.state.as_ref() {
                disconnect_with(
                    state.peer(),
                    ReasonCode::SessionTakenOver,
                    "another connection with this client id took the session over",
                    context.out(),
                );
            }
            return Err(close("MQTT: session taken over"));
        }
        Ok(())
    }

    /// After every event of the session: writes the note of its deliveries
    /// when they changed, and frees the QoS 1 and 2 state once it is
    /// settled.
    fn settle(&mut self, context: &mut SessionContext<'_>) {
        if let Some(state) = self.state.as_mut() {
            state.write_note(&self.listener.note_numbers, context);
            state.qos.release_if_settled();
        }
    }

    /// Handles the complete packets at the front of `input`. While a
    /// resumed session's state is read, packets wait.
    fn process(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        // The start of a packet left over from the input that waited for
        // the CONNACK goes before this input's bytes.
        let partial = self.state.as_mut().and_then(|state| state.extras.as_mut());
        if let Some(extras) = partial.filter(|extras| !extras.partial_input.is_empty()) {
            let partial = std::mem::take(&mut extras.partial_input);
            let rest = input.split();
            input.extend_from_slice(&partial);
            input.extend_from_slice(&rest);
        }
        loop {
            if let Some(state) = self.state.as_mut() {
                if let Some(restore) = state.restore.as_mut() {
                    restore.waiting_input.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
            }
            // The decoder refuses an oversized packet as soon as its fixed
            // header is in, before the body is buffered.
            let decoded = match &self.state {
                None => decode_connect(input, &self.listener.limits),
                Some(state) => decode(input, state.version, &self.listener.limits),
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
                disconnect_with(state.peer(), reason_code, reason, context.out());
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
            disconnect_with(state.peer(), reason_code, reason, context.out());
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
            Packet::PubRel(response) => self.release(response.packet_id, context),
            Packet::PubAck(response) => {
                if state.outbound_state(response.packet_id) == Some(Outbound::Qos1Sent) {
                    state.remove_outbound(response.packet_id);
                    state.deliveries_changed();
                    state.acknowledged(response.packet_id, context);
                    state.release_held(context);
                    state.resume_retained(context);
                }
                Ok(())
            }
            Packet::PubRec(response) => {
                let packet_id = response.packet_id;
                let known = state.outbound_state(packet_id) == Some(Outbound::Qos2Sent);
                if known && response.reason_code.is_error() {
                    // The client refused the message: the exchange ends here,
                    // and the topic's position moves past it as for any
                    // message the client took.
                    state.acknowledged(packet_id, context);
                    state.remove_outbound(packet_id);
                    state.deliveries_changed();
                    state.release_held(context);
                    state.resume_retained(context);
                    return Ok(());
                }
                if known {
                    // In a persistent session the PUBREL waits for the note
                    // of the release to be durable (which lists the message
                    // as done until its cursor is): after a crash the
                    // message is not sent again, and the PUBREL is (exactly
                    // once).
                    let mut writes_waiting = 0;
                    state.acknowledged(packet_id, context);
                    if let Some(in_flight) = state.qos.outbound.get_mut(&packet_id) {
                        in_flight.state = Outbound::Qos2Released;
                        // Never sent again: only its packet id matters now.
                        in_flight.outgoing = None;
                        if std::mem::take(&mut in_flight.resend) {
                            state.qos.resends -= 1;
                        }
                    }
                    if state.persistent {
                        state.pubrel_after_note(packet_id);
                        writes_waiting += 1;
                    }
                    if let Some(in_flight) = state.qos.outbound.get_mut(&packet_id) {
                        in_flight.writes_waiting = writes_waiting;
                    }
                    if writes_waiting > 0 {
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
                if state.outbound_state(response.packet_id) == Some(Outbound::Qos2Released) {
                    state.remove_outbound(response.packet_id);
                    state.deliveries_changed();
                    state.release_held(context);
                    state.resume_retained(context);
                }
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                if state
                    .collecting
                    .contains_key(&Awaiting::SubAck(subscribe.packet_id))
                {
                    let reason = reused_packet_id("SUBSCRIBE", "SUBACK", subscribe.packet_id);
                    return self.violation(ReasonCode::ProtocolError, &reason, context);
                }
                if subscribe.filters.len() > FILTERS_PER_PACKET_MAX {
                    let reason = too_many_filters("SUBSCRIBE", subscribe.filters.len());
                    return self.violation(ReasonCode::QuotaExceeded, &reason, context);
                }
                self.subscribe(subscribe, context);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                if state
                    .collecting
                    .contains_key(&Awaiting::UnsubAck(unsubscribe.packet_id))
                {
                    let reason = reused_packet_id("UNSUBSCRIBE", "UNSUBACK", unsubscribe.packet_id);
                    return self.violation(ReasonCode::ProtocolError, &reason, context);
                }
                if unsubscribe.filters.len() > FILTERS_PER_PACKET_MAX {
                    let reason = too_many_filters("UNSUBSCRIBE", unsubscribe.filters.len());
                    return self.violation(ReasonCode::QuotaExceeded, &reason, context);
                }
                self.unsubscribe(unsubscribe, context);
                Ok(())
            }
            Packet::PingReq => {
                Packet::PingResp.encode(version, context.out());
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                // v5: the client may change its session's expiry, but not
                // give a session that was to end with the connection a life.
                // Such a DISCONNECT is a protocol error, not a normal one:
                // the will stays (it is sent as for any error).
                if let Some(expiry_s) = disconnect.properties.session_expiry_interval_s {
                    if state.session_expiry_s == 0 && expiry_s > 0 {
                        return self.violation(
                            ReasonCode::ProtocolError,
                            "a Session Expiry Interval above 0 in DISCONNECT after 0 in CONNECT \
                             is a protocol error",
                            context,
                        );
                    }
                    state.session_expiry_s = expiry_s;
                }
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
}

/// Why a SUBSCRIBE or UNSUBSCRIBE whose packet identifier an earlier one,
/// not answered yet, still holds is refused: the identifier is free again
/// only once its acknowledgement was sent (MQTT 2.2.1).
fn reused_packet_id(packet: &str, answer: &str, packet_id: u16) -> String {
    format!(
        "{packet} reuses packet identifier {packet_id}, still held by an earlier {packet} \
         not answered yet (a protocol error, MQTT 2.2.1); wait for its {answer} or use \
         another identifier"
    )
}

fn too_many_filters(packet: &str, count: usize) -> String {
    format!(
        "{packet} carries {count} topic filters; this server takes at most \
         {FILTERS_PER_PACKET_MAX} in one packet: send them in several"
    )
}

/// Closes the connection of a client that leaves too many messages
/// unacknowledged (v5: DISCONNECT 0x97, quota exceeded).
fn too_much_held(peer: Peer, context: &mut SessionContext<'_>) -> Close {
    // Rare and worth knowing about (the client loses its connection): the
    // operator sees who and why.
    log::info!(
        "MQTT client at {}: closing: more than {HELD_MESSAGES_MAX} QoS 1/2 messages wait \
         behind its unacknowledged ones (it acknowledges slower than they come; a persistent \
         session would resume from the log)",
        context.peer()
    );
    disconnect_with(
        peer,
        ReasonCode::QuotaExceeded,
        "too many unacknowledged messages; acknowledge what you receive",
        context.out(),
    );
    close("MQTT: the client does not acknowledge its messages")
}

/// Closes the connection of a client that fell behind on `topic` (reached
/// through a wildcard filter) when the topic's own subscription, which was
/// to bring its messages from the log, was refused: the connection cannot
/// get them any more (a persistent session resumes them from the log).
fn cannot_read_on(
    peer: Peer,
    topic: &str,
    error: &BrokerError,
    context: &mut SessionContext<'_>,
) -> Close {
    log::warn!(
        "MQTT client at {}: closing: it fell behind on {topic:?} and the subscription to read \
         on from the log was refused ({error}); check that its roles allow subscribing to \
         the topics its wildcard filters match",
        context.peer()
    );
    disconnect_with(
        peer,
        ReasonCode::QuotaExceeded,
        "too many unacknowledged messages, and the rest cannot be read from the log",
        context.out(),
    );
    close("MQTT: the client fell behind and cannot read on from the log")
}

/// The v5 reason code for a refused publish, among those a PUBACK or
/// PUBREC may carry (MQTT 3.4.2.1, 3.5.2.1); the reason string says more.
fn publish_reason(error: &BrokerError) -> ReasonCode {
    match error {
        BrokerError::Denied(_) => ReasonCode::NotAuthorized,
        BrokerError::InvalidArgument(_) => ReasonCode::TopicNameInvalid,
        BrokerError::TooLarge {
            what: "channel name",
            ..
        } => ReasonCode::TopicNameInvalid,
        BrokerError::RateLimited(_) | BrokerError::StorageFull { .. } => ReasonCode::QuotaExceeded,
        BrokerError::ShuttingDown => ReasonCode::UnspecifiedError,
        _ => ReasonCode::ImplementationSpecificError,
    }
}

/// The properties of an acknowledgement that refuses: the reason, where
/// the client takes one.
fn refusal_properties(state: &Connected, reason: &str) -> Properties {
    let mut properties = Properties::default();
    if state.problem_information {
        properties.reason_string = state.peer().reason_string(reason);
    }
    properties
}

/// Whether `channel` can be an MQTT topic name (other front ends may name
/// channels with the wildcard characters, which a topic name may not hold:
/// MQTT 4.7.1-1).
pub(super) fn is_topic_name(channel: &str) -> bool {
    !channel.contains(['+', '#'])
}

/// Who a packet the server makes up goes to: the protocol version, and the
/// client's Maximum Packet Size (0: none), which a reason string may not
/// take the packet over (MQTT 3.4.2-2, 3.14.2-3, 3.2.2-19: left out then).
#[derive(Clone, Copy)]
pub(super) struct Peer {
    pub(super) version: ProtocolVersion,
    pub(super) packet_bytes_max: usize,
}

/// Bytes a v5 acknowledgement, DISCONNECT or CONNACK takes besides its
/// reason string (fixed header, packet id, reason code, lengths, the
/// property's identifier and string length), rounded up.
const REASON_PACKET_OVERHEAD: usize = 16;

impl Peer {
    /// A peer whose limits are not known yet (before its CONNECT).
    pub(super) fn of(version: ProtocolVersion) -> Peer {
        Peer {
            version,
            packet_bytes_max: 0,
        }
    }

    /// `reason` as a v5 reason string, cut short, when the client takes
    /// one that long.
    pub(super) fn reason_string(self, reason: &str) -> Option<String> {
        let text = cut(reason);
        let fits = self.packet_bytes_max == 0
            || text.len() + REASON_PACKET_OVERHEAD <= self.packet_bytes_max;
        (self.version == ProtocolVersion::V5 && !text.is_empty() && fits).then_some(text)
    }
}

fn disconnect(version: ProtocolVersion, reason_code: ReasonCode, out: &mut BytesMut) {
    disconnect_with(Peer::of(version), reason_code, "", out);
}

fn disconnect_with(peer: Peer, reason_code: ReasonCode, reason: &str, out: &mut BytesMut) {
    let version = peer.version;
    if version == ProtocolVersion::V5 {
        let properties = Properties {
            reason_string: peer.reason_string(reason),
            ..Properties::default()
        };
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

/// A stored message for unit tests: `body` at `seq` (and offset), stamped
/// `timestamp_ms`.
#[cfg(test)]
fn test_message(seq: u64, timestamp_ms: u64, body: Bytes) -> Message {
    Message {
        seq,
        offset: seq,
        timestamp_ms,
        kind: kind::MESSAGE,
        sender: Bytes::new(),
        client_message_id: Bytes::new(),
        relation: 0,
        headers: Bytes::new(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes an MQTT session may take (every connection's session is one
    /// allocation of this size, idle or not; 224 is one of mimalloc's size
    /// classes, so a few bytes more cost 32). What only some sessions use
    /// belongs in a box allocated when needed (`Extras`, `Qos`, `Restore`,
    /// the will).
    const MQTT_SESSION_BYTES_MAX: usize = 224;

    #[test]
    fn an_idle_session_stays_small() {
        let session = std::mem::size_of::<MqttSession>();
        assert!(
            session <= MQTT_SESSION_BYTES_MAX,
            "an MQTT session takes {session} bytes (its `Connected` {}), more than \
             MQTT_SESSION_BYTES_MAX ({MQTT_SESSION_BYTES_MAX}): box what idle sessions do not use",
            std::mem::size_of::<Connected>()
        );
    }
}
