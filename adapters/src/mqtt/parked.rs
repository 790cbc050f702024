//! What a persistent session's connection leaves for the next connection of
//! its client id (MQTT 4.4): the QoS 1 and 2 messages in flight, resent with
//! their packet ids and DUP, and PUBREL again for those the client PUBREC'd;
//! the QoS 2 packet ids received and waiting for the client's PUBREL; and
//! which messages of cursor topics the client already has, so that the
//! redelivery from the log does not send them twice.
//!
//! This is kept in memory. The same state is also noted in the log
//! (`qos2`: the QoS 2 packet ids received and not released, the deliveries
//! sent and not acknowledged, those released and not completed), so after a
//! server restart the PUBLISHes and PUBRELs go out again with their packet
//! ids too; what is parked is newer and wins.

use super::*;

/// Parked sessions, by client id. Touched when a persistent session's
/// connection closes and when its client id connects again, never per
/// message.
pub(super) type ParkedSessions = Arc<parking_lot::Mutex<HashMap<String, Parked>>>;

/// Sessions parked at most. Each holds at most a window of messages in
/// flight and the held ones; past this many, a closing session leaves
/// nothing (its messages of cursor topics still come back from the log).
pub const PARKED_SESSIONS_MAX: usize = 100_000;

pub(super) struct Parked {
    outbound: Vec<(u16, InFlight)>,
    positions: HashMap<u16, (Arc<str>, u64)>,
    delivered: HashMap<Arc<str>, BTreeSet<u64>>,
    /// Held messages that do not come back from the log by themselves.
    held: Vec<Outgoing>,
    qos2_received: HashMap<u16, Received>,
    /// Made by a connection that knew its deliveries in flight (it had
    /// finished resuming, or took them over from one that knew): newer
    /// than the session's note. One made while resuming (it had not read
    /// or applied the note yet) is not, and the note counts too.
    pub(super) complete: bool,
}

impl Parked {
    /// Takes in what an older connection left, keeping this one's where
    /// both have a packet id.
    fn absorb(&mut self, older: Parked) {
        self.complete |= older.complete;
        for (packet_id, in_flight) in older.outbound {
            if !self.outbound.iter().any(|(id, _)| *id == packet_id) {
                self.outbound.push((packet_id, in_flight));
            }
        }
        for (packet_id, position) in older.positions {
            self.positions.entry(packet_id).or_insert(position);
        }
        for (topic, seqs) in older.delivered {
            self.delivered.entry(topic).or_default().extend(seqs);
        }
        self.held.extend(older.held);
        for (packet_id, received) in older.qos2_received {
            self.qos2_received.entry(packet_id).or_insert(received);
        }
    }

    fn is_empty(&self) -> bool {
        self.outbound.is_empty()
            && self.held.is_empty()
            && self.qos2_received.is_empty()
            && self.delivered.values().all(BTreeSet::is_empty)
    }
}

impl Connected {
    /// True when this connection knows the session's deliveries in flight
    /// better than its note (`Parked::complete`).
    pub(super) fn knows_in_flight(&self) -> bool {
        self.restore.is_none()
            || self
                .extras
                .as_ref()
                .is_some_and(|extras| extras.handed_over.iter().any(|parked| parked.complete))
    }

    /// Takes what the next connection of this session needs, if there is
    /// anything.
    pub(super) fn take_parked(&mut self) -> Option<Parked> {
        let held = self
            .qos
            .held
            .iter()
            .filter(|outgoing| !self.is_of_cursor_topic(outgoing))
            .cloned()
            .collect();
        // What an older connection handed over while this one was still
        // restoring goes on to the next one too.
        let handed_over = self
            .extras
            .as_mut()
            .map(|extras| std::mem::take(&mut extras.handed_over))
            .unwrap_or_default();
        let complete = self.knows_in_flight();
        let mut parked = Parked {
            complete,
            outbound: {
                // All of it goes out again on the next connection.
                self.qos.resends = 0;
                self.qos.outbound.drain().collect()
            },
            positions: std::mem::take(&mut self.qos.positions),
            delivered: self
                .extras
                .as_mut()
                .map(|extras| std::mem::take(&mut extras.delivered))
                .unwrap_or_default(),
            held,
            qos2_received: std::mem::take(&mut self.qos.qos2_received),
        };
        for older in handed_over {
            parked.absorb(older);
        }
        (!parked.is_empty()).then_some(parked)
    }

