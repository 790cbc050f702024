//! CONNECT: sign-in, keep-alive, resuming a persistent session from its
//! records in the log, and ending an older session in the log at a clean
//! start.

use super::*;

impl MqttSession {
    pub(super) fn connect(
        &mut self,
        connect: Connect,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let version = connect.protocol;
        let peer = Peer {
            version,
            packet_bytes_max: connect
                .properties
                .maximum_packet_size_bytes
                .map_or(0, |max| max as usize),
        };
        let refuse = |code: ReasonCode, reason: &str, out: &mut BytesMut| {
            refuse_connect(peer, code, reason, out)
        };
        if let Some(method) = &connect.properties.authentication_method {
            // MQTT 5 enhanced authentication (AUTH exchanges) is not offered:
            // a client that asks for it is told so rather than let in
            // believing it was authenticated that way (MQTT 4.12).
            let reason = format!(
                "authentication method {method:?} is not supported (no AUTH exchange): sign in with user name and password"
            );
            return refuse(ReasonCode::BadAuthenticationMethod, &reason, context.out());
        }
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
        let will_refusal = connect
            .will
            .as_ref()
            .filter(|will| will.retain)
            .and_then(|will| store::retained_topic_too_long(&will.topic));
        if let Some(reason) = will_refusal {
            // Its retained copy could not be kept when it goes out.
            return refuse(ReasonCode::TopicNameInvalid, &reason, context.out());
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
        // A client id connected as another user is not theirs to take.
        let owner = context.verified_user();
        if let Err(reason) = self.check_live_owner(&client_id, owner.as_deref()) {
            context.refused(&format!("mqtt client id {client_id}"), &reason);
            return refuse(ReasonCode::NotAuthorized, &reason, context.out());
        }
        let keep_alive_s = connect.keep_alive_s;
        let keep_alive = Duration::from_secs(u64::from(keep_alive_s));
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            properties.assigned_client_identifier = assigned;
            properties.maximum_packet_size_bytes = Some(self.listener.limits.packet_bytes_max);
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
            properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
        }
        // How long the session outlives the connection: v5 says (0 when
        // absent); v3.1.1's clean session 0 keeps it without end.
        let session_expiry_s = match version {
            ProtocolVersion::V5 => connect.properties.session_expiry_interval_s.unwrap_or(0),
            ProtocolVersion::V311 if connect.clean_start => 0,
            ProtocolVersion::V311 => u32::MAX,
        };
        // The session's records are kept when the client resumes one (clean
        // start off: at least until the connection ends) or asks for it to
        // outlive the connection.
        let persistent = !connect.clean_start || session_expiry_s > 0;
        let resuming = !connect.clean_start;
        context.set_protocol(match version {
            ProtocolVersion::V311 => self.listener.v311.clone(),
            ProtocolVersion::V5 => self.listener.v5.clone(),
        });
        let now = context.now();
        if keep_alive_s > 0 {
            context.set_timer(now + keep_alive + keep_alive / 2);
        }
        self.state = Some(Connected {
            version,
            client_id: Arc::from(client_id),
            keep_alive_s,
            last_packet: now,
            will: connect.will.map(Box::new),
            next_request_id: 1,
            pending: HashMap::new(),
            collecting: HashMap::new(),
            next_received_key: random_id(),
            qos2_read: !resuming,
            subscriptions: Vec::new(),
            client_topic_alias_maximum: connect.properties.topic_alias_maximum.unwrap_or(0),
            problem_information: connect
                .properties
                .request_problem_information
                .unwrap_or(true),
            extras: None,
            qos: QosSlot::default(),
            window: connect
                .properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(OUTBOUND_INFLIGHT_MAX),
            persistent,
            session_expiry_s,
            // The CONNACK waits for the session to be read (a resume) or
            // for the older one to be ended in the log (a clean start).
            restore: Some(Box::new(Restore {
                connack_properties: properties,
                waiting_input: BytesMut::new(),
                session_records: Vec::new(),
                session_pages: Vec::new(),
                session_snapshot: None,
                note_records: None,
                restored_note: Note::default(),
                noted_messages: Vec::new(),
                noted_reads: 0,
                taken_over: false,
            })),
            clean_start: connect.clean_start,
            session_read: false,
            awaiting_handoff: false,
            claimed: false,
        });
        let state = self.state.as_mut().expect("just set");
        if let Some(max) = connect.properties.maximum_packet_size_bytes {
            state.extras().client_packet_bytes_max = max;
        }
        if owner.is_some() {
            // With authentication on, a session may be another user's: its
            // records are read before anything of it is touched (`claim`).
            state.read_session(HistoryQuery::Last, context);
            return Ok(());
        }
        self.claim(context)
    }

