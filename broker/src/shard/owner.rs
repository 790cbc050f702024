//! The owner side of a shard: the log partitions it owns. Appends, group
//! commit, acknowledgements, idempotent publish, history reads, catch-up
//! pages and live fan-out to the shards that have subscribers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_protocol::{HistoryQuery, Message, Utf8Bytes};
use starling_storage::{
    NewRecord, Partition, ReadPage, Record, StorageError, SwitchSync, SyncTarget,
};

use super::subscriber::delivered_bytes_estimate;
use super::Shard;
use crate::command::{BrokerError, Reply, RESERVED_PREFIX};
use crate::config::Durability;
use crate::mailbox::{ConnRef, FetchStart, Publish, ReplyAs, ShardMsg, SubRef};

pub(super) struct PendingAck {
    to: ConnRef,
    request_id: u32,
    reply_as: ReplyAs,
    seq: u64,
    offset: u64,
    timestamp_ms: u64,
    duplicate: bool,
}

/// A log partition and the work of the current turn on it.
/// One partition's publishes of a commit: (partition id, their
/// acknowledgements, their fan-out).
pub(super) type TurnBatch = (u32, Vec<PendingAck>, Vec<(Utf8Bytes, Message)>);

/// A commit whose fdatasync runs on the journal's commit thread.
pub(super) struct Commit {
    batches: Vec<TurnBatch>,
    started: Instant,
    /// Whether the turn wrote journal entries (for the commit latency).
    wrote: bool,
}

pub(crate) struct OwnedPartition {
    pub log: Partition,
    failed: Option<String>,
    /// The log's end before the last turn's flush: a failed commit takes
    /// the records after it back out of reads (`fail_turn`).
    turn_from: u64,
    acks: Vec<PendingAck>,
    fanout: Vec<(Utf8Bytes, Message)>,
    /// Emptied lists of an earlier commit, kept to take the place of `acks`
    /// and `fanout` when a commit takes them. Under `fsync` the next turn's
    /// publishes arrive while the commit's fdatasync runs, so without a
    /// spare the lists would regrow from nothing at every commit (a
    /// reallocation and copy at each doubling, measured in
    /// docs/BENCHMARKS.md).
    spare_acks: Vec<PendingAck>,
    spare_fanout: Vec<(Utf8Bytes, Message)>,
}

impl OwnedPartition {
    /// Wraps an opened partition.
    pub(crate) fn new(log: Partition) -> OwnedPartition {
        OwnedPartition {
            turn_from: log.end_position(),
            log,
            failed: None,
            acks: Vec::new(),
            fanout: Vec::new(),
            spare_acks: Vec::new(),
            spare_fanout: Vec::new(),
        }
    }

    /// Takes this turn's acknowledgements and fan-out, leaving the spare
    /// lists (empty, with the room of an earlier commit) in their place.
    fn take_turn(&mut self) -> (Vec<PendingAck>, Vec<(Utf8Bytes, Message)>) {
        let acks = std::mem::replace(&mut self.acks, std::mem::take(&mut self.spare_acks));
        let fanout = std::mem::replace(&mut self.fanout, std::mem::take(&mut self.spare_fanout));
        (acks, fanout)
    }

    /// Keeps a commit's emptied lists for the next turns: in place of the
    /// current lists if those are empty and smaller (no commit was in
    /// flight), otherwise as the spares, so the room a busy partition
    /// needed is not given up.
    fn keep_turn_buffers(
        &mut self,
        mut acks: Vec<PendingAck>,
        mut fanout: Vec<(Utf8Bytes, Message)>,
    ) {
        debug_assert!(acks.is_empty() && fanout.is_empty());
        if self.acks.is_empty() && self.acks.capacity() < acks.capacity() {
            std::mem::swap(&mut self.acks, &mut acks);
        }
        if self.spare_acks.capacity() < acks.capacity() {
            self.spare_acks = acks;
        }
        if self.fanout.is_empty() && self.fanout.capacity() < fanout.capacity() {
            std::mem::swap(&mut self.fanout, &mut fanout);
        }
        if self.spare_fanout.capacity() < fanout.capacity() {
            self.spare_fanout = fanout;
        }
    }

    /// Frees the turn buffers a busy turn grew (they are empty between
    /// turns) and the log's own (see `Shard::release_idle_memory`).
    pub(crate) fn release_idle_memory(&mut self, now_ms: u64) {
        if self.acks.is_empty() {
            self.acks = Vec::new();
        }
        if self.fanout.is_empty() {
            self.fanout = Vec::new();
        }
        self.spare_acks = Vec::new();
        self.spare_fanout = Vec::new();
        self.log.release_idle_memory(now_ms);
    }

