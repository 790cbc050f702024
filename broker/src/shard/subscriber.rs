//! The subscriber side of a shard: subscriptions of its own connections,
//! catch-up pages from channel owners, and live fan-out to local connections.
//!
//! The seam between catch-up and live is kept without gap or duplicate by two
//! facts: an owner answers a fetch with everything visible up to the channel's
//! head at that moment, and everything an owner sends to one shard arrives in
//! the order it was sent. So live deliveries that arrive while a subscription
//! is still catching up are already covered by later pages and are skipped,
//! and after the final page every live delivery starts past its head.

use std::sync::Arc;

use bytes::Bytes;
use starling_protocol::{Message, SubscribeStart};

use super::conn::{read_page_bytes, ConnKind, PageFor};
use super::Shard;
use crate::command::{BrokerError, Reply};
use crate::config::SlowConsumerPolicy;
use crate::engine::LocalEvent;
use crate::mailbox::{ConnRef, FetchStart, ShardMsg, SubRef};

pub(crate) struct Subscriber {
    pub subscription: SubRef,
    /// The subscribe request, answered when the first page arrives.
    pub request_id: u32,
    pub answered: bool,
    /// The next seq this subscriber should see.
    pub next_seq: u64,
    /// Catch-up is over; live deliveries go straight to the connection.
    pub live: bool,
    /// While it catches up (from a seq, or after falling behind, see
    /// `Shard::fall_behind`): its pages bring every stored message from this
    /// seq on, so a pattern subscription of the same connection does not
    /// get those live meanwhile (the session gets them once, in order, from
    /// the pages). `u64::MAX` when it covers nothing (live, or catching up
    /// from a start only the owner knows: last N, or live from the head).
    pub covers_from: u64,
    /// Made by the broker, not asked for: a pattern subscription of the
    /// connection fell behind on this channel under the `catch_up` policy
    /// (`Shard::pattern_falls_behind`). It reads the channel from the log
    /// and goes once live, when the pattern brings the channel again.
    pub implicit: bool,
    /// The first stored message a pattern of the same connection did not
    /// deliver because this subscription's pages cover it (`covers_from`):
    /// if the client unsubscribes before the pages bring it, the
    /// subscription goes on for the pattern from there (`unsubscribe`).
    pub withheld_from: Option<u64>,
}

impl Shard {
    pub(super) fn subscribe(
        &mut self,
        slot: u32,
        request_id: u32,
        channel: String,
        mut start: SubscribeStart,
    ) {
        // Every subscription to a channel on this shard shares one copy of
        // its name: one allocation per channel, not per subscriber.
        let channel: Arc<str> = match self.subscriptions.get_key_value(channel.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(channel),
        };
        let conn = self.conn_ref(slot);
        self.next_subscription_id += 1;
        let subscription = SubRef {
            conn,
            id: self.next_subscription_id,
        };
        if self.is_implicit(&channel, slot) {
            // The client asks for the channel itself. The implicit reading
            // has not brought the pattern everything from `unread` on: the
            // new subscription starts there if its own start is later (live,
            // or last N whose start only the owner knows), or those were
            // lost to the pattern; the connection gets each once either way.
            let unread = self.subscriptions.get(&channel).and_then(|subscribers| {
                subscribers
                    .iter()
                    .find(|s| s.subscription.conn.slot == slot && s.implicit)
                    .map(|s| s.next_seq)
            });
            if let Some(unread) = unread {
                start = match start {
                    SubscribeStart::FromSeq(seq) => SubscribeStart::FromSeq(seq.min(unread)),
                    SubscribeStart::Live | SubscribeStart::LastN(_) => {
                        SubscribeStart::FromSeq(unread)
                    }
                };
            }
            self.drop_subscription(&channel, slot);
        }
        let connection = self.connections[slot as usize]
            .as_mut()
            .expect("subscribe comes from a live connection");
        if connection.subscriptions.iter().any(|c| **c == *channel) {
            let error = BrokerError::AlreadySubscribed(channel.to_string());
            self.reply(conn, request_id, Reply::Error(error));
            return;
        }
        // Most connections subscribe to a few channels: no spare room
        // while the list is short.
        if connection.subscriptions.len() < 4 {
            connection.subscriptions.reserve_exact(1);
        }
        connection.subscriptions.push(channel.clone());
        self.add_subscriber(
            &channel,
            Subscriber {
                subscription,
                request_id,
                answered: false,
                next_seq: 1,
                live: false,
                covers_from: match start {
                    SubscribeStart::FromSeq(seq) => seq.max(1),
                    SubscribeStart::Live | SubscribeStart::LastN(_) => u64::MAX,
                },
                implicit: false,
                withheld_from: None,
            },
        );
        let owner = self.shared.routing.shard_of(&channel);
        let start = match start {
            SubscribeStart::Live => FetchStart::Live,
            SubscribeStart::FromSeq(seq) => FetchStart::From {
                seq: seq.max(1),
                limit: self.shared.config.page_messages_max,
            },
            SubscribeStart::LastN(n) => FetchStart::Last(n),
        };
        let fetch = ShardMsg::Fetch {
            subscriber: subscription,
            channel,
            start,
            bytes_max: 0,
        };
        self.send_read(slot, owner, fetch, false);
    }

