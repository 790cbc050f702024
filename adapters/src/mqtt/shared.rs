//! Shared subscriptions, `$share/<group>/<filter>`: each message matching
//! the filter goes to one member of the group (v5, and accepted from
//! v3.1.1 clients as Mosquitto does).
//!
//! Every member holds an ordinary broker subscription to the filter and so
//! sees every message; each decides alone whether a message is its own,
//! from the group's membership *at the message's timestamp*: the members
//! then, in the order they joined, indexed by a hash of (topic, seq, offset). The
//! membership is a timeline of versions shared by the listener's sessions
//! (touched when members join and leave, never per message; a member
//! checks an atomic version number per delivery). This makes the choice
//! the same on every member, and correct across changes:
//!
//! - a member joins at the time its broker subscription is in place, so
//!   every message it is chosen for reaches it;
//! - a member that learns of a change late has kept the QoS 1 and 2
//!   messages it skipped (the last `SHARED_SKIPPED_MAX`), and delivers
//!   those the new timeline gives it when it learns (every member is told
//!   at once through a session event);
//! - a member that leaves is removed from the timeline from
//!   `SHARED_LEAVE_LOOKBACK_MS` before it left, since it may not have
//!   received (or had acknowledged) what was chosen for it just before; the
//!   others deliver those again, and its unacknowledged messages are handed
//!   to their new owners (those from before the lookback, which the
//!   timeline still gives to it, to one of the members that stay).
//!
//! So QoS 1 stays at least once while members come and go (some messages
//! may arrive twice, at two members, around a change); QoS 2 is handled
//! like QoS 1 around changes (not exactly once then); QoS 0 messages are
//! never sent twice and may be lost around a change.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// How far back a leaving member's messages are given to the others.
pub const SHARED_LEAVE_LOOKBACK_MS: u64 = 5_000;
/// QoS 1 and 2 messages a member keeps that it skipped as another
/// member's, to deliver them itself if a membership change says so. Past
/// this many, the oldest are forgotten (a member that leaves while more
/// than this many messages of the group pass may lose some).
pub const SHARED_SKIPPED_MAX: usize = 4096;
/// Membership versions a group keeps: changes older than the lookback are
/// not needed to judge new messages.
const MEMBERSHIP_VERSIONS_MAX: usize = 64;

/// The prefix of a shared subscription's filter.
pub(super) const SHARE_PREFIX: &str = "$share/";

/// The topic filter of a shared subscription (after `$share/<group>/`),
/// or `None` for an ordinary filter.
pub(super) fn shared_topic_filter(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    rest.split_once('/').map(|(_, topic_filter)| topic_filter)
}

/// Members from a time on: (from, in ms since the Unix epoch, members in
/// the order they joined).
type Timeline = Vec<(u64, Arc<[ConnRef]>)>;

/// One group with one filter (`$share/<group>/<filter>`).
#[derive(Default)]
pub(super) struct Group {
    /// Bumped at every change, so members notice with one atomic load.
    version: AtomicU64,
    timeline: parking_lot::Mutex<Timeline>,
}

/// The groups of a listener, by their full filter.
pub(super) type Groups = Arc<parking_lot::Mutex<HashMap<String, Arc<Group>>>>;

/// `member` joins the group of `filter` (made if there is none) from
/// `now_ms`, under the groups' lock, so a group whose last member is
/// leaving is not taken out of the map between this finding it and joining
/// it (the joiner would be alone in a group nobody else finds, and both
/// groups would get every message). Returns the group and its members now.
fn join_group(
    groups: &Groups,
    filter: &str,
    member: ConnRef,
    now_ms: u64,
) -> (Arc<Group>, Vec<ConnRef>) {
    let mut groups = groups.lock();
    let group = groups.entry(filter.to_string()).or_default().clone();
    let members = group.join(member, now_ms);
    (group, members)
}

/// Takes `group` out of the map if it is still the one of `filter` and has
/// no members now (one may have joined since its last member left).
fn remove_if_empty(groups: &Groups, filter: &str, group: &Arc<Group>) {
    let mut groups = groups.lock();
    let current = groups.get(filter).is_some_and(|g| Arc::ptr_eq(g, group));
    if current && group.is_empty() {
        groups.remove(filter);
    }
}

fn members_at(timeline: &Timeline, at_ms: u64) -> Option<&Arc<[ConnRef]>> {
    timeline
        .iter()
        .rev()
        .find(|(from, _)| *from <= at_ms)
        .or_else(|| timeline.first())
        .map(|(_, members)| members)
}

