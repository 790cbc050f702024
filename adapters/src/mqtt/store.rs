//! What a session keeps in the log: the subscriptions of a persistent
//! session, retained messages and their index, and the requests that read
//! them back.

use super::*;

/// Records the reason code of filter `index` of SUBSCRIBE or UNSUBSCRIBE
/// `packet_id`; returns every filter's code once all are in.
pub(super) fn collect(
    collecting: &mut HashMap<Awaiting, Collecting>,
    awaiting: Awaiting,
    index: usize,
    code: ReasonCode,
) -> Option<Collecting> {
    // A packet identifier is not reused while its answer is collected (the
    // session closes a client that tries), so the filter is there.
    *collecting.get_mut(&awaiting)?.codes.get_mut(index)? = Some(code);
    collect_complete(collecting, awaiting)
}

/// Every filter's code of SUBSCRIBE or UNSUBSCRIBE `packet_id`, once all
/// are in.
pub(super) fn collect_complete(
    collecting: &mut HashMap<Awaiting, Collecting>,
    awaiting: Awaiting,
) -> Option<Collecting> {
    let complete = collecting
        .get(&awaiting)
        .is_some_and(|entry| entry.codes.iter().all(Option::is_some));
    let done = complete.then(|| collecting.remove(&awaiting)).flatten();
    release_if_empty(collecting);
    done
}

/// Sends the UNSUBACK of a completed UNSUBSCRIBE.
pub(super) fn send_unsuback(
    state: &Connected,
    packet_id: u16,
    done: Collecting,
    context: &mut SessionContext<'_>,
) {
    Packet::UnsubAck(UnsubAck {
        packet_id,
        reason_codes: done.codes.into_iter().flatten().collect(),
        properties: Properties::default(),
    })
    .encode(state.version, context.out());
}

/// Where a persistent session's subscriptions are recorded.
pub(super) fn session_channel(client_id: &str) -> String {
    format!("$mqtt/session/{client_id}")
}

/// The cursor consumer of a persistent session (cursor consumer names may
/// not hold `/`).
pub(super) fn session_consumer(client_id: &str) -> String {
    format!("mqtt.{}", client_id.replace('%', "%25").replace('/', "%2F"))
}

/// A session as its records say.
#[derive(Default)]
pub(super) struct StoredSession {
    /// There is a session to resume (it exists, has not ended and has not
    /// expired).
    pub(super) present: bool,
    pub(super) subscriptions: Vec<Subscription>,
    /// When each filter was subscribed (ms since the Unix epoch).
    pub(super) subscribed_at_ms: HashMap<String, u64>,
    /// Topics followed with cursors for wildcard filters.
    pub(super) followed_topics: BTreeSet<String>,
    /// Where each topic's position starts in this session (the `from` of
    /// its `subscribe` or `topic` record, minus one): its cursor is never
    /// restored below it, so a cursor record of an older session of the
    /// client id (the cursor channel is the client id's) does not count
    /// when this session's first cursor write was lost.
    pub(super) cursor_floors: HashMap<String, u64>,
    /// The id its `start` record gave it (0: none).
    pub(super) session_id: u64,
    /// Its last connection left a delayed will that is still pending (a
    /// resume cancels it, and records that).
    pub(super) will_pending: bool,
    /// The user whose session it is (records carry the user when
    /// authentication is on; `None` for a session recorded without).
    pub(super) owner: Option<String>,
}

impl StoredSession {
    /// Keeps where `topic`'s position starts, from the `from` of `event`
    /// (the first such record of the session counts: subscribing again
    /// keeps the position without a gap).
    fn keep_floor(&mut self, topic: &str, event: &serde_json::Value) {
        if let Some(from) = event["from"].as_u64() {
            let floor = from.saturating_sub(1);
            self.cursor_floors.entry(topic.to_string()).or_insert(floor);
        }
    }

    /// True when the session keeps a cursor for `topic` (a QoS 1 or 2
    /// subscription to it, or a topic followed for such a wildcard filter):
    /// its messages come again from the log after a reconnect.
    pub(super) fn keeps_cursor(&self, topic: &str) -> bool {
        self.subscriptions.iter().any(|subscription| {
            let filter = &subscription.filter;
            !subscription.is_shared()
                && subscription.qos() != QoS::AtMostOnce
                && (filter == topic
                    || (self.followed_topics.contains(topic) && pattern::matches(filter, topic)))
        })
    }
}

/// Records folded past a session's last snapshot that make its resume
/// write a new one (`snapshot_record`): a reconnect reads the records back
/// to the last snapshot only, not every record the client id ever wrote.
pub(super) const SNAPSHOT_AFTER: usize = 64;

/// The state of a fold of a session's records, what a `snapshot` record
/// keeps.
#[derive(Default)]
struct Fold {
    session: StoredSession,
    /// When the session expires (from its last `left` record).
    expires_at_ms: Option<u64>,
    /// After an `end`, records of what a session does are late ones of the
    /// ended session until a `start` (every session after an end begins
    /// with one).
    ended: bool,
}