    /// Heap bytes held by what [`OwnedPartition::release_idle_memory`] frees.
    #[cfg(test)]
    pub(crate) fn idle_buffer_bytes(&self) -> usize {
        (self.acks.capacity() + self.spare_acks.capacity()) * std::mem::size_of::<PendingAck>()
            + (self.fanout.capacity() + self.spare_fanout.capacity())
                * std::mem::size_of::<(String, Message)>()
            + self.log.idle_buffer_bytes()
    }

    fn storage_failed(&self) -> BrokerError {
        BrokerError::StorageFailed {
            partition: self.log.id(),
            reason: self.failed.clone().unwrap_or_default(),
        }
    }

    fn fail(&mut self, error: &StorageError) {
        if self.failed.is_none() {
            log::error!("partition {}: {error}", self.log.id());
            self.failed = Some(error.to_string());
        }
    }

    /// Fails the partition because the commit of the last turn's flush
    /// failed: its publishers are told so, and its records, visible to
    /// reads since the flush, are taken back out of them.
    fn fail_turn(&mut self, error: &StorageError) {
        self.fail(error);
        if let Err(withdraw) = self.log.withdraw_since(self.turn_from, error) {
            log::error!(
                "partition {}: the records of the failed commit could not be taken out of reads ({withdraw}); reads may show them until the restart",
                self.log.id()
            );
        }
    }
}

/// How old the last look at the free disk space may be when a publish
/// comes in (`engine.disk_free_min_bytes`).
const DISK_CHECK_EVERY_MS: u64 = 100;

/// What a shard last saw of the free space of the data directory's file
/// system.
#[derive(Default)]
pub(super) struct DiskWatch {
    /// When it looked (the shard's wall clock, ms).
    checked_ms: u64,
    /// The free bytes it saw, when below the minimum.
    low: Option<u64>,
    /// A look failed (logged once).
    failed_to_look: bool,
}

/// The message a subscriber sees for a stored record.
pub(crate) fn message_of(record: Record) -> Message {
    Message {
        seq: record.seq,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        kind: record.kind,
        sender: record.sender,
        client_message_id: record.client_message_id,
        relation: record.relation,
        headers: record.headers,
        body: record.body,
    }
}

fn storage_error(partition: u32, error: &StorageError) -> BrokerError {
    BrokerError::StorageFailed {
        partition,
        reason: error.to_string(),
    }
}

impl Shard {
    fn owned_partition(&mut self, channel: &str) -> &mut OwnedPartition {
        let partition = self.shared.routing.partition_of(channel);
        self.partitions
            .get_mut(&partition)
            .expect("a channel is routed to the shard that owns its partition")
    }

    pub(super) fn owner_publish(&mut self, request: Publish) {
        // A client's publish waits for room on the disk; the engine's own
        // records (cursors, reserved channels) are small and still written.
        let refusal = if !request.ephemeral
            && request.reply_as == ReplyAs::Plain
            && !request.channel.starts_with(RESERVED_PREFIX)
        {
            self.disk_refusal()
        } else {
            None
        };
        let timestamp_ms = self.next_timestamp_ms();
        debug_assert_eq!(
            request.partition,
            self.shared.routing.partition_of(&request.channel)
        );
        let partition = self
            .partitions
            .get_mut(&request.partition)
            .expect("a publish is routed to the shard that owns its partition");
        if request.ephemeral {
            // Delivered at the end of this turn (`end_turn`), ahead of the
            // channel's durable messages still waiting for their commit.
            let message = Message {
                seq: 0,
                offset: 0,
                timestamp_ms,
                kind: request.kind,
                sender: request.sender,
                client_message_id: request.client_message_id,
                relation: request.relation,
                headers: request.headers,
                body: request.body,
            };
            self.ephemeral.push((request.channel, message));
            let reply = Reply::Published {
                seq: 0,
                offset: 0,
                timestamp_ms,
                durable: false,
                duplicate: false,
            };
            self.reply(request.from, request.request_id, reply);
            return;
        }
        if partition.failed.is_some() {
            let error = partition.storage_failed();
            self.reply(request.from, request.request_id, Reply::Error(error));
            return;
        }
        if let Some(error) = refusal {
            self.reply(request.from, request.request_id, Reply::Error(error));
            return;
        }
        let record = NewRecord {
            channel: request.channel.as_bytes(),
            timestamp_ms,
            kind: request.kind,
            sender: &request.sender,
            client_message_id: &request.client_message_id,
            relation: request.relation,
            headers: &request.headers,
            body: &request.body,
        };
        let appended = match partition.log.append(&record) {
            Ok(appended) => appended,
            Err(error @ (StorageError::TooLarge { .. } | StorageError::InvalidRecord { .. })) => {
                let error = BrokerError::InvalidArgument(error.to_string());
                self.reply(request.from, request.request_id, Reply::Error(error));
                return;
            }
            Err(error) => {
                partition.fail(&error);
                let error = partition.storage_failed();
                self.reply(request.from, request.request_id, Reply::Error(error));
                return;
            }
        };
        partition.acks.push(PendingAck {
            to: request.from,
            request_id: request.request_id,
            reply_as: request.reply_as,
            seq: appended.seq,
            offset: appended.offset,
            timestamp_ms: appended.timestamp_ms,
            duplicate: appended.duplicate,
        });
        if appended.duplicate {
            // A retry: answered with the original, nothing new to deliver.
            return;
        }
        // A message of a channel nobody subscribes to (and no pattern could
        // match) stays out of the fan-out: building its entry and dropping
        // it after the commit cost about a tenth of the server's CPU in a
        // durable-publish profile with no subscribers. A subscriber whose
        // interest arrives before this commit is done gets it in its
        // catch-up instead: its fetches wait until this record is visible
        // (`Shard::seams`).
        let no_interest =
            self.interest.is_empty() || !self.interest.contains_key(request.channel.as_str());
        if self.patterns.is_empty() && no_interest {
            return;
        }
        let message = Message {
            seq: appended.seq,
            offset: appended.offset,
            timestamp_ms,
            kind: request.kind,
            sender: request.sender,
            client_message_id: request.client_message_id,
            relation: request.relation,
            headers: request.headers,
            body: request.body,
        };
        partition.fanout.push((request.channel, message));
    }