    /// Refuses `client_id` to `owner` while another user's connection has
    /// it.
    fn check_live_owner(&self, client_id: &str, owner: Option<&str>) -> Result<(), String> {
        match self.listener.clients.lock().get(client_id) {
            Some(client) if client.owner.as_deref() != owner => Err(not_yours(client_id)),
            _ => Ok(()),
        }
    }

    /// Takes the client id up, once nothing stands against it: registers
    /// the connection (one per client id: a newer one takes the session
    /// over, and the older one hands its in-flight state over, `parked`),
    /// cancels the session's expiry and delayed will, and goes on with a
    /// resume (its QoS 2 note is read) or a clean start (the older session
    /// is ended in the log). With authentication on, the session's records
    /// were read first, and a session of another user refuses the CONNECT.
    pub(super) fn claim(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let owner = context.verified_user();
        let recorded_owner = state
            .restore
            .as_ref()
            .filter(|_| state.session_read)
            .and_then(|restore| fold_session(&restore.session_records, wall_clock_ms()).owner);
        let mut taking_over = false;
        let mut refusal = recorded_owner
            .filter(|recorded| owner.is_some() && owner.as_deref() != Some(recorded.as_str()))
            .map(|_| not_yours(&state.client_id));
        if let (None, Some(conn)) = (&refusal, context.conn()) {
            let mut clients = self.listener.clients.lock();
            match clients.get(&state.client_id) {
                Some(client) if client.owner != owner => {
                    refusal = Some(not_yours(&state.client_id));
                }
                _ => {
                    let client = Client { conn, owner };
                    let previous = clients.insert(state.client_id.clone(), client);
                    if let Some(old) = previous.filter(|old| old.conn != conn) {
                        context.notify(old.conn, Box::new(TakenOver));
                        taking_over = true;
                    }
                }
            }
        }
        if let Some(reason) = refusal {
            // Nothing of the session was touched, and nothing is left.
            let state = self.state.take().expect("connected");
            context.refused(&format!("mqtt client id {}", state.client_id), &reason);
            let code = ReasonCode::NotAuthorized;
            return refuse_connect(state.peer(), code, &reason, context.out());
        }
        state.claimed = true;
        state.awaiting_handoff = taking_over && !state.clean_start;
        let client_id = state.client_id.clone();
        let clean_start = state.clean_start;
        self.reconnected(&client_id, clean_start, context.now());
        if clean_start {
            self.forget_parked(&client_id);
        }
        let state = self.state.as_mut().expect("connected");
        if !clean_start {
            // The CONNACK says whether a session was found: read it first.
            // Records read for the owner check were read before this
            // connection was registered: read them again, so that what an
            // older connection of the client id recorded as it left on its
            // own meanwhile (its `left` record, with a delayed will) is in
            // them.
            if state.session_read {
                state.session_read = false;
                if let Some(restore) = state.restore.as_mut() {
                    restore.session_records.clear();
                    restore.session_pages.clear();
                    restore.session_snapshot = None;
                }
            }
            state.read_session(HistoryQuery::Last, context);
            let channel = qos2_channel(&state.client_id);
            read_last_own(state, Pending::Qos2Read, channel, NOTES_READ, context);
            return self.try_resume(context);
        }
        if state.persistent {
            // A clean start that keeps its session: the older one ends
            // where this one starts (and the QoS 2 packet ids it noted are
            // forgotten), durably before the CONNACK.
            let session_id = random_id();
            state.set_session_id(session_id);
            let start = serde_json::json!({"type": "start", "session": session_id});
            state.append_record(start, Pending::OlderSessionEnded, context);
            state.note_qos2(
                &self.listener.note_numbers,
                Pending::OlderSessionEnded,
                context,
            );
            return Ok(());
        }
        // A clean start that keeps nothing still discards an older
        // persistent session of the client id (MQTT 3.1.1 and 5.0 3.1.2.4):
        // its end is recorded, durably before the CONNACK, so that neither a
        // later resume nor a restart brings it back. The last records are
        // read first (unless they were, for the owner): a client id that
        // never had a session writes nothing.
        let channel = session_channel(&state.client_id);
        match state.restore.as_ref().filter(|_| state.session_read) {
            Some(restore) => {
                if !session_ended(restore.session_records.last()) {
                    let end = serde_json::json!({"type": "end"});
                    state.append_record(end, Pending::OlderSessionEnded, context);
                }
            }
            None => read_last_own(state, Pending::OlderSessionRead, channel, 1, context),
        }
        let channel = qos2_channel(&state.client_id);
        read_last_own(state, Pending::OlderNoteRead, channel, NOTES_READ, context);
        Ok(())
    }

