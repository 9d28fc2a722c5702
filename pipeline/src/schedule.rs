//! An open loader's schedule as a source of the cache's next-use oracle.
//!
//! A schedule is a few numbers: the dataset (its index maps a sample to the blocks it reads:
//! a plain file's blocks, a tar member's block range), the seed, the epoch, the world size,
//! the batch size, the position (samples of the epoch's global order consumed by all ranks)
//! and the consumption rate. Every node can recompute the same reads from them: the global
//! order of this epoch and the next is [`crate::sampler::order`] of (seed, epoch, len).
//!
//! [`Schedule`] answers [`NextUse::next_use`]: the tick of the earliest position at or after
//! the current one whose sample reads the block, within the window (the rest of this epoch,
//! then the whole next one, at positions `len..2 * len`). An index block → sorted positions,
//! built once after the loader opened ([`crate::scheduled`]), makes each answer a binary
//! search, O(log n). The blocks each sample reads come from the dataset's index alone
//! ([`sample_blocks`]): no file is opened.
//!
//! Ticks are the oracle's shared clock ([`clock`], nanoseconds): position `p` is predicted at
//! `anchor_tick + (p - anchor_position) * ns_per_sample`. The time per sample starts at
//! [`DEFAULT_NS_PER_SAMPLE`] and is re-measured as batches are delivered; when the measured
//! rate leaves a factor of two of the one in use, the schedule re-anchors at its position and
//! bumps its generation (every cached answer changes). Answers are otherwise absolute: a
//! block's tick stays put while the position advances, as the oracle requires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use loaderd_cache::block::{BlockId, blocks_for};
use loaderd_cache::cluster::schedules::{Listing, job_key, job_name};
use loaderd_cache::evict::{Idle, NextUse, Registration, Tick, clock};
use loaderd_cache::mount::Resolved;
use loaderd_cache::sync::{read, write};
use loaderd_cache::ufs::FileMeta;
use loaderd_cache::{Cache, Eviction};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::dataset::{Dataset, Source};
use crate::prefetch::Ahead;
use crate::registry::Reservation;
use crate::sampler::order;

/// The time per sample assumed until one is measured (1000 samples/s).
pub const DEFAULT_NS_PER_SAMPLE: u64 = 1_000_000;
/// The time per sample is kept within these bounds (1 M samples/s .. one sample per 10 s), so
/// no estimate, however wild, pushes a schedule's ticks off the clock.
pub const NS_PER_SAMPLE_BOUNDS: (u64, u64) = (1_000, 10_000_000_000);
/// Samples delivered before the rate is first measured.
pub const RATE_MIN_SAMPLES: u64 = 32;

/// The blocks each sample reads, by dataset index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleBlocks {
    /// Sample `i` reads `ids[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    ids: Vec<BlockId>,
}

impl SampleBlocks {
    /// From the block lists of samples `0..n`, in order.
    pub fn new<I: IntoIterator<Item = Vec<BlockId>>>(lists: I) -> Self {
        let mut s = SampleBlocks {
            starts: vec![0],
            ids: Vec::new(),
        };
        for list in lists {
            s.ids.extend(list);
            s.starts
                .push(u32::try_from(s.ids.len()).unwrap_or(u32::MAX));
        }
        s
    }

    /// Samples described.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Whether no sample is described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blocks sample `i` reads (none for an index out of range).
    pub fn of(&self, i: u64) -> &[BlockId] {
        let i = i as usize;
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => self.ids.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Block reads of one pass over every sample.
    pub fn reads(&self) -> u64 {
        self.ids.len() as u64
    }
}

/// Block → sorted positions at which it is read.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Sorted, unique.
    ids: Vec<BlockId>,
    /// Block `ids[k]` is read at `positions[starts[k]..starts[k + 1]]`, ascending.
    starts: Vec<u32>,
    positions: Vec<u32>,
}

