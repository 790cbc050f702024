//! The in-memory channel table: for every channel of a partition, its last
//! visible seq and the log offset of its newest record.
//!
//! A deployment has millions of channels, most of them idle, so the table is
//! built for memory rather than generality: channel names live back to back
//! in one arena, the per-channel state is 24 bytes, and an open-addressing
//! index of 8-byte slots (a 32-bit hash tag plus a 32-bit entry number) finds
//! them. Measured by the `idle_channel_cost` test: about 75 bytes per idle
//! channel with 32-byte names at one million channels (name 32, entry 24,
//! slots ~17, plus growth slack), against ~150 for a
//! `HashMap<Box<[u8]>, (u64, u64)>`.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

/// Number of a channel in the table (dense, from 0).
pub(crate) type ChannelId = u32;

/// The most channels one partition can hold (entry numbers are 32-bit and
/// slot value 0 means "empty").
pub(crate) const CHANNELS_MAX: usize = (u32::MAX - 1) as usize;

/// Maximum load of the slot array, as a fraction `LOAD_NUMERATOR /
/// LOAD_DENOMINATOR`. Linear probing stays short below 3/4.
const LOAD_NUMERATOR: usize = 3;
const LOAD_DENOMINATOR: usize = 4;

/// Name start (48 bits) and length (16 bits) packed into one word.
const NAME_START_BITS: u32 = 48;

/// The visible state of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelEntry {
    /// INVARIANT: `name >> 48` is the name length and `name & (2^48 - 1)` its
    /// start in the arena.
    name: u64,
    /// Last visible (flushed) seq; 0 if the channel has only pending records.
    pub last_seq: u64,
    /// Offset of the record with `last_seq` (or `NO_OFFSET`).
    pub head_offset: u64,
}

pub(crate) struct ChannelTable {
    names: Vec<u8>,
    entries: Vec<ChannelEntry>,
    /// 0 = empty, otherwise `(hash >> 32) << 32 | (id + 1)`.
    /// INVARIANT: the length is 0 or a power of two, and fewer than 3/4 of
    /// the slots are used.
    slots: Vec<u64>,
    /// Every append hashes its channel's name, so the hasher is foldhash
    /// rather than std's SipHash, which was more than half of this lookup in
    /// a profile of durable publish (docs/BENCHMARKS.md). Names are chosen
    /// by clients, so it stays seeded: each table draws its own random seed,
    /// and no list of names made in advance collides in every server.
    hasher: RandomState,
}

