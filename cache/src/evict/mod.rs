//! Occupancy accounting and eviction, shared by every tier.
//!
//! [`Occupancy`] owns a tier's capacity, usage and watermarks and asks a pluggable
//! [`EvictionPolicy`] for victims, and whether a block may replace residents at all. Three
//! policies (`cache.eviction`): [`Lru`]; [`Stable`], a fixed resident set for readers
//! without a schedule; and [`Clairvoyant`], Belady's MIN over the [`NextUseOracle`] that
//! loaders' schedules feed. With LRU, eviction starts only when an admission would cross the
//! high watermark and then frees down to the low one, so a steady stream of misses finds
//! reserved free space instead of evicting one block per miss. The other two decide on every
//! admission that needs room (each eviction is a choice), so they free only what the
//! admitted block needs.

mod clairvoyant;
pub mod idle;
mod lru;
pub mod offline;
pub mod oracle;
mod stable;

use std::collections::HashMap;
use std::sync::Arc;

pub use clairvoyant::{Clairvoyant, RECHECKS};
pub use idle::Idle;
pub use lru::Lru;
pub use oracle::{Job, NextUse, NextUseOracle, Registration, Tick, clock};
pub use stable::{Stable, TURNOVER, Turnover};

use crate::block::BlockId;
use crate::config::{Eviction, Watermarks};

/// Chooses which block leaves a full tier, and whether a new block may take a resident's
/// place. Implementations see every admission, access and removal.
pub trait EvictionPolicy: Send + Sync + std::fmt::Debug {
    /// A block entered the tier.
    fn admitted(&mut self, id: BlockId);
    /// A block was read.
    fn touched(&mut self, id: BlockId);
    /// A block left the tier (evicted, freed or found corrupt).
    fn removed(&mut self, id: BlockId);
    /// The next block to evict, removed from the policy's bookkeeping, and why it goes.
    fn pop_victim(&mut self) -> Option<Victim>;
    /// Whether `candidate` may replace resident blocks; asked only when admitting it needs
    /// an eviction. `false`: the tier does not keep it, and the reader still gets its bytes.
    fn admits(&mut self, _candidate: BlockId) -> bool {
        true
    }
    /// What [`EvictionPolicy::admits`] would answer now, without using up an allowance (a
    /// prefetcher asks before it fetches a block nobody reads yet).
    fn would_admit(&mut self, _candidate: BlockId) -> bool {
        true
    }
    /// Whether an eviction frees down to the low watermark (space reserved for the next
    /// misses) or only what the admitted block needs.
    fn frees_to_low_watermark(&self) -> bool {
        true
    }
}

/// The policy `kind` names; the clairvoyant one asks `oracle`.
pub fn policy(kind: Eviction, oracle: &Arc<NextUseOracle>) -> Box<dyn EvictionPolicy> {
    match kind {
        Eviction::Lru => Box::new(Lru::default()),
        Eviction::Stable => Box::new(Stable::default()),
        Eviction::Clairvoyant => Box::new(Clairvoyant::new(oracle.clone())),
    }
}

/// Why a resident was chosen to leave, as the policy decided (`reason` label of
/// `loaderd_cache_evictions_total`, and the tiers' status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvictReason {
    /// `lru`: the least recently read.
    Lru,
    /// `stable`: the stable turnover let a block in over the least recently read resident.
    Stable,
    /// `clairvoyant`: no schedule reads it within its window.
    Unneeded,
    /// `clairvoyant`: every resident is needed, and this one is needed last (Belady's MIN).
    Farthest,
}

impl EvictReason {
    /// Every reason, in the order status reports them.
    pub const ALL: [EvictReason; 4] = [
        EvictReason::Lru,
        EvictReason::Stable,
        EvictReason::Unneeded,
        EvictReason::Farthest,
    ];

    /// Its name in metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            EvictReason::Lru => "lru",
            EvictReason::Stable => "stable",
            EvictReason::Unneeded => "unneeded",
            EvictReason::Farthest => "farthest",
        }
    }
}

