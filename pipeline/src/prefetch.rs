//! Prefetch driven by a schedule: the blocks of the samples about to be read, brought where
//! their readers will want them before they are asked for.
//!
//! A [`Prefetcher`] follows an [`Ahead`]: a global order (this epoch's, then the next's), the
//! position its job consumed, the frontier its readers have begun, and its time per sample.
//! It walks the order from the frontier and, for each block of each sample that this node's
//! memory tier does not hold, asks the cache to bring it in ([`Cache::prefetch_block`]):
//! fetched from the UFS into the tiers through the single flight readers use (owned here, or
//! outside a cluster), promoted from the SSD tier into memory, or warmed on its owner. The
//! cache's policies decide admission as for any other block, and a block no tier would
//! admit is not fetched. [`Ahead`] is a small trait, so a schedule that is not a local
//! loader's (one received from another node) can drive a prefetcher too.
//!
//! The window is sized by time: the node's measured fetch latency ([`Cache::fetch_latency`],
//! an EWMA of UFS and peer fetches) over the time per sample, times [`MARGIN`], and at least
//! one step (batch × world). Where the UFS link's bandwidth is known ([`Cache::ufs_rate`]:
//! measured while busy, within `cache.ufs.max_bandwidth`), the window also reaches as far as
//! the link needs: the upcoming misses are scanned and each is planned once its latest start
//! on a link fetching in order is due ([`crate::lead`]), so misses that bunch beyond what the
//! link carries are fetched early, while it would idle, and no earlier. It is bounded by
//! bytes: the bytes of planned blocks whose sample is not consumed yet stay under the loader's
//! cap (`prefetch.max_bytes_per_loader`, and never more than 1/[`MEMORY_SHARE`] of the memory
//! tier) and, over all loaders, under
//! `prefetch.max_bytes`; and at most `prefetch.concurrency` prefetches run at once. The time
//! per sample is the schedule's, clamped to its bounds, so a claimed or measured rate however
//! high only reaches the byte caps. A sample's bytes go back to the budgets once the position
//! passes it, so a position that stops advancing stops the prefetcher at its window's end.
//!
//! Blocks planned are marked in the cache's ledger (planned, started, landed), which judges
//! every read: a prefetch hit, or a late prefetch (see `loaderd_cache::prefetch`). Dropping
//! the [`Prefetcher`] (its loader closed or died) stops it: its task is aborted, its marks
//! and its share of the total budget go back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use loaderd_cache::block::{BlockId, BlockRef};
use loaderd_cache::tier::Tier;
use loaderd_cache::{ByteSize, Cache, FileHandle};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span};

use crate::dataset::Dataset;

/// The window is this many times the fetch latency's worth of samples.
pub const MARGIN: u64 = 2;
/// A loader's prefetch never holds more than this share of the memory tier (1/2): room for
/// the misses a bunch needs early, and half the tier left to what is resident.
pub const MEMORY_SHARE: u64 = 2;
/// How often a prefetcher looks at its schedule again when nothing told it to.
const POLL: Duration = Duration::from_millis(50);
/// Positions past the next one to plan that the link's lead looks at, at most.
const LEAD_HORIZON: u64 = 16_384;
/// How often the link's lead is computed again (it scans its whole horizon).
const LEAD_EVERY: Duration = Duration::from_millis(25);

/// Prefetch settings (`[prefetch]` of the daemon's config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Whether loaders with a schedule prefetch (a schedule exists with
    /// `cache.eviction = clairvoyant`).
    pub enabled: bool,
    /// Bytes one loader's prefetch may hold ahead of its position (also at most half of
    /// the memory tier).
    pub max_bytes_per_loader: ByteSize,
    /// Bytes all loaders' prefetches may hold ahead together.
    pub max_bytes: ByteSize,
    /// Block prefetches one loader runs at once.
    pub concurrency: usize,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            max_bytes_per_loader: ByteSize(256 << 20),
            max_bytes: ByteSize(1 << 30),
            concurrency: 16,
        }
    }
}

