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

use super::oracle::{Generation, NextUseOracle, Tick};
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
    last_read: u64,
}

/// Belady's MIN over a [`NextUseOracle`] (see the module header).
#[derive(Debug)]
pub struct Clairvoyant {
    oracle: Arc<NextUseOracle>,
    entries: HashMap<BlockId, Entry>,
    order: BTreeSet<(Key, BlockId)>,
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
            reads: 0,
            seen: None,
            turnover: Turnover::default(),
        }
    }

    fn key_of(&self, id: BlockId, last_read: u64) -> Key {
        match self.oracle.next_use(id) {
            Some(t) => Key::Needed(Reverse(t)),
            None => Key::Unneeded(last_read),
        }
    }

    /// Re-asks the oracle about `id`; whether its key changed.
    fn rekey(&mut self, id: BlockId) -> bool {
        let Some(e) = self.entries.get(&id).copied() else {
            return false;
        };
        let key = self.key_of(id, e.last_read);
        if key == e.key {
            return false;
        }
        self.order.remove(&(e.key, id));
        self.order.insert((key, id));
        self.entries.insert(id, Entry { key, ..e });
        true
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
            match self.order.first().map(|(_, id)| *id) {
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
        self.refresh();
        let Some(&(victim, _)) = self.order.first() else {
            return true;
        };
        match (self.oracle.next_use(candidate), victim) {
            (Some(_), Key::Unneeded(_)) => true,
            (Some(mine), Key::Needed(Reverse(theirs))) => mine < theirs,
            (None, Key::Needed(_)) => false,
            (None, Key::Unneeded(_)) => spend && self.turnover.allow(),
        }
    }
}

impl EvictionPolicy for Clairvoyant {
    fn admitted(&mut self, id: BlockId) {
        self.removed(id);
        self.reads += 1;
        let key = self.key_of(id, self.reads);
        self.order.insert((key, id));
        self.entries.insert(
            id,
            Entry {
                key,
                last_read: self.reads,
            },
        );
    }

    fn touched(&mut self, id: BlockId) {
        if self.entries.contains_key(&id) {
            self.admitted(id);
        }
    }

    fn removed(&mut self, id: BlockId) {
        if let Some(e) = self.entries.remove(&id) {
            self.order.remove(&(e.key, id));
        }
    }

    fn pop_victim(&mut self) -> Option<Victim> {
        self.refresh();
        let (key, id) = self.order.pop_first()?;
        self.entries.remove(&id);
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