    pub(super) fn unsubscribe(&mut self, slot: u32, request_id: u32, channel: &str) {
        let conn = self.conn_ref(slot);
        if self.is_implicit(channel, slot) {
            let error = BrokerError::NotSubscribed(channel.to_string());
            self.reply(conn, request_id, Reply::Error(error));
            return;
        }
        let connection = self.connections[slot as usize]
            .as_mut()
            .expect("unsubscribe comes from a live connection");
        let Some(index) = connection
            .subscriptions
            .iter()
            .position(|c| **c == *channel)
        else {
            let error = BrokerError::NotSubscribed(channel.to_string());
            self.reply(conn, request_id, Reply::Error(error));
            return;
        };
        let channel = connection.subscriptions.swap_remove(index);
        let pattern_matches = connection.patterns.as_ref().is_some_and(|patterns| {
            patterns
                .iter()
                .any(|p| crate::pattern::matches(p, &channel))
        });
        // A subscribe whose first page has not come yet is answered first:
        // nothing else would (the page finds no subscriber), and its
        // connection would count it in flight for good.
        let unanswered = self.subscriptions.get(&channel).and_then(|subscribers| {
            subscribers
                .iter()
                .find(|s| s.subscription.conn.slot == slot && !s.answered)
                .map(|s| (s.request_id, s.subscription.id))
        });
        let withheld = if pattern_matches {
            self.subscriptions.get(&channel).and_then(|subscribers| {
                subscribers
                    .iter()
                    .find(|s| s.subscription.conn.slot == slot && !s.live)
                    .and_then(|s| Some((s.subscription.id, s.withheld_from?)))
            })
        } else {
            None
        };
        if let Some((subscribe_id, subscription)) = unanswered {
            // Its first page, if it still waits for room, is not read.
            self.drop_waiting_fetch(slot, subscription);
            let error = BrokerError::EndedBeforeStart(channel.to_string());
            self.reply(conn, subscribe_id, Reply::Error(error));
        }
        match withheld {
            // Messages the pattern left to the pages came live meanwhile:
            // the subscription goes on for the pattern, implicit, from the
            // first of them (dropped, they were lost to the pattern).
            Some((old, from)) => self.keep_reading_for_pattern(slot, &channel, old, from),
            None => self.remove_subscriber(&channel, slot),
        }
        self.reply(conn, request_id, Reply::Unsubscribed);
    }

    /// Turns connection `slot`'s subscription `old` to `channel` (which the
    /// client just ended) into an implicit one that reads the channel from
    /// `from` for a pattern of the connection, as `pattern_falls_behind`
    /// makes one. Its page in flight, of the old subscription, is dropped.
    fn keep_reading_for_pattern(&mut self, slot: u32, channel: &Arc<str>, old: u64, from: u64) {
        let conn = self.conn_ref(slot);
        self.next_subscription_id += 1;
        let subscription = SubRef {
            conn,
            id: self.next_subscription_id,
        };
        self.drop_waiting_fetch(slot, old);
        self.fetch_wanted
            .retain(|(c, sub)| !(sub.conn.slot == slot && c == channel));
        if let Some(subscriber) = self.subscriptions.get_mut(channel).and_then(|subscribers| {
            subscribers
                .iter_mut()
                .find(|s| s.subscription.conn.slot == slot)
        }) {
            subscriber.subscription = subscription;
            subscriber.answered = true;
            subscriber.live = false;
            subscriber.implicit = true;
            subscriber.next_seq = from;
            subscriber.covers_from = from;
            subscriber.withheld_from = None;
        }
        if let Some(connection) = self.connections[slot as usize].as_mut() {
            connection.subscriptions.push(channel.clone());
        }
        self.fetch_wanted.push((channel.clone(), subscription));
    }

