//! Inbound QoS 2 exactly once, also across a server restart (MQTT 4.3.3):
//! the packet ids a persistent session received and the client did not
//! release yet are kept in the log, so that a client that reconnects after
//! a crash and sends such a PUBLISH again (DUP) does not get its message
//! stored twice, and its PUBREL is known.
//!
//! Each QoS 2 message of a persistent session gets a key, unique to it (a
//! random number per connection, counted up), that goes in its record's
//! client message id. Before the message is stored, the session notes the
//! packet ids it holds with their keys in `$mqtt/received/<client id>`
//! (each record is the whole set; the channel's last record is the state);
//! the PUBREC follows the message's store. A PUBREL notes the set without
//! the id, and the PUBCOMP waits for that note, so a released id that the
//! client uses again is a new message. After a restart the resumed session
//! reads the last note: a PUBLISH with a noted id is stored again under its
//! key, which the broker's idempotent publish answers with the original
//! record when it has it (within its dedupe window, `dedupe_window_ms`).
//! A non-persistent session keeps this in memory only: it ends with its
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

/// Where a persistent session notes its received QoS 2 packet ids.
pub(super) fn received_channel(client_id: &str) -> String {
    format!("$mqtt/received/{client_id}")
}

/// The client message id of the record of the QoS 2 message with `key`.
pub(super) fn received_message_id(key: u64) -> Bytes {
    Bytes::from(format!("mqtt2/{key:016x}"))
}

/// The body of a note: `{"received": [[packet id, key], …]}`, by packet id.
fn note_body(received: &HashMap<u16, Received>) -> Bytes {
    let mut noted: Vec<(u16, u64)> = received
        .iter()
        .filter_map(|(packet_id, received)| Some((*packet_id, received.key?)))
        .collect();
    noted.sort_unstable();
    Bytes::from(serde_json::json!({ "received": noted }).to_string())
}

/// The packet ids and keys of a note (nothing from a body that is not one).
pub(super) fn read_note(body: &[u8]) -> Vec<(u16, u64)> {
    let Ok(note) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    note["received"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| {
                    let packet_id = u16::try_from(entry[0].as_u64()?).ok()?;
                    Some((packet_id, entry[1].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Connected {
    /// A key for a new QoS 2 message.
    pub(super) fn new_received_key(&mut self) -> u64 {
        self.next_received_key = self.next_received_key.wrapping_add(1);
        self.next_received_key
    }

    /// Notes the received QoS 2 packet ids (a persistent session's);
    /// `pending` answers the note.
    pub(super) fn note_received(&mut self, pending: Pending, context: &mut SessionContext<'_>) {
        let request_id = next_request(self, pending);
        context.submit_as_server(
            request_id,
            Command::Publish {
                channel: received_channel(&self.client_id),
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers: Bytes::new(),
                body: note_body(&self.qos2_received),
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

    /// Takes up the packet ids a resumed session noted (before a restart):
    /// not seen stored by this process, so a retransmission is stored again
    /// under its key.
    pub(super) fn restore_received(&mut self, noted: Vec<(u16, u64)>) {
        for (packet_id, key) in noted {
            self.qos2_received.entry(packet_id).or_insert(Received {
                key: Some(key),
                stored: false,
            });
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
        let released = state.qos2_received.remove(&packet_id);
        if released.is_some_and(|received| received.key.is_some()) {
            state.note_received(Pending::PubCompAfter(packet_id), context);
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
        received.insert(
            7,
            Received {
                key: Some(u64::MAX - 1),
                stored: true,
            },
        );
        received.insert(
            2,
            Received {
                key: Some(5),
                stored: false,
            },
        );
        // A non-persistent session's message has no key and is not noted.
        received.insert(
            3,
            Received {
                key: None,
                stored: false,
            },
        );
        let body = note_body(&received);
        assert_eq!(read_note(&body), vec![(2, 5), (7, u64::MAX - 1)]);
        assert_eq!(read_note(&note_body(&HashMap::new())), vec![]);
        assert_eq!(read_note(b"not a note"), vec![]);
    }
}
