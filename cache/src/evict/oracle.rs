//! The next-use oracle: when each block will next be read, by any registered schedule.
//!
//! A source ([`NextUse`]) answers for one schedule (a loader's seeded permutation of
//! this epoch and the next on this node, `loaderd_pipeline::schedule`; or one rank of
//! another node's loader, over the blocks this node owns, `crate::cluster::schedules`). The
//! cache owns one [`NextUseOracle`]; sources register with it and stay registered while their
//! [`Registration`] lives, so a loader that closes or dies takes its schedule with it. The
//! oracle combines sources by the earliest next use, and says which job that use is of
//! ([`Job`]: the ranks of one training job, here and on other nodes, register under one job),
//! so a policy can keep each job's fair share.
//!
//! Answers are [`Tick`]s on one clock shared by every source, absolute, not relative: a
//! block's next use does not change while a schedule advances, only when the block is read
//! (it moves on to its following read) or when a source changes its plan (a rate estimate, a
//! seek, a new epoch's permutation), which the source signals by bumping its
//! [`NextUse::generation`]. [`NextUseOracle::now`] is the earliest tick still ahead of any
//! source: an answer cached before it is stale (that read has happened), which is how a
//! policy finds blocks that were read without its tier seeing the read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use crate::block::BlockId;
use crate::sync::{read, write};

/// A point on the oracle's clock. Sources that predict reads by position convert positions
/// to ticks with their consumption rate, so several jobs compare on one axis; a source that
/// stands alone (a recorded trace) may use positions directly.
pub type Tick = u64;

/// A training job, as the sources of its ranks register ([`NextUseOracle::register_job`]).
pub type Job = u64;

/// The shared clock's reading now: nanoseconds since this process first asked. Sources that
/// predict by position anchor their ticks here (position `p` is read at about
/// `anchor + (p - anchor_position) * time per sample`), so schedules of different rates
/// compare on one axis.
pub fn clock() -> Tick {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(Tick::MAX)
}

/// The future reads of one schedule. Asked under a tier's lock, on every admission that needs
/// room and every read: answers must be quick and must not call back into the cache.
pub trait NextUse: Send + Sync {
    /// The tick of block `id`'s next read at or after [`NextUse::now`], or `None` if this
    /// schedule does not read it within its window.
    fn next_use(&self, id: BlockId) -> Option<Tick>;
    /// The tick of this schedule's next read: every answer is at or after it.
    fn now(&self) -> Tick;
    /// Bumped whenever answers may have changed other than by reads passing (the plan
    /// changed); a policy then re-evaluates every block it holds. Must never decrease.
    fn generation(&self) -> u64 {
        0
    }
}

/// What a policy compares to learn that answers changed wholesale: registrations so far, and
/// the sum of the sources' own generations (each never decreases, so while membership holds
/// still the sum changes exactly when one of them does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generation {
    membership: u64,
    plans: u64,
}

/// A registered source and its job.
type Source = (Arc<dyn NextUse>, Job);

/// The sources registered with a cache, combined by the earliest next use.
#[derive(Default)]
pub struct NextUseOracle {
    /// By registration key.
    sources: RwLock<BTreeMap<u64, Source>>,
    next_key: AtomicU64,
    /// Bumped on every registration and unregistration.
    membership: AtomicU64,
}

impl std::fmt::Debug for NextUseOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextUseOracle")
            .field("sources", &read(&self.sources).len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl NextUseOracle {
    /// An oracle with no sources (every block is unneeded).
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Adds `source`, a job of its own, until the returned registration drops.
    #[must_use = "the source is unregistered when the registration drops"]
    pub fn register(self: &Arc<Self>, source: Arc<dyn NextUse>) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        // Keys of their own, out of the way of hashed job names.
        self.insert(key, source, Job::MAX - key)
    }

    /// Adds `source`, one rank of `job`, until the returned registration drops.
    #[must_use = "the source is unregistered when the registration drops"]
    pub fn register_job(self: &Arc<Self>, source: Arc<dyn NextUse>, job: Job) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.insert(key, source, job)
    }

    fn insert(self: &Arc<Self>, key: u64, source: Arc<dyn NextUse>, job: Job) -> Registration {
        write(&self.sources).insert(key, (source, job));
        self.membership.fetch_add(1, Ordering::Release);
        Registration {
            oracle: Arc::downgrade(self),
            key,
        }
    }

    /// The earliest next use of `id` by any source.
    pub fn next_use(&self, id: BlockId) -> Option<Tick> {
        self.next_use_by(id).map(|(t, _)| t)
    }

    /// The earliest next use of `id` by any source, and that source's job.
    pub fn next_use_by(&self, id: BlockId) -> Option<(Tick, Job)> {
        read(&self.sources)
            .values()
            .filter_map(|(s, job)| s.next_use(id).map(|t| (t, *job)))
            .min()
    }

    /// The earliest tick still ahead of any source (`Tick::MAX` with none): a cached answer
    /// before it is stale.
    pub fn now(&self) -> Tick {
        read(&self.sources)
            .values()
            .map(|(s, _)| s.now())
            .min()
            .unwrap_or(Tick::MAX)
    }

    /// Changes whenever a source registers, unregisters or bumps its own generation.
    pub fn generation(&self) -> Generation {
        let sources = read(&self.sources);
        let membership = self.membership.load(Ordering::Acquire);
        let plans = sources
            .values()
            .fold(0u64, |a, (s, _)| a.wrapping_add(s.generation()));
        Generation { membership, plans }
    }

    /// Whether no source is registered.
    pub fn is_empty(&self) -> bool {
        read(&self.sources).is_empty()
    }

    fn unregister(&self, key: u64) {
        if write(&self.sources).remove(&key).is_some() {
            self.membership.fetch_add(1, Ordering::Release);
        }
    }
}

/// Keeps a source registered; dropping it unregisters the source.
#[derive(Debug)]
pub struct Registration {
    oracle: Weak<NextUseOracle>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(o) = self.oracle.upgrade() {
            o.unregister(self.key);
        }
    }
}