    /// Group commit: one write per partition for everything appended this
    /// turn, the same bytes in one write to the shard journal, and (per
    /// policy) one fdatasync of the journal for all of them; then
    /// acknowledgements, then fan-out. Partition files are synced in the
    /// background when the journal switches files.
    ///
    /// Under `fsync` the fdatasync runs on the journal's commit thread: this
    /// returns once it is started, and the loop goes on (forwarding, replies,
    /// deliveries, the next turn's appends) until [`Shard::poll_commit`]
    /// sees it done and acknowledges this turn's publishes. Meanwhile no
    /// turn writes (their publishes wait in the partitions' pending
    /// batches: the next turn writes them all) and reads of the owned
    /// partitions wait (`deferred_reads`), so a reader never sees a record
    /// that is not durable yet.
    pub(super) fn end_turn(&mut self) {
        if !self.ephemeral.is_empty() {
            let mut ephemeral = std::mem::take(&mut self.ephemeral);
            self.fan_out(&mut ephemeral);
            // Kept for the next turn's (fan_out empties the list).
            if self.ephemeral.is_empty() {
                self.ephemeral = ephemeral;
            }
        }
        if self.journal.sync_in_flight() {
            return;
        }
        let durability = self.shared.config.durability;
        let interval = Duration::from_millis(self.shared.config.interval_ms);
        let mut ids: Vec<u32> = self
            .partitions
            .iter()
            .filter(|(_, p)| !p.acks.is_empty() || !p.fanout.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        let commit_started = Instant::now();
        self.postpone_idle_release(commit_started);

        // Phase 1: write each partition's pending batches, and each as an
        // entry of the journal straight from the partition's buffer.
        let journal = &mut self.journal;
        for &id in &ids {
            let partition = self.partitions.get_mut(&id).expect("listed above");
            partition.turn_from = partition.log.end_position();
            if partition.failed.is_some() || partition.log.pending_records() == 0 {
                continue;
            }
            if let Err(error) = partition
                .log
                .flush_with(&mut |bytes| journal.add(id, bytes))
            {
                partition.fail(&error);
            }
        }

        // Phase 2: the end of the journal's entries (a failed entry write
        // fails the turn) and, per policy, one fdatasync (under `fsync`
        // started on the commit thread).
        let wrote = journal.has_entries();
        let mut result = journal.write();
        let sync_now = match durability {
            Durability::Fsync => true,
            Durability::Interval => self.journal_synced_at.elapsed() >= interval,
            Durability::None => false,
        };
        if result.is_ok() && sync_now && journal.unsynced() {
            if durability == Durability::Fsync {
                match journal.start_sync() {
                    Ok(true) => {
                        // Phase 3 when the sync is done: this turn's
                        // acknowledgements and fan-out wait with it.
                        let batches = self.take_batches(ids);
                        self.commit = Some(Commit {
                            batches,
                            started: commit_started,
                            wrote,
                        });
                        if self.journal.synced_inline() {
                            // It synced here (recent flushes were short, or
                            // no commit thread could be started): nothing
                            // will wake the loop for it.
                            self.poll_commit(false);
                        }
                        return;
                    }
                    Ok(false) => {}
                    Err(error) => result = Err(error),
                }
            } else if let Err(error) = self.start_interval_sync() {
                result = Err(error);
            }
        }
        let durable = !self.journal.unsynced();
        if let Err(error) = result {
            // Nothing of this turn is acknowledged or read, and nothing
            // after it is written.
            for partition in self.partitions.values_mut() {
                partition.fail(&error);
            }
            for id in &ids {
                let partition = self.partitions.get_mut(id).expect("listed above");
                partition.fail_turn(&error);
            }
        }
        if wrote && (sync_now || durability != Durability::Fsync) {
            let commit_us = commit_started.elapsed().as_micros() as u64;
            self.shared.metrics.commit_latency.observe_us(commit_us);
        }
        let batches = self.take_batches(ids);
        self.acknowledge(batches, durable);
    }

    /// Records were appended after this turn's write (by what its
    /// acknowledgements and deliveries set off: an MQTT session's topic
    /// index entry, a QoS 2 note, a cursor) and no commit is in flight to
    /// wake the loop when it is done: the next turn must come at once, not
    /// after the poll's idle timeout, since their senders wait for them.
    pub(super) fn has_unwritten_appends(&self) -> bool {
        !self.journal.sync_in_flight()
            && self
                .partitions
                .iter()
                .any(|(_, partition)| !partition.acks.is_empty() || !partition.fanout.is_empty())
    }

    /// Takes this turn's acknowledgements and fan-out out of partitions
    /// `ids`, leaving their lists empty for the next turn's publishes.
    fn take_batches(&mut self, ids: Vec<u32>) -> Vec<TurnBatch> {
        ids.into_iter()
            .map(|id| {
                let partition = self.partitions.get_mut(&id).expect("listed above");
                let (acks, fanout) = partition.take_turn();
                (id, acks, fanout)
            })
            .collect()
    }

    /// Finishes the commit whose fdatasync runs on the journal's commit
    /// thread, once it is done (with `wait`, waits for it): acknowledges and
    /// fans out its publishes, then serves the reads that waited for it.
    pub(super) fn poll_commit(&mut self, wait: bool) {
        self.finish_interval_sync();
        let Some(result) = self.journal.finish_sync(wait) else {
            return;
        };
        let commit = self.commit.take().expect("a sync in flight has its commit");
        match result {
            Ok(()) => {
                self.journal_synced_at = Instant::now();
                self.shared.metrics.fsyncs.add(1);
                if commit.wrote {
                    let commit_us = commit.started.elapsed().as_micros() as u64;
                    self.shared.metrics.commit_latency.observe_us(commit_us);
                }
            }
            Err(error) => {
                for partition in self.partitions.values_mut() {
                    partition.fail(&error);
                }
                for (id, _, _) in &commit.batches {
                    let partition = self.partitions.get_mut(id).expect("a batch's partition");
                    partition.fail_turn(&error);
                }
            }
        }
        let durable = !self.journal.unsynced();
        self.acknowledge(commit.batches, durable);
        for message in std::mem::take(&mut self.deferred_reads) {
            self.handle_message(message);
        }
    }

    /// Phase 3 and 4 of a commit: acknowledge and fan out each partition's
    /// batch (an error for each publish of a failed partition), then switch
    /// the journal's file or start the partitions' write-back if it asks.
    fn acknowledge(&mut self, batches: Vec<TurnBatch>, durable: bool) {
        for (id, mut acks, mut fanout) in batches {
            let partition = self.partitions.get_mut(&id).expect("a batch's partition");
            let failed = partition
                .failed
                .is_some()
                .then(|| partition.storage_failed());
            if failed.is_some() {
                // Nothing of a failed write is acknowledged or delivered.
                fanout.clear();
            }
            self.shared.metrics.messages_in.add(acks.len() as u64);
            // Replies to other shards' connections leave as one message per
            // shard, before this batch's fan-out (as single replies did);
            // this shard's own go to each connection's session a run at a
            // time.
            let mut by_shard: Vec<Vec<(ConnRef, u32, Reply)>> = (0..self.shared.routing.shards)
                .map(|_| Vec::new())
                .collect();
            for ack in acks.drain(..) {
                let reply = match (&failed, ack.reply_as) {
                    // A retry too: its original may be of this very write (or
                    // of one whose commit failed), never stored.
                    (Some(error), _) => Reply::Error(error.clone()),
                    (_, ReplyAs::Cursor) => Reply::CursorAck,
                    _ => Reply::Published {
                        seq: ack.seq,
                        offset: ack.offset,
                        timestamp_ms: ack.timestamp_ms,
                        durable,
                        duplicate: ack.duplicate,
                    },
                };
                by_shard[ack.to.shard].push((ack.to, ack.request_id, reply));
            }
            for (shard, replies) in by_shard.into_iter().enumerate() {
                if shard == self.id {
                    self.deliver_replies(replies);
                } else if !replies.is_empty() {
                    self.send(shard, ShardMsg::Replies(replies));
                }
            }
            self.fan_out(&mut fanout);
            // The lists go back to the partition, so a busy partition does
            // not regrow them every turn.
            let partition = self.partitions.get_mut(&id).expect("a batch's partition");
            partition.keep_turn_buffers(acks, fanout);
        }

        // Phase 4: when the journal's file is full, move to the other one
        // (after this turn's acknowledgements: it may wait for the
        // background sync of the previous switch).
        if self.journal.wants_switch() {
            self.switch_journal();
        } else if self.journal.wants_trickle() {
            self.trickle_journal();
        }

        // Catch-ups that waited for this commit's records, after their
        // fan-out (so a subscriber skips those deliveries and gets the
        // records in its page).
        for fetch in std::mem::take(&mut self.fetches_at_seam) {
            self.handle_message(fetch);
        }
    }

    /// The active segments of every partition, for the journal's background
    /// thread.
    fn sync_targets(&self) -> Result<Vec<SyncTarget>, StorageError> {
        self.partitions
            .iter()
            .map(|(_, partition)| partition.log.sync_target())
            .collect()
    }

    /// Starts the partitions' write-back in the background (see
    /// `Journal::trickle`). A failure to list the files only skips it: the
    /// next switch syncs them and reports any error.
    fn trickle_journal(&mut self) {
        match self.sync_targets() {
            Ok(targets) => self.journal.trickle(targets),
            Err(error) => log::warn!("cannot start the partitions' write-back: {error}"),
        }
    }

    /// Starts the journal's other file, asking its background thread to
    /// sync every partition's active segment (see `Journal::switch`).
    fn switch_journal(&mut self) {
        let ends: Vec<(u32, u64)> = self
            .partitions
            .iter()
            .map(|(id, partition)| (*id, partition.log.end_position()))
            .collect();
        // Under `none` and `interval` nothing waits for the journal to be
        // durable, so the old file's sync and the new header's go to the
        // background thread.
        let order = match self.shared.config.durability {
            Durability::None | Durability::Interval => SwitchSync::Background,
            Durability::Fsync => SwitchSync::Now,
        };
        let result = self
            .sync_targets()
            .and_then(|targets| self.journal.switch(&ends, targets, order));
        if let Err(error) = result {
            for partition in self.partitions.values_mut() {
                partition.fail(&error);
            }
        }
    }

    /// Sends this turn's messages, grouped per channel, once to every shard
    /// that has subscribers of the channel.
    fn fan_out(&mut self, fanout: &mut Vec<(Utf8Bytes, Message)>) {
        if fanout.is_empty() {
            return;
        }
        let mut order: Vec<(Arc<str>, u64, Vec<Message>)> = Vec::new();
        let mut index: foldhash::HashMap<Utf8Bytes, usize> = foldhash::HashMap::default();
        for (channel, message) in fanout.drain(..) {
            match index.get(&channel) {
                Some(&i) => order[i].2.push(message),
                None => {
                    // The interest map's key is the channel's shared name;
                    // only a channel matched by patterns alone needs a new one.
                    let (shared, mut shards) = match self.interest.get_key_value(channel.as_str()) {
                        Some((name, shards)) => (Some(name.clone()), *shards),
                        None => (None, 0),
                    };
                    if !self.patterns.is_empty() {
                        shards |= self.pattern_interest(&channel);
                    }
                    if shards == 0 {
                        continue;
                    }
                    let shared = shared.unwrap_or_else(|| Arc::from(channel.as_str()));
                    index.insert(channel, order.len());
                    order.push((shared, shards, vec![message]));
                }
            }
        }
        for (channel, shards, messages) in order {
            let messages: Arc<[Message]> = Arc::from(messages);
            for shard in 0..self.shared.routing.shards {
                if shards & (1 << shard) != 0 {
                    let deliver = ShardMsg::Deliver {
                        channel: channel.clone(),
                        messages: messages.clone(),
                    };
                    if shard == self.id && self.self_queue.is_empty() {
                        // As the queue would hand it over next: delivered
                        // in this turn, before its writes go out, rather
                        // than one more pass of the loop later.
                        self.handle_message(deliver);
                    } else {
                        self.send(shard, deliver);
                    }
                }
            }
        }
    }

    /// Counts (or uncounts) a pattern subscription of `shard`, and answers
    /// when asked to.
    pub(super) fn owner_pattern_interest(
        &mut self,
        pattern: Arc<str>,
        shard: usize,
        on: bool,
        ack: Option<(ConnRef, u32)>,
    ) {
        let shards = self.shared.routing.shards;
        let counts = self
            .patterns
            .entry(pattern.clone())
            .or_insert_with(|| vec![0; shards]);
        if on {
            counts[shard] += 1;
        } else {
            counts[shard] = counts[shard].saturating_sub(1);
        }
        if counts.iter().all(|count| *count == 0) {
            self.patterns.remove(&pattern);
        }
        if let Some((to, ack)) = ack {
            self.send(to.shard, ShardMsg::PatternReady { to, ack });
        }
    }

    /// Shards with pattern subscriptions matching `channel`, as a bitmask.
    fn pattern_interest(&self, channel: &str) -> u64 {
        let mut shards = 0u64;
        for (pattern, counts) in &self.patterns {
            if crate::pattern::matches(pattern, channel) {
                for (shard, count) in counts.iter().enumerate() {
                    if *count > 0 {
                        shards |= 1 << shard;
                    }
                }
            }
        }
        shards
    }

    pub(super) fn owner_interest(&mut self, channel: Arc<str>, shard: usize, on: bool) {
        let bit = 1u64 << shard;
        if on {
            // Records of the channel appended but not yet visible may have
            // been left out of their commit's fan-out (no interest when they
            // came): the catch-up that follows must wait for them.
            let log = &self.owned_partition(&channel).log;
            let appended_seq = log.appended_seq(channel.as_bytes());
            if appended_seq > log.head_seq(channel.as_bytes()) {
                self.seams.insert(channel.clone(), appended_seq);
            }
            *self.interest.entry(channel).or_insert(0) |= bit;
        } else if let Some(bits) = self.interest.get_mut(&channel) {
            *bits &= !bit;
            if *bits == 0 {
                self.interest.remove(&channel);
            }
        }
    }

    pub(super) fn owner_fetch(
        &mut self,
        subscriber: SubRef,
        channel: Arc<str>,
        start: FetchStart,
        bytes_max: usize,
    ) {
        let page_max = self.shared.config.page_messages_max as usize;
        if let Some(&seam_seq) = self.seams.get(&channel) {
            let partition = self.owned_partition(&channel);
            if partition.failed.is_none() && partition.log.head_seq(channel.as_bytes()) < seam_seq {
                // Served after the commit that makes the seam visible
                // (every commit writes all pending records).
                self.fetches_at_seam.push(ShardMsg::Fetch {
                    subscriber,
                    channel,
                    start,
                    bytes_max,
                });
                return;
            }
            self.seams.remove(&channel);
        }
        let partition = self.owned_partition(&channel);
        let id = partition.log.id();
        let name = channel.as_bytes();
        let head_seq = partition.log.head_seq(name);
        let read = match start {
            FetchStart::Live => Ok((
                ReadPage {
                    records: Vec::new(),
                    head_seq,
                },
                true,
            )),
            FetchStart::Last(n) if n as usize <= page_max => partition
                .log
                .read_last(name, n as usize)
                .map(|page| (page, true)),
            FetchStart::Last(n) => {
                let from = head_seq.saturating_sub(n) + 1;
                partition
                    .log
                    .read_from(name, from, page_max)
                    .map(|page| (page, false))
            }
            FetchStart::From { seq, limit } => partition
                .log
                .read_from(name, seq, page_max.min(limit as usize).max(1))
                .map(|p| (p, false)),
        };
        // A page stays within `bytes_max`, the share of the connection's
        // outbound bound its shard reserved for it (`Shard::send_read`).
        let (result, head_seq, complete) = match read {
            Ok((page, complete)) => {
                let head = page.head_seq;
                let mut messages: Vec<Message> = Vec::with_capacity(page.records.len());
                let mut bytes = 0;
                let mut cut = false;
                for record in page.records {
                    let message = message_of(record);
                    bytes += delivered_bytes_estimate(&channel, &message);
                    if bytes > bytes_max && !messages.is_empty() {
                        cut = true;
                        break;
                    }
                    messages.push(message);
                }
                let complete =
                    (complete && !cut) || messages.last().is_none_or(|last| last.seq >= head);
                (Ok(messages), head, complete)
            }
            Err(error) => (Err(storage_error(id, &error)), head_seq, true),
        };
        let page = ShardMsg::Page {
            subscriber,
            channel,
            result,
            head_seq,
            complete,
        };
        self.send(subscriber.conn.shard, page);
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the fields of `ShardMsg::Read`, taken apart where it is dispatched"
    )]
    pub(super) fn owner_read(
        &mut self,
        from: ConnRef,
        request_id: u32,
        reply_as: ReplyAs,
        channel: Arc<str>,
        query: HistoryQuery,
        limit: u32,
        bytes_max: usize,
    ) {
        let partition = self.owned_partition(&channel);
        let id = partition.log.id();
        let name = channel.as_bytes();
        let limit = limit as usize;
        let read = match query {
            HistoryQuery::From(seq) => partition.log.read_from(name, seq, limit),
            HistoryQuery::Before(seq) => partition.log.read_before(name, seq, limit),
            HistoryQuery::Last => partition.log.read_last(name, limit),
        };
        // A page stays within `bytes_max` (at least one message; the
        // requesting shard reserved that much of the connection's outbound
        // bound): a page of a thousand 1 MiB messages would be a gigabyte in
        // one reply. Reading forward keeps the oldest; reading back, the
        // newest (the next page goes on from either end).
        let newest_first = !matches!(query, HistoryQuery::From(_));
        let reply = match (read, reply_as) {
            (Err(error), _) => Reply::Error(storage_error(id, &error)),
            (Ok(page), ReplyAs::Plain) => Reply::History {
                head_seq: page.head_seq,
                messages: page_within(&channel, page.records, bytes_max, newest_first),
                channel,
            },
            (Ok(page), ReplyAs::Cursor) => Reply::Cursor {
                seq: page.records.last().map_or(0, |record| record.relation),
            },
        };
        self.reply(from, request_id, reply);
    }