    /// Takes up a parked session right after the CONNACK: PUBREL for what
    /// the client PUBREC'd (once this connection's note lists it), then the
    /// unacknowledged messages again, in the order first sent, with their
    /// packet ids and DUP set.
    pub(super) fn resume_parked(&mut self, parked: Parked, context: &mut SessionContext<'_>) {
        self.qos.qos2_received.extend(parked.qos2_received);
        self.qos.positions.extend(parked.positions);
        for (topic, seqs) in parked.delivered {
            self.extras()
                .delivered
                .entry(topic)
                .or_default()
                .extend(seqs);
        }
        let mut outbound = parked.outbound;
        outbound.sort_by_key(|(_, in_flight)| in_flight.order);
        let now_ms = wall_clock_ms();
        for (packet_id, mut in_flight) in outbound {
            if self.qos.outbound.contains_key(&packet_id) {
                // Two older connections both left this id: keep the first.
                continue;
            }
            self.qos.next_order += 1;
            in_flight.order = self.qos.next_order;
            // Whether it waited on the older connection does not matter:
            // this one sends it now or keeps it for later (`resend_later`).
            in_flight.resend = false;
            if in_flight.state == Outbound::Qos2Released {
                // The older connection's note of the release may not be
                // durable yet (it may never be, if the server dies): the
                // PUBREL waits for a note of this connection that lists it,
                // or a restart could send the message again after the
                // client completed it.
                in_flight.writes_waiting = 1;
                self.qos.outbound.insert(packet_id, in_flight);
                self.pubrel_after_note(packet_id);
                continue;
            }
            let outgoing = in_flight
                .outgoing
                .clone()
                .expect("only a released message has no PUBLISH");
            let resent = properties_to_resend(&outgoing.message.headers, now_ms, outgoing.qos);
            let Some(mut properties) = resent else {
                // Expired while the client was away (QoS 1): never sent again.
                self.acknowledged(packet_id, context);
                self.deliveries_changed();
                continue;
            };
            if self.on_the_wire() >= usize::from(self.window) {
                // The client's Receive Maximum has no room (MQTT-3.3.4-9):
                // sent as acknowledgements make some (`resend_waiting`).
                self.resend_later(packet_id, in_flight);
                continue;
            }
            properties.subscription_identifiers = outgoing.subscription_ids.clone();
            if !self.fits(&outgoing, &properties) {
                self.forget_too_large(packet_id, &outgoing, context);
                continue;
            }
            self.qos.outbound.insert(packet_id, in_flight);
            // Noted again before it goes out: the older connection may
            // have closed before its note of it was durable.
            self.encode_noted(&outgoing, packet_id, true, properties, context.out());
        }
        self.qos.held.extend(parked.held);
        self.release_held(context);
    }
}

/// What an older connection of a client id hands the connection that took
/// its session over: its parked state, or nothing (it was not persistent or
/// had nothing in flight), and its will if that was to wait for a delay. The
/// newer connection waits for it before its CONNACK, so nothing in flight is
/// lost to the race between the two.
pub(super) struct Handoff {
    pub(super) parked: Option<Parked>,
    /// The older connection knew its deliveries in flight
    /// (`Parked::complete`).
    pub(super) complete: bool,
    pub(super) will: Option<DelayedWill>,
}

impl MqttSession {
    /// Keeps `parked` for the next connection of this client id.
    pub(super) fn park(&self, client_id: &str, parked: Parked) {
        let mut sessions = self.listener.parked.lock();
        if sessions.len() < PARKED_SESSIONS_MAX || sessions.contains_key(client_id) {
            sessions.insert(client_id.to_string(), parked);
        }
    }

    /// Forgets what a previous connection of `client_id` left (a clean
    /// start).
    pub(super) fn forget_parked(&self, client_id: &str) {
        self.listener.parked.lock().remove(client_id);
    }

