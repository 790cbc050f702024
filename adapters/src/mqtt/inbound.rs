//! PUBLISH from clients: QoS 0, 1 and 2 into the log, and retained copies.

use super::*;

impl MqttSession {
    pub(super) fn publish(
        &mut self,
        mut publish: Publish,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let version = state.version;
        if publish.properties.topic_alias.is_some() {
            if let Err((reason_code, reason)) = state.extras().aliases.resolve(&mut publish) {
                return self.violation(reason_code, &reason, context);
            }
        }
        let state = self.state.as_mut().expect("connected");
        let invalid = if publish.topic.starts_with('$') {
            Some("topics starting with '$' belong to the server".to_string())
        } else if publish.retain {
            // Its copy could not be kept (`$retained/<topic>` is a channel).
            store::retained_topic_too_long(&publish.topic)
        } else {
            None
        };
        if let Some(reason) = invalid {
            if let (ProtocolVersion::V5, Some(packet_id)) = (version, publish.packet_id) {
                // A v5 QoS 1 or 2 publish is refused in its acknowledgement
                // (0x90), like any other refused publish; the connection
                // stays. (QoS 0 has no answer to carry it, and v3.1.1 no
                // reason codes: those are closed.)
                let arrival = state.qos.acks.reserve(publish.qos);
                let response = PublishResponse {
                    packet_id,
                    reason_code: ReasonCode::TopicNameInvalid,
                    properties: super::refusal_properties(state, &reason),
                };
                let packet = if publish.qos == QoS::ExactlyOnce {
                    Packet::PubRec(response)
                } else {
                    Packet::PubAck(response)
                };
                state
                    .qos
                    .acks
                    .answer(arrival, packet, version, context.out());
                return Ok(());
            }
            disconnect_with(
                state.peer(),
                ReasonCode::TopicNameInvalid,
                &reason,
                context.out(),
            );
            return Err(close(format!("publish refused: {reason}")));
        }
        let topic = publish.topic.clone();
        if publish.qos != QoS::AtMostOnce {
            if let Some(reason) = state.over_receive_maximum(&publish) {
                disconnect_with(
                    state.peer(),
                    ReasonCode::ReceiveMaximumExceeded,
                    reason,
                    context.out(),
                );
                return Err(close(reason));
            }
        }
        let (pending, key) = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => (Pending::Publish0(topic), None),
            (QoS::AtLeastOnce, Some(packet_id)) => {
                let arrival = state.qos.acks.reserve(QoS::AtLeastOnce);
                (
                    acknowledge(QoS::AtLeastOnce, packet_id, topic, arrival),
                    None,
                )
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let known = state.qos.qos2_received.get(&packet_id).copied();
                if known.is_some() && state.storing(packet_id) {
                    // A retransmission while the original is being stored:
                    // the original's PUBREC answers both.
                    return Ok(());
                }
                let arrival = state.qos.acks.reserve(QoS::ExactlyOnce);
                let pending = acknowledge(QoS::ExactlyOnce, packet_id, topic, arrival);
                let (pending, key) = match known {
                    Some(Received { stored: true, .. }) => {
                        // A retransmission of a message stored: acknowledge
                        // again, store nothing.
                        let packet = Packet::PubRec(PublishResponse::success(packet_id));
                        state
                            .qos
                            .acks
                            .answer(arrival, packet, version, context.out());
                        return Ok(());
                    }
                    // Received before a restart, or by an older connection
                    // that did not see it stored: stored again under the same
                    // key, which the broker answers with the original when it
                    // has it.
                    Some(Received { key, stored: false }) => (pending, key),
                    None => {
                        let key = state.persistent.then(|| state.new_received_key());
                        let received = Received { key, stored: false };
                        state.qos.qos2_received.insert(packet_id, received);
                        (pending, key)
                    }
                };
                if key.is_some() {
                    // A persistent session stores the message only once a
                    // note of this connection lists its packet id and key
                    // (`received`), also a retransmission: the older
                    // connection that took it may have closed before its
                    // note was durable, and a restart would then not know
                    // the key and store the message twice.
                    let headers = state.publish_headers(&publish);
                    let deferred = Deferred {
                        publish,
                        headers,
                        pending,
                        key,
                    };
                    state.store_after_note(deferred);
                    return Ok(());
                }
                (pending, None)
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        };
        let headers = state.publish_headers(&publish);
        let live_only = publish.qos == QoS::AtMostOnce && self.listener.live_only(&publish.topic);
        state.store(publish, headers, pending, key, live_only, context);
        Ok(())
    }
}

