//! Stable: with no schedule, keep a fixed resident set instead of churning.
//!
//! CoorDL (Mohan et al., VLDB 2021) showed that a shuffled epoch over a dataset larger than
//! the cache defeats LRU: every block is evicted just before its next read, so the hit ratio
//! falls far below the cached fraction. A cache that stops admitting once full keeps its
//! resident set, and each epoch hits exactly on that set, whatever the order: the hit ratio
//! is the resident fraction.
//!
//! Once the tier is full (an admission would need an eviction), only one in [`TURNOVER`] such
//! admissions is let in, replacing the least recently read resident; the others pass through
//! uncached. This turnover allowance lets a resident set that is no longer read (the readers
//! moved to another dataset) be replaced, after about `TURNOVER` × its size in misses, at a
//! cost of at most one lost hit per admitted block (the resident it replaced, read least
//! recently, is one not yet read this epoch): at most 1/`TURNOVER` of an epoch's misses,
//! 1.5 % of the reads with a cache of half the dataset. Eviction rounds free only
//! what the admitted block needs, never down to the low watermark, which would turn each
//! allowance into a refill of the reserved space.

use super::{EvictReason, EvictionPolicy, Lru, Victim};
use crate::block::BlockId;

/// One in this many admissions that would evict is let in.
pub const TURNOVER: u32 = 32;

/// Counts admissions that would replace residents and lets one in [`TURNOVER`] through.
#[derive(Debug, Default)]
pub struct Turnover {
    refused: u32,
}

impl Turnover {
    /// Whether this replacement is the one let through.
    pub fn allow(&mut self) -> bool {
        self.refused += 1;
        if self.refused >= TURNOVER {
            self.refused = 0;
            true
        } else {
            false
        }
    }
}

/// A fixed resident set with a small turnover (see the module header).
#[derive(Debug, Default)]
pub struct Stable {
    order: Lru,
    turnover: Turnover,
}

impl EvictionPolicy for Stable {
    fn admitted(&mut self, id: BlockId) {
        self.order.admitted(id);
    }

    fn touched(&mut self, id: BlockId) {
        self.order.touched(id);
    }

    fn removed(&mut self, id: BlockId) {
        self.order.removed(id);
    }

    fn pop_victim(&mut self) -> Option<Victim> {
        let v = self.order.pop_victim()?;
        Some(Victim {
            reason: EvictReason::Stable,
            ..v
        })
    }

    fn admits(&mut self, _candidate: BlockId) -> bool {
        self.turnover.allow()
    }

    fn would_admit(&mut self, _candidate: BlockId) -> bool {
        false
    }

    fn frees_to_low_watermark(&self) -> bool {
        false
    }
}
