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

impl Connected {
    /// The QoS to deliver `channel` at: the highest granted by a matching
    /// filter.
    pub(super) fn delivery_qos(&self, channel: &str) -> QoS {
        self.filters
            .iter()
            .filter(|(filter, _)| filter == channel || pattern::matches(filter, channel))
            .map(|(_, qos)| *qos)
            .max()
            .unwrap_or(QoS::AtMostOnce)
    }

    /// A free packet id for an outbound message.
    pub(super) fn take_packet_id(&mut self) -> u16 {
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
    pub(super) fn send_or_hold(
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
    pub(super) fn send_now(
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
    pub(super) fn acknowledged(
        &mut self,
        packet_id: u16,
        context: &mut SessionContext<'_>,
    ) -> Option<u32> {
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
    pub(super) fn record(&mut self, event: serde_json::Value, context: &mut SessionContext<'_>) {
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
    pub(super) fn release_held(&mut self, out: &mut BytesMut) {
        while self.outbound.len() < usize::from(self.window) {
            let Some((channel, message, qos, retain)) = self.held.pop_front() else {
                return;
            };
            self.send_now(&channel, &message, qos, retain, out);
        }
    }
}