/// The member a message is for: by the membership at its timestamp, a
/// hash of (topic, seq, offset); for a message not in the log (seq 0: an
/// ephemeral or live-only QoS 0 one), of (topic, timestamp, body), which
/// every member gets alike too.
fn owner_at(timeline: &Timeline, topic: &str, message: &Message) -> Option<ConnRef> {
    pick(members_at(timeline, message.timestamp_ms)?, topic, message)
}

/// The one of `members` that `message` of `topic` goes to.
fn pick(members: &[ConnRef], topic: &str, message: &Message) -> Option<ConnRef> {
    if members.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if message.seq == 0 {
        (topic, message.timestamp_ms, &message.body[..]).hash(&mut hasher);
    } else {
        (topic, message.seq, message.offset).hash(&mut hasher);
    }
    Some(members[(hasher.finish() % members.len() as u64) as usize])
}

/// Who takes over `message` of `topic` that member `leaving` had not had
/// acknowledged: its owner by the timeline (once `leaving` left), or, for a
/// message from before the leave's lookback (which the timeline still
/// gives to `leaving`), one of the `remaining` members.
fn handover_owner(
    timeline: &Timeline,
    remaining: &[ConnRef],
    leaving: ConnRef,
    topic: &str,
    message: &Message,
) -> Option<ConnRef> {
    owner_at(timeline, topic, message)
        .filter(|owner| *owner != leaving)
        .or_else(|| pick(remaining, topic, message))
}

impl Group {
    fn change(&self, change: impl FnOnce(&mut Timeline)) -> Vec<ConnRef> {
        let mut timeline = self.timeline.lock();
        change(&mut timeline);
        timeline.sort_by_key(|(from, _)| *from);
        let excess = timeline.len().saturating_sub(MEMBERSHIP_VERSIONS_MAX);
        timeline.drain(..excess);
        self.version.fetch_add(1, Ordering::Release);
        timeline
            .last()
            .map(|(_, members)| members.to_vec())
            .unwrap_or_default()
    }

    /// Whether the group has no members now.
    fn is_empty(&self) -> bool {
        self.timeline
            .lock()
            .last()
            .is_none_or(|(_, members)| members.is_empty())
    }

    /// `member` joins from `now_ms`; returns the members now.
    fn join(&self, member: ConnRef, now_ms: u64) -> Vec<ConnRef> {
        self.change(|timeline| {
            let mut members: Vec<ConnRef> = timeline
                .last()
                .map(|(_, members)| members.to_vec())
                .unwrap_or_default();
            if !members.contains(&member) {
                members.push(member);
            }
            // Never before the newest version: a join whose clock was read
            // before another's took the lock would be sorted under it and
            // left out of the members now.
            let from = timeline
                .last()
                .map_or(now_ms, |(from, _)| now_ms.max(*from));
            timeline.push((from, Arc::from(members)));
        })
    }

    /// `member` leaves, from `SHARED_LEAVE_LOOKBACK_MS` before `now_ms`;
    /// returns the members left.
    fn leave(&self, member: ConnRef, now_ms: u64) -> Vec<ConnRef> {
        let from = now_ms.saturating_sub(SHARED_LEAVE_LOOKBACK_MS);
        self.change(|timeline| {
            let before: Vec<ConnRef> = members_at(timeline, from)
                .map(|members| members.to_vec())
                .unwrap_or_default();
            for (at, members) in timeline.iter_mut() {
                if *at >= from {
                    let kept: Vec<ConnRef> =
                        members.iter().copied().filter(|m| *m != member).collect();
                    *members = Arc::from(kept);
                }
            }
            let kept: Vec<ConnRef> = before.into_iter().filter(|m| *m != member).collect();
            timeline.push((from, Arc::from(kept)));
        })
    }
}

/// A member's view of its group.
pub(super) struct ShareView {
    group: Arc<Group>,
    /// This connection (`None` only when driven without a shard: then it
    /// takes every message).
    me: Option<ConnRef>,
    version: u64,
    timeline: Timeline,
    /// QoS 1 and 2 messages skipped as another member's, oldest first.
    skipped: VecDeque<Outgoing>,
}

impl ShareView {
    /// True when `message` of `topic` is this member's.
    pub(super) fn owns(&self, topic: &str, message: &Message) -> bool {
        match self.me {
            None => true,
            Some(me) => owner_at(&self.timeline, topic, message) == Some(me),
        }
    }

    pub(super) fn remember_skipped(&mut self, outgoing: Outgoing) {
        if self.skipped.len() >= SHARED_SKIPPED_MAX {
            self.skipped.pop_front();
        }
        self.skipped.push_back(outgoing);
    }

