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
        if publish.topic.starts_with('$') {
            disconnect_with(
                version,
                ReasonCode::TopicNameInvalid,
                "topics starting with '$' belong to the server",
                context.out(),
            );
            return Err(close("publish to a '$' topic"));
        }
        let topic = publish.topic.clone();
        let pending = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => Pending::Publish0(topic),
            (QoS::AtLeastOnce, Some(id)) => Pending::PubAck(id, topic),
            (QoS::ExactlyOnce, Some(id)) => {
                if state.qos2_received.contains(&id) {
                    // A retransmission of a message already stored (or being
                    // stored): acknowledge again, store nothing.
                    if !state
                        .pending
                        .values()
                        .any(|p| matches!(p, Pending::PubRec(p, _) if *p == id))
                    {
                        Packet::PubRec(PublishResponse::success(id)).encode(version, context.out());
                    }
                    return Ok(());
                }
                if state.qos2_received.len() >= usize::from(RECEIVE_MAXIMUM) {
                    disconnect_with(
                        version,
                        ReasonCode::ReceiveMaximumExceeded,
                        "more QoS 2 messages in flight than the Receive Maximum",
                        context.out(),
                    );
                    return Err(close("receive maximum exceeded"));
                }
                state.qos2_received.insert(id);
                Pending::PubRec(id, topic)
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        };
        let marks = Marks {
            origin: state
                .marks_own_publishes()
                .then_some(state.client_id.as_str()),
            retained: publish.retain,
        };
        let headers = headers_of(&publish.properties, marks, wall_clock_ms());
        if publish.retain {
            // The topic's retained message is kept in the log beside it (an
            // empty payload clears it), so it survives a restart.
            let request_id = next_request(state, Pending::Retained(publish.topic.clone()));
            context.submit_as_server(
                request_id,
                Command::Publish {
                    channel: retained_channel(&publish.topic),
                    ephemeral: false,
                    kind: kind::MESSAGE,
                    client_message_id: Bytes::new(),
                    relation: 0,
                    headers: headers.clone(),
                    body: publish.payload.clone(),
                },
            );
        }
        let request_id = next_request(state, pending);
        context.submit(
            request_id,
            Command::Publish {
                channel: publish.topic,
                ephemeral: false,
                kind: kind::MESSAGE,
                client_message_id: Bytes::new(),
                relation: 0,
                headers,
                body: publish.payload,
            },
        );
        Ok(())
    }
}