    /// Forgets connection `slot`'s subscription to `channel`, and tells the
    /// owner when it was this shard's last subscriber of the channel.
    pub(super) fn remove_subscriber(&mut self, channel: &Arc<str>, slot: u32) {
        let Some(subscribers) = self.subscriptions.get_mut(channel) else {
            return;
        };
        subscribers.retain(|s| s.subscription.conn.slot != slot);
        if subscribers.is_empty() {
            self.subscriptions.remove(channel);
            let owner = self.shared.routing.shard_of(channel);
            let interest = ShardMsg::Interest {
                channel: channel.clone(),
                shard: self.id,
                on: false,
            };
            self.send(owner, interest);
        }
        self.fetch_wanted
            .retain(|(c, sub)| !(sub.conn.slot == slot && c == channel));
    }

    /// Adds `subscriber` of `channel`, and tells the owner when it is this
    /// shard's first subscriber of the channel.
    fn add_subscriber(&mut self, channel: &Arc<str>, subscriber: Subscriber) {
        let subscribers = self.subscriptions.entry(channel.clone()).or_default();
        let first_here = subscribers.is_empty();
        subscribers.push(subscriber);
        if first_here {
            let owner = self.shared.routing.shard_of(channel);
            let interest = ShardMsg::Interest {
                channel: channel.clone(),
                shard: self.id,
                on: true,
            };
            self.send(owner, interest);
        }
    }

    /// Whether connection `slot`'s subscription to `channel` is one the
    /// broker made for a pattern that fell behind.
    fn is_implicit(&self, channel: &str, slot: u32) -> bool {
        self.subscriptions.get(channel).is_some_and(|subscribers| {
            subscribers
                .iter()
                .any(|s| s.subscription.conn.slot == slot && s.implicit)
        })
    }

    /// Forgets connection `slot`'s subscription to `channel`, in the
    /// connection's list too.
    fn drop_subscription(&mut self, channel: &Arc<str>, slot: u32) {
        if let Some(connection) = self.connections[slot as usize].as_mut() {
            connection.subscriptions.retain(|c| c != channel);
        }
        self.remove_subscriber(channel, slot);
    }

    /// A pattern subscription of connection `slot` could not take its
    /// delivery of `channel` from `seq` on (under the `catch_up` policy):
    /// rather than close the connection, the broker subscribes it to the
    /// channel itself from `seq`, which reads the log a page at a time as
    /// the connection drains (as `fall_behind`), while the pattern no longer
    /// brings the channel's stored messages (`covers_from`). Once a page
    /// reaches the head, that subscription goes and the pattern delivers
    /// the channel again, from the next message on.
    /// Returns false when it cannot: the connection subscribed to the
    /// channel itself and that subscription does not bring these messages
    /// (it started from its last N, or from the head, after them).
    fn pattern_falls_behind(&mut self, slot: u32, channel: &Arc<str>, seq: u64) -> bool {
        let conn = self.conn_ref(slot);
        let Some(connection) = self.connections[slot as usize].as_mut() else {
            return true;
        };
        if connection.subscriptions.iter().any(|c| c == channel) {
            return false;
        }
        connection.subscriptions.push(channel.clone());
        self.next_subscription_id += 1;
        let subscription = SubRef {
            conn,
            id: self.next_subscription_id,
        };
        self.add_subscriber(
            channel,
            Subscriber {
                subscription,
                request_id: 0,
                answered: true,
                next_seq: seq,
                live: false,
                covers_from: seq,
                implicit: true,
                withheld_from: None,
            },
        );
        self.fetch_wanted.push((channel.clone(), subscription));
        self.shared.metrics.catch_up_fallbacks.add(1);
        true
    }