fn acknowledge(qos: QoS, packet_id: u16, topic: String, arrival: u64) -> Pending {
    Pending::Acknowledge {
        qos,
        packet_id,
        topic,
        arrival,
    }
}

/// A client's publish whose storing waits for a request (the note of its
/// QoS 2 packet id).
pub(super) struct Deferred {
    pub(super) publish: Publish,
    pub(super) headers: Bytes,
    /// What answers the store.
    pub(super) pending: Pending,
    pub(super) key: Option<u64>,
}

impl Connected {
    /// The header block of a client's publish.
    fn publish_headers(&self, publish: &Publish) -> Bytes {
        let marks = Marks {
            origin: self.marks_own_publishes().then_some(&*self.client_id),
            retained: publish.retain,
        };
        // The clock only matters to a message with an expiry.
        let expires = publish.properties.message_expiry_interval_s.is_some();
        let now_ms = if expires { wall_clock_ms() } else { 0 };
        headers_of(&publish.properties, marks, now_ms)
    }

    /// Appends a client's publish to its topic (under the idempotency `key`
    /// of a QoS 2 message of a persistent session; only delivered live with
    /// `live_only`), and its retained copy; `pending` answers the append.
    pub(super) fn store(
        &mut self,
        publish: Publish,
        headers: Bytes,
        pending: Pending,
        key: Option<u64>,
        live_only: bool,
        context: &mut SessionContext<'_>,
    ) {
        // The topic's retained message is kept in the log beside it (an
        // empty payload clears it), so it survives a restart; it is written
        // (as the server, in a reserved channel) only once the broker took
        // the publish itself: a client refused on a topic (its roles, its
        // rate limit, a full disk) sets no retained message there.
        let pending = if publish.retain {
            let copy = RetainedCopy {
                topic: publish.topic.clone(),
                headers: headers.clone(),
                payload: publish.payload.clone(),
            };
            Pending::ThenRetain(Box::new((pending, copy)))
        } else {
            pending
        };
        let request_id = next_request(self, pending);
        context.submit(
            request_id,
            Command::Publish {
                channel: publish.topic.into(),
                ephemeral: live_only,
                kind: kind::MESSAGE,
                client_message_id: key.map(received_message_id).unwrap_or_default(),
                relation: 0,
                headers,
                body: publish.payload,
            },
        );
    }
}

/// Publishes waiting for their acknowledgement on one connection, at most.
/// A client has at most one unanswered publish per packet id, so a client
/// that keeps the protocol stays below this; the bound keeps one that does
/// not from growing the queue without end.
pub const ACKS_WAITING_MAX: usize = u16::MAX as usize;

/// The answers to a connection's QoS 1 and 2 publishes (PUBACK, PUBREC),
/// written in the order the PUBLISH packets arrived (MQTT 4.6) whatever
/// order their records become durable in: channels on different shards
/// become durable in different loop turns. Each publish takes a place when
/// it arrives; an answer is written once every earlier one is.
#[derive(Default)]
pub(super) struct AckQueue {
    /// The arrival number of the front place.
    front: u64,
    /// The places, in arrival order: the answer, once known.
    places: VecDeque<Option<Packet>>,
    /// QoS 1 publishes among them (v5's Receive Maximum counts them with the
    /// QoS 2 messages not yet released).
    qos1_waiting: usize,
}

