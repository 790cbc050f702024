//! QoS 2 state kept in the log, so that exactly once holds across a server
//! restart (MQTT 4.3.3, 4.4) for a persistent session: the packet ids it
//! received from the client and the client did not release yet, and the
//! packet ids of its deliveries it released (PUBREL sent) and the client
//! did not complete yet.
//!
//! Received: each QoS 2 message of a persistent session gets a key, unique
//! to it (a random number per connection, counted up), that goes in its
//! record's client message id. Before the message is stored, the session
//! notes its QoS 2 state in `$mqtt/qos2/<client id>` (each record is the
//! whole state; the channel's last record is the state); the PUBREC follows
//! the message's store. A PUBREL notes the state without the id, and the
//! PUBCOMP waits for that note, so a released id that the client uses again
//! is a new message. After a restart the resumed session reads the last
//! note: a PUBLISH with a noted id is stored again under its key, which the
//! broker's idempotent publish answers with the original record when it has
//! it (within its dedupe window, `dedupe_window_ms`).
//!
//! Released: the PUBREL of a delivery waits for the note that lists its
//! packet id (and for the cursor past the message); PUBCOMP notes the state
//! without it. A resumed session sends PUBREL again for each noted id right
//! after its CONNACK, after a restart too, never the PUBLISH.
//!
//! Sent: the note lists the packet id of each QoS 1 or 2 PUBLISH of a
//! stored message with where the message is in the log (topic and seq); a
//! QoS 2 PUBLISH is written to the socket only once that note is durable (a
//! QoS 1 one at once: at least once does not need the note, and waiting
//! would cost every QoS 1 delivery a durable write). PUBACK, PUBREC and
//! PUBCOMP change the state, and the next note says so; a PUBREL waits for
//! the note that lists its id as released.
//!
//! Notes are written by group commit ([`Noting`]): a session has at most
//! one in flight, and everything that changes while it is written (received
//! ids, releases both ways, new PUBLISHes, acknowledgements) waits for the
//! next one, so a busy session writes about one note per durable write of
//! its note's shard rather than one per message. After a restart the resumed session reads the messages of the
//! noted ids before its CONNACK and resends them right after it, with their
//! packet ids and DUP, in the order first sent (after the PUBRELs); the
//! redelivery from the cursors skips them.
//!
//! A non-persistent session keeps all this in memory: it ends with its
//! connection.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A QoS 2 message received from the client and not released yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Received {
    /// Its idempotency key (a persistent session's), in the client message
    /// id of its record.
    pub(super) key: Option<u64>,
    /// Stored, as this server process saw: a retransmission is only
    /// answered.
    pub(super) stored: bool,
}

/// Where a persistent session notes its QoS 2 state.
pub(super) fn qos2_channel(client_id: &str) -> String {
    format!("$mqtt/qos2/{client_id}")
}

/// The client message id of the record of the QoS 2 message with `key`.
pub(super) fn received_message_id(key: u64) -> Bytes {
    Bytes::from(format!("mqtt2/{key:016x}"))
}

/// Notes read to resume a session, taking the highest-numbered
/// ([`NoteNumbers`]). A session writes one note at a time, and one more as
/// its connection closes, so a closed connection has at most two on their
/// way to the log when the next connection starts (they may land after its
/// notes, coming from another shard): this covers eight connections in a
/// row whose last notes all land late.
pub(super) const NOTES_READ: u32 = 16;

/// Numbers the notes of a listener's sessions. Each number is higher than
/// that of every note made before it in this process (one counter) and
/// than those of earlier processes (it never runs behind the wall clock in
/// microseconds, and a resumed session raises it past the notes it read),
/// so of a session's last notes the highest-numbered is the newest,
/// whatever order they reached the log in.
#[derive(Default)]
pub(super) struct NoteNumbers(AtomicU64);

