//! A connection's outbound QoS 1 and 2 traffic: packet ids, the client's
//! Receive Maximum, messages held in order, and a persistent session's
//! cursors.

use super::*;

/// Where an outbound QoS 1 or 2 message is in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outbound {
    /// QoS 1, sent, waiting for PUBACK.
    Qos1Sent,
    /// QoS 2, sent, waiting for PUBREC.
    Qos2Sent,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Qos2Released,
}

/// One message on its way to this client: what a PUBLISH is made of.
#[derive(Clone, Debug)]
pub(super) struct Outgoing {
    pub(super) topic: Arc<str>,
    pub(super) message: Message,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    /// The Subscription Identifiers of the matching subscriptions (v5).
    pub(super) subscription_ids: Vec<u32>,
    /// The shared subscription it goes out through, when only shared ones
    /// matched (its filter, `$share/<group>/<filter>`).
    pub(super) share: Option<String>,
}

/// An outbound QoS 1 or 2 message not yet acknowledged. The message is kept
/// so that a persistent session resends it, with its packet id and DUP, when
/// the client comes back (MQTT 4.4).
///
/// INVARIANT: `outgoing` is `None` only in state `Qos2Released` (the
/// PUBLISH is never sent again; a released packet id restored from the log
/// after a restart has no message).
#[derive(Clone, Debug)]
pub(super) struct InFlight {
    pub(super) state: Outbound,
    /// When it was sent, to resend in the same order.
    pub(super) order: u64,
    pub(super) outgoing: Option<Outgoing>,
    /// Writes the PUBREL still waits for (the note of its release).
    pub(super) writes_waiting: u8,
    /// Taken over from an earlier connection and not sent on this one yet:
    /// the client's Receive Maximum had no room (MQTT-3.3.4-9). Sent again,
    /// oldest first, as acknowledgements make room (`resend_waiting`).
    pub(super) resend: bool,
}

/// Seqs of a persistent session's cursor topics above the cursor that the
/// client was sent, at most this many per connection: a redelivery from the
/// log after a reconnect skips them. A client that leaves one message
/// unacknowledged while thousands after it are acknowledged stops being
/// recorded here; after a reconnect it may then receive some of those again.
pub(super) const DELIVERED_ABOVE_CURSOR_MAX: usize = HELD_MESSAGES_MAX;

/// Records of a topic's cursor read to restore it, taking the highest. A
/// cursor never moves back, but a connection's last cursor writes may
/// still be on their way to the log when it closes, and land after the
/// writes of the next connection (from another shard); each connection has
/// at most two writes of a topic's cursor in flight (one at a time, and one
/// more as it closes), so this covers eight connections in a row whose
/// writes all land late.
pub(super) const CURSOR_RECORDS_READ: u32 = 16;

impl Connected {
    /// The state of outbound message `packet_id`, if it is in flight.
    pub(super) fn outbound_state(&self, packet_id: u16) -> Option<Outbound> {
        self.qos
            .outbound
            .get(&packet_id)
            .map(|in_flight| in_flight.state)
    }

    /// A free packet id for an outbound message.
    pub(super) fn take_packet_id(&mut self) -> u16 {
        loop {
            self.qos.next_packet_id = self.qos.next_packet_id.wrapping_add(1).max(1);
            if !self.qos.outbound.contains_key(&self.qos.next_packet_id) {
                return self.qos.next_packet_id;
            }
        }
    }

    /// True when `outgoing` comes from a topic whose cursor this session
    /// keeps: it is sent again from the log after a reconnect.
    pub(super) fn is_of_cursor_topic(&self, outgoing: &Outgoing) -> bool {
        self.persistent
            && outgoing.message.seq > 0
            && self.qos.cursors.contains_key(&outgoing.topic)
    }

    /// Encodes `outgoing` into `out`, or holds it when the window is full
    /// (or others wait before it, to keep the order). A message of a cursor
    /// topic that the client already has (redelivered from the log after a
    /// reconnect) is skipped. Returns false when too much is held.
    pub(super) fn send_or_hold(&mut self, outgoing: Outgoing, out: &mut BytesMut) -> bool {
        if outgoing.qos != QoS::AtMostOnce && self.already_delivered(&outgoing) {
            return true;
        }
        if outgoing.qos != QoS::AtMostOnce
            && (self.qos.outbound.len() >= usize::from(self.window) || !self.qos.held.is_empty())
        {
            if self.qos.held.len() >= HELD_MESSAGES_MAX {
                return false;
            }
            self.qos.held.push_back(outgoing);
            return true;
        }
        self.send_now(outgoing, out);
        true
    }