/// What a prefetcher follows (a local loader's schedule, or another's).
pub trait Ahead: Send + Sync {
    /// Positions of the global order its job consumed (all ranks).
    fn position(&self) -> u64;
    /// The first position none of its readers has begun (at or after `position`).
    fn frontier(&self) -> u64;
    /// Positions in its order (this epoch's, then the next's).
    fn end(&self) -> u64;
    /// Time per sample in force, within the schedule's clamps.
    fn ns_per_sample(&self) -> u64;
    /// Positions consumed per delivered step (batch × world): the least window.
    fn step(&self) -> u64;
    /// The dataset index of the sample at `position`.
    fn sample(&self, position: u64) -> Option<u64>;
    /// Notified (`notify_one`, so a move while nobody waits is not lost) whenever the
    /// position or the frontier moves.
    fn moved(&self) -> &Notify;
}

/// Samples a window of time holds: `MARGIN` × fetch latency over the time per sample, at
/// least `step`, within `end - frontier`.
pub fn window_samples(latency: Option<Duration>, ns_per_sample: u64, step: u64) -> u64 {
    let latency = latency.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    latency
        .saturating_mul(MARGIN)
        .div_ceil(ns_per_sample.max(1))
        .max(step.max(1))
}

/// One loader's byte cap: its configured cap, and at most half of a `memory` tier.
pub fn loader_cap(cfg: &PrefetchConfig, memory: u64) -> u64 {
    cfg.max_bytes_per_loader.0.min(memory / MEMORY_SHARE)
}

/// The bytes all prefetchers hold ahead, under `prefetch.max_bytes`.
#[derive(Debug)]
pub struct TotalBudget {
    max: u64,
    used: AtomicU64,
}