    /// The `interval` policy's fdatasync, started on the journal's commit
    /// thread once `interval_ms` has passed since the last one started: the
    /// loop never waits for it (turns go on writing), and
    /// [`Shard::poll_commit`] takes its outcome.
    fn start_interval_sync(&mut self) -> Result<(), StorageError> {
        let interval = Duration::from_millis(self.shared.config.interval_ms);
        if !self.journal.unsynced() || self.journal_synced_at.elapsed() < interval {
            return Ok(());
        }
        if self.journal.start_background_sync()? {
            self.journal_synced_at = Instant::now();
            if !self.journal.has_commit_thread() {
                // It synced here: nothing will wake the loop for it.
                self.finish_interval_sync();
            }
        }
        Ok(())
    }

    /// Takes the outcome of an `interval` fdatasync once it is done.
    fn finish_interval_sync(&mut self) {
        match self.journal.finish_background_sync(false) {
            None => {}
            Some(Ok(())) => self.shared.metrics.fsyncs.add(1),
            Some(Err(error)) => {
                for partition in self.partitions.values_mut() {
                    partition.fail(&error);
                }
            }
        }
    }

    /// Periodic work: `interval` fdatasyncs and retention.
    pub(super) fn tick_timers(&mut self, last_retention: &mut Instant) {
        if self.shared.config.durability == Durability::Interval {
            if let Err(error) = self.start_interval_sync() {
                for partition in self.partitions.values_mut() {
                    partition.fail(&error);
                }
            }
        }
        let config = &self.shared.config;
        let every = Duration::from_millis(config.retention_check_ms);
        // Not while a commit is in flight (tried again the next turn): if it
        // fails, its records are taken back out of reads from where its turn
        // began, which retention must not have moved.
        let due = self.now.saturating_duration_since(*last_retention) >= every;
        if due && !self.journal.sync_in_flight() {
            *last_retention = self.now;
            let now_ms = self.now_ms;
            for partition in self.partitions.values_mut() {
                if partition.failed.is_some() {
                    continue;
                }
                match partition.log.apply_retention(now_ms) {
                    Ok(report) => {
                        log::debug!("partition {}: retention: {report:?}", partition.log.id())
                    }
                    Err(error) => log::warn!(
                        "partition {}: retention failed: {error}",
                        partition.log.id()
                    ),
                }
            }
        }
    }