    fn already_delivered(&self, outgoing: &Outgoing) -> bool {
        // At or below its topic's cursor the client acknowledged it. This
        // catches a redelivery from the log that comes after the client
        // acknowledged the same message resent from the previous connection
        // (the cursor then passed it, and `delivered` forgot it).
        let seq = outgoing.message.seq;
        if self.persistent
            && seq > 0
            && self
                .qos
                .cursors
                .get(&outgoing.topic)
                .is_some_and(|cursor| seq <= *cursor)
        {
            return true;
        }
        self.extras.as_ref().is_some_and(|extras| {
            extras
                .delivered
                .get(&outgoing.topic)
                .is_some_and(|seqs| seqs.contains(&outgoing.message.seq))
        })
    }

    /// Sends `outgoing` now, numbered when its QoS needs it (a persistent
    /// session's numbered PUBLISH waits for the note that lists it); a
    /// message that expired while it waited is dropped.
    pub(super) fn send_now(&mut self, outgoing: Outgoing, out: &mut BytesMut) {
        // The clock only matters to a message with properties (its expiry).
        let headers = &outgoing.message.headers;
        let now_ms = if headers.is_empty() {
            0
        } else {
            wall_clock_ms()
        };
        let Some(mut properties) = properties_of(headers, now_ms) else {
            return;
        };
        properties.subscription_identifiers = outgoing.subscription_ids.clone();
        if !self.fits(&outgoing, &properties) {
            // MQTT 3.1.2.24: discarded, as if it had been sent (and, at
            // QoS 1 and 2, acknowledged: nothing waits for it).
            self.log_too_large(&outgoing);
            return;
        }
        match outgoing.qos {
            QoS::AtMostOnce => self.encode_publish(&outgoing, None, false, properties, out),
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let packet_id = self.take_packet_id();
                self.track(packet_id, &outgoing);
                let state = if outgoing.qos == QoS::AtLeastOnce {
                    Outbound::Qos1Sent
                } else {
                    Outbound::Qos2Sent
                };
                self.qos.next_order += 1;
                let in_flight = InFlight {
                    state,
                    order: self.qos.next_order,
                    outgoing: Some(outgoing.clone()),
                    writes_waiting: 0,
                    resend: false,
                };
                self.qos.outbound.insert(packet_id, in_flight);
                self.encode_noted(&outgoing, packet_id, false, properties, out);
            }
        }
    }

    /// Records where a numbered message of a cursor topic is, so its
    /// acknowledgement moves the cursor and a reconnect does not send it
    /// twice.
    pub(super) fn track(&mut self, packet_id: u16, outgoing: &Outgoing) {
        if !self.is_of_cursor_topic(outgoing) {
            return;
        }
        let seq = outgoing.message.seq;
        self.qos
            .positions
            .insert(packet_id, (outgoing.topic.clone(), seq));
        let delivered = self
            .extras()
            .delivered
            .entry(outgoing.topic.clone())
            .or_default();
        if delivered.len() < DELIVERED_ABOVE_CURSOR_MAX {
            delivered.insert(seq);
        }
    }

    /// The client took responsibility for outbound message `packet_id`
    /// (PUBACK, or PUBREC for QoS 2): in a persistent session, move the
    /// topic's cursor up to the highest seq below which nothing is still in
    /// flight or held, and write it unless a write of it is in flight.
    pub(super) fn acknowledged(&mut self, packet_id: u16, context: &mut SessionContext<'_>) {
        let Some((channel, seq)) = self.qos.positions.remove(&packet_id) else {
            return;
        };
        release_if_empty(&mut self.qos.positions);
        if !self.qos.cursors.contains_key(&channel) {
            // Not (or not yet) followed by this connection (a delivery an
            // older connection of the session handed over): a cursor
            // written now could outlive the record that the topic is
            // followed. It stays delivered (`Extras::delivered`).
            return;
        }
        let lowest_open = self
            .qos
            .positions
            .values()
            .filter(|(c, _)| *c == channel)
            .map(|(_, s)| *s)
            .chain(
                self.qos
                    .held
                    .iter()
                    .filter(|held| held.topic == channel && held.message.seq > 0)
                    .map(|held| held.message.seq),
            )
            .min();
        let cursor = match lowest_open {
            Some(open) if open < seq => open - 1,
            _ => seq,
        };
        let acknowledged = self.qos.cursors.get(&channel).copied().unwrap_or(0);
        if cursor <= acknowledged {
            return;
        }
        self.qos.cursors.insert(channel.clone(), cursor);
        if !self.qos.cursor_writes.contains_key(&channel) {
            // Otherwise written when the write in flight returns
            // (`cursor_written`).
            self.write_cursor(channel, cursor, context);
        }
    }

    /// Writes the cursor of `topic` at `seq`.
    pub(super) fn write_cursor(
        &mut self,
        topic: Arc<str>,
        seq: u64,
        context: &mut SessionContext<'_>,
    ) {
        let writing = self.qos.cursor_writes.entry(topic.clone()).or_insert(seq);
        *writing = (*writing).max(seq);
        let channel = topic.to_string();
        let request_id = next_request(self, Pending::CursorWritten { topic, seq });
        // The session's own bookkeeping, for a topic its subscription was
        // authorized for: written as the server, so the user's publish rate
        // limits do not refuse it (a refused write would send acknowledged
        // messages again after a reconnect).
        context.submit_as_server(
            request_id,
            Command::CursorSet {
                consumer: session_consumer(&self.client_id),
                channel,
                seq,
            },
        );
    }

    /// The write of `topic`'s cursor at `seq` returned. Durable, it lets
    /// go of the seqs it passed: they are never sent from the log again, so
    /// neither `delivered` nor the notes need them any more (kept until
    /// now, a note lists them as done: a crash before this write would
    /// otherwise send a completed QoS 2 message again as a new one). The
    /// latest write of the topic writes the position the client reached
    /// meanwhile, if it moved.
    pub(super) fn cursor_written(
        &mut self,
        topic: Arc<str>,
        seq: u64,
        error: Option<&BrokerError>,
        context: &mut SessionContext<'_>,
    ) {
        match error {
            None => {
                let extras = self.extras.as_mut();
                if let Some(delivered) = extras.and_then(|extras| extras.delivered.get_mut(&topic))
                {
                    *delivered = delivered.split_off(&(seq + 1));
                }
            }
            Some(error) => log::warn!(
                "mqtt {} (client {:?}): the cursor of {topic:?} was not stored: {error}",
                context.peer(),
                self.client_id
            ),
        }
        if self.qos.cursor_writes.get(&topic) != Some(&seq) {
            // A later write of this topic is still in flight.
            return;
        }
        self.qos.cursor_writes.remove(&topic);
        release_if_empty(&mut self.qos.cursor_writes);
        let acknowledged = self.qos.cursors.get(&topic).copied().unwrap_or(0);
        // After a failure the next acknowledgement tries again, rather than
        // a loop of writes against a log that refuses them.
        if error.is_none() && acknowledged > seq {
            self.write_cursor(topic, acknowledged, context);
        }
    }

    /// Reads the last records of `topic`'s cursor, as the server, for a
    /// restored subscription (`Pending::RestoreCursor`) whose position is
    /// at least `floor`.
    pub(super) fn read_cursor(
        &mut self,
        topic: String,
        floor: u64,
        context: &mut SessionContext<'_>,
    ) {
        let channel = cursor_channel(&session_consumer(&self.client_id), &topic);
        let pending = Pending::RestoreCursor { topic, floor };
        read_last_own(self, pending, channel, CURSOR_RECORDS_READ, context);
    }

    /// The connection closes: the positions acknowledged since the cursor
    /// writes in flight were asked for are written now (their replies come
    /// to no one; `delivered`, parked for the next connection, still holds
    /// those seqs in case it reads a cursor before the write).
    pub(super) fn cursors_at_close(&mut self, context: &mut SessionContext<'_>) {
        let recording = self.extras.as_ref().map(|extras| &extras.recording);
        let behind: Vec<(Arc<str>, u64)> = self
            .qos
            .cursor_writes
            .iter()
            .filter(|(topic, _)| !recording.is_some_and(|recording| recording.contains(*topic)))
            .filter_map(|(topic, writing)| {
                let acknowledged = *self.qos.cursors.get(topic)?;
                (acknowledged > *writing).then(|| (topic.clone(), acknowledged))
            })
            .collect();
        for (topic, seq) in behind {
            self.write_cursor(topic, seq, context);
        }
    }

    /// Records a change of a persistent session's subscriptions.
    pub(super) fn record(&mut self, event: serde_json::Value, context: &mut SessionContext<'_>) {
        if self.persistent {
            self.append_record(event, Pending::Fire, context);
        }
    }

    /// Appends `event` to the session's records, answered as `pending`
    /// (also for a session that is not persistent: a clean start ends an
    /// older one). With authentication on, the record names the user whose
    /// session it is.
    pub(super) fn append_record(
        &mut self,
        mut event: serde_json::Value,
        pending: Pending,
        context: &mut SessionContext<'_>,
    ) {
        if let Some(user) = context.verified_user() {
            event["user"] = serde_json::Value::from(&*user);
        }
        let session_id = self.session_id();
        if session_id != 0 && event.get("session").is_none() && event["type"] != "end" {
            event["session"] = session_id.into();
        }
        let request_id = next_request(self, pending);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: session_channel(&self.client_id).into(),
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Bytes::from(event.to_string()),
            },
        );
    }

    /// Messages in flight on this connection: sent and not acknowledged,
    /// taken-over ones waiting to be sent again left out.
    pub(super) fn on_the_wire(&self) -> usize {
        self.qos.outbound.len() - self.qos.resends
    }

    /// Keeps a message taken over from an earlier connection in flight
    /// without sending it: the window is full (`resend_waiting` sends it).
    pub(super) fn resend_later(&mut self, packet_id: u16, mut in_flight: InFlight) {
        in_flight.resend = true;
        if self.qos.outbound.insert(packet_id, in_flight).is_none() {
            self.qos.resends += 1;
        }
    }

    /// Removes outbound message `packet_id` (acknowledged, or refused).
    pub(super) fn remove_outbound(&mut self, packet_id: u16) -> Option<InFlight> {
        let removed = self.qos.outbound.remove(&packet_id);
        if removed.as_ref().is_some_and(|in_flight| in_flight.resend) {
            self.qos.resends -= 1;
        }
        release_if_empty(&mut self.qos.outbound);
        removed
    }

    /// Sends again, oldest first, the taken-over messages that waited for
    /// room in the client's Receive Maximum, with their packet ids and DUP.
    /// Their delivery started on the earlier connection, so one that expired
    /// meanwhile still goes, with the least expiry left (as a QoS 2 message
    /// does at the resume: `properties_to_resend`).
    fn resend_waiting(&mut self, context: &mut SessionContext<'_>) {
        if self.qos.resends == 0 {
            return;
        }
        let now_ms = wall_clock_ms();
        while self.qos.resends > 0 && self.on_the_wire() < usize::from(self.window) {
            let Some((packet_id, in_flight)) = self
                .qos
                .outbound
                .iter_mut()
                .filter(|(_, in_flight)| in_flight.resend)
                .min_by_key(|(_, in_flight)| in_flight.order)
            else {
                self.qos.resends = 0;
                return;
            };
            let packet_id = *packet_id;
            in_flight.resend = false;
            let outgoing = in_flight.outgoing.clone();
            self.qos.resends -= 1;
            let Some(outgoing) = outgoing else {
                continue;
            };
            let mut properties =
                properties_to_resend(&outgoing.message.headers, now_ms, QoS::ExactlyOnce)
                    .unwrap_or_default();
            properties.subscription_identifiers = outgoing.subscription_ids.clone();
            if !self.fits(&outgoing, &properties) {
                self.remove_outbound(packet_id);
                self.forget_too_large(packet_id, &outgoing, context);
                continue;
            }
            self.encode_noted(&outgoing, packet_id, true, properties, context.out());
        }
    }

    /// Sends held messages, oldest first, while the window has room.
    pub(super) fn release_held(&mut self, context: &mut SessionContext<'_>) {
        self.resend_waiting(context);
        while self.qos.outbound.len() < usize::from(self.window) {
            let Some(outgoing) = self.qos.held.pop_front() else {
                return;
            };
            self.send_now(outgoing, context.out());
        }
    }
}