impl Index {
    pub(crate) fn build(blocks: &SampleBlocks, order: impl Iterator<Item = u64>) -> Self {
        let mut pairs: Vec<(BlockId, u32)> = order
            .enumerate()
            .flat_map(|(pos, sample)| {
                let pos = u32::try_from(pos).unwrap_or(u32::MAX);
                blocks.of(sample).iter().map(move |id| (*id, pos))
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut index = Index::default();
        for (id, pos) in pairs {
            if index.ids.last() != Some(&id) {
                index.ids.push(id);
                index.starts.push(index.positions.len() as u32);
            }
            index.positions.push(pos);
        }
        index.starts.push(index.positions.len() as u32);
        index
    }

    /// The ascending positions at which `id` is read.
    pub(crate) fn positions(&self, id: BlockId) -> &[u32] {
        match self.ids.binary_search(&id) {
            Ok(k) => &self.positions[self.starts[k] as usize..self.starts[k + 1] as usize],
            Err(_) => &[],
        }
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> u64 {
        Index::bytes_for(self.positions.len() as u64, self.ids.len() as u64)
    }

    /// The first position at or after `from` reading `id` that is not `read` already.
    fn next_at(&self, id: BlockId, from: u64, read: impl Fn(u64) -> bool) -> Option<u64> {
        let ps = self.positions(id);
        let at = ps.partition_point(|&p| u64::from(p) < from);
        ps[at..].iter().map(|&p| u64::from(p)).find(|&p| !read(p))
    }

    /// Heap bytes of an index over `reads` block reads of which `unique` distinct blocks.
    pub(crate) fn bytes_for(reads: u64, unique: u64) -> u64 {
        let id = std::mem::size_of::<BlockId>() as u64;
        unique
            .saturating_mul(id + 4)
            .saturating_add(reads.saturating_mul(4))
    }
}

/// Positions whose read began, one bit each.
#[derive(Debug)]
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(n: u64) -> Self {
        Bits((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn set(&self, i: u64) {
        if let Some(w) = self.0.get((i / 64) as usize) {
            w.fetch_or(1 << (i % 64), Ordering::AcqRel);
        }
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    fn bytes(&self) -> u64 {
        (self.0.len() * 8) as u64
    }
}

/// Position → tick.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    tick: Tick,
    position: u64,
    ns_per_sample: u64,
}

impl Anchor {
    fn tick(&self, position: u64) -> Tick {
        let ahead = position.saturating_sub(self.position);
        self.tick
            .saturating_add(ahead.saturating_mul(self.ns_per_sample))
    }
}

/// One loader's future reads, this epoch and the next (see the module header).
#[derive(Debug)]
pub struct Schedule {
    index: Index,
    /// Positions in the window: this epoch's `len`, then the next's.
    window: u64,
    position: AtomicU64,
    /// Positions ahead of `position` whose read already began (decode workers run ahead of
    /// delivery): a block's next use skips them, so a block being read is judged by its
    /// following read, as MIN judges it.
    read_begun: Bits,
    anchor: RwLock<Anchor>,
    generation: AtomicU64,
    /// When and where the rate is measured from.
    started: (Instant, u64),
    /// Whether the loader stopped consuming ([`loaderd_cache::evict::idle`]): then it needs
    /// no block until it moves again.
    idle: Idle,
}

impl Schedule {
    /// The reads of `this` epoch's global order (positions `0..len`) then the `next` one's
    /// (`len..2 * len`), of samples reading `blocks`, consumed up to `position`.
    pub fn new(blocks: &SampleBlocks, this: &[u64], next: &[u64], position: u64) -> Self {
        let order = this.iter().chain(next).copied();
        let index = Index::build(blocks, order);
        let window = (this.len() + next.len()) as u64;
        Schedule {
            index,
            window,
            position: AtomicU64::new(position),
            read_begun: Bits::new(window),
            anchor: RwLock::new(Anchor {
                tick: clock(),
                position,
                ns_per_sample: DEFAULT_NS_PER_SAMPLE,
            }),
            generation: AtomicU64::new(0),
            started: (Instant::now(), position),
            idle: Idle::new(clock()),
        }
    }

    /// The same schedule going idle after `after` without a move (tests).
    pub fn idle_after(mut self, after: Duration) -> Self {
        self.idle = self.idle.after(after);
        self
    }

    fn is_idle(&self) -> bool {
        self.idle
            .check(clock(), self.ns_per_sample(), &self.generation)
    }

    /// Heap bytes of a schedule of `epochs` passes over `samples` samples reading `reads`
    /// blocks a pass, bounded by what each pass reads; known before it is built, so a
    /// loader's reservation can hold it first.
    pub fn bytes_for(samples: u64, reads: u64, epochs: u64) -> u64 {
        let all = reads.saturating_mul(epochs);
        let bits = samples.saturating_mul(epochs).div_ceil(64) * 8;
        Index::bytes_for(all, reads).saturating_add(bits)
    }

    /// Heap bytes this schedule holds.
    pub fn heap_bytes(&self) -> u64 {
        self.index
            .heap_bytes()
            .saturating_add(self.read_begun.bytes())
    }

    /// The read of the sample at `position` begins: its blocks' next uses move on to their
    /// following reads (the blocks are read right after, which re-asks them).
    pub fn reading(&self, position: u64) {
        self.read_begun.set(position);
    }

    /// Samples of the global order consumed so far.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The position of the sample read at `tick`, by the anchor in force (for tests and
    /// simulations that reason in positions).
    pub fn position_of(&self, tick: Tick) -> u64 {
        let a = *read(&self.anchor);
        a.position + tick.saturating_sub(a.tick) / a.ns_per_sample.max(1)
    }

    /// The time per sample in force.
    pub fn ns_per_sample(&self) -> u64 {
        read(&self.anchor).ns_per_sample
    }

    /// All ranks together consumed the global order up to `position` (never moves back).
    /// Re-measures the rate, and re-anchors when it left a factor of two of the one in use.
    pub fn advance_to(&self, position: u64) {
        let position = position.min(self.window);
        let before = self.position.fetch_max(position, Ordering::AcqRel);
        if position <= before {
            return;
        }
        if self.idle.moved(clock(), &self.generation) {
            // Back from a stall: its reads are predicted from now on, not from before it.
            let mut anchor = write(&self.anchor);
            anchor.tick = anchor.tick(position).max(clock());
            anchor.position = position;
            return;
        }
        let (since, from) = self.started;
        let consumed = position - from;
        if consumed < RATE_MIN_SAMPLES {
            return;
        }
        let ns = u64::try_from(since.elapsed().as_nanos() / u128::from(consumed))
            .unwrap_or(u64::MAX)
            .clamp(NS_PER_SAMPLE_BOUNDS.0, NS_PER_SAMPLE_BOUNDS.1);
        let in_use = read(&self.anchor).ns_per_sample;
        if ns > in_use / 2 && ns < in_use.saturating_mul(2) {
            return;
        }
        let mut anchor = write(&self.anchor);
        // Ticks never move back: the new clock starts where the old one had this position.
        let tick = anchor.tick(position).max(clock());
        *anchor = Anchor {
            tick,
            position,
            ns_per_sample: ns,
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl NextUse for Schedule {
    fn next_use(&self, id: BlockId) -> Option<Tick> {
        if self.is_idle() {
            return None;
        }
        let at = self
            .index
            .next_at(id, self.position(), |p| self.read_begun.get(p))?;
        Some(read(&self.anchor).tick(at))
    }

    fn now(&self) -> Tick {
        read(&self.anchor).tick(self.position())
    }

    fn generation(&self) -> u64 {
        self.is_idle();
        self.generation.load(Ordering::Acquire)
    }
}

/// A schedule registered with the cache's oracle for as long as its loader is open.
#[derive(Debug)]
pub struct Registered {
    schedule: Arc<Schedule>,
    _registration: Registration,
    /// The global order of the window (this epoch's, then the next's), for the prefetcher.
    order: Vec<u32>,
    /// The first global position no worker of this loader has begun.
    frontier: AtomicU64,
    /// Told when the position or the frontier moves (the prefetcher waits on it).
    moved: Notify,
    /// Global position of the loader's first batch, and positions per delivered batch.
    start: u64,
    step: u64,
    /// This rank, of `world`: its `i`-th sample is at `start + i * world + rank`.
    rank: u64,
    world: u64,
    /// The listing's fingerprint and block reads per pass, for the announcements to the
    /// block owners ([`crate::announce`]).
    listing: Listing,
    reads: u64,
}

impl Registered {
    /// Batches `0..delivered` of this rank were delivered: every rank of the job reads the
    /// global order in step, so the job consumed `delivered * batch * world` positions.
    pub fn delivered(&self, delivered: u64) {
        self.schedule.advance_to(
            self.start
                .saturating_add(delivered.saturating_mul(self.step)),
        );
        self.moved.notify_one();
    }

    /// This rank's samples `range` (indices into its order) are about to be read.
    pub fn reading(&self, range: std::ops::Range<usize>) {
        for i in range {
            let at = (i as u64)
                .saturating_mul(self.world)
                .saturating_add(self.rank);
            self.schedule.reading(self.start.saturating_add(at));
            // Every rank reads in step: the job has begun this whole step of the order.
            let step = self.step.max(1);
            let step_end = (at / step + 1).saturating_mul(step);
            self.frontier
                .fetch_max(self.start.saturating_add(step_end), Ordering::AcqRel);
        }
        self.moved.notify_one();
    }

    /// The schedule.
    pub fn schedule(&self) -> &Arc<Schedule> {
        &self.schedule
    }

    /// The listing's fingerprint, and block reads of one pass over the dataset.
    pub fn listing(&self) -> (Listing, u64) {
        (self.listing, self.reads)
    }
}

impl Ahead for Registered {
    fn position(&self) -> u64 {
        self.schedule.position()
    }

    fn frontier(&self) -> u64 {
        self.frontier.load(Ordering::Acquire).max(self.position())
    }

    fn end(&self) -> u64 {
        self.order.len() as u64
    }

    fn ns_per_sample(&self) -> u64 {
        self.schedule.ns_per_sample()
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn sample(&self, position: u64) -> Option<u64> {
        let p = usize::try_from(position).ok()?;
        self.order.get(p).map(|&i| u64::from(i))
    }

    fn moved(&self) -> &Notify {
        &self.moved
    }
}

/// What a schedule is built from (the loader's request, checked).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The dataset's name as the loader asked for it, and its batching: with the rest, what
    /// names the job ([`job_name`]).
    pub dataset: String,
    pub drop_last: bool,
    pub seed: u64,
    pub epoch: u64,
    pub shuffle: bool,
    /// Global positions consumed before this loader's first batch.
    pub consumed: u64,
    pub batch: u64,
    pub rank: u64,
    pub world: u64,
}

/// Holds the memory of `dataset`'s schedule in `reservation`, before it is built (see
/// [`crate::scheduled`]); `false` (and the loader runs without one) when the tiers do not
/// evict by schedule, when its window is too large to index, or when it does not fit the
/// loader's budget. Counts blocks from the index alone (no hashing).
pub(crate) fn reserve(cache: &Cache, dataset: &Dataset, reservation: &mut Reservation) -> bool {
    if cache.config().eviction != Eviction::Clairvoyant {
        return false;
    }
    let reads = block_reads(cache, dataset);
    // Positions and offsets are 32-bit: a window past that runs without a schedule.
    let window = (dataset.len() as u64).saturating_mul(2);
    if window.max(reads.saturating_mul(2)) > u64::from(u32::MAX) {
        warn!(
            window,
            "loader runs without a schedule: its window is too large to index"
        );
        return false;
    }
    // The schedule, and the window's order for the prefetcher (4 bytes a position).
    let bytes = Schedule::bytes_for(dataset.len() as u64, reads, 2)
        .saturating_add(window.saturating_mul(4));
    if let Err(e) = reservation.grow(bytes) {
        warn!(bytes, error = %e, "loader runs without a schedule: it does not fit its budget");
        return false;
    }
    true
}

/// Block reads of one pass over `dataset`, counted from its index (no hashing).
pub fn block_reads(cache: &Cache, dataset: &Dataset) -> u64 {
    let bs = cache.config().block_size.0.max(1);
    dataset
        .samples
        .iter()
        .map(|s| {
            let (_, _, range) = s.source.span();
            match range.end.checked_sub(1) {
                Some(last) if range.end > range.start => last / bs - range.start / bs + 1,
                _ => 0,
            }
        })
        .sum()
}

/// Builds the loader's schedule from `dataset`'s index and registers it with `cache`'s
/// oracle (CPU work: sorting every block read of two epochs; run it off the async threads).
pub(crate) fn build(cache: &Cache, dataset: &Dataset, plan: &Plan) -> Arc<Registered> {
    let blocks = sample_blocks(cache, dataset);
    let len = dataset.len() as u64;
    let this = order(len, plan.seed, plan.epoch, plan.shuffle);
    let next = order(len, plan.seed, plan.epoch.saturating_add(1), plan.shuffle);
    let schedule = Arc::new(Schedule::new(&blocks, &this, &next, plan.consumed));
    // Dataset indices fit 32 bits: the window (twice the length) was checked by `reserve`.
    let order = this
        .iter()
        .chain(&next)
        .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect();
    info!(
        blocks = schedule.index.ids.len(),
        bytes = schedule.heap_bytes(),
        "loader schedule registered"
    );
    let listing = crate::remote::listing(dataset, &blocks);
    let job = job_name(
        &plan.dataset,
        plan.shuffle,
        plan.drop_last,
        plan.seed,
        plan.world.max(1),
        &listing,
    );
    // Every rank of the job, here and announced to the owners, shares one fair share.
    let registration = cache
        .next_use()
        .register_job(schedule.clone(), job_key(&job));
    Arc::new(Registered {
        listing,
        reads: blocks.reads(),
        schedule,
        _registration: registration,
        order,
        frontier: AtomicU64::new(plan.consumed),
        moved: Notify::new(),
        start: plan.consumed,
        step: plan.batch.saturating_mul(plan.world.max(1)),
        rank: plan.rank,
        world: plan.world.max(1),
    })
}

/// The blocks every sample of `dataset` reads, from its index alone: the file's listed
/// version and size (a plain file), the shard's version and the member's range (a tar
/// member), and the mount the path resolves to. No file is opened. A sample whose path no
/// longer resolves to a mount reads none here (its worker will find out and skip it).
pub fn sample_blocks(cache: &Cache, dataset: &Dataset) -> SampleBlocks {
    let bs = cache.config().block_size.0;
    SampleBlocks::new(dataset.samples.iter().map(|s| {
        let (path, _, range) = s.source.span();
        let version = match &s.source {
            Source::File { version, .. } | Source::TarMember { version, .. } => version,
        };
        let Ok(Resolved::InMount(mount, rel)) = cache.mounts().resolve(path) else {
            return Vec::new();
        };
        let meta = FileMeta {
            rel,
            size: range.end,
            version: version.clone(),
            mtime_ms: 0,
        };
        blocks_for(mount.ufs.uri(), &meta, bs, range)
            .into_iter()
            .map(|b| b.id)
            .collect()
    }))
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