    /// Takes up what the previous connection handed over (an older
    /// connection's state that arrives after the CONNACK is resent at once).
    pub(super) fn on_handoff(
        &mut self,
        handoff: Handoff,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Some(state) = self.state.as_ref() else {
            return Ok(());
        };
        if let Some(will) = handoff.will {
            // The older connection's session goes on, and its delayed will
            // with it, unless this connection started a new one.
            if state.clean_start {
                self.schedule_will(&state.client_id, Duration::ZERO, will, context);
            }
        }
        let state = self.state.as_mut().expect("connected");
        if state.clean_start {
            // A clean start does not wait, and takes nothing over.
            return Ok(());
        }
        if let Some(restore) = state.restore.as_mut() {
            restore.taken_over |= handoff.complete;
        }
        if let Some(parked) = handoff.parked {
            if state.restoring() {
                state.extras().handed_over.push(parked);
            } else {
                state.resume_parked(parked, context);
            }
        }
        state.awaiting_handoff = false;
        self.try_resume(context)
    }

    /// Resumes the session once its records are read and the older
    /// connection (if any) handed its state over.
    pub(super) fn try_resume(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        self.read_noted(context);
        match self.state.as_ref() {
            Some(state)
                if state.restoring()
                    && state.session_read
                    && state.qos2_read
                    && !state.awaiting_handoff =>
            {
                self.resume(context)
            }
            _ => Ok(()),
        }
    }

    /// Once both the session's records and the last notes of its client id
    /// are read: takes the session's newest note, and reads the messages of
    /// the deliveries it lists.
    fn read_noted(&mut self, context: &mut SessionContext<'_>) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if !state.session_read {
            return;
        }
        let Some(restore) = state.restore.as_mut() else {
            return;
        };
        let Some(records) = restore.note_records.take() else {
            return;
        };
        let session = fold_session(&restore.session_records, wall_clock_ms()).session_id;
        let mut noted = self.listener.note_numbers.newest(&records, Some(session));
        // An older connection of this process that knew its deliveries in
        // flight knows them better than the note (`Parked::complete`). One
        // still to hand over may not have known them: the note is read
        // anyway, and `resume` decides.
        let in_memory = restore.taken_over
            || self
                .listener
                .parked
                .lock()
                .get(&*state.client_id)
                .is_some_and(|parked| parked.complete);
        if in_memory {
            noted.sent.clear();
        }
        restore.noted_messages = vec![None; noted.sent.len()];
        restore.noted_reads = noted.sent.len();
        let reads: Vec<(String, u64)> = noted
            .sent
            .iter()
            .map(|sent| (sent.topic.clone(), sent.seq))
            .collect();
        restore.restored_note = noted;
        for (index, (topic, seq)) in reads.into_iter().enumerate() {
            let pending = Pending::NotedMessage(index);
            if seq == 0 {
                // A retained message sent at a SUBSCRIBE: the topic's
                // retained copy.
                let channel = super::store::retained_channel(&topic);
                let limit = super::store::RETAINED_COPIES_READ;
                read_last_own(state, pending, channel, limit, context);
                continue;
            }
            let query = HistoryQuery::From(seq);
            read_history(state, Reader::Server, pending, topic, query, 1, context);
        }
        state.qos2_read = state.restore.as_ref().is_some_and(|r| r.noted_reads == 0);
    }

    /// Resends what the previous connection of this session left in flight;
    /// true when that is newer than the session's note (`Parked::complete`).
    pub(super) fn unpark(&mut self, context: &mut SessionContext<'_>) -> bool {
        let state = self.state.as_mut().expect("connected");
        let mut handed_over = state
            .extras
            .as_mut()
            .map(|extras| std::mem::take(&mut extras.handed_over))
            .unwrap_or_default();
        handed_over.extend(self.listener.parked.lock().remove(&*state.client_id));
        let unparked = handed_over.iter().any(|parked| parked.complete);
        for parked in handed_over {
            state.resume_parked(parked, context);
        }
        unparked
    }
}
