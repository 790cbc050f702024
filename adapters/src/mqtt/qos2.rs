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
//! A non-persistent session keeps all this in memory: it ends with its
//! connection.

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

/// A session's QoS 2 state as noted in the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Note {
    /// Received packet ids and their keys, by packet id.
    pub(super) received: Vec<(u16, u64)>,
    /// Released outbound packet ids, in the order they were sent.
    pub(super) released: Vec<u16>,
}

impl Note {
    pub(super) fn is_empty(&self) -> bool {
        self.received.is_empty() && self.released.is_empty()
    }

    /// The note of `received` and of the released messages in `outbound`.
    fn of(received: &HashMap<u16, Received>, outbound: &HashMap<u16, InFlight>) -> Note {
        let mut noted: Vec<(u16, u64)> = received
            .iter()
            .filter_map(|(packet_id, received)| Some((*packet_id, received.key?)))
            .collect();
        noted.sort_unstable();
        let mut released: Vec<(u64, u16)> = outbound
            .iter()
            .filter(|(_, in_flight)| in_flight.state == Outbound::Qos2Released)
            .map(|(packet_id, in_flight)| (in_flight.order, *packet_id))
            .collect();
        released.sort_unstable();
        Note {
            received: noted,
            released: released
                .into_iter()
                .map(|(_, packet_id)| packet_id)
                .collect(),
        }
    }

    /// `{"received": [[packet id, key], …], "released": [packet id, …]}`.
    fn body(&self) -> Bytes {
        let note = serde_json::json!({ "received": self.received, "released": self.released });
        Bytes::from(note.to_string())
    }

    /// The note in `body` (an empty one from a body that is not a note).
    pub(super) fn read(body: &[u8]) -> Note {
        let Ok(note) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Note::default();
        };
        let entries = |name: &str| note[name].as_array().cloned().unwrap_or_default();
        Note {
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
        }
    }
}

impl Connected {
    /// A key for a new QoS 2 message.
    pub(super) fn new_received_key(&mut self) -> u64 {
        self.next_received_key = self.next_received_key.wrapping_add(1);
        self.next_received_key
    }

    /// Notes the session's QoS 2 state (a persistent session's); `pending`
    /// answers the note.
    pub(super) fn note_qos2(&mut self, pending: Pending, context: &mut SessionContext<'_>) {
        let request_id = next_request(self, pending);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: qos2_channel(&self.client_id),
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: Note::of(&self.qos.qos2_received, &self.qos.outbound).body(),
            },
        );
    }

    /// True while the QoS 2 message `packet_id` is being noted or stored.
    pub(super) fn storing(&self, packet_id: u16) -> bool {
        self.pending.values().any(|pending| {
            let pending = match pending {
                Pending::Noted(deferred) => &deferred.pending,
                pending => pending,
            };
            matches!(pending, Pending::Acknowledge { qos: QoS::ExactlyOnce, packet_id: id, .. }
                if *id == packet_id)
        })
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
            self.qos.next_order += 1;
            let in_flight = InFlight {
                state: Outbound::Qos2Released,
                order: self.qos.next_order,
                outgoing: None,
                writes_waiting: 0,
            };
            self.qos.outbound.insert(*packet_id, in_flight);
            Packet::PubRel(PublishResponse::success(*packet_id)).encode(self.version, out);
        }
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
            state.note_qos2(Pending::PubCompAfter(packet_id), context);
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
        outbound.insert(42, sent(Outbound::Qos2Sent, 3, Some(outgoing)));
        let note = Note::of(&received, &outbound);
        let expected = Note {
            received: vec![(2, 5), (7, u64::MAX - 1)],
            released: vec![41, 40],
        };
        assert_eq!(note, expected);
        assert_eq!(Note::read(&note.body()), expected);
        let empty = Note::of(&HashMap::new(), &HashMap::new());
        assert!(Note::read(&empty.body()).is_empty());
        assert!(Note::read(b"not a note").is_empty());
    }
}
