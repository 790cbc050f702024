//! Offline messages for the wildcard filters of a persistent session. The
//! broker's pattern subscriptions are live only, so the session keeps, per
//! topic, what a topic subscription would: once a QoS 1 or 2 message of a
//! topic reaches it through a wildcard filter, the topic is recorded
//! (`topic` in the session's records) and gets a cursor. On a reconnect,
//! those topics resume from their cursors, and topics the session never saw
//! are found in the index of topics (`$mqtt/topics`, each topic listed at
//! its first message published over MQTT): their messages since the filter
//! was subscribed are sent from the log.

use super::*;

/// Every topic published to over MQTT, listed once, at its first message.
pub(super) const TOPIC_INDEX: &str = "$mqtt/topics";
/// Topics a session follows through its wildcard filters with cursors, at
/// most. Past this, further topics reach it live only (no offline messages),
/// which bounds the session's cursors and records.
pub const WILDCARD_TOPICS_MAX: usize = 10_000;
/// Records read per page of the topic index.
const TOPIC_INDEX_PAGE: u32 = 500;
/// Messages read per page while looking for where a topic's offline
/// messages start.
const OFFLINE_START_PAGE: u32 = 100;

impl Connected {
    /// The QoS 1 and 2 wildcard filters that match `topic`, and the earliest
    /// time one of them was subscribed, if any matches.
    fn wildcard_since(&self, topic: &str) -> Option<u64> {
        let exact = self.subscriptions.iter().any(|s| s.filter == topic);
        if exact {
            // A topic subscription of its own catches it up.
            return None;
        }
        self.extras
            .as_ref()?
            .wildcard_since_ms
            .iter()
            .filter(|(filter, _)| pattern::matches(filter, topic))
            .map(|(_, since_ms)| *since_ms)
            .min()
    }

    fn is_caught_up(&self, topic: &str) -> bool {
        self.extras
            .as_ref()
            .is_some_and(|extras| extras.caught_up.contains(topic))
    }

    /// A QoS 1 or 2 message reached this persistent session through its
    /// wildcard filters only: from now on the topic's position is kept, so
    /// a reconnect catches up from here. Returns false when the message is
    /// not to be sent now: the topic's own subscription, being made, will
    /// deliver it from the log.
    pub(super) fn follow_wildcard_topic(
        &mut self,
        outgoing: &Outgoing,
        context: &mut SessionContext<'_>,
    ) -> bool {
        let topic = &outgoing.topic;
        let seq = outgoing.message.seq;
        if seq == 0 {
            // Not in the log (an ephemeral message, or a live-only QoS 0
            // one): no catch-up brings it, and no position follows it.
            return true;
        }
        let catching_up = self
            .extras
            .as_mut()
            .and_then(|extras| extras.catching_up.get_mut(&**topic));
        if let Some(lowest) = catching_up {
            // Its catch-up covers it (the topic's own subscription starts
            // at or before it), so it is not sent twice or out of order.
            *lowest = Some(lowest.map_or(seq, |lowest| lowest.min(seq)));
            return false;
        }
        if !self.persistent
            || outgoing.share.is_some()
            || outgoing.qos == QoS::AtMostOnce
            || self.qos.cursors.contains_key(topic)
            || self.qos.cursors.len() >= WILDCARD_TOPICS_MAX
        {
            return true;
        }
        match self.wildcard_since(topic) {
            Some(since_ms) if seq > 1 => {
                // Not the topic's first message: earlier ones published
                // since the filter was subscribed may have missed the
                // session (published while it reconnected, after its read
                // of the topic index and before its pattern subscription
                // was in place). They are looked for first, and this one
                // comes with the topic's catch-up.
                self.extras().caught_up.insert(topic.to_string());
                self.extras()
                    .catching_up
                    .insert(topic.to_string(), Some(seq));
                let query = HistoryQuery::Last;
                self.read_offline_start(topic.to_string(), since_ms, None, query, context);
                false
            }
            _ => {
                self.start_following(topic.to_string(), seq, context);
                true
            }
        }
    }

    /// A QoS 1 or 2 message in the log reached the session through its
    /// wildcard filters while more than [`HELD_BEFORE_CATCH_UP`] messages
    /// wait for the client's window. Rather than hold it too (and close the
    /// connection at [`HELD_MESSAGES_MAX`]), the session subscribes to its
    /// topic on its own from this message: a topic subscription that falls
    /// behind reads on from the log as the client acknowledges (the broker
    /// pages it, see `Session::delivery_room`), and the wildcard filters no
    /// longer bring the topic's stored messages. Returns true when it did
    /// (the message comes with that subscription).
    pub(super) fn fall_behind_on_topic(
        &mut self,
        outgoing: &Outgoing,
        context: &mut SessionContext<'_>,
    ) -> bool {
        let topic = &outgoing.topic;
        let seq = outgoing.message.seq;
        if seq == 0
            || outgoing.qos == QoS::AtMostOnce
            || outgoing.share.is_some()
            || self.qos.held.len() < HELD_BEFORE_CATCH_UP
            || self
                .subscriptions
                .iter()
                .any(|s| s.topic_filter() == &**topic)
        {
            return false;
        }
        let held = self.qos.held.len();
        let extras = self.extras();
        if extras.caught_up.contains(&**topic) || extras.caught_up.len() >= WILDCARD_TOPICS_MAX {
            return false;
        }
        extras.caught_up.insert(topic.to_string());
        // What comes through the filters before the subscription is in
        // place is covered by it (`follow_wildcard_topic`).
        extras.catching_up.insert(topic.to_string(), Some(seq));
        log::debug!(
            "mqtt {}: {held} messages wait for the client: {topic:?} reads on from the log at \
             seq {seq}",
            context.peer()
        );
        context.metrics().catch_up_fallbacks.add(1);
        let request_id = next_request(self, Pending::FellBehind(topic.to_string()));
        let start = starling_protocol::SubscribeStart::FromSeq(seq);
        let channel = topic.to_string();
        context.submit(request_id, Command::Subscribe { channel, start });
        true
    }

