//! One rank of a remote job as a [`NextUse`] source at a block owner.
//!
//! The owner holds an index of the positions at which each block it owns is read (this
//! epoch's global order at `0..len`, the next one's at `len..2 * len`, [`PositionIndex`]).
//! Rank `r` of `world` reads its own positions only: in this epoch `consumed + i * world + r`
//! (the loader started at global position `consumed`), in the next `len + i * world + r`
//! ([`Ranks`]). A block's next use for this rank is its first such position at or after the
//! rank's position that was not read already, and its tick is the owner's clock: the
//! announcement says the rank's next read is now and how long each of its samples takes, so
//! own sample `k` ahead is read `k * ns_per_sample` after the announcement arrived
//! ([`Anchor`]). The announcing node's clock is never used.
//!
//! Between refreshes the rank's position is a second old, but every read of an owned block
//! reaches its owner: [`RankSchedule::read`] marks the first upcoming position of the block
//! as read, so the block is judged by its following read (what MIN does) without waiting for
//! the next refresh.
//!
//! A rank whose position stops moving while its node keeps refreshing (a stalled trainer) is
//! idle once refreshes have shown it still for a while ([`crate::evict::idle`], on the
//! refreshes' clock) and needs nothing until it moves again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::block::BlockId;
use crate::evict::{Idle, NextUse, Tick};
use crate::sync::{lock, read, write};

/// A rank's time per sample is kept within these bounds (1 M samples/s .. one per 10 s): a
/// claimed rate, however absurd, gets the bound.
pub const NS_PER_SAMPLE_BOUNDS: (u64, u64) = (1_000, 10_000_000_000);
/// Positions marked as read ahead of the announced position, at most (a reader outside the
/// job marks too; the cap bounds what that costs).
pub const MAX_MARKS: usize = 1 << 14;

/// Where the blocks this node owns are read, over a window of two epochs; built by the
/// pipeline from the announced dataset (the cache cannot index datasets).
pub trait PositionIndex: Send + Sync {
    /// Samples of one epoch (`len`): the window is `0..2 * len`.
    fn epoch_len(&self) -> u64;
    /// The ascending positions at which `id` is read (empty: not owned here, or not read).
    fn positions(&self, id: BlockId) -> &[u32];
    /// The owned blocks the sample at `position` reads: what a prefetcher at the owner
    /// fetches ahead, in the order [`RankSchedule::upcoming`] gives.
    fn blocks_at(&self, position: u64) -> &[BlockId];
    /// Heap bytes held.
    fn heap_bytes(&self) -> u64;
}

/// Which positions of the window one rank reads, and its own index of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    /// Samples per epoch.
    pub len: u64,
    /// Global position of the rank's loader's first sample in this epoch.
    pub consumed: u64,
    pub rank: u64,
    pub world: u64,
}

impl Ranks {
    /// Own samples of this epoch: positions `consumed + i * world + rank` below `len`.
    fn this_epoch(&self) -> u64 {
        let first = self.consumed.saturating_add(self.rank);
        self.len.saturating_sub(first).div_ceil(self.world.max(1))
    }

    /// The rank's own index of window position `p` (its `i`-th read since the loader
    /// opened), or `None` when another rank reads `p`.
    pub fn own_index(&self, p: u64) -> Option<u64> {
        let w = self.world.max(1);
        if p < self.len {
            let off = p.checked_sub(self.consumed.saturating_add(self.rank))?;
            (off % w == 0).then_some(off / w)
        } else {
            let off = p.checked_sub(self.len.saturating_add(self.rank))?;
            (off % w == 0 && p < self.len.saturating_mul(2))
                .then(|| self.this_epoch().saturating_add(off / w))
        }
    }

    /// The window position of the rank's own `i`-th read.
    pub fn position(&self, i: u64) -> u64 {
        let w = self.world.max(1);
        let n = self.this_epoch();
        if i < n {
            self.consumed + i * w + self.rank
        } else {
            self.len + (i - n) * w + self.rank
        }
    }
}

/// Own index → tick: own read `anchor.own` is at `anchor.tick`, one more every
/// `ns_per_sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub tick: Tick,
    pub own: u64,
    pub ns_per_sample: u64,
}

impl Anchor {
    /// The tick of own read `own` (earlier ones: the anchor's).
    pub fn tick(&self, own: u64) -> Tick {
        self.tick.saturating_add(
            own.saturating_sub(self.own)
                .saturating_mul(self.ns_per_sample),
        )
    }

    /// The anchor after a refresh that says own read `own` is next at `now`, one every `ns`:
    /// `None` (keep this one: ticks stay absolute) while the prediction is within `drift` of
    /// `now` and `ns` within a factor of two of the rate in use.
    pub fn refreshed(&self, now: Tick, own: u64, ns: u64, drift: u64) -> Option<Anchor> {
        let ns = ns.clamp(NS_PER_SAMPLE_BOUNDS.0, NS_PER_SAMPLE_BOUNDS.1);
        let in_use = self.ns_per_sample;
        let rate_holds = ns > in_use / 2 && ns < in_use.saturating_mul(2);
        if rate_holds && self.tick(own).abs_diff(now) <= drift {
            return None;
        }
        Some(Anchor {
            tick: now,
            own,
            ns_per_sample: ns,
        })
    }
}