impl NoteNumbers {
    fn next(&self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64);
        let mut number = 0;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                number = (last + 1).max(now_us);
                Some(number)
            });
        number
    }

    /// Numbers from now on are higher than `number` (a note read).
    fn passed(&self, number: u64) {
        self.0.fetch_max(number, Ordering::Relaxed);
    }

    /// The newest of the notes in `records` (the last ones of a client
    /// id's note channel) of `session` (any with `None`), and makes later
    /// numbers higher than those of all of them. Notes written before
    /// they were numbered count as 0; of equal numbers the later in the
    /// log wins. A note of another session is a late one of an older
    /// session (the client started a new one, also while that one's
    /// connection was still open): it does not count.
    pub(super) fn newest(&self, records: &[Message], session: Option<u64>) -> Note {
        let notes: Vec<Note> = records
            .iter()
            .map(|record| Note::read(&record.body))
            .collect();
        if let Some(highest) = notes.iter().map(|note| note.number).max() {
            self.passed(highest);
        }
        notes
            .into_iter()
            .enumerate()
            .filter(|(_, note)| note.of_session(session))
            .max_by_key(|(index, note)| (note.number, *index))
            .map(|(_, note)| note)
            .unwrap_or_default()
    }
}

/// A session's QoS 2 state, and its QoS 1 and 2 deliveries in flight, as
/// noted in the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Note {
    /// Its place among the session's notes ([`NoteNumbers`]).
    pub(super) number: u64,
    /// The id of the session that wrote it (`StoredSession::session_id`;
    /// `None` in a note written before notes carried it, which counts for
    /// any session).
    pub(super) session: Option<u64>,
    /// Received packet ids and their keys, by packet id.
    pub(super) received: Vec<(u16, u64)>,
    /// Released outbound packet ids, in the order they were sent.
    pub(super) released: Vec<u16>,
    /// Outbound PUBLISHes not acknowledged yet, in the order they were
    /// sent.
    pub(super) sent: Vec<Sent>,
    /// Seqs of cursor topics that the client acknowledged (PUBACK, or
    /// PUBREC for QoS 2) above the topic's durable cursor: while an earlier
    /// message of the topic was still open, so that the cursor could not
    /// pass them, or while the write of the cursor past them was in flight.
    /// As runs: (topic, first seq, last seq). A redelivery from the cursor
    /// after a restart skips them (without this, a QoS 2 message completed
    /// out of order, or whose note was durable before its cursor, came
    /// again as a new message).
    pub(super) done: Vec<(String, u64, u64)>,
}

/// An outbound QoS 1 or 2 PUBLISH of a stored message, as noted: enough to
/// read the message from the log again and send the same PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) packet_id: u16,
    pub(super) topic: String,
    pub(super) seq: u64,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) subscription_ids: Vec<u32>,
    pub(super) share: Option<String>,
}

impl Sent {
    /// `[packet id, topic, seq, qos]`, and a fifth element
    /// `{"retain": true, "subscription_ids": […], "share": "…"}` with what
    /// is not the default.
    fn to_json(&self) -> serde_json::Value {
        let mut entry = serde_json::json!([self.packet_id, self.topic, self.seq, self.qos as u8]);
        let mut more = serde_json::Map::new();
        if self.retain {
            more.insert("retain".into(), true.into());
        }
        if !self.subscription_ids.is_empty() {
            more.insert(
                "subscription_ids".into(),
                self.subscription_ids.clone().into(),
            );
        }
        if let Some(share) = &self.share {
            more.insert("share".into(), share.clone().into());
        }
        if !more.is_empty() {
            entry
                .as_array_mut()
                .expect("an array")
                .push(serde_json::Value::Object(more));
        }
        entry
    }

    fn from_json(entry: &serde_json::Value) -> Option<Sent> {
        let qos = match entry[3].as_u64()? {
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        };
        let more = &entry[4];
        Some(Sent {
            packet_id: u16::try_from(entry[0].as_u64()?)
                .ok()
                .filter(|id| *id > 0)?,
            topic: entry[1].as_str()?.to_string(),
            // 0: the topic's retained message, sent at a SUBSCRIBE.
            seq: entry[2].as_u64()?,
            qos,
            retain: more["retain"].as_bool().unwrap_or(false),
            subscription_ids: more["subscription_ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| u32::try_from(id.as_u64()?).ok())
                        .collect()
                })
                .unwrap_or_default(),
            share: more["share"].as_str().map(str::to_string),
        })
    }
}

