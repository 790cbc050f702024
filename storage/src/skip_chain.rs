//! Where a busy channel's next skip pointer points, without reading record headers back.
//!
//! A record's skip pointer leads to the channel's record with seq `skip_target(seq)` (`seq` with
//! its lowest set bit cleared). Found by following pointers from the channel's newest record, it
//! cost a header read per append on average, and those reads were cache misses (older records of
//! the pending buffer or of the segment): about 7 % of a durable publish's CPU in a profile of
//! 1,000 busy channels.
//!
//! Every record the walk can lead to is a *prefix* of the newest seq `n`: `n` with all of its set
//! bits below some set bit `b` cleared. So a channel's chain is one offset per set bit `b` of `n`:
//! the offset of the prefix whose lowest set bit is `b`. Appending `n + 1` replaces the entry at
//! its lowest set bit and keeps the ones above (the prefixes of `n + 1` above that bit are those of
//! `n`); its skip target is the prefix at the second lowest set bit of `n + 1`. Entries are learnt
//! as records are appended, and from the walk when one is missing, so a channel seen for the first
//! time reads what it read before and little after that.

use crate::channel_table::ChannelId;
use crate::format::{skip_target, NO_OFFSET};

/// Bits of a seq whose prefixes a chain keeps: seqs past 2^32 fall back to reading headers for
/// the prefixes at higher bits.
const CHAIN_BITS: u32 = 32;

/// Channels whose chains a partition keeps. A chain is 272 bytes, so 1,024 of them are under
/// 300 KiB; past that the table starts again (the channels it drops read headers until they have
/// learnt their chains again).
const CHAINS_MAX: usize = 1024;

/// One channel's chain.
#[derive(Clone, Copy)]
struct Chain {
    /// The channel's newest seq.
    seq: u64,
    /// Bit `b` set: `offsets[b]` is the offset of the prefix of `seq` whose lowest set bit is `b`.
    /// INVARIANT: only bits that are set in `seq`.
    known: u32,
    offsets: [u64; CHAIN_BITS as usize],
}

impl Chain {
    fn new(seq: u64, offset: u64) -> Chain {
        let mut chain = Chain {
            seq,
            known: 0,
            offsets: [0; CHAIN_BITS as usize],
        };
        if seq != 0 {
            chain.learn(seq.trailing_zeros(), offset);
        }
        chain
    }

    fn offset_at(&self, bit: u32) -> Option<u64> {
        (bit < CHAIN_BITS && self.known & (1 << bit) != 0).then(|| self.offsets[bit as usize])
    }

    fn learn(&mut self, bit: u32, offset: u64) {
        if bit < CHAIN_BITS {
            self.offsets[bit as usize] = offset;
            self.known |= 1 << bit;
        }
    }

    /// Whether the chain is that of the channel whose newest record is `seq` at `offset`.
    fn is_newest(&self, seq: u64, offset: u64) -> bool {
        seq != 0 && self.seq == seq && self.offset_at(seq.trailing_zeros()) == Some(offset)
    }
}

/// The chains of a partition's busy channels.
#[derive(Default)]
pub(crate) struct SkipChains {
    chains: foldhash::HashMap<ChannelId, Chain>,
}

impl SkipChains {
    /// The offset of the record with seq `skip_target(newest_seq + 1)` of channel `id`, whose
    /// newest record is `newest_seq` at `newest_offset`, if the chain knows it (`None` also when
    /// there is no target). The caller still checks it against the start of the log.
    pub(crate) fn target_offset(
        &self,
        id: ChannelId,
        newest_seq: u64,
        newest_offset: u64,
    ) -> Option<u64> {
        let target = skip_target(newest_seq + 1);
        if target == 0 {
            return None;
        }
        let chain = self.chains.get(&id)?;
        if !chain.is_newest(newest_seq, newest_offset) {
            return None;
        }
        chain.offset_at(target.trailing_zeros())
    }

    /// Channel `id`, whose newest record was `previous_seq` at `previous_offset`, got record
    /// `seq` (= `previous_seq + 1`) at `offset`, with skip pointer `skip_offset`.
    pub(crate) fn appended(
        &mut self,
        id: ChannelId,
        previous_seq: u64,
        previous_offset: u64,
        offset: u64,
        skip_offset: u64,
    ) {
        let seq = previous_seq + 1;
        if self.chains.len() >= CHAINS_MAX && !self.chains.contains_key(&id) {
            self.chains.clear();
        }
        let chain = self
            .chains
            .entry(id)
            .or_insert_with(|| Chain::new(previous_seq, previous_offset));
        if !chain.is_newest(previous_seq, previous_offset) {
            *chain = Chain::new(previous_seq, previous_offset);
        }
        let target = skip_target(seq);
        if target != 0 && skip_offset != NO_OFFSET {
            chain.learn(target.trailing_zeros(), skip_offset);
        }
        chain.learn(seq.trailing_zeros(), offset);
        // The prefixes of `seq` are the entries at its set bits; the others were prefixes of
        // `seq - 1` only.
        chain.known &= seq as u32;
        chain.seq = seq;
    }

    /// Heap bytes of the table.
    pub(crate) fn table_bytes(&self) -> usize {
        self.chains.capacity() * std::mem::size_of::<(ChannelId, Chain)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends seqs 1..=count to one channel at offsets `10 * seq`, each skip pointer found by
    /// the chain when it knows it and otherwise from the reference (as the partition's walk
    /// would); returns how many the chain answered. Every answer must be the reference's.
    fn run(chains: &mut SkipChains, from: u64, count: u64) -> u64 {
        let offset_of = |seq: u64| if seq == 0 { NO_OFFSET } else { 10 * seq };
        let mut answered = 0;
        for seq in from..from + count {
            let previous = seq - 1;
            let expected = match skip_target(seq) {
                0 => NO_OFFSET,
                target => offset_of(target),
            };
            let skip = match chains.target_offset(7, previous, offset_of(previous)) {
                Some(offset) => {
                    answered += 1;
                    assert_eq!(offset, expected, "seq {seq}");
                    offset
                }
                None => expected,
            };
            chains.appended(7, previous, offset_of(previous), offset_of(seq), skip);
        }
        answered
    }

    #[test]
    fn a_chain_finds_every_skip_target_once_it_has_learnt_it() {
        let mut chains = SkipChains::default();
        let answered = run(&mut chains, 1, 10_000);
        // Seqs with no target (powers of two) and the first time each bit is needed are not
        // answered: a few dozen of 10,000.
        assert!(answered > 9_900, "answered {answered}");
    }

    #[test]
    fn a_chain_starting_from_an_existing_channel_learns_as_it_goes() {
        let mut chains = SkipChains::default();
        let answered = run(&mut chains, 5_000_001, 1_000);
        assert!(answered > 950, "answered {answered}");
    }

    #[test]
    fn a_chain_of_another_newest_record_is_not_used() {
        let mut chains = SkipChains::default();
        run(&mut chains, 1, 100);
        // Seq 100's newest record at another offset (not what the chain saw): no answer.
        assert_eq!(chains.target_offset(7, 100, 12_345), None);
        assert_eq!(chains.target_offset(7, 99, 990), None);
        assert!(chains.target_offset(7, 100, 1_000).is_some());
    }
}