impl AckQueue {
    /// Takes the next place, for a publish at `qos` (1 or 2); returns its
    /// arrival number.
    pub(super) fn reserve(&mut self, qos: QoS) -> u64 {
        if qos == QoS::AtLeastOnce {
            self.qos1_waiting += 1;
        }
        self.places.push_back(None);
        self.front + self.places.len() as u64 - 1
    }

    /// Puts the answer to the publish at `arrival` in its place and writes
    /// every answer at the front that is known.
    pub(super) fn answer(
        &mut self,
        arrival: u64,
        packet: Packet,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) {
        let index = arrival
            .checked_sub(self.front)
            .and_then(|index| usize::try_from(index).ok())
            .expect("an answered place is still waiting");
        let place = &mut self.places[index];
        assert!(place.is_none(), "a publish is answered once");
        *place = Some(packet);
        while let Some(Some(_)) = self.places.front() {
            let packet = self.places.pop_front().flatten().expect("checked above");
            self.front += 1;
            if matches!(packet, Packet::PubAck(_)) {
                self.qos1_waiting -= 1;
            }
            packet.encode(version, out);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.places.len()
    }
}

impl Connected {
    /// Why a new QoS 1 or 2 `publish` is one too many, if it is: in v5 the
    /// Receive Maximum the server announced counts QoS 1 messages until
    /// their PUBACK and QoS 2 messages until their PUBREL; v3.1.1 has no
    /// such count for QoS 1, so only the QoS 2 messages and the queue's
    /// bound limit it.
    fn over_receive_maximum(&self, publish: &Publish) -> Option<&'static str> {
        let retransmission = publish.qos == QoS::ExactlyOnce
            && publish
                .packet_id
                .is_some_and(|id| self.qos.qos2_received.contains_key(&id));
        if retransmission {
            return None;
        }
        let receive_maximum = usize::from(RECEIVE_MAXIMUM);
        let in_flight = match (self.version, publish.qos) {
            (ProtocolVersion::V5, _) => self.qos.acks.qos1_waiting + self.qos.qos2_received.len(),
            (ProtocolVersion::V311, QoS::ExactlyOnce) => self.qos.qos2_received.len(),
            (ProtocolVersion::V311, _) => 0,
        };
        if in_flight >= receive_maximum {
            return Some(
                "more QoS 1 and 2 messages in flight than the Receive Maximum; wait for their \
                 acknowledgements",
            );
        }
        (self.qos.acks.len() >= ACKS_WAITING_MAX)
            .then_some("more than 65,535 publishes wait for their acknowledgement; wait for them")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puback(packet_id: u16) -> Packet {
        Packet::PubAck(PublishResponse::success(packet_id))
    }

    #[test]
    fn answers_go_out_in_arrival_order() {
        let mut acks = AckQueue::default();
        let first = acks.reserve(QoS::AtLeastOnce);
        let second = acks.reserve(QoS::ExactlyOnce);
        let third = acks.reserve(QoS::AtLeastOnce);
        let mut out = BytesMut::new();
        let version = ProtocolVersion::V5;
        acks.answer(third, puback(3), version, &mut out);
        acks.answer(
            second,
            Packet::PubRec(PublishResponse::success(2)),
            version,
            &mut out,
        );
        assert!(out.is_empty(), "the first answer is not known yet");
        assert_eq!((acks.len(), acks.qos1_waiting), (3, 2));
        acks.answer(first, puback(1), version, &mut out);
        let mut expected = BytesMut::new();
        for packet in [
            puback(1),
            Packet::PubRec(PublishResponse::success(2)),
            puback(3),
        ] {
            packet.encode(version, &mut expected);
        }
        assert_eq!(out, expected);
        assert_eq!((acks.len(), acks.qos1_waiting), (0, 0));
        // Later places go on numbering from there.
        let fourth = acks.reserve(QoS::AtLeastOnce);
        out.clear();
        acks.answer(fourth, puback(4), version, &mut out);
        assert!(!out.is_empty());
    }
}