impl Note {
    /// True when the note counts for `session` (any note with `None`).
    fn of_session(&self, session: Option<u64>) -> bool {
        match (session, self.session) {
            (Some(session), Some(noted)) => session == noted,
            _ => true,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.received.is_empty()
            && self.released.is_empty()
            && self.sent.is_empty()
            && self.done.is_empty()
    }

    /// The note of `received` and of the released and sent messages in
    /// `outbound` (those of stored messages: a retained message sent at
    /// SUBSCRIBE has no seq of its topic and is not noted).
    fn of(
        number: u64,
        session: u64,
        received: &HashMap<u16, Received>,
        outbound: &HashMap<u16, InFlight>,
        done: Vec<(String, u64, u64)>,
    ) -> Note {
        let mut noted: Vec<(u16, u64)> = received
            .iter()
            .filter_map(|(packet_id, received)| Some((*packet_id, received.key?)))
            .collect();
        noted.sort_unstable();
        let mut in_order: Vec<(u64, u16, &InFlight)> = outbound
            .iter()
            .map(|(packet_id, in_flight)| (in_flight.order, *packet_id, in_flight))
            .collect();
        in_order.sort_unstable_by_key(|(order, _, _)| *order);
        let mut note = Note {
            number,
            session: Some(session),
            received: noted,
            done,
            ..Note::default()
        };
        for (_, packet_id, in_flight) in in_order {
            match (&in_flight.outgoing, in_flight.state) {
                (_, Outbound::Qos2Released) => note.released.push(packet_id),
                // Seq 0: a retained message sent at a SUBSCRIBE (read from
                // the topic's retained copy again after a restart).
                (Some(outgoing), _) if outgoing.message.seq > 0 || outgoing.retain => {
                    note.sent.push(Sent {
                        packet_id,
                        topic: outgoing.topic.to_string(),
                        seq: outgoing.message.seq,
                        qos: outgoing.qos,
                        retain: outgoing.retain,
                        subscription_ids: outgoing.subscription_ids.clone(),
                        share: outgoing.share.clone(),
                    })
                }
                _ => {}
            }
        }
        note
    }

    /// `{"n": number, "session": id, "received": [[packet id, key], …], "released": [packet id, …],
    /// "sent": [[packet id, topic, seq, qos], …], "done": [[topic, first
    /// seq, last seq], …]}` (`sent` and `done` only when there are some).
    /// Notes written before runs have `[topic, seq]` in `done`.
    fn body(&self) -> Bytes {
        let mut note = serde_json::json!({
            "n": self.number,
            "session": self.session.unwrap_or(0),
            "received": self.received,
            "released": self.released,
        });
        if !self.sent.is_empty() {
            let sent: Vec<serde_json::Value> = self.sent.iter().map(Sent::to_json).collect();
            note["sent"] = serde_json::Value::Array(sent);
        }
        if !self.done.is_empty() {
            note["done"] = serde_json::json!(self.done);
        }
        Bytes::from(note.to_string())
    }

    /// The note in `body` (an empty one from a body that is not a note).
    pub(super) fn read(body: &[u8]) -> Note {
        let Ok(note) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Note::default();
        };
        let entries = |name: &str| note[name].as_array().cloned().unwrap_or_default();
        Note {
            number: note["n"].as_u64().unwrap_or(0),
            session: note["session"].as_u64(),
            received: entries("received")
                .iter()
                .filter_map(|entry| {
                    let packet_id = u16::try_from(entry[0].as_u64()?).ok()?;
                    Some((packet_id, entry[1].as_u64()?))
                })
                .collect(),
            released: entries("released")
                .iter()
                .filter_map(|entry| u16::try_from(entry.as_u64()?).ok())
                .collect(),
            sent: entries("sent").iter().filter_map(Sent::from_json).collect(),
            done: entries("done")
                .iter()
                .filter_map(|entry| {
                    let first = entry[1].as_u64()?;
                    let last = entry.get(2).map_or(Some(first), |last| last.as_u64())?;
                    Some((entry[0].as_str()?.to_string(), first, last))
                })
                .collect(),
        }
    }
}

