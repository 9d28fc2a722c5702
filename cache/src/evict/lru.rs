//! Least recently used: the victim is the block read longest ago.

use std::collections::{BTreeMap, HashMap};

use super::{EvictReason, EvictionPolicy, Victim};
use crate::block::BlockId;

/// Least recently used, O(log n) per operation.
#[derive(Debug, Default)]
pub struct Lru {
    tick: u64,
    by_tick: BTreeMap<u64, BlockId>,
    ticks: HashMap<BlockId, u64>,
}

impl Lru {
    fn bump(&mut self, id: BlockId) {
        if let Some(old) = self.ticks.get(&id) {
            self.by_tick.remove(old);
        }
        self.tick += 1;
        self.by_tick.insert(self.tick, id);
        self.ticks.insert(id, self.tick);
    }
}

impl EvictionPolicy for Lru {
    fn admitted(&mut self, id: BlockId) {
        self.bump(id);
    }

    fn touched(&mut self, id: BlockId) {
        if self.ticks.contains_key(&id) {
            self.bump(id);
        }
    }

    fn removed(&mut self, id: BlockId) {
        if let Some(t) = self.ticks.remove(&id) {
            self.by_tick.remove(&t);
        }
    }

    fn pop_victim(&mut self) -> Option<Victim> {
        let (_, id) = self.by_tick.pop_first()?;
        self.ticks.remove(&id);
        Some(Victim {
            id,
            reason: EvictReason::Lru,
        })
    }
}
