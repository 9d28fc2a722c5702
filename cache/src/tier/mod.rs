//! Cache tiers: where block bytes live.
//!
//! Both tiers implement [`Tier`] over whole blocks and share [`crate::evict::Occupancy`] for
//! accounting and eviction. A read never moves a block between tiers (read type CACHE, not
//! CACHE_PROMOTE): blocks enter tiers on a miss only. A tier that cannot or will not hold a
//! block says so with `false`, and the read passes through uncached. [`TierStack`] holds a
//! node's tiers in read order, the one place that order is written down.

mod memory;
mod ssd;
mod stack;

pub use memory::{Lease, MemoryTier};
pub use ssd::SsdTier;
pub use stack::TierStack;

use bytes::Bytes;

use crate::block::BlockId;
use crate::config::Watermarks;

/// Usage of one tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierStatus {
    pub name: &'static str,
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub evictions: u64,
    /// `evictions` by the policy's reason (every reason, zeros included).
    pub evictions_by_reason: Vec<(crate::evict::EvictReason, u64)>,
    pub watermarks: Watermarks,
    pub location: String,
    /// The file system under a disk tier (`None` for memory).
    pub fs: Option<FsSpace>,
}

/// Space of the file system holding a disk tier (statvfs), and the configured capacity that
/// `TierStatus::capacity` is lowered from when the file system has less room than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub free: u64,
    pub total: u64,
    pub configured_capacity: u64,
}

/// A store of whole blocks.
pub trait Tier: Send + Sync {
    /// Short name for metrics and status (`memory`, `ssd`).
    fn name(&self) -> &'static str;
    /// The block's bytes, or `None` on a miss (including a block found corrupt, which is
    /// dropped and counted). May block on disk I/O.
    fn get(&self, id: BlockId) -> Option<Bytes>;
    /// Stores a block, evicting others as the watermarks demand. `false` if the tier did not
    /// take it (disabled, too large, no space, I/O error).
    fn put(&self, id: BlockId, data: &Bytes) -> bool;
    /// Drops a block; `true` if it was present.
    fn remove(&self, id: BlockId) -> bool;
    /// Whether the block is held (no I/O).
    fn contains(&self, id: BlockId) -> bool;
    /// Whether a put of `len` bytes under `id` would be kept now (see
    /// [`crate::evict::Occupancy::would_admit`]).
    fn would_admit(&self, _id: BlockId, _len: u64) -> bool {
        true
    }
    /// Usage figures.
    fn status(&self) -> TierStatus;
}

/// One conformance suite for every tier implementation.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn block(seed: u8, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| seed.wrapping_add(i as u8))
                .collect::<Vec<_>>(),
        )
    }

    /// `tier` must have room for at least 16 blocks of 16 KiB and at most 64 of them.
    pub fn run(tier: &dyn Tier) {
        let a = block(1, 16 << 10);
        assert!(tier.get(BlockId(1)).is_none());
        assert!(tier.put(BlockId(1), &a));
        assert_eq!(tier.get(BlockId(1)).as_deref(), Some(&a[..]));
        assert!(tier.contains(BlockId(1)));
        // Idempotent put.
        assert!(tier.put(BlockId(1), &a));
        assert_eq!(tier.status().blocks, 1);
        // Removal.
        assert!(tier.remove(BlockId(1)));
        assert!(!tier.remove(BlockId(1)));
        assert!(tier.get(BlockId(1)).is_none());
        assert_eq!(tier.status().used, 0);
        // Filling past capacity evicts, and what remains reads back exactly.
        for i in 0..200u128 {
            assert!(tier.put(BlockId(100 + i), &block(i as u8, 16 << 10)));
        }
        let st = tier.status();
        assert!(st.used <= st.capacity, "{st:?}");
        assert!(st.evictions > 0, "{st:?}");
        assert!(tier.contains(BlockId(299)), "newest block kept");
        for i in 0..200u128 {
            if let Some(got) = tier.get(BlockId(100 + i)) {
                assert_eq!(got, block(i as u8, 16 << 10), "block {i}");
            }
        }
    }
}
