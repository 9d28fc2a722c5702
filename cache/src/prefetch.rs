//! What the cache keeps for prefetching: which blocks a prefetcher planned, started or brought
//! in ([`Ledger`]), how long this node's fetches take ([`Ewma`]), and whose reads were served
//! from this node's tiers ([`ReadTally`]).
//!
//! The prefetcher itself follows a schedule (`loaderd-pipeline`'s `prefetch` module); the
//! cache only fetches what it is asked to ([`crate::Cache::prefetch_block`]) and judges every
//! read against the ledger:
//! * a read that finds in a tier a block the prefetcher brought in is a prefetch hit, once
//!   per prefetched block (the mark goes with the read);
//! * a read of a block the prefetcher had planned or started but not yet brought in is a late
//!   prefetch; the mark goes too, so a prefetch not started yet is not started at all (the
//!   reader fetches it).
//!
//! Marks carry their prefetcher's id, so a prefetcher that stops (its loader closed) takes its
//! own marks back; a prefetcher also forgets the marks of the samples consumed, which keeps the
//! ledger within the prefetch windows.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::block::BlockId;
use crate::stats;
use crate::sync::lock;

/// Where a read's block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A tier of this node.
    Tier,
    /// A fetch already in flight (started by another reader or a prefetch), joined.
    Joined,
    /// A fetch this read started (UFS).
    Fetched,
    /// The peer that owns it.
    Peer,
}

/// A prefetcher's mark on a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// In the window, not started (the concurrency or byte cap holds it back).
    Planned,
    /// Its fetch or promotion runs.
    Started,
    /// In a tier, put there by the prefetcher, not read since.
    Landed,
}

/// The marks of every prefetcher on this node (see the module header).
#[derive(Debug, Default)]
pub struct Ledger {
    marks: Mutex<HashMap<BlockId, (u64, Mark)>>,
    /// `marks.len()`, kept under its lock: a read with no prefetcher running takes no lock.
    held: AtomicUsize,
    next_owner: AtomicU64,
}

impl Ledger {
    /// A new prefetcher's id.
    pub fn owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// `owner` plans `id`; `false` if some prefetcher has it already.
    pub fn plan(&self, owner: u64, id: BlockId) -> bool {
        let mut m = lock(&self.marks);
        if m.contains_key(&id) {
            return false;
        }
        m.insert(id, (owner, Mark::Planned));
        self.held.store(m.len(), Ordering::Release);
        true
    }

    /// `owner` starts `id`; `false` when its mark is gone (a reader came first).
    pub fn start(&self, owner: u64, id: BlockId) -> bool {
        self.step(owner, id, Mark::Planned, Mark::Started)
    }

    /// `owner` brought `id` into a tier.
    pub fn landed(&self, owner: u64, id: BlockId) {
        self.step(owner, id, Mark::Started, Mark::Landed);
    }

    fn step(&self, owner: u64, id: BlockId, from: Mark, to: Mark) -> bool {
        let mut m = lock(&self.marks);
        match m.get_mut(&id) {
            Some(e) if *e == (owner, from) => {
                e.1 = to;
                true
            }
            _ => false,
        }
    }

    /// `owner` drops its mark on `id` (failed, not admitted, or consumed).
    pub fn forget(&self, owner: u64, id: BlockId) {
        let mut m = lock(&self.marks);
        if m.get(&id).is_some_and(|(o, _)| *o == owner) {
            m.remove(&id);
            self.held.store(m.len(), Ordering::Release);
        }
    }

    /// `owner` stops: every mark of its goes.
    pub fn forget_owner(&self, owner: u64) {
        let mut m = lock(&self.marks);
        m.retain(|_, (o, _)| *o != owner);
        self.held.store(m.len(), Ordering::Release);
    }