/// A block chosen to leave, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Victim {
    pub id: BlockId,
    pub reason: EvictReason,
}

/// Why a block was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The tier has no capacity (disabled or zero).
    Disabled,
    /// The block alone is larger than the high watermark allows.
    TooLarge,
    /// The policy keeps the residents instead (see [`EvictionPolicy::admits`]).
    NotAdmitted,
}

/// Capacity, usage and the eviction policy of one tier.
#[derive(Debug)]
pub struct Occupancy {
    /// The tier's name, for the eviction metric.
    tier: &'static str,
    capacity: u64,
    watermarks: Watermarks,
    used: u64,
    sizes: HashMap<BlockId, u64>,
    policy: Box<dyn EvictionPolicy>,
    evictions: u64,
    /// Evictions by [`EvictReason`], indexed by its position in [`EvictReason::ALL`].
    by_reason: [u64; EvictReason::ALL.len()],
    refusals: u64,
}

impl Occupancy {
    /// An empty tier named `tier` of `capacity` bytes.
    pub fn new(
        tier: &'static str,
        capacity: u64,
        watermarks: Watermarks,
        policy: Box<dyn EvictionPolicy>,
    ) -> Self {
        Occupancy {
            tier,
            capacity,
            watermarks,
            used: 0,
            sizes: HashMap::new(),
            policy,
            evictions: 0,
            by_reason: [0; EvictReason::ALL.len()],
            refusals: 0,
        }
    }

    fn high(&self) -> u64 {
        (self.capacity as f64 * self.watermarks.high) as u64
    }

    fn low(&self) -> u64 {
        (self.capacity as f64 * self.watermarks.low) as u64
    }

    /// Accounts `size` bytes for `id`, returning the blocks evicted to make room (their bytes
    /// are already released here; the caller deletes their storage).
    pub fn admit(&mut self, id: BlockId, size: u64) -> Result<Vec<BlockId>, Refused> {
        if self.capacity == 0 {
            return Err(Refused::Disabled);
        }
        if size > self.high() {
            return Err(Refused::TooLarge);
        }
        if self.sizes.contains_key(&id) {
            self.policy.touched(id);
            return Ok(Vec::new());
        }
        let mut victims = Vec::new();
        if self.used + size > self.high() {
            if !self.policy.admits(id) {
                self.refusals += 1;
                return Err(Refused::NotAdmitted);
            }
            let target = if self.policy.frees_to_low_watermark() {
                self.low()
            } else {
                self.high()
            }
            .saturating_sub(size);
            while self.used > target {
                match self.evict_one() {
                    Some(v) => victims.push(v),
                    None => break,
                }
            }
        }
        self.used += size;
        self.sizes.insert(id, size);
        self.policy.admitted(id);
        Ok(victims)
    }

    /// Whether [`Occupancy::admit`] of `size` bytes under `id` would keep it now (room, or the
    /// policy's [`EvictionPolicy::would_admit`]); changes nothing.
    pub fn would_admit(&mut self, id: BlockId, size: u64) -> bool {
        if self.capacity == 0 || size > self.high() {
            return false;
        }
        self.sizes.contains_key(&id)
            || self.used + size <= self.high()
            || self.policy.would_admit(id)
    }

    /// Evicts the policy's next victim, if any, counting it by reason.
    pub fn evict_one(&mut self) -> Option<BlockId> {
        loop {
            let Victim { id, reason } = self.policy.pop_victim()?;
            if let Some(sz) = self.sizes.remove(&id) {
                self.used -= sz;
                self.evictions += 1;
                self.by_reason[reason as usize] += 1;
                crate::stats::eviction(self.tier, reason.name());
                return Some(id);
            }
        }
    }

    /// Records a read of `id`.
    pub fn touch(&mut self, id: BlockId) {
        self.policy.touched(id);
    }

    /// Forgets `id` (freed or corrupt); returns its size if it was present.
    pub fn remove(&mut self, id: BlockId) -> Option<u64> {
        let sz = self.sizes.remove(&id)?;
        self.used -= sz;
        self.policy.removed(id);
        Some(sz)
    }

