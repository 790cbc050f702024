//! SUBSCRIBE and UNSUBSCRIBE, the options of each subscription (v5:
//! no-local, retain-as-published, retain handling, subscription
//! identifiers), and which subscriptions a delivery goes out through
//! (shared subscriptions take only their group's share, `shared`).

use starling_protocol::mqtt::{Subscribe, SubscriptionOptions, Unsubscribe};

use super::shared::{shared_topic_filter, SHARE_PREFIX};
use super::*;

/// One subscription of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Subscription {
    /// A topic name or a filter with wildcards, or either after
    /// `$share/<group>/` for a shared subscription.
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

    /// The filter messages are matched against (a shared subscription's
    /// without its `$share/<group>/`).
    pub(super) fn topic_filter(&self) -> &str {
        shared_topic_filter(&self.filter).unwrap_or(&self.filter)
    }

    pub(super) fn is_shared(&self) -> bool {
        self.filter.starts_with(SHARE_PREFIX)
    }

    pub(super) fn matches(&self, topic: &str) -> bool {
        let filter = self.topic_filter();
        filter == topic || pattern::matches(filter, topic)
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
                    && !subscription.is_shared()
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
    /// no-local subscriptions match a message this client published, or
    /// only shared subscriptions whose group gives it to another member
    /// (which keep it a while, `shared`).
    pub(super) fn outgoing(&mut self, channel: &Arc<str>, message: &Message) -> Option<Outgoing> {
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
        // The shared subscription it goes through, when only shared ones
        // take it; the one that skipped it, when none takes it.
        let (mut share, mut unshared, mut skipped) = (None, false, None);
        for subscription in matching {
            if own && subscription.options.no_local {
                continue;
            }
            if let Some(view) = self.share(&subscription.filter) {
                if !view.owns(channel, message) {
                    skipped = Some((subscription.filter.clone(), subscription.qos()));
                    continue;
                }
                share = Some(subscription.filter.clone());
            } else {
                unshared = true;
            }
            qos = qos.max(Some(subscription.qos()));
            retain |= subscription.options.retain_as_published && was_retained;
            subscription_ids.extend(subscription.id);
        }
        subscription_ids.sort_unstable();
        subscription_ids.dedup();
        // A message not in the log (seq 0: ephemeral, or a live-only QoS 0
        // one) can never be sent again: it goes out at QoS 0.
        let in_log = message.seq > 0;
        let mut outgoing = Outgoing {
            topic: channel.clone(),
            message: message.clone(),
            qos: qos.filter(|_| in_log).unwrap_or(QoS::AtMostOnce),
            retain,
            subscription_ids,
            share: share.filter(|_| !unshared),
        };
        if qos.is_none() {
            if let Some((filter, qos)) =
                skipped.filter(|(_, qos)| in_log && *qos != QoS::AtMostOnce)
            {
                outgoing.qos = qos;
                outgoing.share = Some(filter.clone());
                let extras = self.extras.as_mut();
                if let Some(view) = extras.and_then(|extras| extras.shares.get_mut(&filter)) {
                    view.remember_skipped(outgoing);
                }
            }
            return None;
        }
        Some(outgoing)
    }

    /// True when this client's publishes must name it, so that its no-local
    /// subscriptions can recognise them.
    pub(super) fn marks_own_publishes(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|subscription| subscription.options.no_local)
    }

    /// A resumed session's subscription of `topic` waits for its cursor.
    fn restoring_cursor(&self, topic: &str) -> bool {
        self.pending.values().any(
            |pending| matches!(pending, Pending::RestoreCursor { topic: restoring, .. } if restoring == topic),
        )
    }

    /// After an UNSUBSCRIBE: a topic no filter of the session matches any
    /// more keeps no position here, so that subscribed to again it starts
    /// from then (its cursor written anew at the head), not from where it
    /// was left with what came meanwhile.
    fn forget_unmatched_cursors(&mut self) {
        let subscriptions = &self.subscriptions;
        self.qos.cursors.retain(|topic, _| {
            subscriptions
                .iter()
                .any(|subscription| pattern::matches(subscription.topic_filter(), topic))
        });
        release_if_empty(&mut self.qos.cursors);
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
        let codes = vec![None; subscribe.filters.len()];
        let mut commands = Vec::new();
        let mut wants_retained = Vec::new();
        for (index, (filter, options)) in subscribe.filters.into_iter().enumerate() {
            let subscription = Subscription {
                filter,
                options,
                id,
            };
            let replaced = state.unsubscribe_filter(&subscription.filter);
            let existed = replaced.is_some();
            let shared = subscription.is_shared();
            if !existed
                && !shared
                && pattern::is_pattern(&subscription.filter)
                && options.qos != QoS::AtMostOnce
            {
                let since = (subscription.filter.clone(), wall_clock_ms());
                state.extras().wildcard_since_ms.push(since);
            }
            push_compact(&mut state.subscriptions, subscription.clone());
            // A shared subscription gets no retained messages (MQTT 4.8.2).
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendOnNewSubscribe => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                wants_retained.push(subscription.clone());
            }
            commands.push((index, subscription, replaced.map(Box::new)));
        }
        if !wants_retained.is_empty() {
            // From now on a live message of a topic supersedes its retained
            // one, read only after the SUBACK (`store::answer_suback`).
            state.extras().retained_subscribing += wants_retained.len();
        }
        state.collecting.insert(
            Awaiting::SubAck(packet_id),
            Collecting {
                codes,
                retained: wants_retained,
                granted: Vec::new(),
            },
        );
        for (index, subscription, replaced) in commands {
            if state.restoring_cursor(&subscription.filter) {
                // A resumed session's subscription of this topic is being
                // restored from its cursor (with what came while the client
                // was away): a live broker subscription now would be first
                // and keep that one out, so the restored one stands for it.
                let granted = ReasonCode::granted(subscription.qos());
                let awaiting = Awaiting::SubAck(packet_id);
                if let Some(collecting) = state.collecting.get_mut(&awaiting) {
                    collecting.codes[index] = Some(granted);
                    collecting.granted.push(subscription);
                }
                continue;
            }
            let command = subscribe_command(subscription.topic_filter());
            let pending = Pending::Subscribe(packet_id, index, subscription, replaced);
            let request_id = next_request(state, pending);
            context.submit(request_id, command);
        }
        // The SUBACK goes at once when no filter needed the broker.
        if let Some(done) = collect_complete(&mut state.collecting, Awaiting::SubAck(packet_id)) {
            send_suback(state, &self.listener, packet_id, done, context);
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
        state.collecting.insert(
            Awaiting::UnsubAck(packet_id),
            Collecting {
                codes,
                retained: Vec::new(),
                granted: Vec::new(),
            },
        );
        for (index, filter) in unsubscribe.filters.into_iter().enumerate() {
            if state.unsubscribe_filter(&filter).is_none() {
                // Not a filter of this session (another share group's name
                // for a topic filter it has, say): nothing changes, and the
                // broker subscription its other filters need stays.
                state
                    .collecting
                    .get_mut(&Awaiting::UnsubAck(packet_id))
                    .expect("inserted")
                    .codes[index] = Some(ReasonCode::NoSubscriptionExisted);
                continue;
            }
            state.forget_retained_pages(&filter);
            state.leave_share(&self.listener.groups, &filter, context);
            state.record(
                serde_json::json!({"type": "unsubscribe", "filter": filter}),
                context,
            );
            let topic_filter = shared_topic_filter(&filter).unwrap_or(&filter);
            // Or a topic subscribed on its own to catch up for a wildcard
            // filter that still matches it.
            let still_used = state
                .subscriptions
                .iter()
                .any(|s| s.topic_filter() == topic_filter)
                || state.catches_up_for_a_filter(topic_filter);
            if still_used {
                // Another subscription of this session (shared or not)
                // needs the broker subscription.
                state
                    .collecting
                    .get_mut(&Awaiting::UnsubAck(packet_id))
                    .expect("inserted")
                    .codes[index] = Some(ReasonCode::Success);
                continue;
            }
            let command = unsubscribe_command(topic_filter);
            let request_id = next_request(state, Pending::Unsubscribe(packet_id, index));
            context.submit(request_id, command);
        }
        state.drop_caught_up(context);
        state.forget_unmatched_cursors();
        if let Some(done) = collect_complete(&mut state.collecting, Awaiting::UnsubAck(packet_id)) {
            send_unsuback(state, packet_id, done, context);
        }
    }
}

/// The broker subscription of a topic filter: a filter with wildcards is a
/// broker channel pattern as it stands (the same rules); a topic name is a
/// channel, live from now.
pub(super) fn subscribe_command(topic_filter: &str) -> Command {
    if pattern::is_pattern(topic_filter) {
        Command::SubscribePattern {
            pattern: topic_filter.to_string(),
        }
    } else {
        Command::Subscribe {
            channel: topic_filter.to_string(),
            start: starling_protocol::SubscribeStart::Live,
        }
    }
}

fn unsubscribe_command(topic_filter: &str) -> Command {
    if pattern::is_pattern(topic_filter) {
        Command::UnsubscribePattern {
            pattern: topic_filter.to_string(),
        }
    } else {
        Command::Unsubscribe {
            channel: topic_filter.to_string(),
        }
    }
}