impl Fold {
    /// Applies one record (not a snapshot).
    fn apply(&mut self, event: &serde_json::Value, timestamp_ms: u64) {
        let session = &mut self.session;
        let filter = event["filter"].as_str().unwrap_or_default();
        if event["type"] == "will-sent" {
            // Written by the keeper while the client is away: it changes
            // neither whether the session is there nor when it expires.
            session.will_pending = false;
            return;
        }
        // After a start with an id, records of what a session does count
        // only with that id: the others are late records of an older
        // session of the client id.
        let fenced = matches!(
            event["type"].as_str(),
            Some("subscribe" | "unsubscribe" | "topic" | "left" | "back")
        );
        if fenced
            && (self.ended
                || (session.session_id != 0
                    && event["session"].as_u64() != Some(session.session_id)))
        {
            return;
        }
        self.expires_at_ms = None;
        session.present = true;
        session.will_pending = false;
        match event["type"].as_str() {
            Some("start") => {
                self.ended = false;
                *session = StoredSession {
                    present: true,
                    session_id: event["session"].as_u64().unwrap_or(0),
                    ..StoredSession::default()
                }
            }
            Some("end") => {
                self.ended = true;
                *session = StoredSession::default();
                return;
            }
            Some("subscribe") => {
                session.subscriptions.retain(|s| s.filter != filter);
                session.subscriptions.push(Subscription::from_record(event));
                // Subscribing again to a filter keeps it without a gap.
                session
                    .subscribed_at_ms
                    .entry(filter.to_string())
                    .or_insert(timestamp_ms);
                session.keep_floor(filter, event);
            }
            Some("unsubscribe") => {
                session.subscriptions.retain(|s| s.filter != filter);
                session.subscribed_at_ms.remove(filter);
                session.cursor_floors.remove(filter);
                // Topics followed for it that no filter left matches are
                // not followed any more: subscribed to again, they start
                // from then, not from where they were left.
                let subscriptions = &session.subscriptions;
                session.followed_topics.retain(|topic| {
                    subscriptions
                        .iter()
                        .any(|s| pattern::matches(s.topic_filter(), topic))
                });
                let (subscriptions, followed) = (&session.subscriptions, &session.followed_topics);
                session.cursor_floors.retain(|key, _| {
                    followed.contains(key) || subscriptions.iter().any(|s| s.filter == *key)
                });
            }
            Some("topic") => {
                let topic = event["topic"].as_str().unwrap_or_default();
                session.followed_topics.insert(topic.to_string());
                session.keep_floor(topic, event);
            }
            Some("left") => {
                session.will_pending = event["will"].is_object();
                let expiry_s = event["expiry_s"].as_u64().unwrap_or(u64::from(u32::MAX));
                if expiry_s != u64::from(u32::MAX) {
                    let at_ms = event["at_ms"].as_u64().unwrap_or(0);
                    self.expires_at_ms = Some(at_ms.saturating_add(expiry_s * 1000));
                }
            }
            _ => {}
        }
        if let Some(user) = event["user"].as_str() {
            session.owner = Some(user.to_string());
        }
    }

    /// The fold as a `snapshot` record's `state`.
    fn to_json(&self) -> serde_json::Value {
        let session = &self.session;
        let subscriptions: Vec<serde_json::Value> = session
            .subscriptions
            .iter()
            .map(Subscription::record)
            .collect();
        serde_json::json!({
            "present": session.present,
            "ended": self.ended,
            "expires_at_ms": self.expires_at_ms,
            "session_id": session.session_id,
            "will_pending": session.will_pending,
            "owner": session.owner,
            "subscriptions": subscriptions,
            "subscribed_at_ms": session.subscribed_at_ms,
            "followed_topics": session.followed_topics,
            "cursor_floors": session.cursor_floors,
        })
    }