    /// The subscriptions the broker made for connection `slot`'s patterns
    /// that no pattern of it matches any more go.
    fn drop_orphaned_implicit(&mut self, slot: u32) {
        let Some(connection) = self.connections[slot as usize].as_ref() else {
            return;
        };
        let patterns = connection
            .patterns
            .as_ref()
            .map_or(&[][..], |p| p.as_slice());
        let orphans: Vec<Arc<str>> = connection
            .subscriptions
            .iter()
            .filter(|channel| !patterns.iter().any(|p| crate::pattern::matches(p, channel)))
            .filter(|channel| self.is_implicit(channel, slot))
            .cloned()
            .collect();
        for channel in orphans {
            self.drop_subscription(&channel, slot);
        }
    }

    /// Subscribes connection `slot` to the channels matching `pattern`. The
    /// reply waits until every shard counts the subscription, so whatever is
    /// published after the client hears "subscribed" reaches it.
    pub(super) fn subscribe_pattern(&mut self, slot: u32, request_id: u32, pattern: Arc<str>) {
        let conn = self.conn_ref(slot);
        let connection = self.connections[slot as usize]
            .as_mut()
            .expect("subscribe comes from a live connection");
        let patterns = connection.patterns.get_or_insert_with(Box::default);
        if patterns.iter().any(|p| **p == *pattern) {
            let error = BrokerError::AlreadySubscribed(pattern.to_string());
            self.reply(conn, request_id, Reply::Error(error));
            return;
        }
        patterns.push(pattern.clone());
        self.pattern_subscriptions.push((pattern.clone(), slot));
        let shards = self.shared.routing.shards;
        self.next_pattern_ack = self.next_pattern_ack.wrapping_add(1);
        let ack = self.next_pattern_ack;
        self.pattern_pending
            .insert((conn, ack), (request_id, shards));
        for shard in 0..shards {
            let interest = ShardMsg::PatternInterest {
                pattern: pattern.clone(),
                shard: self.id,
                on: true,
                ack: Some((conn, ack)),
            };
            self.send(shard, interest);
        }
    }

    /// One shard counts a pattern subscription (`ack`, its number on this
    /// shard); the last one answers it.
    pub(super) fn pattern_ready(&mut self, to: ConnRef, ack: u32) {
        let Some((request_id, remaining)) = self.pattern_pending.get_mut(&(to, ack)) else {
            return;
        };
        *remaining -= 1;
        if *remaining == 0 {
            let request_id = *request_id;
            self.pattern_pending.remove(&(to, ack));
            if self.connection(to).is_some() {
                self.deliver_reply(to, request_id, Reply::Subscribed { head_seq: 0 });
            }
        }
    }

    pub(super) fn unsubscribe_pattern(&mut self, slot: u32, request_id: u32, pattern: &str) {
        let conn = self.conn_ref(slot);
        let connection = self.connections[slot as usize]
            .as_mut()
            .expect("unsubscribe comes from a live connection");
        let found = connection.patterns.as_mut().and_then(|patterns| {
            let index = patterns.iter().position(|p| **p == *pattern)?;
            Some(patterns.swap_remove(index))
        });
        let Some(pattern) = found else {
            let error = BrokerError::NotSubscribed(pattern.to_string());
            self.reply(conn, request_id, Reply::Error(error));
            return;
        };
        if connection.patterns.as_ref().is_some_and(|p| p.is_empty()) {
            connection.patterns = None;
        }
        self.remove_pattern_subscriber(&pattern, slot);
        self.drop_orphaned_implicit(slot);
        self.reply(conn, request_id, Reply::Unsubscribed);
    }

    /// Forgets connection `slot`'s subscription to `pattern` here and at
    /// every owner.
    pub(super) fn remove_pattern_subscriber(&mut self, pattern: &Arc<str>, slot: u32) {
        let before = self.pattern_subscriptions.len();
        self.pattern_subscriptions
            .retain(|(p, s)| !(*s == slot && p == pattern));
        if self.pattern_subscriptions.len() == before {
            return;
        }
        for shard in 0..self.shared.routing.shards {
            let interest = ShardMsg::PatternInterest {
                pattern: pattern.clone(),
                shard: self.id,
                on: false,
                ack: None,
            };
            self.send(shard, interest);
        }
    }

    fn find_subscriber(&mut self, channel: &str, subscription: SubRef) -> Option<&mut Subscriber> {
        self.subscriptions
            .get_mut(channel)?
            .iter_mut()
            .find(|s| s.subscription == subscription)
    }