impl ChannelTable {
    pub(crate) fn new() -> ChannelTable {
        ChannelTable {
            names: Vec::new(),
            entries: Vec::new(),
            slots: Vec::new(),
            hasher: RandomState::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn name_of(&self, entry: &ChannelEntry) -> &[u8] {
        let start = (entry.name & ((1 << NAME_START_BITS) - 1)) as usize;
        let len = (entry.name >> NAME_START_BITS) as usize;
        &self.names[start..start + len]
    }

    /// Finds the slot holding `name`, or the empty slot where it would go.
    fn probe(&self, name: &[u8], hash: u64) -> (usize, Option<ChannelId>) {
        let mask = self.slots.len() - 1;
        let tag = hash >> 32;
        let mut index = hash as usize & mask;
        loop {
            let slot = self.slots[index];
            if slot == 0 {
                return (index, None);
            }
            if slot >> 32 == tag {
                let id = (slot as u32) - 1;
                if self.name_of(&self.entries[id as usize]) == name {
                    return (index, Some(id));
                }
            }
            index = (index + 1) & mask;
        }
    }

    pub(crate) fn find(&self, name: &[u8]) -> Option<ChannelId> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(name);
        self.probe(name, hash).1
    }

    /// Returns the id of `name`, adding it (with last seq 0) if it is new.
    pub(crate) fn find_or_insert(&mut self, name: &[u8]) -> ChannelId {
        assert!(name.len() < 1 << 16);
        if (self.entries.len() + 1) * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR {
            self.grow();
        }
        let hash = self.hasher.hash_one(name);
        let (index, found) = self.probe(name, hash);
        if let Some(id) = found {
            return id;
        }
        assert!(
            self.entries.len() < CHANNELS_MAX,
            "too many channels in one partition"
        );
        let start = self.names.len() as u64;
        assert!(start < 1 << NAME_START_BITS);
        self.names.extend_from_slice(name);
        let id = self.entries.len() as ChannelId;
        self.entries.push(ChannelEntry {
            name: (name.len() as u64) << NAME_START_BITS | start,
            last_seq: 0,
            head_offset: crate::format::NO_OFFSET,
        });
        self.slots[index] = (hash >> 32) << 32 | (u64::from(id) + 1);
        id
    }

    fn grow(&mut self) {
        self.rebuild((self.slots.len() * 2).max(16));
    }

    /// Makes room for `additional` more channels with `name_bytes` bytes of
    /// names in all, so that loading a checkpoint does not rehash as it goes.
    pub(crate) fn reserve(&mut self, additional: usize, name_bytes: usize) {
        let wanted = self.entries.len() + additional + 1;
        let mut capacity = self.slots.len().max(16);
        while wanted * LOAD_DENOMINATOR > capacity * LOAD_NUMERATOR {
            capacity *= 2;
        }
        if capacity > self.slots.len() {
            self.rebuild(capacity);
        }
        self.entries.reserve(additional);
        self.names.reserve(name_bytes);
    }

    fn rebuild(&mut self, capacity: usize) {
        let mut slots = vec![0u64; capacity];
        let mask = capacity - 1;
        for (id, entry) in self.entries.iter().enumerate() {
            let hash = self.hasher.hash_one(self.name_of(entry));
            let mut index = hash as usize & mask;
            while slots[index] != 0 {
                index = (index + 1) & mask;
            }
            slots[index] = (hash >> 32) << 32 | (id as u64 + 1);
        }
        self.slots = slots;
    }

    pub(crate) fn get(&self, id: ChannelId) -> &ChannelEntry {
        &self.entries[id as usize]
    }

    pub(crate) fn get_mut(&mut self, id: ChannelId) -> &mut ChannelEntry {
        &mut self.entries[id as usize]
    }

    #[cfg(test)]
    pub(crate) fn name(&self, id: ChannelId) -> &[u8] {
        self.name_of(&self.entries[id as usize])
    }

    /// A copy of the names and entries (not the index), for a checkpoint
    /// written by another thread. Two `memcpy`s: about 56 bytes per channel
    /// with 32-byte names.
    pub(crate) fn snapshot(&self) -> ChannelSnapshot {
        ChannelSnapshot {
            names: self.names.clone(),
            entries: self.entries.clone(),
        }
    }

    /// Heap bytes held, for the memory measurement.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.names.capacity()
            + self.entries.capacity() * std::mem::size_of::<ChannelEntry>()
            + self.slots.capacity() * std::mem::size_of::<u64>()
    }
}

/// The channels of a table at one moment, without its index.
pub(crate) struct ChannelSnapshot {
    names: Vec<u8>,
    entries: Vec<ChannelEntry>,
}

impl ChannelSnapshot {
    /// Every channel: (name, last_seq, head_offset), in insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], u64, u64)> {
        self.entries.iter().map(move |e| {
            let start = (e.name & ((1 << NAME_START_BITS) - 1)) as usize;
            let len = (e.name >> NAME_START_BITS) as usize;
            (&self.names[start..start + len], e.last_seq, e.head_offset)
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_find() {
        let mut table = ChannelTable::new();
        let mut ids = Vec::new();
        for i in 0..10_000u32 {
            ids.push(table.find_or_insert(format!("channel-{i}").as_bytes()));
        }
        for i in 0..10_000u32 {
            let name = format!("channel-{i}");
            assert_eq!(table.find(name.as_bytes()), Some(ids[i as usize]));
            assert_eq!(table.name(ids[i as usize]), name.as_bytes());
            assert_eq!(table.find_or_insert(name.as_bytes()), ids[i as usize]);
        }
        assert_eq!(table.find(b"missing"), None);
        assert_eq!(table.len(), 10_000);
        table.get_mut(ids[7]).last_seq = 9;
        assert_eq!(table.get(ids[7]).last_seq, 9);
    }

    /// The measurement quoted in the module documentation and in
    /// docs/STORAGE-FORMAT.md: one million idle channels with 32-byte names.
    #[test]
    fn idle_channel_cost() {
        let channels = 1_000_000usize;
        let mut table = ChannelTable::new();
        for i in 0..channels {
            let name = format!("dm/{i:029}");
            assert_eq!(name.len(), 32);
            table.find_or_insert(name.as_bytes());
        }
        let per_channel = (table.heap_bytes() + std::mem::size_of::<ChannelTable>()) / channels;
        eprintln!("idle channel cost: {per_channel} bytes (32-byte names, 1M channels)");
        assert!(
            per_channel < 100,
            "an idle channel costs {per_channel} bytes"
        );
    }
}