/// One rank's future reads of the blocks this node owns (see the module header).
pub struct RankSchedule {
    index: Arc<dyn PositionIndex>,
    ranks: Ranks,
    /// The window position of the rank's next read, as last announced.
    position: AtomicU64,
    anchor: RwLock<Anchor>,
    /// Positions at or after `position` already read (seen by this owner).
    read: Mutex<BTreeSet<u64>>,
    generation: AtomicU64,
    idle: Idle,
}

impl std::fmt::Debug for RankSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankSchedule")
            .field("ranks", &self.ranks)
            .field("position", &self.position())
            .field("anchor", &*read(&self.anchor))
            .finish()
    }
}

impl RankSchedule {
    /// Rank `ranks` over `index`, its next read at window position `position` now (`now`),
    /// one own sample every `ns_per_sample`.
    pub fn new(
        index: Arc<dyn PositionIndex>,
        ranks: Ranks,
        position: u64,
        now: Tick,
        ns_per_sample: u64,
    ) -> Self {
        let own = ranks.own_index(position).unwrap_or(0);
        RankSchedule {
            index,
            ranks,
            position: AtomicU64::new(position),
            anchor: RwLock::new(Anchor {
                tick: now,
                own,
                ns_per_sample: ns_per_sample.clamp(NS_PER_SAMPLE_BOUNDS.0, NS_PER_SAMPLE_BOUNDS.1),
            }),
            read: Mutex::default(),
            generation: AtomicU64::new(0),
            idle: Idle::new(now),
        }
    }

    /// The same rank going idle after `after` without a move (tests).
    pub fn idle_after(mut self, after: std::time::Duration) -> Self {
        self.idle = self.idle.after(after);
        self
    }

    /// The index (shared by the ranks of one job and epoch).
    pub fn index(&self) -> &Arc<dyn PositionIndex> {
        &self.index
    }

    /// The window position of the rank's next read, as last announced.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// A refresh: the rank's next read is at window `position` now (`now`), one own sample
    /// every `ns`. Positions never move back; marks behind the position are dropped; a new
    /// anchor (the rate or the prediction moved by more than `drift`) bumps the generation.
    pub fn refresh(&self, position: u64, now: Tick, ns: u64, drift: u64) {
        let position = position.min(self.ranks.len.saturating_mul(2));
        let before = self.position.fetch_max(position, Ordering::AcqRel);
        if position > before {
            self.idle.moved(now, &self.generation);
        } else if self
            .idle
            .check(now, read(&self.anchor).ns_per_sample, &self.generation)
        {
            return;
        }
        let position = position.max(before);
        {
            let mut marks = lock(&self.read);
            let kept = marks.split_off(&position);
            *marks = kept;
        }
        let Some(own) = self.ranks.own_index(position) else {
            return;
        };
        let next = read(&self.anchor).refreshed(now, own, ns, drift);
        if let Some(a) = next {
            *write(&self.anchor) = a;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The rank's first upcoming unread position that reads `id`, with its own index.
    fn next_at(&self, id: BlockId, marks: &BTreeSet<u64>) -> Option<(u64, u64)> {
        let from = self.position();
        let ps = self.index.positions(id);
        let at = ps.partition_point(|&p| u64::from(p) < from);
        ps[at..].iter().find_map(|&p| {
            let p = u64::from(p);
            let own = self.ranks.own_index(p)?;
            (!marks.contains(&p)).then_some((p, own))
        })
    }

    /// The tick at which this rank next reads `id` and the position, if it does.
    pub fn upcoming_read(&self, id: BlockId) -> Option<(Tick, u64)> {
        let marks = lock(&self.read);
        let (p, own) = self.next_at(id, &marks)?;
        Some((read(&self.anchor).tick(own), p))
    }

    /// Block `id` was read at `position` (from [`RankSchedule::upcoming_read`]): its next use
    /// moves on to its following read. Returns whether it was marked.
    pub fn read(&self, position: u64) -> bool {
        let mut marks = lock(&self.read);
        if marks.len() >= MAX_MARKS || position < self.position() {
            return false;
        }
        marks.insert(position)
    }

    /// The owned blocks of the rank's next `n` reads, in order (the hook of a prefetcher at
    /// the owner, as the local schedule's upcoming blocks are for the local one).
    pub fn upcoming(&self, n: usize) -> Vec<BlockId> {
        let Some(own) = self.ranks.own_index(self.position()) else {
            return Vec::new();
        };
        let end = self.ranks.len.saturating_mul(2);
        (own..)
            .map(|i| self.ranks.position(i))
            .take_while(|&p| p < end)
            .take(n)
            .flat_map(|p| self.index.blocks_at(p).iter().copied())
            .collect()
    }
}

impl NextUse for RankSchedule {
    fn next_use(&self, id: BlockId) -> Option<Tick> {
        if self.idle.is() {
            return None;
        }
        self.upcoming_read(id).map(|(t, _)| t)
    }

    fn now(&self) -> Tick {
        let own = self.ranks.own_index(self.position()).unwrap_or(0);
        read(&self.anchor).tick(own)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[path = "rank_tests.rs"]
mod tests;