    /// Whether `id` is accounted here.
    pub fn contains(&self, id: BlockId) -> bool {
        self.sizes.contains_key(&id)
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Changes the capacity (a disk tier whose file system has less room than configured);
    /// [`Occupancy::shrink`] or the next admission that the policy lets in evicts down to it.
    pub fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
    }

    /// Evicts down to the high watermark if usage is above it (the capacity was lowered),
    /// whatever the policy would admit; the victims, whose storage the caller deletes.
    pub fn shrink(&mut self) -> Vec<BlockId> {
        let mut victims = Vec::new();
        while self.used > self.high() {
            match self.evict_one() {
                Some(v) => victims.push(v),
                None => break,
            }
        }
        victims
    }

    /// Bytes of capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Blocks held.
    pub fn blocks(&self) -> u64 {
        self.sizes.len() as u64
    }

    /// Blocks evicted since start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Blocks evicted since start, by reason (every reason, zeros included).
    pub fn evictions_by_reason(&self) -> Vec<(EvictReason, u64)> {
        EvictReason::ALL
            .iter()
            .map(|r| (*r, self.by_reason[*r as usize]))
            .collect()
    }

    /// Blocks the policy did not admit since start.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The watermarks.
    pub fn watermarks(&self) -> Watermarks {
        self.watermarks
    }
}

#[cfg(test)]
pub(crate) mod traces;

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(cap: u64) -> Occupancy {
        Occupancy::new(
            "test",
            cap,
            Watermarks {
                high: 0.9,
                low: 0.5,
            },
            Box::new(Lru::default()),
        )
    }

    #[test]
    fn evicts_down_to_low_watermark_in_lru_order() {
        let mut o = occ(100);
        for i in 0..9 {
            assert!(o.admit(BlockId(i), 10).unwrap().is_empty());
        }
        o.touch(BlockId(0));
        // 90 used; one more block crosses the high watermark: free down to 50 - 10.
        let victims = o.admit(BlockId(100), 10).unwrap();
        assert_eq!(victims, (1..6).map(BlockId).collect::<Vec<_>>());
        assert_eq!(o.used(), 50);
        // The reserved space absorbs the next misses without evicting.
        for i in 200..204 {
            assert!(o.admit(BlockId(i), 10).unwrap().is_empty());
        }
        assert!(o.contains(BlockId(0)), "touched block survives");
        assert_eq!(o.evictions(), 5);
        let lru = o.evictions_by_reason();
        assert_eq!(
            lru[0],
            (EvictReason::Lru, 5),
            "LRU evicts for lru only: {lru:?}"
        );
        assert!(lru[1..].iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn a_lowered_capacity_shrinks_even_when_the_policy_admits_nothing() {
        let w = Watermarks {
            high: 1.0,
            low: 0.5,
        };
        let mut o = Occupancy::new("test", 100, w, Box::new(Stable::default()));
        for i in 0..10 {
            o.admit(BlockId(i), 10).unwrap();
        }
        o.set_capacity(60);
        assert_eq!(o.admit(BlockId(99), 10), Err(Refused::NotAdmitted));
        assert_eq!(o.used(), 100, "a refused admission evicts nothing");
        assert_eq!(o.shrink(), (0..4).map(BlockId).collect::<Vec<_>>());
        assert_eq!(o.used(), 60);
        assert!(o.shrink().is_empty());
    }

    #[test]
    fn refuses_disabled_and_oversized() {
        assert_eq!(occ(0).admit(BlockId(1), 1), Err(Refused::Disabled));
        assert_eq!(occ(100).admit(BlockId(1), 91), Err(Refused::TooLarge));
    }

    #[test]
    fn remove_releases_bytes() {
        let mut o = occ(100);
        o.admit(BlockId(1), 30).unwrap();
        assert_eq!(o.remove(BlockId(1)), Some(30));
        assert_eq!(o.used(), 0);
        assert_eq!(o.evict_one(), None);
    }
}
