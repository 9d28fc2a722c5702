//! Clairvoyant: Belady's MIN over the next-use oracle.
//!
//! The victim is the block whose next use is farthest. Blocks no schedule reads within its
//! window go first, least recently read first (the [`super::Stable`] order); with no schedule
//! registered the policy is exactly `Stable`. A block is admitted over a resident only if it
//! is needed sooner than the victim: a block nobody needs is not admitted over one that is
//! (and over another unneeded one only within the stable turnover allowance), and a block
//! needed later than everything resident is not admitted at all, which is what MIN does when
//! the incoming block is itself the farthest.
//!
//! **Fair shares.** Each needed block counts for the job of its earliest next use. When
//! several jobs need blocks here, a job holding no more than its fair share (the blocks
//! needed, over the jobs needing them) keeps them against another job's admissions: a block of
//! job A replaces only unneeded blocks, A's own, or blocks of a job over its share, the
//! farthest of those. With one job this is MIN exactly; with several, one job's schedule
//! cannot push out what another needs beyond that share, however soon it claims its reads. A
//! job under its share also takes the place of the farthest block of a job over its share
//! when it needs its own block later (MIN alone would never admit a slower job's blocks).
//! Shares count blocks, not bytes.
//!
//! Keys are cached in an ordered set, O(log n) per operation. They go out of date in three
//! ways, each handled where it is cheap:
//! * a read of the block here: [`EvictionPolicy::touched`] re-asks the oracle;
//! * a read elsewhere (another tier served it, a peer's reader): its cached tick falls
//!   behind [`NextUseOracle::now`]; before each decision the stale tail (nearest keys) is
//!   re-asked. Each block goes stale at most once per read, so this is amortised O(log n);
//! * a change of plan (a source registers, leaves, or bumps its generation): every key is
//!   re-asked once, O(n log n), on the next decision after the change;
//! * a window that slides forward (an unneeded block becomes needed): the victim is re-asked
//!   before it is chosen, and moved if its answer changed (at most [`RECHECKS`] times per
//!   decision, so a source whose answers never settle cannot stall eviction).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::oracle::{Generation, Job, NextUseOracle, Tick};
use super::stable::Turnover;
use super::{EvictReason, EvictionPolicy, Victim};
use crate::block::BlockId;

/// Victims re-asked per decision before the current first is taken as it is.
pub const RECHECKS: usize = 16;

/// Eviction order: the smallest key goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// No schedule reads it; the number is its last read (older first).
    Unneeded(u64),
    /// Its next read, farthest first.
    Needed(Reverse<Tick>),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    /// The job it counts for, while needed.
    job: Option<Job>,
    last_read: u64,
}

/// Belady's MIN over a [`NextUseOracle`] (see the module header).
#[derive(Debug)]
pub struct Clairvoyant {
    oracle: Arc<NextUseOracle>,
    entries: HashMap<BlockId, Entry>,
    order: BTreeSet<(Key, BlockId)>,
    /// Each job's needed blocks, in eviction order.
    jobs: HashMap<Job, BTreeSet<(Key, BlockId)>>,
    /// The job of the block being admitted, from its admission to its evictions' end.
    admitting: Option<Job>,
    reads: u64,
    seen: Option<Generation>,
    turnover: Turnover,
}

impl Clairvoyant {
    /// A policy asking `oracle`.
    pub fn new(oracle: Arc<NextUseOracle>) -> Self {
        Clairvoyant {
            oracle,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            jobs: HashMap::new(),
            admitting: None,
            reads: 0,
            seen: None,
            turnover: Turnover::default(),
        }
    }

    fn key_of(&self, id: BlockId, last_read: u64) -> (Key, Option<Job>) {
        match self.oracle.next_use_by(id) {
            Some((t, job)) => (Key::Needed(Reverse(t)), Some(job)),
            None => (Key::Unneeded(last_read), None),
        }
    }

    fn insert(&mut self, id: BlockId, e: Entry) {
        self.order.insert((e.key, id));
        if let Some(job) = e.job {
            self.jobs.entry(job).or_default().insert((e.key, id));
        }
        self.entries.insert(id, e);
    }