impl Connected {
    /// Whether every one of `messages` of `channel` is far below the
    /// client's Maximum Packet Size (or it announced none), as `fits` first
    /// looks.
    pub(super) fn all_fit_roughly(&self, channel: &str, messages: &[Message]) -> bool {
        let max = self.client_packet_bytes_max();
        max == 0
            || messages
                .iter()
                .all(|m| m.body.len() + channel.len() + m.headers.len() + 64 <= max)
    }

    pub(super) fn log_too_large(&self, outgoing: &Outgoing) {
        log::debug!(
            "mqtt client {:?}: a message of {:?} is larger than its Maximum Packet Size ({} bytes): not sent",
            self.client_id,
            outgoing.topic,
            self.client_packet_bytes_max()
        );
    }

    /// Forgets in-flight message `packet_id` of an earlier connection (taken
    /// out of the outbound window by the caller) instead of sending it again:
    /// it is larger than this connection's Maximum Packet Size (MQTT
    /// 3.1.2.25: discarded, as if its sending had completed, so acknowledged:
    /// the topic's cursor moves past it, as for one that expired).
    pub(super) fn forget_too_large(
        &mut self,
        packet_id: u16,
        outgoing: &Outgoing,
        context: &mut SessionContext<'_>,
    ) {
        self.log_too_large(outgoing);
        self.acknowledged(packet_id, context);
        if outgoing.qos == QoS::ExactlyOnce {
            self.release_packet_id(packet_id, context.out());
        }
        self.deliveries_changed();
    }