    pub(super) fn subscriber_page(
        &mut self,
        subscription: SubRef,
        channel: Arc<str>,
        result: Result<Vec<Message>, BrokerError>,
        head_seq: u64,
        complete: bool,
    ) {
        let conn = subscription.conn;
        let Some(subscriber) = self.find_subscriber(&channel, subscription) else {
            return;
        };
        let request_id = subscriber.request_id;
        let first_page = !subscriber.answered;
        subscriber.answered = true;
        let messages = match result {
            Ok(messages) => messages,
            Err(error) => {
                if first_page {
                    self.reply(conn, request_id, Reply::Error(error));
                    if let Some(connection) = self.connection_mut(conn) {
                        connection.subscriptions.retain(|c| *c != channel);
                    }
                    self.remove_subscriber(&channel, conn.slot);
                } else {
                    let reason = format!("subscription to {channel:?} cannot continue: {error}");
                    self.close_connection(conn.slot, Some((error.code(), reason)));
                }
                return;
            }
        };
        let next_seq = subscriber.next_seq;
        let fresh: Vec<Message> = messages.into_iter().filter(|m| m.seq >= next_seq).collect();
        let complete = complete || fresh.is_empty();
        let implicit = subscriber.implicit;
        if complete {
            subscriber.next_seq = subscriber.next_seq.max(head_seq + 1);
            subscriber.live = true;
            subscriber.covers_from = u64::MAX;
            subscriber.withheld_from = None;
        } else {
            subscriber.next_seq = fresh.last().map_or(next_seq, |m| m.seq + 1);
            // A start only the owner knew (last N) is known now: the pages
            // to come bring everything from here, and a pattern of the same
            // connection leaves it to them (it delivered the newer messages
            // live as well, and out of order, before).
            if subscriber.covers_from == u64::MAX {
                subscriber.covers_from = subscriber.next_seq;
            }
            self.fetch_wanted.push((channel.clone(), subscription));
        }
        if first_page {
            self.reply(conn, request_id, Reply::Subscribed { head_seq });
        }
        if let Some(first) = fresh.first().map(|m| m.seq) {
            if !self.deliver_to(conn.slot, &channel, Arc::from(fresh), None, Feed::Page) {
                // The connection's room went to other deliveries since the
                // fetch: the same page is asked for again when there is
                // room.
                self.fall_behind(&channel, subscription, first);
                return;
            }
        }
        if complete && implicit {
            // Caught up: the pattern brings the channel again, from past
            // this page's head (everything up to it came before the page).
            self.drop_subscription(&channel, conn.slot);
        }
    }

    /// Subscription `subscription` to `channel` could not take its delivery
    /// from `seq` on: it stops taking live deliveries and reads the channel
    /// from the log from `seq`, a page at a time while its connection has
    /// room (see `request_fetches`), until a page reaches the head and it is
    /// live again. Live deliveries in between are covered by the pages, as
    /// for a subscription from a seq.
    fn fall_behind(&mut self, channel: &Arc<str>, subscription: SubRef, seq: u64) {
        let Some(subscriber) = self.find_subscriber(channel, subscription) else {
            return;
        };
        subscriber.live = false;
        subscriber.covers_from = seq;
        subscriber.next_seq = seq;
        subscriber.withheld_from = None;
        let wanted = (channel.clone(), subscription);
        if !self.fetch_wanted.contains(&wanted) {
            self.fetch_wanted.push(wanted);
        }
        self.shared.metrics.catch_up_fallbacks.add(1);
    }

