//! The idempotency window of a partition: (channel, sender, client message
//! id) → the record that carried it, for records whose timestamp is within
//! `window_ms` of the newest one and at most `entries_max` of them.
//!
//! It lives in the log layer so that it is rebuilt like the channel table:
//! loaded from the checkpoint and completed by the scan of the log after it,
//! instead of re-reading every record of the window at each start.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The record an idempotency key was first seen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Original {
    pub seq: u64,
    pub offset: u64,
    pub timestamp_ms: u64,
}

/// A key: the three fields with their lengths, so ("ab", "c") and ("a", "bc")
/// differ.
pub(crate) fn key(channel: &[u8], sender: &[u8], client_message_id: &[u8]) -> Arc<[u8]> {
    let mut key = Vec::with_capacity(channel.len() + sender.len() + client_message_id.len() + 4);
    key.extend_from_slice(&(channel.len() as u16).to_le_bytes());
    key.extend_from_slice(channel);
    key.extend_from_slice(&(sender.len() as u16).to_le_bytes());
    key.extend_from_slice(sender);
    key.extend_from_slice(client_message_id);
    Arc::from(key)
}

pub(crate) struct IdempotencyIndex {
    entries: HashMap<Arc<[u8]>, Original>,
    /// Keys in insertion order, with the timestamp they were inserted with.
    order: VecDeque<(Arc<[u8]>, u64)>,
    window_ms: u64,
    entries_max: usize,
    newest_ms: u64,
}

impl IdempotencyIndex {
    pub(crate) fn new(window_ms: u64, entries_max: usize) -> IdempotencyIndex {
        IdempotencyIndex {
            entries: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
            entries_max,
            newest_ms: 0,
        }
    }

    /// The original of `key` if it is still within the window at `now_ms`.
    pub(crate) fn get(&self, key: &[u8], now_ms: u64) -> Option<Original> {
        if self.entries_max == 0 {
            return None;
        }
        self.entries
            .get(key)
            .filter(|o| now_ms.saturating_sub(o.timestamp_ms) <= self.window_ms)
            .copied()
    }

    /// Remembers `key` → `original` (a later record with the same key
    /// replaces it) and forgets what fell out of the window or the bound.
    pub(crate) fn insert(&mut self, key: Arc<[u8]>, original: Original) {
        if self.entries_max == 0 {
            return;
        }
        self.newest_ms = self.newest_ms.max(original.timestamp_ms);
        self.order.push_back((key.clone(), original.timestamp_ms));
        self.entries.insert(key, original);
        self.forget_older_than_window(self.newest_ms);
    }

    /// Forgets the keys that fell out of the window at `now_ms` (as `get`
    /// already ignores them) and gives back the room of a table that is
    /// mostly empty. Inserts forget old keys only as new ones come, so an
    /// idle partition calls this to let go of the keys of its last burst.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        self.forget_older_than_window(now_ms.max(self.newest_ms));
        if self.entries.len() * 4 <= self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        if self.order.len() * 4 <= self.order.capacity() {
            self.order.shrink_to_fit();
        }
    }

    /// Heap bytes of the two tables (capacities; not the keys themselves).
    pub(crate) fn table_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(Arc<[u8]>, Original)>()
            + self.order.capacity() * std::mem::size_of::<(Arc<[u8]>, u64)>()
    }

    fn forget_older_than_window(&mut self, newest_ms: u64) {
        while let Some((_, timestamp_ms)) = self.order.front() {
            let expired = newest_ms.saturating_sub(*timestamp_ms) > self.window_ms;
            if !expired && self.order.len() <= self.entries_max {
                break;
            }
            let (key, timestamp_ms) = self.order.pop_front().expect("checked above");
            if self
                .entries
                .get(&key)
                .is_some_and(|o| o.timestamp_ms == timestamp_ms)
            {
                self.entries.remove(&key);
            }
        }
    }

    /// Every remembered key in insertion order (for the checkpoint).
    pub(crate) fn snapshot(&self) -> Vec<(Arc<[u8]>, Original)> {
        self.order
            .iter()
            .filter_map(|(key, timestamp_ms)| {
                let original = self.entries.get(key)?;
                (original.timestamp_ms == *timestamp_ms).then(|| (key.clone(), *original))
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(seq: u64, timestamp_ms: u64) -> Original {
        Original {
            seq,
            offset: seq * 100,
            timestamp_ms,
        }
    }

    #[test]
    fn keys_keep_their_fields_apart() {
        assert_ne!(key(b"ab", b"c", b"1"), key(b"a", b"bc", b"1"));
        assert_eq!(key(b"a", b"b", b"1"), key(b"a", b"b", b"1"));
    }

    #[test]
    fn window_and_bound() {
        let mut index = IdempotencyIndex::new(1000, 3);
        index.insert(key(b"c", b"s", b"1"), original(1, 0));
        assert_eq!(index.get(&key(b"c", b"s", b"1"), 500), Some(original(1, 0)));
        assert_eq!(
            index.get(&key(b"c", b"s", b"1"), 1001),
            None,
            "outside the window"
        );
        index.insert(key(b"c", b"s", b"2"), original(2, 1500));
        assert_eq!(index.len(), 1, "the first fell out of the window");
        for n in 3..=6 {
            index.insert(key(b"c", b"s", &[n]), original(u64::from(n), 1600));
        }
        assert_eq!(index.len(), 3, "bounded");
        assert_eq!(index.snapshot().len(), 3);
        assert_eq!(index.snapshot()[2].1.seq, 6);
    }

    #[test]
    fn an_idle_index_lets_go_of_expired_keys() {
        let mut index = IdempotencyIndex::new(1000, 100_000);
        for n in 0..10_000u64 {
            let id = n.to_le_bytes();
            index.insert(key(b"c", b"s", &id), original(n, n / 10));
        }
        index.expire(1500);
        assert_eq!(index.len(), 5_000, "keys within the window stay");
        assert_eq!(
            index
                .get(&key(b"c", b"s", &9_999u64.to_le_bytes()), 1500)
                .unwrap()
                .seq,
            9_999
        );
        index.expire(5000);
        assert_eq!(index.len(), 0);
        assert_eq!(index.table_bytes(), 0, "an empty index holds no tables");
        index.insert(key(b"c", b"s", b"1"), original(1, 5000));
        assert_eq!(index.get(&key(b"c", b"s", b"1"), 5000).unwrap().seq, 1);
    }
}