    /// The refusal of a client's publish while the file system holding the
    /// log has less free space than `engine.disk_free_min_bytes` (looked
    /// at again when the last look is [`DISK_CHECK_EVERY_MS`] old).
    fn disk_refusal(&mut self) -> Option<BrokerError> {
        let config = &self.shared.config;
        let min_bytes = config.disk_free_min_bytes;
        if min_bytes == 0 {
            return None;
        }
        let watch = &mut self.disk;
        // A wall clock set back also counts as time for a new look.
        if self.now_ms.abs_diff(watch.checked_ms) >= DISK_CHECK_EVERY_MS {
            watch.checked_ms = self.now_ms;
            match starling_storage::available_bytes(&config.data_dir) {
                Ok(free) if free < min_bytes => {
                    if watch.low.is_none() {
                        log::warn!(
                            "shard {}: the disk holding {} has {free} bytes free, less than engine.disk_free_min_bytes = {min_bytes}: publishes are refused until there is room again; free space on it, grow it or lower the retention",
                            self.id,
                            config.data_dir.display()
                        );
                    }
                    watch.low = Some(free);
                }
                Ok(free) => {
                    if watch.low.take().is_some() {
                        log::warn!(
                            "shard {}: the disk holding {} has {free} bytes free again: publishes are accepted",
                            self.id,
                            config.data_dir.display()
                        );
                    }
                }
                Err(error) => {
                    if !watch.failed_to_look {
                        log::warn!("shard {}: {error}; publishes are not held back by free space while it cannot be read", self.id);
                    }
                    watch.failed_to_look = true;
                    watch.low = None;
                }
            }
        }
        watch.low.map(|free_bytes| BrokerError::StorageFull {
            path: config.data_dir.display().to_string(),
            free_bytes,
            min_bytes,
        })
    }