    fn remove(&mut self, id: BlockId) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.order.remove(&(e.key, id));
        if let Some(job) = e.job
            && let Some(set) = self.jobs.get_mut(&job)
        {
            set.remove(&(e.key, id));
            if set.is_empty() {
                self.jobs.remove(&job);
            }
        }
        Some(e)
    }

    /// Re-asks the oracle about `id`; whether its key changed.
    fn rekey(&mut self, id: BlockId) -> bool {
        let Some(e) = self.entries.get(&id).copied() else {
            return false;
        };
        let (key, job) = self.key_of(id, e.last_read);
        if key == e.key && job == e.job {
            return false;
        }
        self.remove(id);
        self.insert(id, Entry { key, job, ..e });
        true
    }

    /// Jobs needing blocks here, counting `job`, and each one's fair share of the blocks.
    fn share(&self, job: Job) -> (usize, usize) {
        let jobs = self.jobs.len() + usize::from(!self.jobs.contains_key(&job));
        (jobs, self.entries.len() / jobs.max(1))
    }

    /// Blocks of `job` held here.
    fn held_by(&self, job: Job) -> usize {
        self.jobs.get(&job).map_or(0, BTreeSet::len)
    }

    /// The first of the blocks a block of `job` may replace (see the module header): an
    /// unneeded one, else the farthest of the jobs over their share, and of `job`'s own unless
    /// it is under its share.
    fn victim_for(&self, job: Job) -> Option<(Key, BlockId)> {
        let first = *self.order.first()?;
        let (jobs, share) = self.share(job);
        if jobs <= 1 || matches!(first.0, Key::Unneeded(_)) {
            return Some(first);
        }
        let under = self.held_by(job) < share;
        let farthest = |own: bool| {
            self.jobs
                .iter()
                .filter(|(j, set)| if **j == job { own } else { set.len() > share })
                .filter_map(|(_, set)| set.first().copied())
                .min()
        };
        if under {
            farthest(false).or_else(|| farthest(true))
        } else {
            farthest(true)
        }
    }

    /// Whether a block of `job` replaces `victim` for being under its share: `victim` is
    /// another job's, and `job` holds less than its share.
    fn entitled(&self, job: Job, victim: BlockId) -> bool {
        let (jobs, share) = self.share(job);
        jobs > 1
            && self.entries.get(&victim).and_then(|e| e.job) != Some(job)
            && self.held_by(job) < share
    }

    /// Brings the keys that decide the next victim up to date (see the module header).
    fn refresh(&mut self) {
        let generation = self.oracle.generation();
        if self.seen != Some(generation) {
            self.seen = Some(generation);
            let ids: Vec<BlockId> = self.entries.keys().copied().collect();
            for id in ids {
                self.rekey(id);
            }
        }
        let now = self.oracle.now();
        let stale: Vec<BlockId> = self
            .order
            .iter()
            .rev()
            .take_while(|(k, _)| matches!(k, Key::Needed(Reverse(t)) if *t < now))
            .map(|(_, id)| *id)
            .collect();
        for id in stale {
            self.rekey(id);
        }
        for _ in 0..RECHECKS {
            let first = match self.admitting {
                Some(job) => self.victim_for(job),
                None => self.order.first().copied(),
            };
            match first.map(|(_, id)| id) {
                Some(id) if self.rekey(id) => continue,
                _ => break,
            }
        }
    }
}

impl Clairvoyant {
    /// Whether `candidate` may replace the victim; an unneeded block over an unneeded victim
    /// only within the turnover allowance, used up when `spend`.
    fn decide(&mut self, candidate: BlockId, spend: bool) -> bool {
        let mine = self.oracle.next_use_by(candidate);
        self.admitting = mine.map(|(_, job)| job);
        self.refresh();
        let victim = match self.admitting {
            Some(job) => self.victim_for(job),
            None => self.order.first().copied(),
        };
        if !spend {
            self.admitting = None;
        }
        let Some((victim, victim_id)) = victim else {
            // Nothing it may replace: only an empty tier takes it.
            return self.order.is_empty();
        };
        let admit = match (mine, victim) {
            (Some(_), Key::Unneeded(_)) => true,
            // A job under its share takes the place of another's block, however late it
            // needs its own.
            (Some((_, job)), Key::Needed(_)) if self.entitled(job, victim_id) => true,
            (Some((mine, _)), Key::Needed(Reverse(theirs))) => mine < theirs,
            (None, Key::Needed(_)) => false,
            (None, Key::Unneeded(_)) => spend && self.turnover.allow(),
        };
        if !admit {
            self.admitting = None;
        }
        admit
    }
}

impl EvictionPolicy for Clairvoyant {
    fn admitted(&mut self, id: BlockId) {
        self.admitting = None;
        self.remove(id);
        self.reads += 1;
        let (key, job) = self.key_of(id, self.reads);
        self.insert(
            id,
            Entry {
                key,
                job,
                last_read: self.reads,
            },
        );
    }

    fn touched(&mut self, id: BlockId) {
        if self.entries.contains_key(&id) {
            let admitting = self.admitting;
            self.admitted(id);
            self.admitting = admitting;
        }
    }

    fn removed(&mut self, id: BlockId) {
        self.remove(id);
    }

    fn pop_victim(&mut self) -> Option<Victim> {
        self.refresh();
        // The share yields to the capacity: with nothing the admitted block's job may replace
        // left, the farthest of all goes.
        let (key, id) = self
            .admitting
            .and_then(|job| self.victim_for(job))
            .or_else(|| self.order.first().copied())?;
        self.remove(id);
        let reason = match key {
            Key::Unneeded(_) => EvictReason::Unneeded,
            Key::Needed(_) => EvictReason::Farthest,
        };
        Some(Victim { id, reason })
    }

    fn admits(&mut self, candidate: BlockId) -> bool {
        self.decide(candidate, true)
    }

    fn would_admit(&mut self, candidate: BlockId) -> bool {
        self.decide(candidate, false)
    }

    fn frees_to_low_watermark(&self) -> bool {
        false
    }
}
