//! Engine counters. Each is a relaxed atomic add: no lock, no ordering, one
//! cache line per counter so shards do not fight over one line.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (µs) of the latency histograms' buckets: from a fast
/// fdatasync on NVMe to a stalled disk.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// A latency histogram with fixed buckets: one relaxed add per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound of [`LATENCY_BUCKETS_US`], then
    /// over the last one.
    buckets: [Counter; LATENCY_BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    pub fn observe_us(&self, value_us: u64) {
        let index = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| value_us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[index].add(1);
        self.sum_us.add(value_us);
    }

    /// Cumulative counts per bound (the last is +Inf), and the sum in µs.
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64) {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for (index, bucket) in self.buckets.iter().enumerate() {
            total += bucket.get();
            cumulative.push((LATENCY_BUCKETS_US.get(index).copied(), total));
        }
        (cumulative, self.sum_us.get())
    }
}

/// A value that goes up and down (a queue depth), set by its owner.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The engine's counters; exported by the front ends (Prometheus, `$SYS`).
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Publishes answered by an owner (stored, duplicate or failed).
    pub messages_in: Counter,
    /// Deliveries queued to subscribers (one per subscriber per batch).
    pub messages_out: Counter,
    pub fsyncs: Counter,
    pub denied: Counter,
    pub slow_consumer_disconnects: Counter,
    pub deliveries_dropped: Counter,
    /// Subscriptions that fell behind and went on reading from the log
    /// instead of taking live deliveries (see `Session::delivery_room` and
    /// the `catch_up` slow-consumer policy).
    pub catch_up_fallbacks: Counter,
    /// Connections closed because they did not identify themselves in
    /// time (`handshake_timeout_ms`).
    pub handshake_timeouts: Counter,
    /// Time of one turn's group commit: writing the batches and, under the
    /// `fsync` policy, fdatasyncing them (what a publisher's ack waits for).
    pub commit_latency: Histogram,
    /// Per shard: messages waiting in its inbox at the end of its last turn.
    pub inbox_depth: Vec<Gauge>,
    /// Per shard: messages it holds for full inboxes of other shards.
    pub overflow_depth: Vec<Gauge>,
}

impl Metrics {
    /// Counters for an engine of `shards` shards.
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            inbox_depth: (0..shards).map(|_| Gauge::default()).collect(),
            overflow_depth: (0..shards).map(|_| Gauge::default()).collect(),
            ..Metrics::default()
        }
    }

    /// Name and value of every counter, for exporters.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("connections_opened", self.connections_opened.get()),
            ("connections_closed", self.connections_closed.get()),
            ("bytes_in", self.bytes_in.get()),
            ("bytes_out", self.bytes_out.get()),
            ("messages_in", self.messages_in.get()),
            ("deliveries_out", self.messages_out.get()),
            ("fsyncs", self.fsyncs.get()),
            ("denied", self.denied.get()),
            (
                "slow_consumer_disconnects",
                self.slow_consumer_disconnects.get(),
            ),
            ("deliveries_dropped", self.deliveries_dropped.get()),
            ("catch_up_fallbacks", self.catch_up_fallbacks.get()),
            ("handshake_timeouts", self.handshake_timeouts.get()),
        ]
    }
}