    /// How long poll may sleep before a timer is due.
    pub(super) fn next_timer(&self) -> Duration {
        if self.shared.config.durability == Durability::Interval && self.journal.unsynced() {
            Duration::from_millis(self.shared.config.interval_ms)
        } else {
            Duration::from_millis(self.shared.config.retention_check_ms)
        }
    }
}

/// The partitions a shard owns, indexed by partition id: a lookup per
/// publish is an index, not a hash.
#[derive(Default)]
pub(crate) struct PartitionTable {
    slots: Vec<Option<(u32, OwnedPartition)>>,
}

impl PartitionTable {
    pub(crate) fn insert(&mut self, id: u32, partition: OwnedPartition) {
        let index = id as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some((id, partition));
    }

    pub(crate) fn get_mut(&mut self, id: &u32) -> Option<&mut OwnedPartition> {
        self.slots
            .get_mut(*id as usize)
            .and_then(|slot| slot.as_mut())
            .map(|(_, partition)| partition)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u32, &OwnedPartition)> {
        self.slots.iter().flatten().map(|(id, p)| (id, p))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut OwnedPartition)> {
        self.slots.iter_mut().flatten().map(|(id, p)| (&*id, p))
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut OwnedPartition> {
        self.iter_mut().map(|(_, p)| p)
    }
}

/// The messages of `records` (ascending) that fit in `bytes_max`, at least
/// one: the first ones, or with `newest_first` the last ones (still in
/// ascending order).
fn page_within(
    channel: &str,
    records: Vec<starling_storage::Record>,
    bytes_max: usize,
    newest_first: bool,
) -> Vec<Message> {
    let mut messages: Vec<Message> = records.into_iter().map(message_of).collect();
    let mut bytes = 0;
    let fits = |message: &Message, bytes: &mut usize, kept: usize| {
        *bytes += delivered_bytes_estimate(channel, message);
        kept == 0 || *bytes <= bytes_max
    };
    if newest_first {
        let kept = messages
            .iter()
            .rev()
            .enumerate()
            .take_while(|(kept, message)| fits(message, &mut bytes, *kept))
            .count();
        messages.drain(..messages.len() - kept);
    } else {
        let kept = messages
            .iter()
            .enumerate()
            .take_while(|(kept, message)| fits(message, &mut bytes, *kept))
            .count();
        messages.truncate(kept);
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_storage::PartitionConfig;

    fn pending_ack(timestamp_ms: u64) -> PendingAck {
        PendingAck {
            to: ConnRef {
                shard: 0,
                slot: 0,
                generation: 0,
            },
            request_id: 1,
            reply_as: ReplyAs::Plain,
            seq: timestamp_ms + 1,
            offset: 0,
            timestamp_ms,
            duplicate: false,
        }
    }

    /// A commit's emptied lists come back to the partition even when the
    /// next turn's publishes already filled new ones (as they do while a
    /// commit's fdatasync runs), and the next commit leaves them in place of
    /// the lists it takes: the room of a busy turn is kept, not regrown.
    #[test]
    fn a_commit_leaves_the_room_of_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Partition::open(dir.path(), 0, PartitionConfig::default()).unwrap();
        let mut partition = OwnedPartition::new(log);
        partition.acks.extend((0..1_000).map(pending_ack));
        let (mut acks, fanout) = partition.take_turn();
        // The next turn's publish arrives while the commit is in flight.
        partition.acks.push(pending_ack(1_000));
        acks.clear();
        let room = acks.capacity();
        partition.keep_turn_buffers(acks, fanout);
        assert!(partition.spare_acks.capacity() >= room);

        let (mut acks, fanout) = partition.take_turn();
        assert_eq!(acks.len(), 1);
        assert!(partition.acks.is_empty() && partition.acks.capacity() >= room);
        acks.clear();
        partition.keep_turn_buffers(acks, fanout);
        partition.release_idle_memory(1_000);
        assert_eq!(partition.idle_buffer_bytes(), 0);
    }

    /// What a busy turn leaves in a partition's turn buffers is freed once
    /// the shard is idle: nothing of it stays per partition.
    #[test]
    fn idle_partitions_hold_no_turn_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Partition::open(dir.path(), 0, PartitionConfig::default()).unwrap();
        let mut partition = OwnedPartition::new(log);
        for i in 0..1_000u64 {
            let channel = format!("room-{i}");
            let record = NewRecord {
                channel: channel.as_bytes(),
                timestamp_ms: i,
                kind: 1,
                sender: b"alice",
                client_message_id: b"",
                relation: 0,
                headers: b"",
                body: b"hello",
            };
            partition.log.append(&record).unwrap();
            partition.acks.push(pending_ack(i));
        }
        partition.log.flush().unwrap();
        partition.acks.clear();
        assert!(partition.idle_buffer_bytes() > 1_000 * std::mem::size_of::<PendingAck>());
        partition.release_idle_memory(1_000);
        assert_eq!(partition.idle_buffer_bytes(), 0);
    }
}