    /// Keeps the position of `topic` from `first_seq` on: a cursor just
    /// before it and a record that the session follows the topic. The
    /// cursor is written once the record is durable (`Pending::Following`):
    /// a cursor in the log always belongs to a topic the session's records
    /// say it follows, so a restart resumes the topic from it rather than
    /// starting it again from the topic index (and its cursor back).
    fn start_following(&mut self, topic: String, first_seq: u64, context: &mut SessionContext<'_>) {
        let cursor = first_seq - 1;
        let topic: Arc<str> = Arc::from(topic);
        self.qos.cursors.insert(topic.clone(), cursor);
        // Acknowledgements meanwhile only move the position.
        self.qos.cursor_writes.insert(topic.clone(), cursor);
        self.extras().recording.insert(topic.clone());
        let record = serde_json::json!({"type": "topic", "topic": &*topic, "from": first_seq});
        self.append_record(record, Pending::Following(topic), context);
    }

    /// The record that the session follows `topic` is durable: its cursor
    /// is written. (Or the record failed, which only a log that stopped
    /// accepting writes does; the cursor write then fails too.)
    pub(super) fn following(&mut self, topic: Arc<str>, context: &mut SessionContext<'_>) {
        self.extras().recording.remove(&topic);
        self.qos.cursor_writes.remove(&topic);
        release_if_empty(&mut self.qos.cursor_writes);
        if let Some(cursor) = self.qos.cursors.get(&topic).copied() {
            self.write_cursor(topic, cursor, context);
        }
    }

    /// Subscribes to `topic` from `seq` on (catch-up, then live) for a
    /// wildcard filter.
    fn catch_up(&mut self, topic: String, seq: u64, context: &mut SessionContext<'_>) {
        self.extras().caught_up.insert(topic.clone());
        let request_id = next_request(self, Pending::CaughtUp(topic.clone()));
        context.submit(
            request_id,
            Command::Subscribe {
                channel: topic,
                start: starling_protocol::SubscribeStart::FromSeq(seq),
            },
        );
    }

    /// After the session's subscriptions are restored: the topics it
    /// followed resume from their cursors, and the topic index is read for
    /// those it never saw.
    pub(super) fn restore_wildcard_topics(
        &mut self,
        stored: &StoredSession,
        context: &mut SessionContext<'_>,
    ) {
        let wildcard_since_ms: Vec<(String, u64)> = self
            .subscriptions
            .iter()
            .filter(|s| {
                pattern::is_pattern(&s.filter) && !s.is_shared() && s.qos() != QoS::AtMostOnce
            })
            .map(|s| {
                let since_ms = stored.subscribed_at_ms.get(&s.filter).copied();
                (s.filter.clone(), since_ms.unwrap_or_else(wall_clock_ms))
            })
            .collect();
        if wildcard_since_ms.is_empty() {
            return;
        }
        self.extras().wildcard_since_ms = wildcard_since_ms;
        for topic in &stored.followed_topics {
            if self.wildcard_since(topic).is_some() {
                self.extras().caught_up.insert(topic.to_string());
                // Until its subscription from the cursor is in place, what
                // comes live through the filter waits for it.
                self.extras().catching_up.insert(topic.to_string(), None);
                let floor = stored.cursor_floors.get(topic).copied().unwrap_or(0);
                self.read_cursor(topic.to_string(), floor, context);
            }
        }
        self.read_topic_index(1, context);
    }

    fn read_topic_index(&mut self, from: u64, context: &mut SessionContext<'_>) {
        let (channel, query) = (TOPIC_INDEX.to_string(), HistoryQuery::From(from));
        read_history(
            self,
            Reader::Server,
            Pending::TopicIndex,
            channel,
            query,
            TOPIC_INDEX_PAGE,
            context,
        );
    }