    /// Sends fetches for subscriptions still catching up whose connection has
    /// room for another page.
    pub(super) fn request_fetches(&mut self) {
        if self.fetch_wanted.is_empty() {
            return;
        }
        let bound = self.shared.config.outbound_bytes_max / 2;
        let page_max = self.shared.config.page_messages_max as usize;
        let wanted = std::mem::take(&mut self.fetch_wanted);
        for (channel, subscription) in wanted {
            let Some(connection) = self.connection(subscription.conn) else {
                continue;
            };
            let limit = match &connection.kind {
                ConnKind::Socket(socket) if socket.output_bytes() < bound => {
                    socket.delivery_room().min(page_max)
                }
                ConnKind::Local { events }
                    if events.len() < self.shared.config.local_events_max / 2 =>
                {
                    page_max
                }
                _ => 0,
            };
            if limit == 0 || limit < page_max.min(crate::session::FETCH_ROOM_MIN) {
                self.fetch_wanted.push((channel, subscription));
                continue;
            }
            let Some(subscriber) = self.find_subscriber(&channel, subscription) else {
                continue;
            };
            let next_seq = subscriber.next_seq;
            let page_for = PageFor::Subscription(subscription.id);
            if !self.reserve_page(subscription.conn.slot, page_for) {
                self.fetch_wanted.push((channel, subscription));
                continue;
            }
            let start = FetchStart::From {
                seq: next_seq,
                limit: limit as u32,
            };
            let owner = self.shared.routing.shard_of(&channel);
            let local = matches!(
                self.connection(subscription.conn).map(|c| &c.kind),
                Some(ConnKind::Local { .. })
            );
            let bytes_max = if local {
                self.shared.config.outbound_bytes_max / 2
            } else {
                read_page_bytes(self.shared.config.outbound_bytes_max)
            };
            self.send(
                owner,
                ShardMsg::Fetch {
                    subscriber: subscription,
                    channel,
                    start,
                    bytes_max,
                },
            );
        }
    }

    /// Live fan-out of one owner delivery to this shard's subscribers. Each
    /// protocol encodes the delivery once; every subscriber that needs exactly
    /// these messages shares those bytes.
    pub(super) fn subscriber_deliver(&mut self, channel: &Arc<str>, messages: &Arc<[Message]>) {
        let mut delivered: Vec<u32> = Vec::new();
        let mut covered: Vec<(u32, u64)> = Vec::new();
        self.exact_deliver(channel, messages, &mut delivered, &mut covered);
        if self.pattern_subscriptions.is_empty() {
            return;
        }
        // Pattern subscribers get each delivery once per connection, and not
        // again when the same connection subscribes to the channel itself.
        let mut targets: Vec<u32> = self
            .pattern_subscriptions
            .iter()
            .filter(|(pattern, slot)| {
                !delivered.contains(slot) && crate::pattern::matches(pattern, channel)
            })
            .map(|(_, slot)| *slot)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let mut encoded: Vec<(usize, Bytes)> = Vec::new();
        for slot in targets {
            let feed = self.pattern_feed(slot);
            let covered_from = covered.iter().find(|(s, _)| *s == slot).map(|c| c.1);
            if let Some(from) = covered_from.filter(|from| messages.iter().any(|m| m.seq >= *from))
            {
                // The connection's own subscription to the channel reads
                // these from the log (then goes live at the seam): through
                // the pattern only the rest (not stored, or from before its
                // start), else they would come twice, and out of order.
                let rest: Vec<Message> = messages
                    .iter()
                    .filter(|m| m.seq == 0 || m.seq < from)
                    .cloned()
                    .collect();
                if !rest.is_empty() && !self.deliver_to(slot, channel, Arc::from(rest), None, feed)
                {
                    // Nothing it could read again.
                    self.shared.metrics.deliveries_dropped.add(1);
                }
                continue;
            }
            let cache = Some(&mut encoded);
            if !self.deliver_to(slot, channel, messages.clone(), cache, feed) {
                let first = messages.iter().find(|m| m.seq > 0).map(|m| m.seq);
                let reads_on =
                    first.is_some_and(|seq| self.pattern_falls_behind(slot, channel, seq));
                if !reads_on {
                    self.shared.metrics.deliveries_dropped.add(1);
                }
            }
        }
    }

    /// How a live delivery through a pattern goes to connection `slot`.
    /// Under the `catch_up` policy, like one to a subscription to the
    /// channel: refused when the connection has no room, and then read from
    /// the log (`pattern_falls_behind`). Not for sessions that encode their
    /// own deliveries (MQTT): their room is their own, and they fall behind
    /// per topic themselves.
    fn pattern_feed(&self, slot: u32) -> Feed {
        if self.shared.config.slow_consumer != SlowConsumerPolicy::CatchUp {
            return Feed::Pattern;
        }
        match self.connections[slot as usize].as_ref().map(|c| &c.kind) {
            Some(ConnKind::Socket(socket)) if socket.protocol.per_connection_delivery() => {
                Feed::Pattern
            }
            _ => Feed::Channel,
        }
    }

