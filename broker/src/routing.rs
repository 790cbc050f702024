//! Where a channel lives: channel name → log partition → owning shard.
//!
//! The mapping is a fixed function of the name so that every shard (and, later,
//! every node) computes the same owner without asking anyone. The hash is
//! FNV-1a 64, written down here rather than taken from `std`, because std's
//! hasher is not promised to stay the same across Rust releases and the
//! partition of a channel must never change while its data exists.

/// FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The fixed routing table of one engine: how many partitions exist and how
/// many shards share them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    pub partitions: u32,
    pub shards: usize,
}

impl Routing {
    pub fn new(partitions: u32, shards: usize) -> Routing {
        assert!(partitions > 0, "at least one partition");
        assert!(shards > 0, "at least one shard");
        Routing { partitions, shards }
    }

    /// The log partition that stores `channel`.
    pub fn partition_of(&self, channel: &str) -> u32 {
        (fnv1a64(channel.as_bytes()) % u64::from(self.partitions)) as u32
    }

    /// The shard (core) that owns `partition`.
    pub fn shard_of_partition(&self, partition: u32) -> usize {
        partition as usize % self.shards
    }

    /// The shard that owns `channel`.
    pub fn shard_of(&self, channel: &str) -> usize {
        self.shard_of_partition(self.partition_of(channel))
    }

    /// The partitions owned by `shard`, ascending.
    pub fn partitions_of_shard(&self, shard: usize) -> impl Iterator<Item = u32> + '_ {
        (0..self.partitions).filter(move |&p| self.shard_of_partition(p) == shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        // Reference values of FNV-1a 64 from the algorithm's published test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_partition_has_exactly_one_shard() {
        let routing = Routing::new(16, 3);
        let mut seen = [0; 16];
        for shard in 0..3 {
            for p in routing.partitions_of_shard(shard) {
                seen[p as usize] += 1;
                assert_eq!(routing.shard_of_partition(p), shard);
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn channel_routing_is_stable() {
        let routing = Routing::new(16, 2);
        assert_eq!(
            routing.partition_of("general"),
            routing.partition_of("general")
        );
        assert!(routing.partition_of("general") < 16);
    }
}
