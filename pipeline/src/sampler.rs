//! A true global shuffle, sharded across ranks.
//!
//! Each epoch is one seeded permutation of the whole dataset (no shuffle buffer): the same
//! seed and epoch give the same order on every node. Ranks take the permutation strided
//! (`rank`, `rank + world`, ...) after PyTorch's `DistributedSampler` rule: without
//! `drop_last` the order is padded by repeating its head until it divides evenly, with it the
//! tail is dropped, so every rank gets the same number of samples and DDP never waits on a
//! rank with one batch fewer.
//!
//! Resuming: the only state is (seed, epoch, samples consumed globally). Samples are consumed
//! in global order (a step of `B` samples on each of `W` ranks consumes `B * W` positions), so a
//! job restarted with another `world_size` shards the *remaining* positions of the same
//! permutation among its new ranks: nothing is seen twice or skipped, apart from the padding.
//!
//! The permutation and the per-sample random streams use SplitMix64 and a Fisher–Yates shuffle
//! written out here, so the order never changes with a dependency's version.

/// Where a rank stands; small enough to checkpoint next to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Positions of the epoch's permutation consumed by all ranks together.
    pub consumed: u64,
}

/// Why a sampler cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error("world_size must be at least 1")]
    NoRanks,
    #[error("rank {rank} is not below world_size {world_size}")]
    BadRank { rank: u64, world_size: u64 },
    #[error("{consumed} samples consumed but the dataset has {len}")]
    PastEnd { consumed: u64, len: u64 },
}

/// The sample indices one rank reads in one epoch.
#[derive(Debug, Clone)]
pub struct Sampler {
    indices: Vec<u64>,
}

impl Sampler {
    /// Rank `rank` of `world_size` over a dataset of `len` samples, resuming at `state`.
    pub fn new(
        len: u64,
        state: SamplerState,
        rank: u64,
        world_size: u64,
        shuffle: bool,
        drop_last: bool,
    ) -> Result<Self, SamplerError> {
        if world_size == 0 {
            return Err(SamplerError::NoRanks);
        }
        if rank >= world_size {
            return Err(SamplerError::BadRank { rank, world_size });
        }
        if state.consumed > len {
            return Err(SamplerError::PastEnd {
                consumed: state.consumed,
                len,
            });
        }
        let order = order(len, state.seed, state.epoch, shuffle);
        let remaining = &order[state.consumed as usize..];
        let n = remaining.len() as u64;
        let per_rank = if drop_last {
            n / world_size
        } else {
            n.div_ceil(world_size)
        };
        let indices = (0..per_rank)
            .map(|i| {
                let pos = (i * world_size + rank) as usize;
                // Padding repeats the head of the remaining order (cycling if tiny).
                remaining[pos % remaining.len().max(1)]
            })
            .collect();
        Ok(Sampler { indices })
    }

    /// The indices in reading order.
    pub fn indices(&self) -> &[u64] {
        &self.indices
    }

    /// Samples this rank reads.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether this rank reads nothing.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The global order of `len` samples in `epoch`: [`permutation`] when shuffled, else the
/// dataset's.
pub fn order(len: u64, seed: u64, epoch: u64, shuffle: bool) -> Vec<u64> {
    if shuffle {
        permutation(len, seed, epoch)
    } else {
        (0..len).collect()
    }
}

/// The epoch's global order of `len` samples.
pub fn permutation(len: u64, seed: u64, epoch: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(mix(seed, epoch));
    let mut v: Vec<u64> = (0..len).collect();
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// The random stream of one sample in one epoch (crop, flip, ...): independent of rank,
/// world size and reading order, so a resumed or resharded run augments identically.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> SplitMix64 {
    SplitMix64::new(mix(mix(seed, epoch), index ^ 0xa076_1d64_78bd_642f))
}

fn mix(a: u64, b: u64) -> u64 {
    let mut s = SplitMix64::new(a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
    s.next_u64()
}

/// SplitMix64: tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn state(seed: u64, epoch: u64, consumed: u64) -> SamplerState {
        SamplerState {
            seed,
            epoch,
            consumed,
        }
    }