    /// The fold a `snapshot` record's `state` keeps.
    fn from_json(state: &serde_json::Value) -> Fold {
        let u64_map = |value: &serde_json::Value| -> HashMap<String, u64> {
            value
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(key, value)| Some((key.clone(), value.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let session = StoredSession {
            present: state["present"].as_bool().unwrap_or(false),
            subscriptions: state["subscriptions"]
                .as_array()
                .map(|list| list.iter().map(Subscription::from_record).collect())
                .unwrap_or_default(),
            subscribed_at_ms: u64_map(&state["subscribed_at_ms"]),
            followed_topics: state["followed_topics"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|topic| Some(topic.as_str()?.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            cursor_floors: u64_map(&state["cursor_floors"]),
            session_id: state["session_id"].as_u64().unwrap_or(0),
            will_pending: state["will_pending"].as_bool().unwrap_or(false),
            owner: state["owner"].as_str().map(str::to_string),
        };
        Fold {
            session,
            expires_at_ms: state["expires_at_ms"].as_u64(),
            ended: state["ended"].as_bool().unwrap_or(false),
        }
    }
}

/// A session's records, parsed, with where their fold starts: the state of
/// the last `snapshot` among them and the seq it covers (0 without one).
struct Parsed {
    events: Vec<(u64, u64, serde_json::Value)>,
    base: Fold,
    through: u64,
    /// Records past `through` (not counting snapshots).
    unfolded: usize,
}

fn parse_session(records: &[Message]) -> Parsed {
    let events: Vec<(u64, u64, serde_json::Value)> = records
        .iter()
        .filter_map(|record| {
            let event = serde_json::from_slice(&record.body).ok()?;
            Some((record.seq, record.timestamp_ms, event))
        })
        .collect();
    let last_snapshot = events
        .iter()
        .filter(|(_, _, event)| event["type"] == "snapshot")
        .max_by_key(|(_, _, event)| event["through"].as_u64().unwrap_or(0));
    let (base, through) = match last_snapshot {
        Some((_, _, event)) => (
            Fold::from_json(&event["state"]),
            event["through"].as_u64().unwrap_or(0),
        ),
        None => (Fold::default(), 0),
    };
    let unfolded = events
        .iter()
        .filter(|(seq, _, event)| *seq > through && event["type"] != "snapshot")
        .count();
    Parsed {
        events,
        base,
        through,
        unfolded,
    }
}

/// A session's records folded in order: `start` begins a session, `end`
/// ends it, `subscribe` and `unsubscribe` change it, and `left` (its
/// connection ended) says until when it lives without one, which `now_ms`
/// is checked against. A `snapshot` record holds the fold of the records
/// up to its `through` seq: the fold starts from the last one and goes on
/// with the records after that seq (`read_session` reads back to it).
pub(super) fn fold_session(records: &[Message], now_ms: u64) -> StoredSession {
    let Parsed {
        events,
        mut base,
        through,
        ..
    } = parse_session(records);
    for (seq, timestamp_ms, event) in &events {
        if *seq > through && event["type"] != "snapshot" {
            base.apply(event, *timestamp_ms);
        }
    }
    if base
        .expires_at_ms
        .is_some_and(|expires_at_ms| expires_at_ms <= now_ms)
    {
        return StoredSession::default();
    }
    base.session
}

/// The `snapshot` record of `records` (a session's records read back to
/// its last snapshot, `read_session`) once more than [`SNAPSHOT_AFTER`]
/// records follow that snapshot: the fold of every record read, through
/// the last one's seq.
pub(super) fn snapshot_record(records: &[Message]) -> Option<serde_json::Value> {
    let Parsed {
        events,
        mut base,
        through,
        unfolded,
    } = parse_session(records);
    if unfolded <= SNAPSHOT_AFTER {
        return None;
    }
    let mut last = through;
    for (seq, timestamp_ms, event) in &events {
        if *seq > through && event["type"] != "snapshot" {
            base.apply(event, *timestamp_ms);
        }
        last = last.max(*seq);
    }
    let snapshot =
        serde_json::json!({"type": "snapshot", "through": last, "state": base.to_json()});
    // A session following a great many topics reads its records back
    // further instead (a record's body has a limit).
    (snapshot.to_string().len() <= SNAPSHOT_BYTES_MAX).then_some(snapshot)
}

/// The largest `snapshot` record written.
const SNAPSHOT_BYTES_MAX: usize = 256 * 1024;

/// The `through` of a `snapshot` record (`None` for any other record).
fn snapshot_through(record: &Message) -> Option<u64> {
    // Most records are not snapshots: look for the marker before parsing
    // (a string value cannot hold it unescaped).
    const MARKER: &[u8] = br#""type":"snapshot""#;
    if !record
        .body
        .windows(MARKER.len())
        .any(|window| window == MARKER)
    {
        return None;
    }
    let event: serde_json::Value = serde_json::from_slice(&record.body).ok()?;
    (event["type"] == "snapshot").then(|| event["through"].as_u64().unwrap_or(0))
}

/// The seq to read a session's records before, after reading `page` (the
/// oldest of those read so far): `None` once the records read reach back
/// to the first one or to the records the newest snapshot among them
/// covers (`snapshot` keeps its `through` from page to page), or when the
/// page found nothing older.
pub(super) fn older_session_records(page: &[Message], snapshot: &mut Option<u64>) -> Option<u64> {
    for through in page.iter().filter_map(snapshot_through) {
        *snapshot = Some(snapshot.map_or(through, |known| known.max(through)));
    }
    let first = page.first()?.seq;
    let covered = snapshot.is_some_and(|through| first <= through + 1);
    (first > 1 && !covered).then_some(first)
}

/// Where a topic's retained message is kept: its last record (an empty body
/// means none).
pub(super) fn retained_channel(topic: &str) -> String {
    format!("$retained/{topic}")
}

/// Why a retained message of `topic` cannot be kept: its copy's channel
/// name (`$retained/<topic>`) would be over the broker's limit.
pub(super) fn retained_topic_too_long(topic: &str) -> Option<String> {
    let most = CHANNEL_BYTES_MAX - retained_channel("").len();
    (topic.len() > most).then(|| {
        format!("the topic of a retained message may be at most {most} bytes; use a shorter topic")
    })
}

/// The record that makes `payload` the retained message of `topic` (an
/// empty one clears it): a copy of the topic's message `seq` (0 when not
/// known), which the copy's `relation` keeps. Copies are written after
/// each publisher's answer, from its own shard, so two publishers' copies
/// can land in the other order than their messages: readers take the
/// copy of the newest message among the last few (`newest_retained`).
pub(super) fn retained_command(topic: &str, headers: Bytes, payload: Bytes, seq: u64) -> Command {
    let mut command = stored_message(retained_channel(topic), Bytes::new(), headers, payload);
    if let Command::Publish { relation, .. } = &mut command {
        *relation = seq;
    }
    command
}

/// Copies of a topic's retained message read to find the newest.
pub(super) const RETAINED_COPIES_READ: u32 = 8;

/// The topic's retained message among `copies` (the last of its
/// `$retained/…` channel, oldest first), `None` when it was cleared: the
/// copy of the newest message, by the topic seq each copy keeps. A copy
/// without one (a will that went out as its connection closed, or a copy
/// written before copies kept it) counts as newer than the copies before
/// it, as the last one written.
pub(super) fn newest_retained(copies: &[Message]) -> Option<&Message> {
    let mut newest: Option<(&Message, u64)> = None;
    for copy in copies {
        let seq = match (copy.relation, newest) {
            (0, Some((_, seq))) => seq,
            (seq, _) => seq,
        };
        if newest.is_none_or(|(_, newest_seq)| seq >= newest_seq) {
            newest = Some((copy, seq));
        }
    }
    newest
        .map(|(copy, _)| copy)
        .filter(|copy| !copy.body.is_empty())
}

/// A message stored in `channel` (under the idempotency key
/// `client_message_id`, when not empty).
pub(super) fn stored_message(
    channel: String,
    client_message_id: Bytes,
    headers: Bytes,
    body: Bytes,
) -> Command {
    Command::Publish {
        channel: channel.into(),
        ephemeral: false,
        kind: kind::MESSAGE,
        client_message_id,
        relation: 0,
        headers,
        body,
    }
}

/// The index of topics that have (or had) a retained message, one record
/// each, for wildcard subscriptions.
pub(super) const RETAINED_INDEX: &str = "$retained";

/// Sends the SUBACK of a completed SUBSCRIBE, then asks for the retained
/// messages of the filters granted (so they follow the SUBACK). A
/// persistent session records the subscriptions first, and the SUBACK
/// waits until they are durable: a restart right after it still has them.
pub(super) fn send_suback(
    state: &mut Connected,
    listener: &Listener,
    packet_id: u16,
    done: Collecting,
    context: &mut SessionContext<'_>,
) {
    let codes: Vec<ReasonCode> = done.codes.into_iter().flatten().collect();
    let mut records: Vec<serde_json::Value> = Vec::new();
    if state.persistent {
        for subscription in &done.granted {
            let mut record = subscription.record();
            // Where the subscription's position starts (`cursor_floors`).
            if let Some(cursor) = state.qos.cursors.get(subscription.filter.as_str()) {
                record["from"] = (cursor + 1).into();
            }
            records.push(record);
        }
    }
    let Some(last) = records.pop() else {
        return answer_suback(state, listener, packet_id, codes, done.retained, context);
    };
    for record in records {
        state.record(record, context);
    }
    // The records are one channel's: the last durable, all are.
    let answer = Box::new(SubAckAfter {
        packet_id,
        codes,
        retained: done.retained,
    });
    state.append_record(last, Pending::SubAckAfter(answer), context);
}

/// A SUBACK waiting for its subscriptions' records.
pub(super) struct SubAckAfter {
    pub(super) packet_id: u16,
    pub(super) codes: Vec<ReasonCode>,
    pub(super) retained: Vec<Subscription>,
}

/// Sends a SUBACK with `codes`, then asks for the retained messages of
/// `retained` (and sends the `$SYS` values they match, when the listener
/// serves them).
pub(super) fn answer_suback(
    state: &mut Connected,
    listener: &Listener,
    packet_id: u16,
    codes: Vec<ReasonCode>,
    retained: Vec<Subscription>,
    context: &mut SessionContext<'_>,
) {
    Packet::SubAck(SubAck {
        packet_id,
        reason_codes: codes,
        properties: Properties::default(),
    })
    .encode(state.version, context.out());
    if let Some(sys) = listener.sys.get() {
        send_sys_values(state, sys, &retained, context);
    }
    // Their reading starts now (`Extras::retained_subscribing`).
    let extras = state.extras();
    extras.retained_subscribing = extras.retained_subscribing.saturating_sub(retained.len());
    for subscription in retained {
        let (qos, id) = (subscription.qos(), subscription.id);
        if pattern::is_pattern(&subscription.filter) {
            // Its first page too waits while the client's queue is full
            // (several new filters at once, from a client already behind).
            let paging = state.start_paging(subscription.filter, qos, id);
            state.next_retained_page(paging, (1, Vec::new()), context);
        } else {
            read_retained(state, subscription.filter, qos, id, context);
        }
    }
}

/// Sends the current `$SYS` values that `subscriptions` match, each once,
/// as retained QoS 0 messages (they are not in the log: the `$SYS`
/// publisher's rounds are ephemeral).
fn send_sys_values(
    state: &mut Connected,
    sys: &crate::sys_topics::SysSource,
    subscriptions: &[Subscription],
    context: &mut SessionContext<'_>,
) {
    // `+` and `#` do not match `$` topics (MQTT 4.7.2): only filters that
    // start with `$SYS` can.
    let wanted: Vec<&Subscription> = subscriptions
        .iter()
        .filter(|subscription| subscription.filter.starts_with("$SYS"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    for (topic, value) in sys.values() {
        let Some(subscription) = wanted
            .iter()
            .find(|subscription| pattern::matches(&subscription.filter, topic))
        else {
            continue;
        };
        let mut properties = Properties::default();
        if state.version == ProtocolVersion::V5 {
            properties.subscription_identifiers = subscription.id.into_iter().collect();
        }
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: topic.to_string(),
            packet_id: None,
            properties,
            payload: Bytes::from(value),
        })
        .encode(state.version, context.out());
    }
}

/// Reads the retained message of `topic` for a new subscription (of the
/// topic, or of a wildcard filter matching it). Until it is answered, a
/// message of the topic that reaches the client live supersedes it
/// (`Connected::supersede_retained`): the read is asynchronous, so without
/// that the client could get the newer message first and be left with the
/// older retained one as the topic's last value.
pub(super) fn read_retained(
    state: &mut Connected,
    topic: String,
    qos: QoS,
    subscription_id: Option<u32>,
    context: &mut SessionContext<'_>,
) {
    let channel = retained_channel(&topic);
    state.extras().retained_reading += 1;
    let pending = Pending::RetainedRead {
        topic,
        qos,
        subscription_id,
    };
    read_last_own(state, pending, channel, RETAINED_COPIES_READ, context);
}

/// Records read per page of the retained-topic index.
pub(super) const RETAINED_INDEX_PAGE: u32 = 500;
/// Records read per page of a session's records.
pub(super) const SESSION_PAGE: u32 = 500;

/// A wildcard filter whose retained messages are being read from the
/// retained-topic index, page after page.
pub(super) struct RetainedPaging {
    pub(super) filter: String,
    pub(super) qos: QoS,
    pub(super) subscription_id: Option<u32>,
    /// Tells this reading from another of the same filter: one that an
    /// UNSUBSCRIBE ended reads no further when its page comes, even if the
    /// client subscribed to the filter again meanwhile (that subscription
    /// reads on its own).
    pub(super) id: u64,
}

/// A page of the retained-topic index that waits to be read (see
/// `Connected::resume_retained`).
pub(super) struct ParkedIndexPage {
    paging: RetainedPaging,
    next: (u64, Vec<String>),
}

impl Connected {
    /// Whether another page of retained messages fits beside what waits
    /// for the client's window and what is being read: within
    /// [`HELD_BEFORE_CATCH_UP`], so that retained messages (which cannot be
    /// read again, and wait whole) never reach [`HELD_MESSAGES_MAX`].
    /// Each page of the index being read counts whole: it may bring that
    /// many.
    fn retained_room(&self) -> bool {
        let (reading, index_reads) = self.extras.as_ref().map_or((0, 0), |extras| {
            (extras.retained_reading, extras.retained_index_reads)
        });
        let page = RETAINED_INDEX_PAGE as usize;
        self.qos.held.len() + reading + (index_reads + 1) * page <= HELD_BEFORE_CATCH_UP
    }

    /// Starts reading the retained messages of wildcard `filter`.
    fn start_paging(
        &mut self,
        filter: String,
        qos: QoS,
        subscription_id: Option<u32>,
    ) -> RetainedPaging {
        let extras = self.extras();
        let id = extras.retained_paging_next;
        extras.retained_paging_next += 1;
        extras.retained_pagings.push((filter.clone(), id));
        RetainedPaging {
            filter,
            qos,
            subscription_id,
            id,
        }
    }

    /// Frees the extras once nothing is kept there (after the retained
    /// reads of a subscription, often all it had them for).
    pub(super) fn drop_extras_if_unused(&mut self) {
        if self
            .extras
            .as_ref()
            .is_some_and(|extras| extras.is_unused())
        {
            self.extras = None;
        }
    }

    /// Whether `paging` still reads (no UNSUBSCRIBE of its filter ended it).
    pub(super) fn paging_goes_on(&self, paging: &RetainedPaging) -> bool {
        self.extras.as_ref().is_some_and(|extras| {
            extras
                .retained_pagings
                .iter()
                .any(|(_, id)| *id == paging.id)
        })
    }

    /// The next page of the retained-topic index for `paging`: read now,
    /// or once the client has taken enough of what waits for it.
    pub(super) fn next_retained_page(
        &mut self,
        paging: RetainedPaging,
        next: (u64, Vec<String>),
        context: &mut SessionContext<'_>,
    ) {
        if self.retained_room() {
            read_retained_index(self, paging, next, context);
            return;
        }
        let page = ParkedIndexPage { paging, next };
        self.extras().retained_parked.push_back(page);
    }

    /// The client took messages, or retained reads were answered: pages of
    /// the retained-topic index that waited are read while there is room.
    pub(super) fn resume_retained(&mut self, context: &mut SessionContext<'_>) {
        while self
            .extras
            .as_ref()
            .is_some_and(|extras| !extras.retained_parked.is_empty())
            && self.retained_room()
        {
            let Some(page) = self.extras().retained_parked.pop_front() else {
                return;
            };
            read_retained_index(self, page.paging, page.next, context);
        }
    }

    /// The client unsubscribed `filter`: pages of its retained messages
    /// that waited are not read any more.
    pub(super) fn forget_retained_pages(&mut self, filter: &str) {
        let Some(extras) = self.extras.as_mut() else {
            return;
        };
        extras
            .retained_parked
            .retain(|page| page.paging.filter != filter);
        // A page being read for it reads no further.
        extras
            .retained_pagings
            .retain(|(paging, _)| paging != filter);
        extras.forget_superseded_when_idle();
    }

    /// A filter's reading of the retained-topic index ended.
    pub(super) fn retained_paging_done(&mut self, paging: &RetainedPaging) {
        let extras = self.extras();
        extras.retained_pagings.retain(|(_, id)| *id != paging.id);
        extras.forget_superseded_when_idle();
    }

    /// `topic` reached the client live: while retained messages are being
    /// read, its own (older) is not sent after it.
    pub(super) fn supersede_retained(&mut self, topic: &Arc<str>) {
        if let Some(extras) = self.extras.as_mut() {
            if extras.reads_retained() {
                extras.retained_superseded.insert(topic.clone());
            }
        }
    }

    /// As [`Connected::supersede_retained`], for a topic given as text (no
    /// allocation unless a retained read is out).
    pub(super) fn supersede_retained_of(&mut self, topic: &str) {
        if let Some(extras) = self.extras.as_mut() {
            if extras.reads_retained() {
                extras.retained_superseded.insert(Arc::from(topic));
            }
        }
    }

    /// Whether the retained message of `topic` is older than a message of
    /// it the client already got live.
    pub(super) fn retained_superseded(&self, topic: &str) -> bool {
        self.extras
            .as_ref()
            .is_some_and(|extras| extras.retained_superseded.contains(topic))
    }
}

impl Extras {
    /// No retained message is being read any more: the topics that
    /// reached the client meanwhile no longer matter.
    pub(super) fn forget_superseded_when_idle(&mut self) {
        if !self.reads_retained() {
            self.retained_superseded = HashSet::new();
        }
    }

    /// Whether retained messages are being read, or are to be read once a
    /// SUBACK is out.
    fn reads_retained(&self) -> bool {
        self.retained_reading > 0
            || self.retained_index_reads > 0
            || self.retained_subscribing > 0
            || !self.retained_pagings.is_empty()
    }

    /// Whether every field is as `Connected::extras` makes it, so that the
    /// session keeps nothing here (destructured: a new field must say).
    pub(super) fn is_unused(&self) -> bool {
        let Extras {
            aliases,
            wildcard_since_ms,
            caught_up,
            catching_up,
            recording,
            session_id,
            shares,
            handed_over,
            delivered,
            client_packet_bytes_max,
            retained_reading,
            retained_index_reads,
            retained_subscribing,
            retained_pagings,
            retained_paging_next: _,
            retained_parked,
            partial_input,
            retained_superseded,
        } = self;
        aliases.is_empty()
            && wildcard_since_ms.is_empty()
            && caught_up.is_empty()
            && catching_up.is_empty()
            && recording.is_empty()
            && *session_id == 0
            && shares.is_empty()
            && handed_over.is_empty()
            && delivered.is_empty()
            && *client_packet_bytes_max == 0
            && *retained_reading == 0
            && *retained_index_reads == 0
            && *retained_subscribing == 0
            && retained_pagings.is_empty()
            && retained_parked.is_empty()
            && partial_input.is_empty()
            && retained_superseded.is_empty()
    }
}

/// Reads the page of the retained-topic index from seq `from` for
/// `paging`; `read` are the matching topics of the pages before (see
/// [`Pending::RetainedIndex`]).
pub(super) fn read_retained_index(
    state: &mut Connected,
    paging: RetainedPaging,
    (from, read): (u64, Vec<String>),
    context: &mut SessionContext<'_>,
) {
    state.extras().retained_index_reads += 1;
    let pending = Pending::RetainedIndex { paging, read };
    let (channel, query) = (RETAINED_INDEX.to_string(), HistoryQuery::From(from));
    read_history(
        state,
        Reader::Server,
        pending,
        channel,
        query,
        RETAINED_INDEX_PAGE,
        context,
    );
}

/// Who reads a page of history.
pub(super) enum Reader {
    /// The client, as its roles allow.
    Client,
    /// The server, for what it keeps in its reserved `$` channels on the
    /// client's behalf: the session's own records and QoS 2 notes, and the
    /// retained messages and topic index read for a subscription the broker
    /// granted (only topics that match its filter reach the client). A
    /// client's roles need not name `$` channels for its session to resume
    /// or for it to get the retained messages of what it may subscribe to.
    Server,
}

/// Reads a page of `channel`'s history as `reader`; the reply goes to
/// `pending`.
pub(super) fn read_history(
    state: &mut Connected,
    reader: Reader,
    pending: Pending,
    channel: String,
    query: HistoryQuery,
    limit: u32,
    context: &mut SessionContext<'_>,
) {
    let request_id = next_request(state, pending);
    let command = Command::History {
        channel,
        query,
        limit,
    };
    match reader {
        Reader::Client => context.submit(request_id, command),
        Reader::Server => context.submit_as_server(request_id, command),
    }
}

/// Reads the last `limit` records of `channel` as the server: the
/// session's own records, notes or cursor records, a topic's retained
/// copies.
pub(super) fn read_last_own(
    state: &mut Connected,
    pending: Pending,
    channel: String,
    limit: u32,
    context: &mut SessionContext<'_>,
) {
    let query = HistoryQuery::Last;
    read_history(
        state,
        Reader::Server,
        pending,
        channel,
        query,
        limit,
        context,
    );
}

/// Frees the table of a map that became empty: an idle connection keeps no
/// table for the requests and packets it once waited for.
pub(super) fn release_if_empty<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 0 {
        map.shrink_to_fit();
    }
}

/// Appends to a vector that is usually short (a connection's
/// subscriptions) without the spare room of doubling while it is short.
pub(super) fn push_compact<T>(vec: &mut Vec<T>, item: T) {
    if vec.len() < 4 {
        vec.reserve_exact(1);
    }
    vec.push(item);
}

pub(super) fn next_request(state: &mut Connected, pending: Pending) -> u32 {
    let request_id = state.next_request_id;
    state.next_request_id = state.next_request_id.wrapping_add(1).max(1);
    state.pending.insert(request_id, pending);
    request_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(seq: u64, timestamp_ms: u64, event: serde_json::Value) -> Message {
        test_message(seq, timestamp_ms, Bytes::from(event.to_string()))
    }

    #[test]
    fn a_session_is_present_until_it_ends_or_expires() {
        use serde_json::json;
        let subscribed = record(
            1,
            10,
            json!({"type": "subscribe", "filter": "a/+", "qos": 1}),
        );
        let left = record(
            2,
            20,
            json!({"type": "left", "at_ms": 1_000, "expiry_s": 60}),
        );
        let records = vec![subscribed.clone(), left.clone()];
        let kept = fold_session(&records, 60_999);
        assert!(kept.present);
        assert_eq!(kept.subscriptions.len(), 1);
        assert_eq!(kept.subscribed_at_ms.get("a/+"), Some(&10));
        assert!(!fold_session(&records, 61_000).present, "expired");
        let forever = record(
            2,
            20,
            json!({"type": "left", "at_ms": 0, "expiry_s": u32::MAX}),
        );
        assert!(fold_session(&[subscribed.clone(), forever], u64::MAX).present);
        let ended = record(3, 30, json!({"type": "end"}));
        assert!(!fold_session(&[subscribed.clone(), ended.clone()], 0).present);
        // What the ended session's connection records as it closes, after
        // the end (a clean start took it over), does not bring it back.
        let late = [
            json!({"type": "left", "at_ms": 0, "expiry_s": u32::MAX, "session": 5}),
            json!({"type": "subscribe", "filter": "b", "qos": 1}),
            json!({"type": "topic", "topic": "a/c", "session": 5}),
        ];
        for event in late {
            let records = [subscribed.clone(), ended.clone(), record(4, 40, event)];
            assert!(!fold_session(&records, 0).present);
        }
        // A later connection that did not leave yet (a crash) never expires.
        let again = record(3, 30, json!({"type": "topic", "topic": "a/b"}));
        let stored = fold_session(&[subscribed, left, again], u64::MAX);
        assert!(stored.present);
        assert!(stored.followed_topics.contains("a/b"));
    }

    #[test]
    fn a_session_belongs_to_the_user_its_records_name_until_it_ends() {
        use serde_json::json;
        let owner = |events: &[serde_json::Value]| {
            let records: Vec<Message> = (1..)
                .zip(events)
                .map(|(seq, event)| record(seq, seq * 10, event.clone()))
                .collect();
            fold_session(&records, 0).owner
        };
        let start = json!({"type": "start", "user": "alice"});
        let subscribed = json!({"type": "subscribe", "filter": "a", "qos": 1, "user": "alice"});
        let will_sent = json!({"type": "will-sent"});
        let alice = Some("alice".to_string());
        assert_eq!(owner(&[start.clone(), subscribed.clone()]), alice);
        assert_eq!(owner(&[subscribed.clone(), will_sent]), alice);
        // Recorded without authentication: nobody's.
        assert_eq!(owner(&[json!({"type": "subscribe", "filter": "a"})]), None);
        // An ended session is nobody's; the next start names its user.
        let end = json!({"type": "end", "user": "alice"});
        assert_eq!(owner(&[start.clone(), end.clone()]), None);
        let bob = json!({"type": "start", "user": "bob"});
        assert_eq!(owner(&[start, end, bob]), Some("bob".to_string()));
    }

    /// A session's records of every kind, two sessions of the client id,
    /// late records of the first, users, expiry, wills.
    fn varied_events() -> Vec<serde_json::Value> {
        use serde_json::json;
        vec![
            json!({"type": "start", "session": 1, "user": "alice"}),
            json!({"type": "subscribe", "filter": "a/+", "qos": 1, "session": 1, "id": 7}),
            json!({"type": "subscribe", "filter": "b", "qos": 2, "session": 1, "from": 4}),
            json!({"type": "topic", "topic": "a/x", "session": 1, "from": 3}),
            json!({"type": "subscribe", "filter": "$share/g/c", "qos": 1, "session": 1, "no_local": true}),
            json!({"type": "left", "at_ms": 1_000, "expiry_s": 3_600, "session": 1, "will": {"topic": "w"}}),
            json!({"type": "will-sent"}),
            json!({"type": "back", "session": 1}),
            json!({"type": "topic", "topic": "a/y", "session": 1}),
            json!({"type": "unsubscribe", "filter": "a/+", "session": 1}),
            json!({"type": "subscribe", "filter": "d/#", "qos": 1, "session": 1, "retain_as_published": true}),
            json!({"type": "topic", "topic": "d/e", "session": 1, "from": 9}),
            json!({"type": "left", "at_ms": 5_000, "expiry_s": 60, "session": 1}),
            json!({"type": "start", "session": 2, "user": "alice"}),
            json!({"type": "left", "at_ms": 6_000, "expiry_s": 60, "session": 1}),
            json!({"type": "subscribe", "filter": "e", "qos": 1, "session": 2}),
            json!({"type": "end"}),
            json!({"type": "subscribe", "filter": "late", "qos": 1, "session": 2}),
            json!({"type": "start", "session": 3, "user": "bob"}),
            json!({"type": "subscribe", "filter": "f/+", "qos": 1, "session": 3}),
            json!({"type": "topic", "topic": "f/g", "session": 3, "from": 2}),
            json!({"type": "left", "at_ms": 9_000, "expiry_s": 10, "session": 3}),
            json!({"type": "will-sent"}),
            json!({"type": "left", "at_ms": 9_100, "expiry_s": 10, "session": 3, "will": {"topic": "w"}}),
            json!({"type": "topic", "topic": "f/late", "session": 2}),
        ]
    }

    /// The fold of records as a comparable value (every field of the
    /// session and of the fold).
    fn folded(records: &[Message], now_ms: u64) -> serde_json::Value {
        let session = fold_session(records, now_ms);
        let mut fold = Fold {
            session,
            ..Fold::default()
        };
        fold.session
            .subscriptions
            .sort_by(|a, b| a.filter.cmp(&b.filter));
        fold.to_json()
    }

    /// A snapshot of the first `k` records folds on exactly as the records
    /// it stands for, at every `k` and every later end `m`, with a record
    /// written between its `through` and itself (another connection's),
    /// read in full or only back to what it covers.
    #[test]
    fn a_snapshot_folds_on_as_the_records_it_covers() {
        let events = varied_events();
        let plain: Vec<Message> = (1..)
            .zip(&events)
            .map(|(seq, event)| record(seq, seq * 10, event.clone()))
            .collect();
        for k in 1..plain.len() {
            let mut parsed = parse_session(&plain[..k]);
            for (_, timestamp_ms, event) in &parsed.events {
                parsed.base.apply(event, *timestamp_ms);
            }
            let state = parsed.base.to_json();
            let snapshot = json!({"type": "snapshot", "through": k as u64, "state": state});
            for m in k + 1..=plain.len() {
                // Records 1..=k+1, the snapshot of 1..=k, records k+2..=m.
                let mut records = plain[..=k].to_vec();
                records.push(record(0, 0, snapshot.clone()));
                records.extend(plain[k + 1..m].iter().cloned());
                for (seq, record) in (1..).zip(records.iter_mut()) {
                    record.seq = seq;
                }
                for now_ms in [0, 9_500, 20_000, u64::MAX] {
                    let expected = folded(&plain[..m], now_ms);
                    let case = format!("snapshot of {k} records, {m} records, at {now_ms}");
                    assert_eq!(folded(&records, now_ms), expected, "{case}, in full");
                    let read_back = &records[k..];
                    assert_eq!(folded(read_back, now_ms), expected, "{case}, read back");
                }
                let read_back = &records[k..];
                assert_eq!(older_session_records(read_back, &mut None), None);
                // One record less and it does not cover them: the page
                // before it does, by the snapshot the first page found.
                let mut found = None;
                let short = &records[k + 1..];
                assert_eq!(older_session_records(short, &mut found), Some(k as u64 + 2));
                assert_eq!(found, Some(k as u64));
                assert_eq!(older_session_records(&records[k..k + 1], &mut found), None);
            }
        }
    }

    /// A snapshot is written once more than SNAPSHOT_AFTER records follow
    /// the last one, through the last record read; without one, older
    /// records are read until the first.
    #[test]
    fn a_snapshot_is_written_after_enough_records() {
        let subscribed = |seq: u64| {
            let filter = format!("t/{seq}");
            record(
                seq,
                seq,
                json!({"type": "subscribe", "filter": filter, "qos": 1}),
            )
        };
        let records: Vec<Message> = (1..=SNAPSHOT_AFTER as u64).map(subscribed).collect();
        assert!(snapshot_record(&records).is_none());
        assert_eq!(older_session_records(&records[5..], &mut None), Some(6));
        assert_eq!(older_session_records(&[], &mut None), None, "nothing older");
        assert_eq!(
            older_session_records(&records, &mut None),
            None,
            "from the first"
        );
        let mut records = records;
        records.push(subscribed(SNAPSHOT_AFTER as u64 + 1));
        let snapshot = snapshot_record(&records).expect("one record too many");
        assert_eq!(snapshot["through"], SNAPSHOT_AFTER as u64 + 1);
        let mut after = vec![record(SNAPSHOT_AFTER as u64 + 2, 0, snapshot)];
        after.push(subscribed(SNAPSHOT_AFTER as u64 + 3));
        assert!(snapshot_record(&after).is_none(), "one record past it");
        let mut all = records.clone();
        all.extend(after.iter().cloned());
        assert_eq!(folded(&after, 0), folded(&all, 0));
        assert_eq!(
            fold_session(&after, 0).subscriptions.len(),
            SNAPSHOT_AFTER + 2
        );
    }

    /// The retained message is the copy of the newest message; a copy
    /// without a seq (an immediate will, an older copy) is newer than the
    /// copies before it; an empty newest copy clears it.
    #[test]
    fn the_newest_copy_is_the_retained_message() {
        let copy = |seq: u64, relation: u64, body: &'static str| Message {
            relation,
            ..test_message(seq, seq, Bytes::from_static(body.as_bytes()))
        };
        let newest = |copies: &[Message]| newest_retained(copies).map(|m| m.body.clone());
        let body = |text: &'static str| Some(Bytes::from_static(text.as_bytes()));
        assert_eq!(newest(&[]), None);
        assert_eq!(newest(&[copy(1, 5, "a"), copy(2, 3, "b")]), body("a"));
        assert_eq!(newest(&[copy(1, 3, "b"), copy(2, 5, "a")]), body("a"));
        assert_eq!(newest(&[copy(1, 5, "a"), copy(2, 0, "will")]), body("will"));
        assert_eq!(
            newest(&[copy(1, 5, "a"), copy(2, 0, "will"), copy(3, 4, "c")]),
            body("will")
        );
        assert_eq!(
            newest(&[copy(1, 5, "a"), copy(2, 0, "will"), copy(3, 6, "d")]),
            body("d")
        );
        assert_eq!(newest(&[copy(1, 0, "x"), copy(2, 0, "y")]), body("y"));
        assert_eq!(newest(&[copy(1, 6, ""), copy(2, 5, "a")]), None, "cleared");
        assert_eq!(newest(&[copy(1, 5, "a"), copy(2, 6, "")]), None, "cleared");
    }
}