/// What waits for a note of a persistent session.
#[derive(Default)]
pub(super) struct NoteWaiters {
    /// The state to note changed since the last note was made.
    pub(super) changed: bool,
    /// PUBLISH packets to write once the note is durable.
    pub(super) publishes: BytesMut,
    /// Packet ids whose PUBREL waits for the note (one of their
    /// `InFlight::writes_waiting`).
    pub(super) pubrels: Vec<u16>,
    /// Received QoS 2 messages to store once their packet ids are noted.
    stores: Vec<Deferred>,
    /// Released received packet ids to complete (PUBCOMP) once noted.
    pubcomps: Vec<u16>,
}

/// The notes of a persistent session, written by group commit: at most one
/// is in flight, and what changes meanwhile waits for the next one.
#[derive(Default)]
pub(super) struct Noting {
    /// The request id of the note in flight.
    in_flight: Option<u32>,
    /// What the note in flight answers.
    covered: NoteWaiters,
    /// What the next note answers.
    pub(super) next: NoteWaiters,
}

impl Noting {
    /// No note in flight and none to write.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && !self.next.changed
    }

    /// A note is to be written and none is in flight.
    fn has_note_to_write(&self) -> bool {
        self.in_flight.is_none() && self.next.changed
    }
}

impl Connected {
    /// A key for a new QoS 2 message.
    pub(super) fn new_received_key(&mut self) -> u64 {
        self.next_received_key = self.next_received_key.wrapping_add(1);
        self.next_received_key
    }

