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
}

impl Metrics {
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
        ]
    }
}
