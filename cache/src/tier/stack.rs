//! The tiers of one node as one stack, in read order: the memory tier on top, then the tiers
//! below it (the SSD tier).
//!
//! mountpoint-s3's `data_cache/multilevel_cache.rs` is the model: a read tries each level in
//! order and stops at the first hit, and a stored block goes to every level. A hit never moves
//! a block between levels (read type CACHE, not CACHE_PROMOTE). The memory tier is apart from
//! the others because it is more than a store: its arena is shared with other processes
//! (leases) and a fetched block is put there before the readers are answered, into the lower
//! tiers right after. Lower tiers may block on disk I/O, so they run off the async threads.

use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use super::{MemoryTier, SsdTier, Tier, TierStatus};
use crate::block::{BlockId, BlockRef};
use crate::config::CacheConfig;
use crate::error::Result;
use crate::evict::{self, NextUseOracle};
use crate::stats;

/// Memory on top, then every lower tier in order.
pub struct TierStack {
    memory: Arc<MemoryTier>,
    lower: Vec<Arc<dyn Tier>>,
}

impl TierStack {
    /// The tiers `cfg` configures (rebuilding the SSD index), each evicting by
    /// `cfg.eviction`; a clairvoyant policy asks `oracle`.
    pub fn open(cfg: &CacheConfig, oracle: &Arc<NextUseOracle>) -> Result<Self> {
        let memory = Arc::new(MemoryTier::new(
            &cfg.memory,
            evict::policy(cfg.eviction, oracle),
        )?);
        let mut lower: Vec<Arc<dyn Tier>> = Vec::new();
        if let Some(s) = &cfg.ssd {
            lower.push(Arc::new(SsdTier::open(
                s,
                evict::policy(cfg.eviction, oracle),
            )?));
        }
        let stack = TierStack { memory, lower };
        if stack.status().iter().all(|t| t.capacity == 0) {
            warn!("no cache capacity configured: every read passes through to the UFS uncached");
        }
        Ok(stack)
    }

    /// The memory tier (its arena can be shared with other processes).
    pub fn memory(&self) -> &Arc<MemoryTier> {
        &self.memory
    }

    /// Whether any tier holds block `id` (no I/O).
    pub fn contains(&self, id: BlockId) -> bool {
        self.memory.contains(id) || self.lower.iter().any(|t| t.contains(id))
    }

    /// Block `b` from the first tier that holds it, the hit counted by tier.
    pub async fn get(&self, b: &BlockRef) -> Option<Bytes> {
        match self.get_memory(b) {
            Some(data) => Some(data),
            None => self.get_lower(b).await,
        }
    }

    /// Block `b` from the memory tier (no I/O), the hit counted.
    pub fn get_memory(&self, b: &BlockRef) -> Option<Bytes> {
        let data = self.memory.get(b.id)?;
        stats::hit(self.memory.name(), b.len());
        Some(data)
    }

    /// Block `b` from the first tier below memory that holds it, the hit counted.
    pub async fn get_lower(&self, b: &BlockRef) -> Option<Bytes> {
        let (tier, data) = self.read_lower(b).await?;
        stats::hit(tier, b.len());
        Some(data)
    }

    /// Block `b` from the first tier below memory that holds it, and that tier's name.
    async fn read_lower(&self, b: &BlockRef) -> Option<(&'static str, Bytes)> {
        for tier in self.lower.iter().filter(|t| t.contains(b.id)) {
            let (t, id) = (tier.clone(), b.id);
            if let Ok(Some(data)) = tokio::task::spawn_blocking(move || t.get(id)).await {
                return Some((tier.name(), data));
            }
        }
        None
    }

    /// Copies block `b` from a lower tier into the memory tier, through its admission (not a
    /// read: no hit is counted). `None` when no lower tier holds it, else whether the memory
    /// tier took it.
    pub async fn promote(&self, b: &BlockRef) -> Option<bool> {
        let (_, data) = self.read_lower(b).await?;
        Some(self.put_memory(b.id, &data))
    }

    /// Whether some tier would take block `id` of `len` bytes now (room, or its policy would
    /// let it replace a resident), asking nothing of the policies' turnover.
    pub fn would_admit(&self, id: BlockId, len: u64) -> bool {
        self.memory.would_admit(id, len) || self.lower.iter().any(|t| t.would_admit(id, len))
    }

    /// Puts a block in the memory tier; `false` if it did not take it.
    pub fn put_memory(&self, id: BlockId, data: &Bytes) -> bool {
        self.memory.put(id, data)
    }

    /// Puts a block in every tier below memory.
    pub async fn put_lower(&self, id: BlockId, data: &Bytes) {
        for tier in &self.lower {
            let (t, data) = (tier.clone(), data.clone());
            let _ = tokio::task::spawn_blocking(move || t.put(id, &data)).await;
        }
    }

    /// Puts a block in every tier, memory first.
    pub async fn put(&self, id: BlockId, data: &Bytes) {
        self.put_memory(id, data);
        self.put_lower(id, data).await;
    }

    /// Drops block `id` from every tier; `true` if any held it.
    pub fn remove(&self, id: BlockId) -> bool {
        let in_memory = self.memory.remove(id);
        self.lower
            .iter()
            .fold(in_memory, |held, t| t.remove(id) || held)
    }

    /// Usage of every tier, memory first.
    pub fn status(&self) -> Vec<TierStatus> {
        std::iter::once(self.memory.status())
            .chain(self.lower.iter().map(|t| t.status()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, SsdTierConfig};

    fn block(id: u128, len: u64) -> BlockRef {
        BlockRef {
            id: BlockId(id),
            index: 0,
            range: 0..len,
        }
    }

    #[tokio::test]
    async fn reads_stop_at_the_first_tier_and_never_move_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            ssd: Some(SsdTierConfig {
                dir: dir.path().to_path_buf(),
                capacity: ByteSize(1 << 20),
                watermarks: Default::default(),
            }),
            ..CacheConfig::default()
        };
        let stack = TierStack::open(&cfg, &NextUseOracle::new()).unwrap();
        let (b, data) = (block(1, 5), Bytes::from_static(b"hello"));
        assert!(stack.get(&b).await.is_none());
        stack.put_lower(b.id, &data).await;
        assert!(stack.contains(b.id));
        assert_eq!(stack.get(&b).await, Some(data.clone()), "from the SSD tier");
        assert!(!stack.memory().contains(b.id), "a hit moved nothing up");
        stack.put(b.id, &data).await;
        assert_eq!(stack.get_memory(&b), Some(data));
        assert!(stack.remove(b.id));
        assert!(!stack.contains(b.id) && !stack.remove(b.id));
        let names: Vec<_> = stack.status().iter().map(|t| t.name).collect();
        assert_eq!(names, ["memory", "ssd"]);
    }
}