    /// Notes the session's QoS 2 state and deliveries in flight (a
    /// persistent session's); `pending` answers the note, whose request id
    /// is returned.
    pub(super) fn note_qos2(
        &mut self,
        numbers: &NoteNumbers,
        pending: Pending,
        context: &mut SessionContext<'_>,
    ) -> u32 {
        let request_id = next_request(self, pending);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: qos2_channel(&self.client_id).into(),
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Note::of(
                    numbers.next(),
                    self.session_id(),
                    &self.qos.qos2_received,
                    &self.qos.outbound,
                    self.done_above_cursors(),
                )
                .body(),
            },
        );
        request_id
    }

    /// The seqs above their topics' durable cursors that were sent and are
    /// no longer in flight, as runs (see `Note::done`).
    fn done_above_cursors(&self) -> Vec<(String, u64, u64)> {
        let Some(extras) = self.extras.as_ref() else {
            return Vec::new();
        };
        // With acknowledgements in order, what was sent above a durable
        // cursor is what is in flight and what the cursor write in flight
        // passes: one run per topic.
        let open: HashSet<(&str, u64)> = self
            .qos
            .positions
            .values()
            .map(|(topic, seq)| (&**topic, *seq))
            .collect();
        let mut done: Vec<(String, u64, u64)> = Vec::new();
        for (topic, seqs) in &extras.delivered {
            let mut run: Option<(u64, u64)> = None;
            for &seq in seqs {
                if open.contains(&(&**topic, seq)) {
                    continue;
                }
                run = match run {
                    Some((first, last)) if last + 1 == seq => Some((first, seq)),
                    Some((first, last)) => {
                        done.push((topic.to_string(), first, last));
                        Some((seq, seq))
                    }
                    None => Some((seq, seq)),
                };
            }
            if let Some((first, last)) = run {
                done.push((topic.to_string(), first, last));
            }
        }
        done.sort_unstable();
        done
    }

    /// A resumed session's acknowledged seqs above its cursors (from its
    /// note, before a restart): a redelivery from the log skips them (also
    /// the catch-up of a topic whose record of being followed was lost).
    pub(super) fn restore_done(&mut self, done: Vec<(String, u64, u64)>) {
        for (topic, first, last) in done {
            let cursor = self.qos.cursors.get(topic.as_str()).copied().unwrap_or(0);
            let delivered = self.extras().delivered.entry(Arc::from(topic)).or_default();
            for seq in first.max(cursor + 1)..=last {
                if delivered.len() >= super::outbound::DELIVERED_ABOVE_CURSOR_MAX {
                    break;
                }
                delivered.insert(seq);
            }
        }
    }

    /// The outbound state of a persistent session changed (a delivery was
    /// acknowledged or completed): the next note says so.
    pub(super) fn deliveries_changed(&mut self) {
        if self.persistent {
            self.qos.noting.next.changed = true;
        }
    }

    /// Encodes a QoS 1 or 2 PUBLISH of `outgoing` as `packet_id`. In a
    /// persistent session the next note lists it, and a QoS 2 PUBLISH waits
    /// until that note is durable (sent before it, a message could come
    /// again after a restart as a new one: twice). A QoS 1 PUBLISH goes
    /// into `out` at once, like any PUBLISH of a session that is not
    /// persistent: at least once holds without the note, which only spares
    /// the client a new packet id for a message sent just before a crash,
    /// and waiting for it would cost every QoS 1 delivery a durable write.
    pub(super) fn encode_noted(
        &mut self,
        outgoing: &Outgoing,
        packet_id: u16,
        dup: bool,
        properties: Properties,
        out: &mut BytesMut,
    ) {
        if !self.persistent || outgoing.qos != QoS::ExactlyOnce {
            self.deliveries_changed();
            self.encode_publish(outgoing, Some(packet_id), dup, properties, out);
            return;
        }
        let mut waiting = std::mem::take(&mut self.qos.noting.next.publishes);
        let packet_id = Some(packet_id);
        self.encode_publish_in_turn(outgoing, packet_id, dup, properties, &mut waiting, false);
        let next = &mut self.qos.noting.next;
        next.publishes = waiting;
        next.changed = true;
    }

    /// The PUBREL of a released delivery waits for the next note.
    pub(super) fn pubrel_after_note(&mut self, packet_id: u16) {
        let next = &mut self.qos.noting.next;
        next.changed = true;
        next.pubrels.push(packet_id);
    }

    /// A received QoS 2 message is stored once the next note, which lists
    /// its packet id, is durable.
    pub(super) fn store_after_note(&mut self, deferred: Deferred) {
        let next = &mut self.qos.noting.next;
        next.changed = true;
        next.stores.push(deferred);
    }

    /// Writes the session's note when something changed and no note is in
    /// flight (called after every event of the session, so one note covers
    /// what an event and the events during the previous note's write
    /// changed).
    pub(super) fn write_note(&mut self, numbers: &NoteNumbers, context: &mut SessionContext<'_>) {
        if !self.persistent || self.restoring() || !self.qos.noting.has_note_to_write() {
            return;
        }
        let request_id = self.note_qos2(numbers, Pending::Noted, context);
        let noting = &mut self.qos.noting;
        noting.in_flight = Some(request_id);
        noting.covered = std::mem::take(&mut noting.next);
    }

    /// The connection ends: what changed since the last note is noted
    /// (nobody waits for it), so that the next connection, also after a
    /// restart, does not resend what the client acknowledged.
    pub(super) fn note_at_close(
        &mut self,
        numbers: &NoteNumbers,
        context: &mut SessionContext<'_>,
    ) {
        if self.persistent && self.qos.noting.next.changed {
            self.note_qos2(numbers, Pending::Fire, context);
        }
    }

    /// The note `request_id` is durable (or failed): the PUBLISH packets,
    /// PUBRELs and PUBCOMPs it covers go out, and the QoS 2 messages whose
    /// packet ids it lists are stored.
    pub(super) fn noted(
        &mut self,
        request_id: u32,
        error: Option<&BrokerError>,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let noting = &mut self.qos.noting;
        if noting.in_flight != Some(request_id) {
            return Ok(());
        }
        noting.in_flight = None;
        let covered = std::mem::take(&mut noting.covered);
        if let Some(error) = error {
            // Sent without the note, a delivery could come again after a
            // restart as a new message, and a completed packet id would still
            // count as received. What waited stays in flight: the next
            // connection resends it, and the client sends its PUBLISH or
            // PUBREL again.
            let reason = format!("the session's QoS state could not be noted ({error})");
            disconnect_with(
                self.peer(),
                ReasonCode::UnspecifiedError,
                &reason,
                context.out(),
            );
            return Err(close(reason));
        }
        context.out().extend_from_slice(&covered.publishes);
        for packet_id in covered.pubrels {
            self.pubrel_write_done(packet_id, context.out());
        }
        for packet_id in covered.pubcomps {
            Packet::PubComp(PublishResponse::success(packet_id))
                .encode(self.version, context.out());
        }
        for deferred in covered.stores {
            let Deferred {
                publish,
                headers,
                pending,
                key,
            } = deferred;
            self.store(publish, headers, pending, key, false, context);
        }
        Ok(())
    }

    /// A write the PUBREL of `packet_id` waits for is durable: the PUBREL
    /// goes out after the last one.
    pub(super) fn pubrel_write_done(&mut self, packet_id: u16, out: &mut BytesMut) {
        let Some(in_flight) = self.qos.outbound.get_mut(&packet_id) else {
            return;
        };
        in_flight.writes_waiting = in_flight.writes_waiting.saturating_sub(1);
        if in_flight.writes_waiting == 0 {
            Packet::PubRel(PublishResponse::success(packet_id)).encode(self.version, out);
        }
    }

    /// True while the QoS 2 message `packet_id` is being noted or stored.
    pub(super) fn storing(&self, packet_id: u16) -> bool {
        let noting = &self.qos.noting;
        let waiting = noting.covered.stores.iter().chain(&noting.next.stores);
        self.pending
            .values()
            .chain(waiting.map(|deferred| &deferred.pending))
            .any(|pending| stores_qos2(pending, packet_id))
    }

    /// Takes up the received packet ids a resumed session noted (before a
    /// restart): not seen stored by this process, so a retransmission is
    /// stored again under its key.
    pub(super) fn restore_received(&mut self, noted: &Note) {
        for (packet_id, key) in &noted.received {
            self.qos
                .qos2_received
                .entry(*packet_id)
                .or_insert(Received {
                    key: Some(*key),
                    stored: false,
                });
        }
    }

    /// Sends PUBREL again for the released packet ids a resumed session
    /// noted (before a restart), unless a parked state of this process
    /// knows the id better.
    pub(super) fn restore_released(&mut self, noted: &Note, out: &mut BytesMut) {
        for packet_id in &noted.released {
            if self.qos.outbound.contains_key(packet_id) {
                continue;
            }
            self.release_packet_id(*packet_id, out);
        }
    }

    /// Keeps outbound QoS 2 `packet_id` in flight as released and sends its
    /// PUBREL. Also for a message that is not sent again (gone from the
    /// log, or now larger than the client's Maximum Packet Size): the client
    /// may still hold its id (its PUBREC lost), and would take a new message
    /// with that id for the old one (MQTT 4.3.3); the PUBREL frees the id
    /// on both sides (a client that does not hold it answers PUBCOMP too).
    pub(super) fn release_packet_id(&mut self, packet_id: u16, out: &mut BytesMut) {
        self.qos.next_order += 1;
        let in_flight = InFlight {
            state: Outbound::Qos2Released,
            order: self.qos.next_order,
            outgoing: None,
            writes_waiting: 0,
            resend: false,
        };
        self.qos.outbound.insert(packet_id, in_flight);
        Packet::PubRel(PublishResponse::success(packet_id)).encode(self.version, out);
    }

    /// Sends again, with their packet ids and DUP, the PUBLISHes a resumed
    /// session noted (before a restart) and the client did not acknowledge,
    /// in the order first sent; `messages` are what the log holds at their
    /// seqs (none: gone, not sent). They are marked delivered, so that a
    /// redelivery from the log skips them (from a cursor, or the catch-up of
    /// a wildcard filter's topic the session had not recorded yet), and
    /// those of topics whose cursors the session keeps (`keeps_cursor`)
    /// move the cursor when acknowledged.
    pub(super) fn restore_sent(
        &mut self,
        sent: Vec<Sent>,
        messages: Vec<Option<Message>>,
        keeps_cursor: impl Fn(&str) -> bool,
        out: &mut BytesMut,
    ) {
        if sent.is_empty() {
            return;
        }
        let now_ms = wall_clock_ms();
        for (sent, message) in sent.into_iter().zip(messages) {
            if self.qos.outbound.contains_key(&sent.packet_id) {
                continue;
            }
            let Some(message) = message else {
                // Gone from the log (retention): not sent again.
                if sent.qos == QoS::ExactlyOnce {
                    self.release_packet_id(sent.packet_id, out);
                }
                continue;
            };
            let Some(mut properties) = properties_to_resend(&message.headers, now_ms, sent.qos)
            else {
                // Expired meanwhile (QoS 1): never sent again.
                continue;
            };
            properties.subscription_identifiers = sent.subscription_ids.clone();
            let topic: Arc<str> = Arc::from(sent.topic);
            let seq = message.seq;
            // A retained message (seq 0) is of no position of the topic.
            if seq > 0 {
                if keeps_cursor(&topic) {
                    self.qos
                        .positions
                        .insert(sent.packet_id, (topic.clone(), seq));
                }
                let delivered = self.extras().delivered.entry(topic.clone()).or_default();
                delivered.insert(seq);
            }
            let outgoing = Outgoing {
                topic,
                message,
                qos: sent.qos,
                retain: sent.retain,
                subscription_ids: sent.subscription_ids,
                share: sent.share,
            };
            if !self.fits(&outgoing, &properties) {
                // Larger than this connection's Maximum Packet Size: not
                // sent again, as if its sending had completed (MQTT
                // 3.1.2.25). It stays delivered (a redelivery from the log
                // skips it), and holds no position back.
                self.log_too_large(&outgoing);
                self.qos.positions.remove(&sent.packet_id);
                if outgoing.qos == QoS::ExactlyOnce {
                    self.release_packet_id(sent.packet_id, out);
                }
                continue;
            }
            self.qos.next_order += 1;
            let mut in_flight = InFlight {
                state: match sent.qos {
                    QoS::ExactlyOnce => Outbound::Qos2Sent,
                    _ => Outbound::Qos1Sent,
                },
                order: self.qos.next_order,
                outgoing: None,
                writes_waiting: 0,
                resend: false,
            };
            if self.on_the_wire() >= usize::from(self.window) {
                // The client's Receive Maximum has no room: sent as
                // acknowledgements make some.
                in_flight.outgoing = Some(outgoing);
                self.resend_later(sent.packet_id, in_flight);
                continue;
            }
            self.encode_publish(&outgoing, Some(sent.packet_id), true, properties, out);
            in_flight.outgoing = Some(outgoing);
            self.qos.outbound.insert(sent.packet_id, in_flight);
        }
        // The next note lists what is in flight now.
        self.deliveries_changed();
    }
}

