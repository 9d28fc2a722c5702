//! What the cache keeps for prefetching: which blocks a prefetcher planned, started or brought
//! in ([`Ledger`]), how long this node's fetches take ([`Ewma`]) and how many bytes a second
//! its UFS link carries while busy ([`LinkRate`]), and whose reads were served from this
//! node's tiers ([`ReadTally`]).
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
use std::time::{Duration, Instant};

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

/// Busy time a [`LinkRate`] sample covers at least.
pub const RATE_SPAN: Duration = Duration::from_millis(100);

/// The UFS link's throughput while it is busy: bytes fetched over the time at least one fetch
/// ran (idle gaps between fetches do not count), averaged with weight 1/8 over samples of at
/// least [`RATE_SPAN`] of busy time. What a prefetcher can count on the link to carry; it
/// underestimates a link that more concurrency would fill, which only makes prefetch start
/// earlier.
#[derive(Debug, Default)]
pub struct LinkRate {
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Fetches running.
    active: u32,
    /// The last begin or end, while any runs.
    last: Option<Instant>,
    /// Busy time and bytes of the sample being gathered.
    busy: Duration,
    bytes: u64,
    /// Bytes per second; 0 before the first sample.
    rate: u64,
}

impl LinkState {
    fn tick(&mut self, now: Instant) {
        if self.active > 0
            && let Some(last) = self.last
        {
            self.busy += now.saturating_duration_since(last);
        }
        self.last = Some(now);
    }

    fn begin(&mut self, now: Instant) {
        self.tick(now);
        self.active += 1;
    }

    fn end(&mut self, now: Instant, bytes: u64) {
        self.tick(now);
        self.active = self.active.saturating_sub(1);
        self.bytes += bytes;
        if self.busy >= RATE_SPAN {
            let x = (u128::from(self.bytes) * 1_000_000_000 / self.busy.as_nanos().max(1))
                .try_into()
                .unwrap_or(u64::MAX)
                .max(1);
            self.rate = match self.rate {
                0 => x,
                old => old - old / 8 + x / 8,
            };
            self.busy = Duration::ZERO;
            self.bytes = 0;
        }
    }
}

/// One fetch on the link; [`FetchOnLink::done`] counts its bytes, dropping it ends it.
#[derive(Debug)]
pub struct FetchOnLink {
    link: Arc<LinkRate>,
    bytes: u64,
}

impl FetchOnLink {
    /// The fetch brought `bytes`.
    pub fn done(mut self, bytes: u64) {
        self.bytes = bytes;
    }
}

impl Drop for FetchOnLink {
    fn drop(&mut self) {
        lock(&self.link.state).end(Instant::now(), self.bytes);
    }
}

impl LinkRate {
    /// A fetch starts.
    pub fn begin(self: &Arc<Self>) -> FetchOnLink {
        lock(&self.state).begin(Instant::now());
        FetchOnLink {
            link: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes per second while busy; `None` before [`RATE_SPAN`] of busy time was seen.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        match lock(&self.state).rate {
            0 => None,
            r => Some(r),
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

    #[test]
    fn the_link_rate_counts_busy_time_only() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut s = LinkState::default();
        // Two overlapping fetches of 1 MB: 2 MB over 100 ms busy, 20 MB/s.
        s.begin(t0);
        s.begin(t0 + ms(20));
        s.end(t0 + ms(60), 1_000_000);
        assert_eq!(s.rate, 0, "60 ms of busy time is not a sample yet");
        s.end(t0 + ms(100), 1_000_000);
        assert_eq!(s.rate, 20_000_000);
        // An idle second, then 1 MB over 100 ms: 10 MB/s, the idle time not counted.
        s.begin(t0 + ms(1100));
        s.end(t0 + ms(1200), 1_000_000);
        assert_eq!(s.rate, 20_000_000 - 2_500_000 + 1_250_000);
        // Through the guard: a fetch dropped unfinished ends, without bytes.
        let link = Arc::new(LinkRate::default());
        assert_eq!(link.bytes_per_sec(), None);
        drop(link.begin());
        link.begin().done(10);
        let s = lock(&link.state);
        assert_eq!((s.active, s.bytes), (0, 10));
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