    fn shard(len: u64, st: SamplerState, world: u64, drop_last: bool) -> Vec<Vec<u64>> {
        (0..world)
            .map(|r| {
                Sampler::new(len, st, r, world, true, drop_last)
                    .unwrap()
                    .indices()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn every_sample_once_per_epoch_across_ranks() {
        for (len, world) in [(1000, 1), (1000, 8), (1001, 8), (7, 3), (3, 8)] {
            let ranks = shard(len, state(5, 2, 0), world, false);
            let n = ranks[0].len();
            assert!(ranks.iter().all(|r| r.len() == n), "equal shares");
            let mut seen = BTreeMap::new();
            for r in &ranks {
                for i in r {
                    *seen.entry(*i).or_insert(0) += 1;
                }
            }
            assert_eq!(seen.len() as u64, len, "all covered");
            let extra: u64 = seen.values().map(|c| c - 1).sum();
            assert_eq!(extra, n as u64 * world - len, "only padding repeats");
            // drop_last: no repeats, equal shares, at most world-1 dropped.
            let ranks = shard(len, state(5, 2, 0), world, true);
            let all: Vec<u64> = ranks.concat();
            let uniq: std::collections::BTreeSet<_> = all.iter().collect();
            assert_eq!(uniq.len(), all.len());
            assert!(len - (all.len() as u64) < world);
        }
    }

    #[test]
    fn same_seed_same_order_new_epoch_new_order() {
        assert_eq!(permutation(100, 1, 0), permutation(100, 1, 0));
        assert_ne!(permutation(100, 1, 0), permutation(100, 1, 1));
        assert_ne!(permutation(100, 1, 0), permutation(100, 2, 0));
        let mut p = permutation(100, 1, 0);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
        // Pinned: the order must never change across releases.
        assert_eq!(&permutation(10, 0, 0)[..], &PINNED[..]);
    }

    const PINNED: [u64; 10] = [5, 3, 8, 2, 4, 1, 7, 9, 6, 0];

    #[test]
    fn resume_with_another_world_size_sees_the_rest_once() {
        let len = 1000;
        let (batch, world) = (16, 4);
        // Run 5 steps on 4 ranks, then resume on 3 ranks.
        let first = shard(len, state(9, 1, 0), world, false);
        let steps = 5;
        let mut seen: Vec<u64> = first
            .iter()
            .flat_map(|r| r[..steps * batch].to_vec())
            .collect();
        let consumed = (steps * batch) as u64 * world;
        let rest = shard(len, state(9, 1, consumed), 3, true);
        seen.extend(rest.concat());
        let uniq: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(uniq.len(), seen.len(), "nothing twice");
        assert!(len - seen.len() as u64 <= 2, "at most world-1 dropped");
    }

    #[test]
    fn errors() {
        assert_eq!(
            Sampler::new(10, state(0, 0, 0), 0, 0, true, false).unwrap_err(),
            SamplerError::NoRanks
        );
        assert!(Sampler::new(10, state(0, 0, 0), 2, 2, true, false).is_err());
        assert!(Sampler::new(10, state(0, 0, 11), 0, 1, true, false).is_err());
        assert!(
            Sampler::new(0, state(0, 0, 0), 0, 2, true, false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn sample_streams_are_independent_and_stable() {
        let a = sample_rng(1, 2, 3).next_u64();
        assert_eq!(a, sample_rng(1, 2, 3).next_u64());
        assert_ne!(a, sample_rng(1, 2, 4).next_u64());
        assert_ne!(a, sample_rng(1, 3, 3).next_u64());
        let mut r = SplitMix64::new(0);
        for _ in 0..1000 {
            let x = r.unit_f64();
            assert!((0.0..1.0).contains(&x));
            assert!(r.below(7) < 7);
        }
    }
}
