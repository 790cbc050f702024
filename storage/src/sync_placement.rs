//! Where the `fsync` policy's per-turn fdatasync runs: on the shard's event
//! loop, or on the journal's commit thread.
//!
//! Handing a flush to the commit thread costs two thread wake-ups (the
//! commit thread's, then the loop's through its waker), each a pass through
//! the scheduler that, on a machine whose cores are busy, can wait behind
//! other threads. On a device that flushes in about 100 µs those wake-ups
//! cost more than the flush itself (docs/BENCHMARKS.md, "Session 10"). A
//! long flush on the loop, on the other hand, holds up everything else the
//! loop does meanwhile (deliveries, reads, forwarding to other shards), so
//! flushes run on the loop only while the recent ones were short: a moving
//! average of the measured fdatasync times against a limit
//! (`engine.sync_on_loop_max_us`). Every flush is measured wherever it ran,
//! so a device that slows down moves the flushes to the commit thread within
//! a few turns, and one that recovers brings them back.

use std::time::Duration;

/// Weight of the newest flush in the moving average: 1/8. After a single
/// slow flush (10 ms against a 250 µs limit) the next 15 or so run on the
/// commit thread while short ones bring the average back down; a device
/// whose flushes stay slow keeps them there.
const AVERAGE_WEIGHT_SHIFT: u32 = 3;

/// Decides where the next acknowledgement-path fdatasync runs.
#[derive(Clone, Debug, Default)]
pub struct SyncPlacement {
    /// Flushes run on the loop while the average is below this; 0 = never.
    limit_us: u64,
    /// The moving average of flush times in µs, times 8.
    /// INVARIANT: average_us() == average_scaled >> AVERAGE_WEIGHT_SHIFT.
    average_scaled: u64,
}

impl SyncPlacement {
    /// Flushes on the loop while they average under `limit_us`; 0 keeps
    /// every flush on the commit thread. The average starts at 0: the first
    /// flush runs on the loop and is measured.
    pub fn new(limit_us: u64) -> SyncPlacement {
        SyncPlacement {
            limit_us,
            average_scaled: 0,
        }
    }

    /// Counts one fdatasync that took `took` (on the loop or on the commit
    /// thread).
    pub fn observe(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.average_scaled = self
            .average_scaled
            .saturating_sub(self.average_scaled >> AVERAGE_WEIGHT_SHIFT)
            .saturating_add(us);
    }

    /// The moving average of the flush times, in µs.
    pub fn average_us(&self) -> u64 {
        self.average_scaled >> AVERAGE_WEIGHT_SHIFT
    }

    /// Whether the next flush should run on the loop.
    pub fn on_loop(&self) -> bool {
        self.average_us() < self.limit_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn short_flushes_stay_on_the_loop() {
        let mut placement = SyncPlacement::new(250);
        assert!(placement.on_loop(), "the first flush is tried on the loop");
        for _ in 0..1000 {
            placement.observe(us(90));
            assert!(placement.on_loop());
        }
        assert!((80..=90).contains(&placement.average_us()));
    }

    #[test]
    fn a_slow_flush_moves_the_next_ones_to_the_commit_thread_for_a_while() {
        let mut placement = SyncPlacement::new(250);
        for _ in 0..100 {
            placement.observe(us(90));
        }
        placement.observe(us(10_000));
        assert!(!placement.on_loop());
        let mut back_after = None;
        for turn in 1..=200 {
            placement.observe(us(90));
            if placement.on_loop() {
                back_after = Some(turn);
                break;
            }
        }
        let back_after = back_after.expect("short flushes bring it back");
        assert!(
            (10..=60).contains(&back_after),
            "back on the loop after {back_after} short flushes"
        );
    }

    #[test]
    fn a_slow_device_keeps_every_flush_on_the_commit_thread() {
        let mut placement = SyncPlacement::new(250);
        placement.observe(us(2_500));
        for _ in 0..100 {
            assert!(!placement.on_loop());
            placement.observe(us(1_200));
        }
    }

    #[test]
    fn a_limit_of_zero_never_flushes_on_the_loop() {
        let mut placement = SyncPlacement::new(0);
        assert!(!placement.on_loop());
        placement.observe(us(0));
        assert!(!placement.on_loop());
    }

    #[test]
    fn an_absurd_flush_time_does_not_overflow() {
        let mut placement = SyncPlacement::new(250);
        placement.observe(Duration::MAX);
        placement.observe(Duration::MAX);
        assert!(!placement.on_loop());
    }
}
