//! SUBSCRIBE and UNSUBSCRIBE, the options of each subscription (v5:
//! no-local, retain-as-published, retain handling, subscription
//! identifiers), and which subscriptions a delivery goes out through.

use starling_protocol::mqtt::{Subscribe, SubscriptionOptions, Unsubscribe};

use super::*;

/// One subscription of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Subscription {
    /// A topic name or a filter with wildcards.
    pub(super) filter: String,
    pub(super) options: SubscriptionOptions,
    /// The v5 Subscription Identifier, sent back with every matching
    /// PUBLISH.
    pub(super) id: Option<u32>,
}

impl Subscription {
    pub(super) fn qos(&self) -> QoS {
        self.options.qos
    }

    fn matches(&self, topic: &str) -> bool {
        self.filter == topic || pattern::matches(&self.filter, topic)
    }

    /// How a persistent session records it.
    pub(super) fn record(&self) -> serde_json::Value {
        let options = &self.options;
        let mut event = serde_json::json!({
            "type": "subscribe",
            "filter": self.filter,
            "qos": options.qos as u8,
        });
        if options.no_local {
            event["no_local"] = true.into();
        }
        if options.retain_as_published {
            event["retain_as_published"] = true.into();
        }
        if let Some(id) = self.id {
            event["id"] = id.into();
        }
        event
    }

    /// A recorded subscription (see [`Subscription::record`]).
    pub(super) fn from_record(event: &serde_json::Value) -> Subscription {
        let qos = match event["qos"].as_u64() {
            Some(2) => QoS::ExactlyOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        Subscription {
            filter: event["filter"].as_str().unwrap_or_default().to_string(),
            options: SubscriptionOptions {
                qos,
                no_local: event["no_local"].as_bool().unwrap_or(false),
                retain_as_published: event["retain_as_published"].as_bool().unwrap_or(false),
                retain_handling: RetainHandling::default(),
            },
            id: event["id"].as_u64().and_then(|id| u32::try_from(id).ok()),
        }
    }
}

/// How a delivery of one channel reaches this connection.
pub(super) enum Route {
    /// The QoS 0 PUBLISH shared by every plain subscriber of the version.
    Shared,
    /// Encoded for this connection alone (QoS 1 or 2, subscription
    /// identifiers, or options that depend on the message).
    Own,
}

impl Connected {
    /// Whether a delivery of `channel` can use the shared encoding: only
    /// when every matching subscription is plain QoS 0.
    pub(super) fn route(&self, channel: &str) -> Route {
        let plain = self
            .subscriptions
            .iter()
            .filter(|subscription| subscription.matches(channel))
            .all(|subscription| {
                subscription.qos() == QoS::AtMostOnce
                    && subscription.id.is_none()
                    && !subscription.options.no_local
                    && !subscription.options.retain_as_published
            });
        if plain {
            Route::Shared
        } else {
            Route::Own
        }
    }

    /// What `message` of `channel` goes out as: at the highest QoS of the
    /// matching subscriptions, with their identifiers; `None` when only
    /// no-local subscriptions match a message this client published.
    pub(super) fn outgoing(&self, channel: &Arc<str>, message: &Message) -> Option<Outgoing> {
        let mut matching = self
            .subscriptions
            .iter()
            .filter(|subscription| subscription.matches(channel))
            .peekable();
        matching.peek()?;
        let (origin, was_retained) = mqtt_marks(&message.headers);
        let own = origin.is_some_and(|origin| origin == self.client_id.as_bytes());
        let mut qos = None;
        let mut retain = false;
        let mut subscription_ids = Vec::new();
        for subscription in matching {
            if own && subscription.options.no_local {
                continue;
            }
            qos = qos.max(Some(subscription.qos()));
            retain |= subscription.options.retain_as_published && was_retained;
            subscription_ids.extend(subscription.id);
        }
        subscription_ids.sort_unstable();
        subscription_ids.dedup();
        Some(Outgoing {
            topic: channel.clone(),
            message: message.clone(),
            qos: qos?,
            retain,
            subscription_ids,
        })
    }

    /// True when this client's publishes must name it, so that its no-local
    /// subscriptions can recognise them.
    pub(super) fn marks_own_publishes(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|subscription| subscription.options.no_local)
    }

    fn unsubscribe_filter(&mut self, filter: &str) -> Option<Subscription> {
        let index = self
            .subscriptions
            .iter()
            .position(|subscription| subscription.filter == filter)?;
        Some(self.subscriptions.remove(index))
    }
}

impl MqttSession {
    pub(super) fn subscribe(&mut self, subscribe: Subscribe, context: &mut SessionContext<'_>) {
        let state = self.state.as_mut().expect("connected");
        let packet_id = subscribe.packet_id;
        let id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut codes = vec![None; subscribe.filters.len()];
        let mut commands = Vec::new();
        let mut wants_retained = Vec::new();
        for (index, (filter, options)) in subscribe.filters.into_iter().enumerate() {
            if filter.starts_with("$share/") {
                codes[index] = Some(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            let subscription = Subscription {
                filter,
                options,
                id,
            };
            let existed = state.unsubscribe_filter(&subscription.filter).is_some();
            if !existed
                && pattern::is_pattern(&subscription.filter)
                && options.qos != QoS::AtMostOnce
            {
                let since = (subscription.filter.clone(), wall_clock_ms());
                state.wildcard_since_ms.push(since);
            }
            state.subscriptions.push(subscription.clone());
            let send_retained = match options.retain_handling {
                RetainHandling::SendOnSubscribe => true,
                RetainHandling::SendOnNewSubscribe => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                wants_retained.push(subscription.clone());
            }
            commands.push((index, subscription));
        }
        state.subscribes.insert(
            packet_id,
            Collecting {
                codes,
                retained: wants_retained,
                granted: Vec::new(),
            },
        );
        for (index, subscription) in commands {
            let filter = subscription.filter.clone();
            let request_id =
                next_request(state, Pending::Subscribe(packet_id, index, subscription));
            // A filter with wildcards is a broker channel pattern as it
            // stands (the same rules).
            let command = if pattern::is_pattern(&filter) {
                Command::SubscribePattern { pattern: filter }
            } else {
                Command::Subscribe {
                    channel: filter,
                    start: starling_protocol::SubscribeStart::Live,
                }
            };
            context.submit(request_id, command);
        }
        // The SUBACK goes at once when no filter needed the broker.
        let complete = state
            .subscribes
            .get(&packet_id)
            .is_some_and(|c| c.codes.iter().all(Option::is_some));
        if complete {
            let done = state.subscribes.remove(&packet_id).expect("present");
            send_suback(state, packet_id, done, context);
        }
    }

    pub(super) fn unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        context: &mut SessionContext<'_>,
    ) {
        let state = self.state.as_mut().expect("connected");
        let packet_id = unsubscribe.packet_id;
        let codes = vec![None; unsubscribe.filters.len()];
        state.unsubscribes.insert(
            packet_id,
            Collecting {
                codes,
                retained: Vec::new(),
                granted: Vec::new(),
            },
        );
        for (index, filter) in unsubscribe.filters.into_iter().enumerate() {
            state.unsubscribe_filter(&filter);
            state.record(
                serde_json::json!({"type": "unsubscribe", "filter": filter}),
                context,
            );
            let request_id = next_request(state, Pending::Unsubscribe(packet_id, index));
            let command = if pattern::is_pattern(&filter) {
                Command::UnsubscribePattern { pattern: filter }
            } else {
                Command::Unsubscribe { channel: filter }
            };
            context.submit(request_id, command);
        }
        state.drop_caught_up(context);
    }
}