    /// Marks held (for tests and status).
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether no mark is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader read `id`, served as `served`: a prefetch hit, a late prefetch, or neither.
    pub fn read(&self, id: BlockId, served: Served) {
        if self.is_empty() {
            return;
        }
        let mark = {
            let mut m = lock(&self.marks);
            let mark = m.remove(&id);
            self.held.store(m.len(), Ordering::Release);
            mark
        };
        match (mark.map(|(_, k)| k), served) {
            // Started and already in a tier: it landed just before the prefetcher said so.
            (Some(Mark::Landed | Mark::Started), Served::Tier) => stats::prefetch_hit(),
            (Some(Mark::Planned | Mark::Started), _) => stats::prefetch_late(),
            // Brought in and gone before its read (evicted), or put there by someone else.
            _ => {}
        }
    }
}

/// An exponentially weighted moving average of durations (weight 1/8 per sample), lock-free.
#[derive(Debug, Default)]
pub struct Ewma {
    /// Nanoseconds; 0 before the first sample.
    ns: AtomicU64,
}

impl Ewma {
    /// Adds a sample.
    pub fn record(&self, took: Duration) {
        let x = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => x,
                    old => old - old / 8 + x / 8,
                })
            });
    }

    /// The average, `None` before the first sample.
    pub fn get(&self) -> Option<Duration> {
        match self.ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// One reader's block reads: served from this node's tiers, or not (a fetch, a joined fetch,
/// a peer).
#[derive(Debug, Default)]
pub struct ReadTally {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ReadTally {
    /// (from the tiers, elsewhere).
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Reads from the tiers over all reads (0 before any).
    pub fn hit_ratio(&self) -> f64 {
        match self.get() {
            (0, 0) => 0.0,
            (h, m) => h as f64 / (h + m) as f64,
        }
    }

    fn record(&self, served: Served) {
        let c = match served {
            Served::Tier => &self.hits,
            _ => &self.misses,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static TALLY: Arc<ReadTally>;
}

/// Runs `f` with every block read it makes through the cache counted in `tally`.
pub async fn tallied<F: Future>(tally: Arc<ReadTally>, f: F) -> F::Output {
    TALLY.scope(tally, f).await
}

/// Counts a read in the tally of the task making it, if it has one.
pub(crate) fn tally(served: Served) {
    let _ = TALLY.try_with(|t| t.record(served));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> (u64, u64) {
        let c = stats::snapshot();
        (c.prefetch_hits, c.prefetch_late)
    }

    #[test]
    fn a_landed_block_read_from_a_tier_is_one_hit_and_a_planned_one_is_late() {
        let l = Ledger::default();
        let (a, b) = (l.owner(), l.owner());
        let (hits, late) = counts();
        assert!(l.plan(a, BlockId(1)) && l.plan(a, BlockId(2)) && l.plan(a, BlockId(3)));
        assert!(!l.plan(b, BlockId(1)), "one prefetcher per block");
        assert!(l.start(a, BlockId(1)));
        l.landed(a, BlockId(1));
        l.read(BlockId(1), Served::Tier);
        l.read(BlockId(1), Served::Tier);
        l.read(BlockId(2), Served::Fetched);
        assert!(!l.start(a, BlockId(2)), "a reader came first: not started");
        // Other tests count too (the counters are process-wide): at least ours.
        let (h, lt) = counts();
        assert!(h > hits && lt > late, "{h} {hits} {lt} {late}");
        l.forget_owner(b);
        assert_eq!(l.len(), 1);
        l.forget_owner(a);
        assert!(l.is_empty());
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_an_eighth() {
        let e = Ewma::default();
        assert_eq!(e.get(), None);
        e.record(Duration::from_micros(800));
        assert_eq!(e.get(), Some(Duration::from_micros(800)));
        e.record(Duration::from_micros(1600));
        assert_eq!(e.get(), Some(Duration::from_micros(900)));
    }

    #[tokio::test]
    async fn a_tally_counts_only_the_reads_of_its_task() {
        let t = Arc::new(ReadTally::default());
        tally(Served::Tier);
        tallied(t.clone(), async {
            tally(Served::Tier);
            tally(Served::Joined);
            tally(Served::Tier);
        })
        .await;
        assert_eq!(t.get(), (2, 1));
        assert!((t.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
    }
}