    /// A page of the topic index: find where the offline messages of each
    /// new matching topic start.
    pub(super) fn on_topic_index(&mut self, reply: &Reply, context: &mut SessionContext<'_>) {
        let Reply::History {
            head_seq, messages, ..
        } = reply
        else {
            return;
        };
        for message in messages {
            let Ok(topic) = std::str::from_utf8(&message.body) else {
                continue;
            };
            if self.is_caught_up(topic)
                || self.qos.cursors.contains_key(topic)
                || self.qos.cursors.len() >= WILDCARD_TOPICS_MAX
            {
                continue;
            }
            let Some(since_ms) = self.wildcard_since(topic) else {
                continue;
            };
            self.extras().caught_up.insert(topic.to_string());
            self.extras().catching_up.insert(topic.to_string(), None);
            self.read_offline_start(
                topic.to_string(),
                since_ms,
                None,
                HistoryQuery::Last,
                context,
            );
        }
        if let Some(last) = messages.last() {
            if last.seq < *head_seq {
                self.read_topic_index(last.seq + 1, context);
            }
        }
    }

    fn read_offline_start(
        &mut self,
        topic: String,
        since_ms: u64,
        found: Option<u64>,
        query: HistoryQuery,
        context: &mut SessionContext<'_>,
    ) {
        let pending = Pending::OfflineStart {
            topic: topic.clone(),
            since_ms,
            found,
        };
        read_history(
            self,
            Reader::Client,
            pending,
            topic,
            query,
            OFFLINE_START_PAGE,
            context,
        );
    }

    /// A page of a topic's history, read backwards from its end: its first
    /// message published after `since_ms` is where the session's offline
    /// messages start. `found` is that message in the pages read so far.
    pub(super) fn on_offline_start(
        &mut self,
        topic: String,
        since_ms: u64,
        found: Option<u64>,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) {
        // A read the client may not make (its roles allow subscribing but
        // not history) finds no offline messages; what came live meanwhile
        // is still caught up, not held back for good.
        let messages: &[Message] = match reply {
            Reply::History { messages, .. } => messages,
            _ => &[],
        };
        // Strictly later: a message in the very millisecond of the
        // subscription was published before it, or reached the session live
        // (and then its topic is followed already).
        let first_new = messages.iter().find(|m| m.timestamp_ms > since_ms);
        let whole_page_new = messages.first().is_some_and(|m| m.timestamp_ms > since_ms);
        let found = first_new.map(|m| m.seq).or(found);
        if self.wildcard_since(&topic).is_none() {
            // The filter that reached it was unsubscribed meanwhile (or the
            // client subscribed to the topic itself): nothing to follow.
            self.extras().caught_up.remove(&topic);
            self.extras().catching_up.remove(&topic);
            return;
        }
        match (whole_page_new, messages.first()) {
            (true, Some(first)) if first.seq > 1 => {
                // The offline messages may start further back.
                let query = HistoryQuery::Before(first.seq);
                self.read_offline_start(topic, since_ms, found, query, context);
            }
            _ => {
                // A message that came live meanwhile (after this read) is
                // caught up too.
                let live = self
                    .extras
                    .as_ref()
                    .and_then(|extras| extras.catching_up.get(&topic).copied().flatten());
                let start = match (found, live) {
                    (Some(found), Some(live)) => Some(found.min(live)),
                    (found, live) => found.or(live),
                };
                if let Some(start) = start {
                    // Never behind what the client already acknowledged
                    // (a message of the topic resent from the session's
                    // note may have moved its cursor meanwhile).
                    let acknowledged = self.qos.cursors.get(topic.as_str()).copied();
                    let start = acknowledged.map_or(start, |cursor| start.max(cursor + 1));
                    if acknowledged.is_none() {
                        self.start_following(topic.clone(), start, context);
                    }
                    self.catch_up(topic, start, context);
                } else {
                    self.extras().caught_up.remove(&topic);
                    self.extras().catching_up.remove(&topic);
                }
            }
        }
    }

    /// Whether `topic`, subscribed on its own to catch up, still serves a
    /// subscription of the client (one not shared that matches it).
    pub(super) fn catches_up_for_a_filter(&self, topic: &str) -> bool {
        self.is_caught_up(topic)
            && self
                .subscriptions
                .iter()
                .any(|s| !s.is_shared() && s.matches(topic))
    }

    /// The client unsubscribed a filter: topic subscriptions made to catch
    /// up for wildcard filters that no longer match anything go too.
    pub(super) fn drop_caught_up(&mut self, context: &mut SessionContext<'_>) {
        let Some(extras) = self.extras.as_mut() else {
            return;
        };
        let subscriptions = &self.subscriptions;
        extras
            .wildcard_since_ms
            .retain(|(filter, _)| subscriptions.iter().any(|s| s.filter == *filter));
        let Some(extras) = self.extras.as_ref() else {
            return;
        };
        let orphans: Vec<String> = extras
            .caught_up
            .iter()
            .filter(|topic| !self.catches_up_for_a_filter(topic))
            .cloned()
            .collect();
        for topic in orphans {
            self.extras().caught_up.remove(&topic);
            self.extras().catching_up.remove(&topic);
            self.qos.cursors.remove(topic.as_str());
            let request_id = next_request(self, Pending::Fire);
            context.submit(request_id, Command::Unsubscribe { channel: topic });
        }
    }
}