    /// Takes up a changed membership; returns the skipped messages that are
    /// now this member's.
    fn refresh(&mut self) -> Vec<Outgoing> {
        let version = self.group.version.load(Ordering::Acquire);
        if version == self.version {
            return Vec::new();
        }
        self.version = version;
        self.timeline = self.group.timeline.lock().clone();
        let (timeline, me) = (&self.timeline, self.me);
        let (mine, others): (Vec<Outgoing>, Vec<Outgoing>) =
            self.skipped.drain(..).partition(|outgoing| {
                me.is_none() || owner_at(timeline, &outgoing.topic, &outgoing.message) == me
            });
        self.skipped = others.into();
        mine
    }
}

/// Every member of a group is told when the membership changes.
pub(super) struct MembershipChanged;

/// Messages a leaving member had not had acknowledged, for their new owner.
pub(super) struct SharedHandover(pub(super) Vec<Outgoing>);

impl Connected {
    /// Joins the group of shared subscription `filter` (its broker
    /// subscription is in place); tells the other members.
    pub(super) fn join_share(
        &mut self,
        groups: &Groups,
        filter: &str,
        context: &mut SessionContext<'_>,
    ) {
        let me = context.conn();
        let (group, members) = match me {
            Some(me) => join_group(groups, filter, me, wall_clock_ms()),
            None => {
                let group = groups.lock().entry(filter.to_string()).or_default().clone();
                (group, Vec::new())
            }
        };
        let view = ShareView {
            group: group.clone(),
            me,
            version: group.version.load(Ordering::Acquire),
            timeline: group.timeline.lock().clone(),
            skipped: VecDeque::new(),
        };
        self.extras().shares.insert(filter.to_string(), view);
        tell(&members, me, context);
    }

    /// Leaves the group of shared subscription `filter`: the others take
    /// over, and get what this member had not had acknowledged.
    pub(super) fn leave_share(
        &mut self,
        groups: &Groups,
        filter: &str,
        context: &mut SessionContext<'_>,
    ) {
        let Some(view) = self
            .extras
            .as_mut()
            .and_then(|extras| extras.shares.remove(filter))
        else {
            return;
        };
        let Some(me) = view.me else {
            return;
        };
        let members = view.group.leave(me, wall_clock_ms());
        if members.is_empty() {
            remove_if_empty(groups, filter, &view.group);
        }
        tell(&members, Some(me), context);
        // The unacknowledged messages of this share, to their new owners.
        let timeline = view.group.timeline.lock().clone();
        let mut handover: HashMap<ConnRef, Vec<Outgoing>> = HashMap::new();
        let unacknowledged = self
            .qos
            .outbound
            .values()
            .filter(|in_flight| in_flight.state != Outbound::Qos2Released)
            .filter_map(|in_flight| in_flight.outgoing.as_ref())
            .chain(self.qos.held.iter())
            .filter(|outgoing| outgoing.share.as_deref() == Some(filter));
        for outgoing in unacknowledged {
            let (topic, message) = (&outgoing.topic, &outgoing.message);
            if let Some(owner) = handover_owner(&timeline, &members, me, topic, message) {
                handover.entry(owner).or_default().push(outgoing.clone());
            }
        }
        for (owner, outgoing) in handover {
            context.notify(owner, Box::new(SharedHandover(outgoing)));
        }
    }

    /// Takes up membership changes of this session's groups: sends what is
    /// now this member's. Returns false when too much is held.
    pub(super) fn refresh_shares(&mut self, out: &mut BytesMut) -> bool {
        let Some(extras) = self.extras.as_mut() else {
            return true;
        };
        let mine: Vec<Outgoing> = extras
            .shares
            .values_mut()
            .flat_map(|view| view.refresh())
            .collect();
        mine.into_iter()
            .all(|outgoing| self.send_or_hold(outgoing, out))
    }
}