    /// Delivery to the subscribers of the channel itself; `delivered` gets
    /// the connections served, `covered` those whose subscription is still
    /// catching up (its pages bring the stored messages).
    fn exact_deliver(
        &mut self,
        channel: &Arc<str>,
        messages: &Arc<[Message]>,
        delivered: &mut Vec<u32>,
        covered: &mut Vec<(u32, u64)>,
    ) {
        let Some(subscribers) = self.subscriptions.get_mut(channel) else {
            return;
        };
        let first_stored = messages.iter().find(|m| m.seq > 0).map(|m| m.seq);
        let last_stored = messages.iter().rev().find(|m| m.seq > 0).map(|m| m.seq);
        let mut targets: Vec<Target> = Vec::new();
        for subscriber in subscribers.iter_mut() {
            if !subscriber.live {
                if subscriber.covers_from != u64::MAX {
                    covered.push((subscriber.subscription.conn.slot, subscriber.covers_from));
                    if let Some(first) = first_stored.filter(|f| *f >= subscriber.covers_from) {
                        subscriber.withheld_from.get_or_insert(first);
                    }
                }
                continue;
            }
            let subscription = subscriber.subscription;
            match first_stored {
                Some(first) if first < subscriber.next_seq => {
                    let own: Vec<Message> = messages
                        .iter()
                        .filter(|m| m.seq == 0 || m.seq >= subscriber.next_seq)
                        .cloned()
                        .collect();
                    let own_first = own.iter().find(|m| m.seq > 0).map(|m| m.seq);
                    if let Some(last) = last_stored {
                        subscriber.next_seq = subscriber.next_seq.max(last + 1);
                    }
                    if !own.is_empty() {
                        targets.push((subscription, own_first, Some(Arc::from(own))));
                    }
                }
                _ => {
                    if let (Some(first), Some(last)) = (first_stored, last_stored) {
                        if first > subscriber.next_seq {
                            log::warn!(
                                "shard {}: gap on {channel:?}: expected seq {}, got {first}",
                                self.id,
                                subscriber.next_seq
                            );
                        }
                        subscriber.next_seq = last + 1;
                    }
                    targets.push((subscription, first_stored, None));
                }
            }
        }
        // One encoding per protocol for the shared delivery.
        let mut encoded: Vec<(usize, Bytes)> = Vec::new();
        for (subscription, first, own) in targets {
            let slot = subscription.conn.slot;
            delivered.push(slot);
            let taken = match own {
                Some(own) => self.deliver_to(slot, channel, own, None, Feed::Channel),
                None => {
                    let cache = &mut encoded;
                    self.deliver_to(slot, channel, messages.clone(), Some(cache), Feed::Channel)
                }
            };
            if !taken {
                match first {
                    Some(first) => self.fall_behind(channel, subscription, first),
                    // Only ephemeral messages: nothing to read again.
                    None => self.shared.metrics.deliveries_dropped.add(1),
                }
            }
        }
    }