impl TotalBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Self {
        TotalBudget {
            max,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` if they fit.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.max)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub fn give(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The prefetch settings and the total budget every loader of a daemon shares.
#[derive(Debug)]
pub struct Prefetching {
    pub config: PrefetchConfig,
    pub total: TotalBudget,
}

impl Prefetching {
    /// Shared state for `config`.
    pub fn new(config: PrefetchConfig) -> Arc<Self> {
        Arc::new(Prefetching {
            total: TotalBudget::new(config.max_bytes.0),
            config,
        })
    }
}

/// One loader's prefetch counters, for its status.
#[derive(Debug, Default)]
pub struct LoaderPrefetch {
    /// Blocks (and bytes) brought in for this loader.
    pub blocks: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes planned ahead of its position now.
    pub ahead_bytes: AtomicU64,
}

/// A running prefetcher; dropping it stops it (see the module header).
pub struct Prefetcher {
    task: JoinHandle<()>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prefetcher {
    /// Starts prefetching `dataset`'s samples in `ahead`'s order on `rt`, counted in `stats`.
    pub fn start(
        cache: &Arc<Cache>,
        rt: &Handle,
        dataset: &Arc<Dataset>,
        ahead: Arc<dyn Ahead>,
        shared: &Arc<Prefetching>,
        stats: Arc<LoaderPrefetch>,
    ) -> Self {
        let cap = loader_cap(&shared.config, cache.memory().status().capacity);
        let walk = Walk {
            owner: cache.prefetch_ledger().owner(),
            cache: cache.clone(),
            dataset: dataset.clone(),
            ahead,
            shared: shared.clone(),
            stats,
            cap,
            next: 0,
            scanned: VecDeque::new(),
            planned: VecDeque::new(),
            queue: VecDeque::new(),
            running: 0,
            lead: None,
            held: 0,
            handles: HashMap::new(),
        };
        let span = info_span!("prefetch", cap, concurrency = shared.config.concurrency);
        Prefetcher {
            task: rt.spawn(walk.run().instrument(span)),
        }
    }
}

/// A sample planned: its position, its blocks' ids and the bytes it holds in the budgets.
struct Planned {
    position: u64,
    ids: Vec<BlockId>,
    bytes: u64,
}

/// A sample looked at ahead of planning: its file and blocks (`None`: it cannot be opened now;
/// its reader will find out).
struct Scanned {
    position: u64,
    blocks: Option<(Arc<FileHandle>, Vec<BlockRef>)>,
}

impl Scanned {
    /// Bytes of its blocks no tier of this node holds: what the UFS link (or a peer) must
    /// bring (a block on the SSD tier is promoted without it).
    fn missing(&self, cache: &Cache) -> u64 {
        self.blocks.as_ref().map_or(0, |(_, blocks)| {
            blocks
                .iter()
                .filter(|b| !cache.holds(b.id))
                .map(BlockRef::len)
                .sum()
        })
    }
}

/// A block planned and not started.
struct Queued {
    position: u64,
    fh: Arc<FileHandle>,
    block: BlockRef,
}

/// The prefetcher's state; everything it holds goes back when it is dropped.
struct Walk {
    owner: u64,
    cache: Arc<Cache>,
    dataset: Arc<Dataset>,
    ahead: Arc<dyn Ahead>,
    shared: Arc<Prefetching>,
    stats: Arc<LoaderPrefetch>,
    cap: u64,
    /// The next position to plan.
    next: u64,
    /// Samples from `next` on, looked at for the link's lead.
    scanned: VecDeque<Scanned>,
    planned: VecDeque<Planned>,
    queue: VecDeque<Queued>,
    /// Bytes of the prefetches running.
    running: u64,
    /// When the link's lead was last computed, and the position it planned to.
    lead: Option<(Instant, u64)>,
    /// Bytes of `planned`, held in the total budget too.
    held: u64,
    /// Open files by path (the metadata every block id comes from).
    handles: HashMap<String, Arc<FileHandle>>,
}

impl Drop for Walk {
    fn drop(&mut self) {
        self.shared.total.give(self.held);
        self.stats.ahead_bytes.store(0, Ordering::Relaxed);
        self.cache.prefetch_ledger().forget_owner(self.owner);
    }
}

impl Walk {
    async fn run(mut self) {
        let concurrency = self.shared.config.concurrency.max(1);
        let mut running = FuturesUnordered::new();
        loop {
            self.release_consumed();
            self.plan().await;
            while running.len() < concurrency {
                let Some(q) = self.queue.pop_front() else {
                    break;
                };
                let ledger = self.cache.prefetch_ledger();
                // A reader began it (or took its mark): it fetches the block itself.
                if q.position < self.ahead.frontier() || !ledger.start(self.owner, q.block.id) {
                    ledger.forget(self.owner, q.block.id);
                    continue;
                }
                let cache = self.cache.clone();
                self.running += q.block.len();
                running.push(async move {
                    let res = cache.prefetch_block(&q.fh, &q.block).await;
                    (q.block, res)
                });
            }
            let ahead = self.ahead.clone();
            tokio::select! {
                Some((block, res)) = running.next() => self.finished(&block, res),
                () = ahead.moved().notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// A prefetch ended: its mark lands, or goes.
    fn finished(
        &mut self,
        b: &BlockRef,
        res: loaderd_cache::Result<loaderd_cache::cache::Prefetched>,
    ) {
        self.running = self.running.saturating_sub(b.len());
        let ledger = self.cache.prefetch_ledger();
        match res {
            Ok(done) if done.brought_in() => {
                ledger.landed(self.owner, b.id);
                self.stats.blocks.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(b.len(), Ordering::Relaxed);
            }
            Ok(_) => ledger.forget(self.owner, b.id),
            Err(e) => {
                debug!(error = %e, "prefetch failed; the reader will fetch the block");
                ledger.forget(self.owner, b.id);
            }
        }
    }

    /// Samples the position passed give their bytes and marks back.
    fn release_consumed(&mut self) {
        let position = self.ahead.position();
        while let Some(p) = self.planned.front() {
            if p.position >= position {
                break;
            }
            let p = self.planned.pop_front().expect("front exists");
            self.held -= p.bytes;
            self.shared.total.give(p.bytes);
            for id in p.ids {
                self.cache.prefetch_ledger().forget(self.owner, id);
            }
        }
        self.stats.ahead_bytes.store(self.held, Ordering::Relaxed);
    }

    /// Plans samples from the frontier to the window's end (the time window, or the link's
    /// lead where that reaches further), within the byte caps.
    async fn plan(&mut self) {
        let frontier = self.ahead.frontier();
        self.next = self.next.max(frontier);
        while self.scanned.front().is_some_and(|s| s.position < self.next) {
            self.scanned.pop_front();
        }
        if self
            .scanned
            .front()
            .is_some_and(|s| s.position != self.next)
        {
            self.scanned.clear();
        }
        let window = window_samples(
            self.cache.fetch_latency(),
            self.ahead.ns_per_sample(),
            self.ahead.step(),
        );
        let mut end = frontier.saturating_add(window);
        if let Some(rate) = self.cache.ufs_rate() {
            let end_of_lead = match self.lead {
                Some((at, end)) if at.elapsed() < LEAD_EVERY && end > frontier => end,
                _ => {
                    let end = self.lead_end(frontier, rate).await;
                    self.lead = Some((Instant::now(), end));
                    end
                }
            };
            end = end.max(end_of_lead);
        }
        let end = end.min(self.ahead.end());
        while self.next < end {
            let scanned = match self.scanned.pop_front() {
                Some(s) => s,
                None => self.scan(self.next).await,
            };
            let Some((fh, blocks)) = scanned.blocks else {
                self.next += 1;
                continue;
            };
            let memory = self.cache.memory();
            let wanted: Vec<BlockRef> = blocks
                .into_iter()
                .filter(|b| !memory.contains(b.id))
                .collect();
            let bytes: u64 = wanted.iter().map(BlockRef::len).sum();
            if bytes > self.cap {
                // Larger than the whole window: its reader fetches it.
                self.next += 1;
                continue;
            }
            if self.held + bytes > self.cap || !self.shared.total.try_take(bytes) {
                // Not planned: it stays first in line.
                self.scanned.push_front(Scanned {
                    position: self.next,
                    blocks: Some((fh, wanted)),
                });
                break;
            }
            self.held += bytes;
            let mut ids = Vec::new();
            for block in wanted {
                if self.cache.prefetch_ledger().plan(self.owner, block.id) {
                    ids.push(block.id);
                    self.queue.push_back(Queued {
                        position: self.next,
                        fh: fh.clone(),
                        block,
                    });
                }
            }
            self.planned.push_back(Planned {
                position: self.next,
                ids,
                bytes,
            });
            self.next += 1;
        }
        self.stats.ahead_bytes.store(self.held, Ordering::Relaxed);
    }

    /// The position the link's lead plans to (see [`crate::lead`]): the samples from `next`
    /// on are scanned until their missing bytes pass the loader's cap, or until they are read
    /// later than the link needs to fetch a cap's worth (nothing further can be due now: what
    /// it could plan before them is capped), or [`LEAD_HORIZON`]. The link is taken to work
    /// through the prefetches queued and running first.
    async fn lead_end(&mut self, frontier: u64, rate: u64) -> u64 {
        let gap = self.next - frontier;
        if gap >= LEAD_HORIZON {
            return frontier;
        }
        let queued: u64 = self.queue.iter().map(|q| q.block.len()).sum();
        let link_ns = |bytes: u64| u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
        let margin_ns = self
            .cache
            .fetch_latency()
            .map_or(0, |d| d.as_nanos().saturating_mul(u128::from(MARGIN)));
        let due = link_ns(queued + self.running).saturating_add(margin_ns);
        let ns_per_sample = self.ahead.ns_per_sample().max(1);
        let reach = due.saturating_add(link_ns(self.cap)) / u128::from(ns_per_sample) + 1;
        let limit = self
            .ahead
            .end()
            .min(self.next.saturating_add(LEAD_HORIZON))
            .min(frontier.saturating_add(u64::try_from(reach).unwrap_or(u64::MAX)));
        let cache = self.cache.clone();
        // Planned already: their bytes are in the link's queue.
        let mut misses = vec![0; gap as usize];
        let mut missing = 0;
        for s in self.scanned.iter().take_while(|s| s.position < limit) {
            let m = s.missing(&cache);
            missing += m;
            misses.push(m);
        }
        let mut position = frontier + misses.len() as u64;
        while missing <= self.cap && position < limit {
            let s = self.scan(position).await;
            let m = s.missing(&cache);
            missing += m;
            misses.push(m);
            self.scanned.push_back(s);
            position += 1;
        }
        let due = u64::try_from(due).unwrap_or(u64::MAX);
        let n = crate::lead::lead(&misses, ns_per_sample, self.ahead.step(), rate, due);
        frontier.saturating_add(n as u64)
    }

    /// Looks at the sample at `position`.
    async fn scan(&mut self, position: u64) -> Scanned {
        let blocks = match self.ahead.sample(position) {
            Some(sample) => self.blocks_of(sample).await,
            None => None,
        };
        Scanned { position, blocks }
    }

    /// The file and blocks sample `index` reads (`None` if it cannot be opened now: its
    /// reader will find out).
    async fn blocks_of(&mut self, index: u64) -> Option<(Arc<FileHandle>, Vec<BlockRef>)> {
        let sample = self.dataset.samples.get(usize::try_from(index).ok()?)?;
        let (path, version, range) = sample.source.span();
        let fh = match self.handles.get(&path.to_string()) {
            Some(fh) => fh.clone(),
            None => {
                let fh = Arc::new(self.cache.open_file_at(path, version).await.ok()?);
                self.handles.insert(path.to_string(), fh.clone());
                fh
            }
        };
        let blocks = self.cache.blocks(&fh, range);
        Some((fh, blocks))
    }
}

#[cfg(test)]
#[path = "prefetch_tests.rs"]
mod walk_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_latency_times_rate_times_margin_and_at_least_a_step() {
        let ms = Duration::from_millis;
        // 10 ms per fetch, 1 ms per sample: 20 samples.
        assert_eq!(window_samples(Some(ms(10)), 1_000_000, 4), 20);
        // A fetch faster than a sample: one step.
        assert_eq!(window_samples(Some(ms(1)), 10_000_000, 8), 8);
        // Nothing measured yet: one step.
        assert_eq!(window_samples(None, 1_000, 16), 16);
        // Rounded up, never zero.
        assert_eq!(window_samples(Some(Duration::from_nanos(3)), 4, 0), 2);
    }

    #[test]
    fn an_absurd_rate_gets_the_byte_cap_not_the_cache() {
        // The schedule's clamp is 1 µs per sample; a 10 s fetch then asks for 20 M samples,
        // and only the caps bound it.
        let w = window_samples(Some(Duration::from_secs(10)), 1_000, 4);
        assert_eq!(w, 20_000_000);
        let cfg = PrefetchConfig::default();
        assert_eq!(loader_cap(&cfg, 64 << 30), 256 << 20, "the configured cap");
        assert_eq!(loader_cap(&cfg, 64 << 20), 32 << 20, "half the memory tier");
        assert_eq!(loader_cap(&cfg, 0), 0, "no memory tier: nothing ahead");
    }

    #[test]
    fn the_total_budget_never_goes_over_and_comes_back() {
        let t = TotalBudget::new(10);
        assert!(t.try_take(6));
        assert!(!t.try_take(5), "6 + 5 > 10");
        assert!(t.try_take(4));
        assert_eq!(t.used(), 10);
        t.give(6);
        assert!(t.try_take(5));
        t.give(100);
        assert_eq!(t.used(), 0, "never below zero");
    }
}
