//! v5 Topic Aliases, both ways: a client may name a topic by a number the
//! server announced room for (its Topic Alias Maximum in the CONNACK), and
//! the server names the topics of its own PUBLISHes to a client that
//! announced room for them in its CONNECT. Aliases live as long as the
//! connection (MQTT 3.3.2.3.4).

use super::*;

/// Topic aliases a client may set on one connection (announced in the
/// CONNACK). Each holds a topic name, so this bounds what a connection keeps.
pub const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Topic aliases the server sets toward one client at most, whatever room
/// the client announced.
pub const OUTBOUND_TOPIC_ALIASES_MAX: u16 = 64;

/// A connection's topic aliases.
#[derive(Default)]
pub(super) struct TopicAliases {
    /// Set by the client: alias → topic.
    inbound: HashMap<u16, String>,
    /// Set by the server: topic → alias, first come first served until the
    /// room is used (a topic without an alias goes out in full).
    outbound: HashMap<Arc<str>, u16>,
    /// The room the client announced, capped.
    outbound_max: u16,
}

impl TopicAliases {
    pub(super) fn new(client_maximum: Option<u16>) -> TopicAliases {
        TopicAliases {
            outbound_max: client_maximum.unwrap_or(0).min(OUTBOUND_TOPIC_ALIASES_MAX),
            ..TopicAliases::default()
        }
    }

    /// Whether no alias was set either way.
    pub(super) fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty()
    }

    /// Resolves the topic of an inbound PUBLISH: a topic with an alias sets
    /// the alias; an empty topic takes the alias's. Errors are (reason code,
    /// what the client did wrong).
    pub(super) fn resolve(&mut self, publish: &mut Publish) -> Result<(), (ReasonCode, String)> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
            let reason = format!(
                "topic alias {alias} is outside 1 to {TOPIC_ALIAS_MAXIMUM}, the server's Topic \
                 Alias Maximum"
            );
            return Err((ReasonCode::TopicAliasInvalid, reason));
        }
        if publish.topic.is_empty() {
            let Some(topic) = self.inbound.get(&alias) else {
                let reason = format!(
                    "topic alias {alias} was never set on this connection; send it with a topic \
                     name first"
                );
                return Err((ReasonCode::ProtocolError, reason));
            };
            publish.topic = topic.clone();
        } else {
            self.inbound.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// The topic name and alias to send `topic` with in a packet that may
    /// be sent after others (it waits for a durable note): the alias alone
    /// if the client knows it, else the topic without one (an alias set by
    /// a packet that waits could reach the client, in a packet sent
    /// meanwhile, before the packet that sets it).
    pub(super) fn outbound_known(&self, topic: &Arc<str>) -> (String, Option<u16>) {
        match self.outbound.get(topic) {
            Some(alias) => (String::new(), Some(*alias)),
            None => (topic.to_string(), None),
        }
    }

    /// The topic name and alias to send `topic` with: the alias alone once
    /// the client knows it.
    pub(super) fn outbound(&mut self, topic: &Arc<str>) -> (String, Option<u16>) {
        if let Some(alias) = self.outbound.get(topic) {
            return (String::new(), Some(*alias));
        }
        let next = self.outbound.len() as u16 + 1;
        if next > self.outbound_max {
            return (topic.to_string(), None);
        }
        self.outbound.insert(topic.clone(), next);
        (topic.to_string(), Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: Properties {
                topic_alias: alias,
                ..Properties::default()
            },
            payload: Bytes::new(),
        }
    }

    #[test]
    fn inbound_aliases_are_set_used_and_checked() {
        let mut aliases = TopicAliases::new(None);
        let mut first = publish("a/b", Some(3));
        aliases.resolve(&mut first).unwrap();
        assert_eq!(first.properties.topic_alias, None, "taken off the message");
        let mut second = publish("", Some(3));
        aliases.resolve(&mut second).unwrap();
        assert_eq!(second.topic, "a/b");
        let unknown = aliases.resolve(&mut publish("", Some(4))).unwrap_err();
        assert_eq!(unknown.0, ReasonCode::ProtocolError);
        let too_high = publish("x", Some(TOPIC_ALIAS_MAXIMUM + 1));
        let error = aliases.resolve(&mut too_high.clone()).unwrap_err();
        assert_eq!(error.0, ReasonCode::TopicAliasInvalid);
        let error = aliases.resolve(&mut publish("x", Some(0))).unwrap_err();
        assert_eq!(error.0, ReasonCode::TopicAliasInvalid);
    }

    #[test]
    fn outbound_aliases_fill_the_clients_room_then_send_topics_in_full() {
        let mut aliases = TopicAliases::new(Some(1));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert_eq!(aliases.outbound(&a), ("a".to_string(), Some(1)));
        assert_eq!(aliases.outbound(&a), (String::new(), Some(1)));
        assert_eq!(aliases.outbound(&b), ("b".to_string(), None));
        let mut none = TopicAliases::new(None);
        assert_eq!(none.outbound(&a), ("a".to_string(), None));
    }
}