    /// A clean start's CONNACK, once the older session is ended in the log;
    /// then the packets that waited.
    pub(super) fn finish_clean_start(
        &mut self,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let ending = state.pending.values().any(|pending| {
            matches!(
                pending,
                Pending::OlderSessionRead | Pending::OlderNoteRead | Pending::OlderSessionEnded
            )
        });
        if !state.clean_start || ending {
            return Ok(());
        }
        let Some(restore) = state.restore.take() else {
            return Ok(());
        };
        let Restore {
            connack_properties,
            waiting_input,
            ..
        } = *restore;
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: connack_properties,
        })
        .encode(state.version, context.out());
        self.process_waiting(waiting_input, context)
    }

    /// Handles the packets that waited for the CONNACK; the start of a
    /// packet whose rest has not come yet is kept for the next input
    /// (`Extras::partial_input`), as the connection keeps one.
    fn process_waiting(
        &mut self,
        mut waiting_input: BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let result = self.process(&mut waiting_input, context);
        if let (false, Some(state)) = (waiting_input.is_empty(), self.state.as_mut()) {
            state.extras().partial_input = waiting_input;
        }
        result
    }

    /// The session's records are read: answer the CONNACK, subscribe again
    /// (topics with QoS 1 or 2 from their cursors, so what was published
    /// while the client was away comes from the log), then handle the
    /// packets that waited.
    pub(super) fn resume(&mut self, context: &mut SessionContext<'_>) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let Restore {
            connack_properties,
            waiting_input,
            session_records: records,
            restored_note: mut noted,
            noted_messages,
            taken_over,
            ..
        } = *state
            .restore
            .take()
            .expect("a session resumes while restoring");
        let mut stored = fold_session(&records, wall_clock_ms());
        state.set_session_id(stored.session_id);
        // A session that only exchanged QoS 2 messages has no records but
        // its note (its server was killed while it was connected).
        stored.present |= records.is_empty() && !noted.is_empty();
        if stored.present {
            state.restore_received(&noted);
        }
        if !stored.present && !records.is_empty() {
            // The session ended or expired: what it left is forgotten, and a
            // new one begins.
            let session_id = random_id();
            state.set_session_id(session_id);
            let start = serde_json::json!({"type": "start", "session": session_id});
            state.record(start, context);
            if let Some(extras) = state.extras.as_mut() {
                extras.handed_over.clear();
            }
            let client_id = state.client_id.clone();
            self.forget_parked(&client_id);
        }
        let state = self.state.as_mut().expect("connected");
        if !stored.present && !noted.is_empty() {
            // The note of a session that ended or expired (one written
            // before notes named their session) is forgotten: an empty note
            // of the new session, newer than it, takes its place.
            state.note_qos2(&self.listener.note_numbers, Pending::Fire, context);
        }
        if stored.will_pending {
            // Resumed before its delayed will was due: it never goes out,
            // also not after a restart.
            state.record(serde_json::json!({"type": "back"}), context);
        }
        if let Some(snapshot) = store::snapshot_record(&records).filter(|_| stored.present) {
            // The next resume reads back to here.
            state.record(snapshot, context);
        }
        let filters = stored.subscriptions.clone();
        Packet::ConnAck(ConnAck {
            session_present: stored.present,
            reason_code: ReasonCode::Success,
            properties: connack_properties,
        })
        .encode(state.version, context.out());
        let in_memory = self.unpark(context) || taken_over;
        if stored.present {
            let state = self.state.as_mut().expect("connected");
            state.restore_released(&noted, context.out());
            if !in_memory {
                let sent = std::mem::take(&mut noted.sent);
                let keeps_cursor = |topic: &str| stored.keeps_cursor(topic);
                state.restore_sent(sent, noted_messages, keeps_cursor, context.out());
                state.restore_done(std::mem::take(&mut noted.done));
            }
        }
        let state = self.state.as_mut().expect("connected");
        for subscription in filters {
            let (filter, qos) = (subscription.filter.clone(), subscription.qos());
            let command = subscribe_command(subscription.topic_filter());
            let shared = subscription.is_shared();
            push_compact(&mut state.subscriptions, subscription);
            if shared {
                // A share rejoins its group, live.
                let request_id = next_request(state, Pending::JoinShare(filter));
                context.submit(request_id, command);
            } else if pattern::is_pattern(&filter) || qos == QoS::AtMostOnce {
                let request_id = next_request(state, Pending::Fire);
                context.submit(request_id, command);
            } else {
                let floor = stored.cursor_floors.get(&filter).copied().unwrap_or(0);
                state.read_cursor(filter, floor, context);
            }
        }
        state.restore_wildcard_topics(&stored, context);
        self.process_waiting(waiting_input, context)
    }
}