/// Whether `pending` is the store of QoS 2 message `packet_id` (a retained
/// one's too: its store waits behind the retained copy's).
fn stores_qos2(pending: &Pending, packet_id: u16) -> bool {
    match pending {
        Pending::Acknowledge {
            qos: QoS::ExactlyOnce,
            packet_id: id,
            ..
        } => *id == packet_id,
        Pending::ThenRetain(chained) => stores_qos2(&chained.0, packet_id),
        _ => false,
    }
}

impl MqttSession {
    /// PUBREL: the client releases QoS 2 message `packet_id`. A persistent
    /// session answers PUBCOMP once the release is noted, so that the id is
    /// new again after a restart as it is for the client.
    pub(super) fn release(
        &mut self,
        packet_id: u16,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let released = state.qos.qos2_received.remove(&packet_id);
        release_if_empty(&mut state.qos.qos2_received);
        if released.is_some_and(|received| received.key.is_some()) {
            let next = &mut state.qos.noting.next;
            next.changed = true;
            next.pubcomps.push(packet_id);
            return Ok(());
        }
        let reason = if released.is_some() || state.version == ProtocolVersion::V311 {
            ReasonCode::Success
        } else {
            // The id may be gone after the session ended; completing is
            // still right, and v5 says why.
            ReasonCode::PacketIdentifierNotFound
        };
        Packet::PubComp(PublishResponse {
            packet_id,
            reason_code: reason,
            properties: Properties::default(),
        })
        .encode(state.version, context.out());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back() {
        let mut received = HashMap::new();
        let keyed = |key, stored| Received { key, stored };
        received.insert(7, keyed(Some(u64::MAX - 1), true));
        received.insert(2, keyed(Some(5), false));
        // A non-persistent session's message has no key and is not noted.
        received.insert(3, keyed(None, false));
        let mut outbound = HashMap::new();
        let message = test_message(1, 0, Bytes::from_static(b"m"));
        let sent = |state, order, outgoing| InFlight {
            state,
            order,
            outgoing,
            writes_waiting: 0,
            resend: false,
        };
        let outgoing = Outgoing {
            topic: Arc::from("t"),
            message,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            share: None,
        };
        outbound.insert(40, sent(Outbound::Qos2Released, 2, None));
        outbound.insert(41, sent(Outbound::Qos2Released, 1, None));
        outbound.insert(42, sent(Outbound::Qos2Sent, 5, Some(outgoing.clone())));
        let shared = Outgoing {
            topic: Arc::from("s/1"),
            message: test_message(9, 0, Bytes::from_static(b"n")),
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![3, 268_435_455],
            share: Some("$share/g/s/+".into()),
        };
        outbound.insert(43, sent(Outbound::Qos1Sent, 4, Some(shared)));
        // A retained message sent at SUBSCRIBE (no seq of its topic) is not
        // noted.
        let retained = Outgoing {
            message: test_message(0, 0, Bytes::from_static(b"r")),
            ..outgoing
        };
        outbound.insert(44, sent(Outbound::Qos1Sent, 3, Some(retained)));
        let done = vec![("t".to_string(), 3, 3), ("t".to_string(), 7, 9)];
        let note = Note::of(7, 11, &received, &outbound, done.clone());
        let expected = Note {
            number: 7,
            session: Some(11),
            received: vec![(2, 5), (7, u64::MAX - 1)],
            released: vec![41, 40],
            sent: vec![
                Sent {
                    packet_id: 43,
                    topic: "s/1".into(),
                    seq: 9,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    subscription_ids: vec![3, 268_435_455],
                    share: Some("$share/g/s/+".into()),
                },
                Sent {
                    packet_id: 42,
                    topic: "t".into(),
                    seq: 1,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    share: None,
                },
            ],
            done,
        };
        assert_eq!(note, expected);
        assert_eq!(Note::read(&note.body()), expected);
        // The plain entry is four numbers and a topic, nothing more.
        let body: serde_json::Value = serde_json::from_slice(&note.body()).unwrap();
        assert_eq!(body["sent"][1], serde_json::json!([42, "t", 1, 2]));
        assert_eq!(body["done"], serde_json::json!([["t", 3, 3], ["t", 7, 9]]));
        // A note written before runs lists single seqs.
        let single = Note::read(br#"{"received": [], "released": [], "done": [["t", 4]]}"#);
        assert_eq!(single.done, [("t".to_string(), 4, 4)]);
        // A note written before deliveries were noted reads as none sent.
        let older = Note::read(br#"{"received": [[2, 5]], "released": [41]}"#);
        assert!(older.sent.is_empty() && older.released == [41]);
        assert_eq!(older.session, None);
        assert_eq!(body["session"], 11);
        let empty = Note::of(0, 0, &HashMap::new(), &HashMap::new(), Vec::new());
        assert!(Note::read(&empty.body()).is_empty());
        assert!(Note::read(b"not a note").is_empty());
    }

    #[test]
    fn a_session_resumes_from_its_own_newest_note() {
        // Numbers far above the wall clock's, to see them passed on.
        let note = |n: u64, session: Option<u64>, packet_id: u16| {
            let mut body = serde_json::json!({"n": (1 << 60) + n, "received": [[packet_id, 1]], "released": []});
            if let Some(session) = session {
                body["session"] = session.into();
            }
            test_message(n, 0, Bytes::from(body.to_string()))
        };
        let numbers = NoteNumbers::default();
        // Session 7 started (a clean start) while session 6's connection
        // was still open; that connection's last note landed after 7's.
        let records = [
            note(10, Some(6), 1),
            note(11, Some(7), 2),
            note(12, Some(6), 3),
        ];
        assert_eq!(numbers.newest(&records, Some(7)).received, [(2, 1)]);
        assert_eq!(numbers.newest(&records, Some(6)).received, [(3, 1)]);
        assert_eq!(numbers.newest(&records, None).received, [(3, 1)]);
        // Numbers go on past every note read, of any session.
        assert!(numbers.next() > (1 << 60) + 12);
        // A note written before notes carried their session counts for
        // any session.
        let older = [note(11, Some(7), 2), note(13, None, 4)];
        assert_eq!(numbers.newest(&older, Some(7)).received, [(4, 1)]);
        // No note of the session: an empty one.
        assert!(numbers.newest(&records, Some(8)).is_empty());
    }
}