    /// Queues `messages` for connection `slot`, encoding with its protocol
    /// (through `cache` when the bytes can be shared). Returns false when the
    /// connection has no room for a delivery of a `feed` that may be refused
    /// (see [`Feed`]): then nothing was queued, and the subscription reads
    /// the messages from the log later.
    fn deliver_to(
        &mut self,
        slot: u32,
        channel: &Arc<str>,
        messages: Arc<[Message]>,
        cache: Option<&mut Vec<(usize, Bytes)>>,
        feed: Feed,
    ) -> bool {
        let Some(connection) = self.connections[slot as usize].as_ref() else {
            return true;
        };
        let own = match &connection.kind {
            // A session that asked to close (or whose client ended) has said
            // its last word: nothing more is offered to it.
            ConnKind::Socket(socket)
                if socket.protocol.per_connection_delivery() && connection.closing =>
            {
                return true;
            }
            ConnKind::Socket(socket) if socket.protocol.per_connection_delivery() => {
                if feed != Feed::Pattern && !self.session_has_room(socket, channel, &messages, feed)
                {
                    return false;
                }
                true
            }
            _ => false,
        };
        if own {
            let mut encoded = None;
            let open = self.with_session(slot, |session, _, context| {
                encoded = session.on_delivery(channel, &messages, context)?;
                Ok(())
            });
            if !open {
                return true;
            }
            if let Some(bytes) = encoded {
                if bytes.is_empty() {
                    // Everything was held back by the session (a full
                    // in-flight window).
                    return true;
                }
                let channel = channel.clone();
                // The session counts these as sent: they cannot be refused
                // any more (the room was checked before).
                let event = move || LocalEvent::Deliver { channel, messages };
                let feed = match feed {
                    Feed::Page => Feed::Page,
                    Feed::Pattern | Feed::Channel => Feed::Pattern,
                };
                return self.queue_delivery(slot, bytes, event, feed);
            }
        }
        let Some(connection) = self.connections[slot as usize].as_ref() else {
            return true;
        };
        let encoded = match &connection.kind {
            ConnKind::Socket(socket) => {
                let protocol = &socket.protocol;
                let key = Arc::as_ptr(protocol) as *const () as usize;
                match cache {
                    Some(cache) => match cache.iter().find(|(k, _)| *k == key) {
                        Some((_, bytes)) => bytes.clone(),
                        None => {
                            let bytes = protocol.encode_delivery(channel, &messages);
                            cache.push((key, bytes.clone()));
                            bytes
                        }
                    },
                    None => protocol.encode_delivery(channel, &messages),
                }
            }
            ConnKind::Local { .. } => Bytes::new(),
        };
        let channel = channel.clone();
        let event = move || LocalEvent::Deliver { channel, messages };
        self.queue_delivery(slot, encoded, event, feed)
    }

    /// Whether a session that encodes its own deliveries takes `messages`
    /// now: within its [`crate::Session::delivery_room`], and, for a live
    /// delivery under the `catch_up` slow-consumer policy, within the
    /// connection's outbound bound (estimated before encoding: once the
    /// session has taken the messages they count as sent).
    fn session_has_room(
        &self,
        socket: &super::conn::SocketConn,
        channel: &str,
        messages: &[Message],
        feed: Feed,
    ) -> bool {
        // Messages not in the log (seq 0) cannot be read again: they are
        // offered whatever the room.
        let stored = messages.iter().filter(|m| m.seq > 0).count();
        if stored > socket.delivery_room() {
            return false;
        }
        if feed == Feed::Page || self.shared.config.slow_consumer != SlowConsumerPolicy::CatchUp {
            return true;
        }
        let estimate: usize = messages
            .iter()
            .map(|m| delivered_bytes_estimate(channel, m))
            .sum();
        socket.output_bytes() + estimate <= self.shared.config.outbound_bytes_max
    }
}

/// A subscriber of one live delivery: the subscription, the first stored
/// seq it gets (where it reads on from the log if it has no room), and its
/// own messages when they differ from the shared delivery.
type Target = (SubRef, Option<u64>, Option<Arc<[Message]>>);

/// Where a delivery comes from, which decides what a connection without
/// room for it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Feed {
    /// Live, to a pattern subscription (or anything else that cannot be
    /// read again): the slow-consumer policy applies.
    Pattern,
    /// Live, to a subscription to the channel (or, under the `catch_up`
    /// policy, through a pattern of a connection the shard encodes for:
    /// `Shard::pattern_feed`): refused when the session has no room
    /// ([`crate::Session::delivery_room`]) or, under `catch_up`, when the
    /// connection's queue is over its bound; the subscription (or the
    /// pattern, for that channel) then reads on from the log.
    Channel,
    /// A catch-up page, asked for when the connection had room for it (and
    /// kept by the owner within half the outbound bound): queued even when
    /// it overshoots the bound; refused only by a session without room.
    Page,
}

/// About the bytes `message` of `channel` takes once encoded for a client:
/// its variable parts and [`DELIVERY_OVERHEAD_ESTIMATE`].
pub(super) fn delivered_bytes_estimate(channel: &str, message: &Message) -> usize {
    message.body.len()
        + message.headers.len()
        + message.sender.len()
        + message.client_message_id.len()
        + channel.len()
        + DELIVERY_OVERHEAD_ESTIMATE
}

/// Bytes a protocol adds to each delivered message besides its variable
/// parts (framing, seq, timestamps, packet ids), about.
const DELIVERY_OVERHEAD_ESTIMATE: usize = 64;