    /// Whether the PUBLISH of `outgoing` stays within the client's Maximum
    /// Packet Size (counted with its whole topic name, a packet id, and a
    /// topic alias when the client takes them).
    pub(super) fn fits(&self, outgoing: &Outgoing, properties: &Properties) -> bool {
        let max = self.client_packet_bytes_max();
        // Far below it (most messages): no need to count exactly. A
        // subscription identifier takes up to 5 bytes.
        let rough = outgoing.message.body.len()
            + outgoing.topic.len()
            + outgoing.message.headers.len()
            + 5 * outgoing.subscription_ids.len();
        if max == 0 || rough + 64 <= max {
            return true;
        }
        // The first PUBLISH that sets a topic alias carries the whole
        // topic and the alias (3 bytes).
        let alias_bytes = if self.client_topic_alias_maximum > 0 {
            3
        } else {
            0
        };
        let mut encoded = BytesMut::new();
        Packet::Publish(Publish {
            dup: false,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic: outgoing.topic.to_string(),
            packet_id: (outgoing.qos != QoS::AtMostOnce).then_some(1),
            properties: properties.clone(),
            payload: outgoing.message.body.clone(),
        })
        .encode(self.version, &mut encoded);
        encoded.len() + alias_bytes <= max
    }

    /// Encodes the PUBLISH of `outgoing` with `properties` (the message's
    /// own and the subscription identifiers), naming its topic by an alias
    /// when the client has room for one.
    pub(super) fn encode_publish(
        &mut self,
        outgoing: &Outgoing,
        packet_id: Option<u16>,
        dup: bool,
        properties: Properties,
        out: &mut BytesMut,
    ) {
        self.encode_publish_in_turn(outgoing, packet_id, dup, properties, out, true);
    }

    /// Encodes a PUBLISH; `in_turn`: sent in the order encoded (false for
    /// one that waits for a durable note, which sets no topic alias).
    pub(super) fn encode_publish_in_turn(
        &mut self,
        outgoing: &Outgoing,
        packet_id: Option<u16>,
        dup: bool,
        mut properties: Properties,
        out: &mut BytesMut,
        in_turn: bool,
    ) {
        let (topic, alias) = match (self.client_topic_alias_maximum > 0, in_turn) {
            (true, true) => self.extras().aliases.outbound(&outgoing.topic),
            (true, false) => match self.extras.as_ref() {
                Some(extras) => extras.aliases.outbound_known(&outgoing.topic),
                None => (outgoing.topic.to_string(), None),
            },
            (false, _) => (outgoing.topic.to_string(), None),
        };
        properties.topic_alias = alias;
        Packet::Publish(Publish {
            dup,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic,
            packet_id,
            properties,
            payload: outgoing.message.body.clone(),
        })
        .encode(self.version, out);
    }
}