/// Tells the other `members` that the membership changed.
fn tell(members: &[ConnRef], me: Option<ConnRef>, context: &mut SessionContext<'_>) {
    for member in members.iter().filter(|member| Some(**member) != me) {
        context.notify(*member, Box::new(MembershipChanged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnRef {
        ConnRef {
            shard: 0,
            slot,
            generation: 0,
        }
    }

    fn message(seq: u64, timestamp_ms: u64) -> Message {
        test_message(seq, timestamp_ms, Bytes::new())
    }

    /// The last member leaves while another joins: the group the joiner
    /// joined stays the filter's, so a later member joins it too (before,
    /// the leaver took it out of the map after the join, and the next
    /// member made a second group: both got every message).
    #[test]
    fn a_group_joined_while_its_last_member_leaves_stays() {
        let groups = Groups::default();
        let (group, _) = join_group(&groups, "$share/g/t", conn(1), 1_000);
        // The leaver's first step, then a join, then the leaver's second.
        assert!(group.leave(conn(1), 2_000).is_empty());
        let (joined, members) = join_group(&groups, "$share/g/t", conn(2), 2_001);
        assert!(Arc::ptr_eq(&joined, &group));
        assert_eq!(members, [conn(2)]);
        remove_if_empty(&groups, "$share/g/t", &group);
        let (later, members) = join_group(&groups, "$share/g/t", conn(3), 2_002);
        assert!(Arc::ptr_eq(&later, &group), "one group for the filter");
        assert_eq!(members, [conn(2), conn(3)]);
        // Once empty for good, it goes.
        group.leave(conn(2), 3_000);
        group.leave(conn(3), 3_000);
        remove_if_empty(&groups, "$share/g/t", &group);
        assert!(groups.lock().is_empty());
    }

    /// Two joins whose clocks were read in the other order than they took
    /// the lock: both are members now (the later-read clock's version was
    /// sorted last and left the other out).
    #[test]
    fn joins_that_read_the_clock_out_of_order_are_both_members() {
        let group = Group::default();
        group.join(conn(1), 101);
        assert_eq!(group.join(conn(2), 100), [conn(1), conn(2)]);
        let timeline = group.timeline.lock().clone();
        assert_eq!(&*timeline.last().unwrap().1, [conn(1), conn(2)]);
    }

    #[test]
    fn every_message_has_one_owner_at_its_time() {
        let group = Group::default();
        group.join(conn(1), 1_000);
        group.join(conn(2), 2_000);
        let timeline = group.timeline.lock().clone();
        for seq in 0..100 {
            // Before the second member joined, the first has everything.
            assert_eq!(
                owner_at(&timeline, "t", &message(seq, 1_500)),
                Some(conn(1))
            );
        }
        let owners: Vec<_> = (0..100)
            .map(|seq| owner_at(&timeline, "t", &message(seq, 2_500)).unwrap())
            .collect();
        assert!(owners.contains(&conn(1)) && owners.contains(&conn(2)));
        // Messages not in the log (seq 0) are spread too.
        let owners: Vec<_> = (0..100)
            .map(|i| {
                let body = Bytes::from(format!("reading {i}"));
                owner_at(&timeline, "t", &test_message(0, 2_500, body)).unwrap()
            })
            .collect();
        assert!(owners.contains(&conn(1)) && owners.contains(&conn(2)));
    }

    #[test]
    fn a_member_that_leaves_owns_nothing_from_the_lookback_on() {
        let group = Group::default();
        group.join(conn(1), 1_000);
        group.join(conn(2), 1_000);
        let left_at = 100_000;
        let remaining = group.leave(conn(2), left_at);
        assert_eq!(remaining, vec![conn(1)]);
        let timeline = group.timeline.lock().clone();
        let since = left_at - SHARED_LEAVE_LOOKBACK_MS;
        for seq in 0..50 {
            let owner = owner_at(&timeline, "t", &message(seq, since + seq));
            assert_eq!(owner, Some(conn(1)));
        }
        // Earlier messages keep the owners they had.
        let earlier: Vec<_> = (0..50)
            .map(|seq| owner_at(&timeline, "t", &message(seq, since - 1)).unwrap())
            .collect();
        assert!(earlier.contains(&conn(2)));
    }

    /// A leaving member's unacknowledged messages go to a member that
    /// stays, also those from before the lookback (which the timeline still
    /// gives to the leaving one: they were handed to it, that is to nobody).
    #[test]
    fn a_leaving_members_old_messages_are_handed_to_one_that_stays() {
        let group = Group::default();
        group.join(conn(1), 1_000);
        group.join(conn(2), 1_000);
        let left_at = 100_000;
        let remaining = group.leave(conn(2), left_at);
        let timeline = group.timeline.lock().clone();
        let long_before = left_at - SHARED_LEAVE_LOOKBACK_MS - 10_000;
        let mut were_the_leavers = 0;
        for seq in 1..50 {
            let message = message(seq, long_before);
            if owner_at(&timeline, "t", &message) == Some(conn(2)) {
                were_the_leavers += 1;
            }
            let owner = handover_owner(&timeline, &remaining, conn(2), "t", &message);
            assert_eq!(owner, Some(conn(1)), "message {seq}");
        }
        assert!(were_the_leavers > 0, "the timeline keeps old owners");
        // The last member leaves: nobody takes over.
        let remaining = group.leave(conn(1), left_at + 1);
        let timeline = group.timeline.lock().clone();
        let message = message(7, long_before);
        assert_eq!(
            handover_owner(&timeline, &remaining, conn(1), "t", &message),
            None
        );
    }

    #[test]
    fn shared_filters_are_split_from_their_group() {
        assert_eq!(shared_topic_filter("$share/g/a/+"), Some("a/+"));
        assert_eq!(shared_topic_filter("a/+"), None);
    }
}
