//! One event loop per core. A shard owns its connections, the log partitions
//! routed to it, the subscriptions of its connections and the interest other
//! shards have in its channels. It shares nothing mutable with other shards:
//! all cross-core work arrives as a [`ShardMsg`] in its inbox.
//!
//! One loop turn:
//! 1. poll sockets and the waker;
//! 2. read ready connections, decode, authorize and route their commands;
//! 3. drain the inbox (and the shard's own queue of messages to itself);
//! 4. end the turn: write each partition's pending batch in one write and
//!    all of them to the shard journal, fdatasync the journal per policy
//!    (group commit: one fdatasync for the shard), then acknowledge and fan
//!    out. Under `fsync` the fdatasync runs on the journal's commit thread
//!    and the acknowledgements wait for it while the loop goes on (see
//!    `end_turn` and `poll_commit`);
//! 5. write queued bytes to sockets and hand overflow to other shards.

mod conn;
mod owner;
mod subscriber;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mio::{Events, Poll, Token};

use crate::command::Command;
use crate::engine::EngineShared;
use crate::mailbox::{ConnRef, ShardMsg, SubRef};
use conn::PageFor;

use conn::Connection;
pub(crate) use owner::{OwnedPartition, PartitionTable};
use subscriber::Subscriber;

/// The waker's token; connection `slot` uses `Token(slot + 1)`.
const WAKER_TOKEN: Token = Token(0);
/// Inbox messages handled per turn before the shard looks at its sockets
/// again, so a flood from other cores cannot starve local clients.
const INBOX_MESSAGES_PER_TURN: usize = 16 * 1024;
/// Longest sleep in poll when no timer is due.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// A shard that has appended nothing, and accepted or closed no connection,
/// for this long frees the buffers its busiest turns grew (pending batches,
/// the turn's acknowledgement and fan-out lists,
/// queues to other shards, the read buffer): kept between busy turns so
/// they are not regrown every turn, they are tens of megabytes after a
/// burst, more than a million idle channels' share (docs/BENCHMARKS.md,
/// session 5). A storm of connections counts as busy too: what it freed
/// (the tables that grew with it, each connection's short-lived buffers)
/// stays resident until the allocator is asked to return it
/// (docs/BENCHMARKS.md, "An idle MQTT connection under 1 KB"). A second is
/// long against a turn and short against how long an idle server stays
/// idle.
const IDLE_MEMORY_RELEASE_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct Shard {
    id: usize,
    poll: Poll,
    shared: Arc<EngineShared>,
    /// Log partitions this shard owns, by partition id.
    partitions: PartitionTable,
    /// Owner side: which shards have subscribers of a channel (bit = shard).
    /// Looked up for every stored message as it is appended, so hashed with
    /// foldhash, not std's SipHash; channel names are chosen by clients, and
    /// foldhash is seeded per map, so no names made in advance collide.
    interest: foldhash::HashMap<Arc<str>, u64>,
    /// Connection slots; a slot index is stable while the connection lives.
    /// Boxed, so the spare room of the growing vector costs a pointer per
    /// slot rather than a whole connection.
    connections: Vec<Option<Box<Connection>>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    /// Owner side: per pattern, how many subscriptions each shard has.
    patterns: HashMap<Arc<str>, Vec<u32>>,
    /// Subscriber side: this shard's pattern subscriptions (pattern, slot).
    pattern_subscriptions: Vec<(Arc<str>, u32)>,
    /// Pattern subscriptions waiting for every shard's `PatternReady`:
    /// (connection, number) → (request id, shards still to answer).
    pattern_pending: HashMap<(ConnRef, u32), (u32, usize)>,
    /// Numbers the pattern subscriptions waiting in `pattern_pending` (the
    /// client's request ids may repeat).
    next_pattern_ack: u32,
    /// Subscriber side: this shard's subscriptions by channel, looked up
    /// for every delivery (foldhash, as `interest`).
    subscriptions: foldhash::HashMap<Arc<str>, Vec<Subscriber>>,
    /// Subscriptions waiting for room in their connection's queue before the
    /// next catch-up page is fetched.
    fetch_wanted: Vec<(Arc<str>, SubRef)>,
    next_subscription_id: u64,
    /// Numbers the history reads that reserve a page of their connection's
    /// bound (`PageFor::Read`).
    next_read_page: u64,
    /// Messages this shard sends to itself, handled in the same turn.
    self_queue: VecDeque<ShardMsg>,
    /// Per destination shard: messages that did not fit its inbox yet.
    overflow: Vec<VecDeque<ShardMsg>>,
    wake_pending: Vec<bool>,
    /// Connections with bytes still to write or to read.
    dirty: Vec<u32>,
    read_again: Vec<u32>,
    /// The read buffer lent to whichever connection reads next. A connection
    /// keeps a buffer only while it holds a partial frame, so an idle
    /// connection holds none (idle connections are most of them).
    pub(crate) spare_input: BytesMut,
    /// Where sockets are read into (`conn::READ_SCRATCH_BYTES`, zeroed
    /// once), before what came is appended to the connection's input.
    pub(crate) read_scratch: Box<[u8]>,
    /// Emptied connection buffers lent to the next connections to become
    /// busy.
    spare_buffers: conn::SpareBuffers,
    /// The emptied list of commands of the last session call, lent to the
    /// next one: a busy publisher's read yields dozens of commands or more,
    /// and a fresh list per read regrew to that size every time.
    spare_commands: Vec<(u32, Command)>,
    /// The emptied list of the last run of replies handed to one session
    /// (see `deliver_reply_run`).
    spare_reply_run: Vec<(u32, crate::command::Reply)>,
    /// Connections closed with a reason, waiting for it to be written:
    /// (slot, generation, deadline).
    lingering: Vec<(u32, u32, Instant)>,
    /// Accepted connections and when they must have identified themselves
    /// (`handshake_timeout_ms` after their accept, so in deadline order).
    handshakes: VecDeque<(Instant, u32, u32)>,
    /// Session timers: (deadline, slot, generation), earliest first. An entry
    /// whose connection re-armed or closed is skipped when it comes up.
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    now_ms: u64,
    /// The monotonic clock at the start of this turn (read once per turn:
    /// the loop's periodic checks and timers compare against it).
    now: Instant,
    last_timestamp_ms: u64,
    /// The shard journal: one write and one fdatasync per turn for every
    /// partition of the shard.
    journal: starling_storage::Journal,
    /// When the journal was last fdatasync'ed (the `interval` policy).
    journal_synced_at: Instant,
    /// The commit whose fdatasync runs on the journal's commit thread
    /// (`fsync` policy): its publishes wait there for their
    /// acknowledgements and fan-out.
    commit: Option<owner::Commit>,
    /// Reads of owned partitions that came while a commit's fdatasync ran:
    /// served once it is done, so that no reader sees a record that is not
    /// durable yet.
    deferred_reads: Vec<ShardMsg>,
    /// Owner side: channels whose interest arrived while some of their
    /// records were appended but not yet visible, with the newest such seq.
    /// A stored message goes into its commit's fan-out only if its channel
    /// has interest when it is appended, so until that seq is visible the
    /// channel's catch-up pages would miss it; its fetches wait in
    /// `fetches_at_seam` until then (one commit at most).
    seams: foldhash::HashMap<Arc<str>, u64>,
    /// Fetches waiting for their channel's seam, retried after every commit.
    fetches_at_seam: Vec<ShardMsg>,
    /// This turn's ephemeral publishes of owned channels: fanned out at the
    /// end of the turn, without waiting for a commit (they are not in the
    /// log, so nothing about them waits for the disk).
    ephemeral: Vec<(starling_protocol::Utf8Bytes, starling_protocol::Message)>,
    /// The free space of the data directory's file system, as far as
    /// publishes are concerned (`engine.disk_free_min_bytes`).
    disk: owner::DiskWatch,
    /// When the shard frees the memory of its busy turns if it stays idle
    /// until then: [`IDLE_MEMORY_RELEASE_AFTER`] after the last turn that
    /// had publishes to write, acknowledge or fan out, or accepted or closed
    /// a connection, and again every as long as idempotency keys remain to
    /// expire.
    idle_release_at: Instant,
    /// Freed since the last busy turn, with no idempotency key left.
    idle_memory_released: bool,
    shutting_down: bool,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        shared: Arc<EngineShared>,
        partitions: PartitionTable,
        mut journal: starling_storage::Journal,
    ) -> Shard {
        let shards = shared.routing.shards;
        if shared.config.durability != crate::Durability::None {
            // The acknowledgement path's fdatasync (`fsync`), or the
            // periodic one (`interval`), runs on the journal's commit
            // thread, which wakes this loop when it is done.
            let waking = Arc::clone(&shared);
            let notify = Box::new(move || waking.inboxes[id].wake());
            if let Err(error) = journal.set_sync_notifier(id, notify) {
                log::warn!("shard {id}: syncing on the event loop instead: {error}");
            }
            if shared.config.durability == crate::Durability::Fsync {
                journal.set_sync_on_loop_max_us(shared.config.sync_on_loop_max_us);
            }
        } else {
            // Nothing waits for the journal: its entries would only repeat
            // the partitions' writes (see `Journal::set_count_only`).
            journal.set_count_only(true);
        }
        Shard {
            id,
            poll,
            shared,
            partitions,
            interest: foldhash::HashMap::default(),
            patterns: HashMap::new(),
            pattern_subscriptions: Vec::new(),
            pattern_pending: HashMap::new(),
            next_pattern_ack: 0,
            connections: Vec::new(),
            generations: Vec::new(),
            free_slots: Vec::new(),
            subscriptions: foldhash::HashMap::default(),
            fetch_wanted: Vec::new(),
            next_subscription_id: 0,
            next_read_page: 0,
            self_queue: VecDeque::new(),
            overflow: (0..shards).map(|_| VecDeque::new()).collect(),
            wake_pending: vec![false; shards],
            dirty: Vec::new(),
            read_again: Vec::new(),
            spare_input: BytesMut::new(),
            read_scratch: vec![0; conn::READ_SCRATCH_BYTES].into_boxed_slice(),
            spare_commands: Vec::new(),
            spare_reply_run: Vec::new(),
            spare_buffers: conn::SpareBuffers::default(),
            lingering: Vec::new(),
            handshakes: VecDeque::new(),
            timers: BinaryHeap::new(),
            now_ms: wall_clock_ms(),
            now: Instant::now(),
            last_timestamp_ms: 0,
            journal,
            journal_synced_at: Instant::now(),
            commit: None,
            deferred_reads: Vec::new(),
            seams: foldhash::HashMap::default(),
            fetches_at_seam: Vec::new(),
            ephemeral: Vec::new(),
            disk: owner::DiskWatch::default(),
            idle_release_at: Instant::now() + IDLE_MEMORY_RELEASE_AFTER,
            idle_memory_released: false,
            shutting_down: false,
        }
    }

    /// Runs the loop until shutdown; returns whether the stop was clean
    /// (every partition synced and the journal closed).
    pub(crate) fn run(mut self) -> bool {
        let mut events = Events::with_capacity(1024);
        let mut last_retention = Instant::now();
        let mut last_session_check = Instant::now();
        loop {
            let mut timeout = if self.has_immediate_work() {
                Some(Duration::ZERO)
            } else {
                let session_timer = self
                    .next_session_timer()
                    .unwrap_or(IDLE_POLL)
                    .min(self.next_handshake_deadline());
                Some(self.next_timer().min(IDLE_POLL).min(session_timer))
            };
            let inbox = &self.shared.inboxes[self.id];
            if timeout != Some(Duration::ZERO) && !inbox.going_to_sleep() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.shared.inboxes[self.id].awake();
            if let Err(error) = polled {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {error}", self.id);
                }
                continue;
            }
            self.now_ms = wall_clock_ms();
            self.now = Instant::now();
            self.poll_commit(false);
            for event in events.iter() {
                if event.token() == WAKER_TOKEN {
                    continue;
                }
                let slot = (event.token().0 - 1) as u32;
                let ended = event.is_read_closed() || event.is_error();
                if event.is_readable() || ended {
                    self.read_connection(slot, ended);
                }
                if event.is_writable() {
                    self.mark_dirty(slot);
                }
            }
            for slot in std::mem::take(&mut self.read_again) {
                self.read_connection(slot, true);
            }
            self.drain_inbox();
            if self.commit_comes_first() {
                // What other shards' commits sent (acknowledgements,
                // deliveries: durable already) does not wait for this
                // shard's fdatasync.
                self.write_dirty();
            }
            self.end_turn();
            // The other shards' acknowledgements and deliveries of this
            // turn's commit go before this shard's own socket writes.
            self.wake_others();
            self.fire_session_timers();
            self.close_unidentified();
            self.write_dirty();
            // After the writes: a connection whose queue they drained gets
            // its next catch-up page now, not at the next event.
            self.request_fetches();
            self.send_overflow();
            self.report_depths();
            self.tick_timers(&mut last_retention);
            self.check_sessions(&mut last_session_check);
            self.release_idle_memory();
            self.close_lingering();
            if self.shutting_down {
                return self.finish_shutdown();
            }
        }
    }

    /// Publishes this shard's queue depths for the metrics endpoints.
    fn report_depths(&self) {
        let metrics = &self.shared.metrics;
        let inbox = self.shared.inboxes[self.id].queue.len() + self.self_queue.len();
        metrics.inbox_depth[self.id].set(inbox as u64);
        let overflow: usize = self.overflow.iter().map(VecDeque::len).sum();
        metrics.overflow_depth[self.id].set(overflow as u64);
    }

    fn has_immediate_work(&self) -> bool {
        !self.self_queue.is_empty()
            || !self.read_again.is_empty()
            || self.overflow.iter().any(|q| !q.is_empty())
            || !self.shared.inboxes[self.id].queue.is_empty()
            || self.has_unwritten_appends()
    }

    fn drain_inbox(&mut self) {
        let mut handled = 0;
        while handled < INBOX_MESSAGES_PER_TURN {
            let message = match self.self_queue.pop_front() {
                Some(message) => message,
                None => match self.shared.inboxes[self.id].queue.pop() {
                    Some(message) => message,
                    None => break,
                },
            };
            handled += 1;
            self.handle_message(message);
        }
    }

    /// Hands a new key ring to every partition of the shard (all of them
    /// are tried; the first refusal is returned).
    fn set_keys(&mut self, keys: Option<Arc<starling_storage::KeyRing>>) -> Result<(), String> {
        let mut outcome = Ok(());
        for (id, partition) in self.partitions.iter_mut() {
            if let Err(error) = partition.log.set_keys(keys.clone()) {
                log::error!(
                    "shard {}: partition {id} keeps its old key ring: {error}",
                    self.id
                );
                if outcome.is_ok() {
                    outcome = Err(format!("partition {id}: {error}"));
                }
            }
        }
        outcome
    }

    fn handle_message(&mut self, message: ShardMsg) {
        if self.journal.sync_in_flight()
            && matches!(message, ShardMsg::Fetch { .. } | ShardMsg::Read { .. })
        {
            self.deferred_reads.push(message);
            return;
        }
        match message {
            ShardMsg::CloseMatching { matching, reason } => self.close_matching(&matching, &reason),
            ShardMsg::Accept {
                stream,
                peer,
                protocol,
                tls,
            } => self.accept(stream, peer, protocol, tls),
            ShardMsg::AttachLocal {
                principal,
                events,
                attached,
            } => self.attach_local(principal, events, attached),
            ShardMsg::LocalCommand {
                conn,
                request_id,
                command,
            } => {
                if self.connection(conn).is_some() {
                    self.handle_command(conn.slot, request_id, command);
                }
            }
            ShardMsg::DetachLocal { conn } => {
                if self.connection(conn).is_some() {
                    self.close_connection(conn.slot, None);
                }
            }
            ShardMsg::Publish(publish) => self.owner_publish(publish),
            ShardMsg::Interest { channel, shard, on } => self.owner_interest(channel, shard, on),
            ShardMsg::Fetch {
                subscriber,
                channel,
                start,
                bytes_max,
            } => self.owner_fetch(subscriber, channel, start, bytes_max),
            ShardMsg::Read {
                from,
                request_id,
                reply_as,
                channel,
                query,
                limit,
                bytes_max,
                page,
            } => {
                self.owner_read(from, request_id, reply_as, channel, query, limit, bytes_max);
                if page > 0 {
                    if from.shard == self.id {
                        self.page_arrived(from, PageFor::Read(page));
                    } else {
                        self.send(from.shard, ShardMsg::PageDone { conn: from, page });
                    }
                }
            }
            ShardMsg::PageDone { conn, page } => self.page_arrived(conn, PageFor::Read(page)),
            ShardMsg::Replied {
                to,
                request_id,
                reply,
            } => self.deliver_reply(to, request_id, reply),
            ShardMsg::Replies(replies) => self.deliver_replies(replies),
            ShardMsg::Page {
                subscriber,
                channel,
                result,
                head_seq,
                complete,
            } => {
                self.subscriber_page(subscriber, channel, result, head_seq, complete);
                // After the page is queued: its share of the bound goes.
                self.page_arrived(subscriber.conn, PageFor::Subscription(subscriber.id));
            }
            ShardMsg::Deliver { channel, messages } => self.subscriber_deliver(&channel, &messages),
            ShardMsg::Notify { conn, event } => {
                if self.connection(conn).is_some() {
                    self.with_session(conn.slot, |session, _, context| {
                        session.on_event(event, context)
                    });
                }
            }
            ShardMsg::PatternInterest {
                pattern,
                shard,
                on,
                ack,
            } => self.owner_pattern_interest(pattern, shard, on, ack),
            ShardMsg::PatternReady { to, ack } => self.pattern_ready(to, ack),
            ShardMsg::Keys { keys, done } => {
                let _ = done.send((self.id, self.set_keys(keys)));
            }
            ShardMsg::Shutdown => self.shutting_down = true,
        }
    }

    /// Sends `message` to shard `to` (possibly this one), keeping per-
    /// destination order when the inbox is full.
    pub(crate) fn send(&mut self, to: usize, message: ShardMsg) {
        if to == self.id {
            self.self_queue.push_back(message);
            return;
        }
        if !self.overflow[to].is_empty() {
            self.overflow[to].push_back(message);
            return;
        }
        if let Err(message) = self.shared.inboxes[to].queue.push(message) {
            self.overflow[to].push_back(message);
        }
        self.wake_pending[to] = true;
    }

    /// Whether this turn's end will fdatasync before the socket writes,
    /// with something to write waiting.
    fn commit_comes_first(&self) -> bool {
        self.shared.config.durability == crate::Durability::Fsync
            && !self.dirty.is_empty()
            && self.has_unwritten_appends()
    }

    /// Wakes, once each, the shards that this turn sent messages to so
    /// far, if they sleep.
    fn wake_others(&mut self) {
        for to in 0..self.wake_pending.len() {
            if std::mem::take(&mut self.wake_pending[to]) {
                self.shared.inboxes[to].wake_if_asleep();
            }
        }
    }

    fn send_overflow(&mut self) {
        for to in 0..self.overflow.len() {
            while let Some(message) = self.overflow[to].pop_front() {
                if let Err(message) = self.shared.inboxes[to].queue.push(message) {
                    self.overflow[to].push_front(message);
                    break;
                }
                self.wake_pending[to] = true;
            }
            if std::mem::take(&mut self.wake_pending[to]) {
                self.shared.inboxes[to].wake_if_asleep();
            }
        }
    }

    /// Puts off the release of idle memory until [`IDLE_MEMORY_RELEASE_AFTER`]
    /// after `now`: the shard is busy (it writes, acknowledges or fans out,
    /// or connections come and go).
    pub(super) fn postpone_idle_release(&mut self, now: Instant) {
        self.idle_release_at = now + IDLE_MEMORY_RELEASE_AFTER;
        self.idle_memory_released = false;
    }

    /// Frees the buffers busy turns left behind (only empty ones), once the
    /// shard has been idle for [`IDLE_MEMORY_RELEASE_AFTER`], and the
    /// idempotency keys that fell out of their window; repeated every
    /// [`IDLE_MEMORY_RELEASE_AFTER`] while keys remain, then not until the
    /// next busy turn.
    fn release_idle_memory(&mut self) {
        if self.idle_memory_released || self.now < self.idle_release_at {
            return;
        }
        let now_ms = self.now_ms;
        let mut keys_left = false;
        for partition in self.partitions.values_mut() {
            partition.release_idle_memory(now_ms);
            keys_left |= partition.log.idempotency_keys() > 0;
        }
        if keys_left {
            self.idle_release_at = Instant::now() + IDLE_MEMORY_RELEASE_AFTER;
        } else {
            self.idle_memory_released = true;
        }
        for queue in &mut self.overflow {
            release_if_empty(queue);
        }
        release_if_empty(&mut self.self_queue);
        release_if_empty(&mut self.handshakes);
        if self.ephemeral.is_empty() {
            self.ephemeral = Vec::new();
        }
        if self.dirty.is_empty() {
            self.dirty = Vec::new();
        }
        if self.read_again.is_empty() {
            self.read_again = Vec::new();
        }
        self.spare_input = BytesMut::new();
        self.spare_buffers = conn::SpareBuffers::default();
        self.spare_commands = Vec::new();
        self.spare_reply_run = Vec::new();
        crate::engine::run_idle_memory_hook();
    }

    /// A timestamp for a new record: wall clock, but never behind the last one
    /// this shard assigned, so a clock step back cannot reorder timestamps.
    fn next_timestamp_ms(&mut self) -> u64 {
        self.last_timestamp_ms = self.last_timestamp_ms.max(self.now_ms);
        self.last_timestamp_ms
    }

    /// Syncs, closes the connections and the journal; whether all of it
    /// went well.
    fn finish_shutdown(&mut self) -> bool {
        self.poll_commit(true);
        self.end_turn();
        self.poll_commit(true);
        // The answers of that last commit go out before the closes below,
        // which drop what is still queued to make room for their last word.
        self.write_dirty();
        // The closes below tell sessions the time; the waits above took some.
        self.now = Instant::now();
        let slots: Vec<u32> = (0..self.connections.len() as u32).collect();
        for slot in slots {
            if self.connections[slot as usize].is_some() {
                self.close_connection(
                    slot,
                    Some((
                        starling_protocol::ErrorCode::Unavailable,
                        "the server is shutting down".to_string(),
                    )),
                );
            }
        }
        self.write_dirty();
        let mut synced = true;
        for partition in self.partitions.values_mut() {
            if let Err(error) = partition.log.sync() {
                log::error!("shard {}: final sync failed: {error}", self.id);
                synced = false;
            }
        }
        // Every partition is durable: the journal holds nothing needed, and
        // the next start checks everything as durable data.
        if !synced {
            return false;
        }
        let ends: Vec<(u32, u64)> = self
            .partitions
            .iter()
            .map(|(id, p)| (*id, p.log.end_position()))
            .collect();
        if let Err(error) = self.journal.close(&ends) {
            log::error!("shard {}: closing the journal failed: {error}", self.id);
            return false;
        }
        true
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Replaces an empty queue by one with no allocation.
fn release_if_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() {
        *queue = VecDeque::new();
    }
}