impl Connected {
    /// Reads a page of the session's records before the CONNACK: the last
    /// ones, then (`query` Before) older pages until the records reach back
    /// to the first or to the last snapshot (`older_session_records`).
    pub(super) fn read_session(&mut self, query: HistoryQuery, context: &mut SessionContext<'_>) {
        let channel = session_channel(&self.client_id);
        let pending = Pending::SessionRead;
        read_history(
            self,
            Reader::Server,
            pending,
            channel,
            query,
            SESSION_PAGE,
            context,
        );
    }
}

/// Answers a CONNECT with a refusing CONNACK (`code`, and in v5 the reason)
/// and closes the connection.
pub(super) fn refuse_connect(
    peer: Peer,
    code: ReasonCode,
    reason: &str,
    out: &mut BytesMut,
) -> Result<(), Close> {
    let properties = Properties {
        reason_string: peer.reason_string(reason),
        ..Properties::default()
    };
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties,
    })
    .encode(peer.version, out);
    Err(close(format!("CONNECT refused: {reason}")))
}

/// Why another user may not use a client id.
fn not_yours(client_id: &str) -> String {
    format!(
        "the client id {client_id:?} belongs to another user's session; connect with a client id of your own"
    )
}

/// Whether a session's last record ends it (or there is none).
pub(super) fn session_ended(last: Option<&Message>) -> bool {
    last.is_none_or(|last| {
        serde_json::from_slice::<serde_json::Value>(&last.body)
            .is_ok_and(|record| record["type"] == "end")
    })
}
