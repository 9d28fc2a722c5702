//! Other nodes' loaders' schedules at a block owner: the index of the positions at which the
//! blocks this node owns are read, rebuilt from an announcement's few numbers.
//!
//! The owner indexes the announced dataset through its own cache (the index depends only on
//! the listing and the bytes, so sample `i` is the same file on every node), lists each
//! sample's blocks as the announcing loader did ([`crate::schedule`]), checks the listing's
//! fingerprint ([`listing`]) and keeps only the blocks it owns, over this epoch's global
//! order and the next one's: [`OwnedIndex`], a [`PositionIndex`] of the cache's remote
//! schedules. [`Builder`] is what the daemon installs in the cluster.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use loaderd_cache::block::BlockId;
use loaderd_cache::cluster::schedules::{
    Announcement, Ignored, IndexBuilder, Listing, Owns, PositionIndex,
};
use loaderd_cache::{Cache, LogicalPath};
use xxhash_rust::xxh3::Xxh3;

use crate::dataset::{Dataset, Source};
use crate::sampler::order;
use crate::schedule::{Index, SampleBlocks, sample_blocks};

/// The fingerprint of `dataset`'s listing: its samples, and a hash of each one's key, source
/// (path, size and version; a tar member's shard, version, offset and length) and blocks (their ids
/// derive from the object's path and version).
pub fn listing(dataset: &Dataset, blocks: &SampleBlocks) -> Listing {
    let mut h = Xxh3::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (i, s) in dataset.samples.iter().enumerate() {
        field(s.key.as_bytes());
        match &s.source {
            Source::File {
                path,
                size,
                version,
            } => {
                field(path.as_str().as_bytes());
                field(&size.to_le_bytes());
                field(version.as_bytes());
            }
            Source::TarMember {
                shard,
                offset,
                len,
                version,
            } => {
                field(shard.as_str().as_bytes());
                field(version.as_bytes());
                field(&offset.to_le_bytes());
                field(&len.to_le_bytes());
            }
        }
        for id in blocks.of(i as u64) {
            field(&id.0.to_le_bytes());
        }
    }
    Listing {
        count: dataset.len() as u64,
        hash: h.digest(),
    }
}

/// The positions at which the blocks this node owns are read, over this epoch's global
/// order (`0..len`) and the next one's (`len..2 * len`).
#[derive(Debug)]
pub struct OwnedIndex {
    index: Index,
    /// The samples at each position of the window.
    order: Vec<u32>,
    /// The owned blocks of each sample.
    blocks: SampleBlocks,
    len: u64,
}

impl OwnedIndex {
    /// Over samples reading `blocks` (owned ones only), `this` epoch's order then the
    /// `next` one's.
    pub fn new(blocks: SampleBlocks, this: &[u64], next: &[u64]) -> Self {
        let order: Vec<u32> = this
            .iter()
            .chain(next)
            .map(|&s| u32::try_from(s).unwrap_or(u32::MAX))
            .collect();
        let index = Index::build(&blocks, order.iter().map(|&s| u64::from(s)));
        OwnedIndex {
            index,
            order,
            len: this.len() as u64,
            blocks,
        }
    }

    /// The most bytes an index over `samples` samples with `reads` block reads per pass can
    /// hold (every block owned).
    pub fn bytes_for(samples: u64, reads: u64) -> u64 {
        let id = std::mem::size_of::<BlockId>() as u64;
        Index::bytes_for(reads.saturating_mul(2), reads)
            .saturating_add(samples.saturating_mul(2 * 4))
            .saturating_add(samples.saturating_add(1).saturating_mul(4))
            .saturating_add(reads.saturating_mul(id))
    }
}

impl PositionIndex for OwnedIndex {
    fn epoch_len(&self) -> u64 {
        self.len
    }

    fn positions(&self, id: BlockId) -> &[u32] {
        self.index.positions(id)
    }

    fn blocks_at(&self, position: u64) -> &[BlockId] {
        match self.order.get(position as usize) {
            Some(&s) => self.blocks.of(u64::from(s)),
            None => &[],
        }
    }

    fn heap_bytes(&self) -> u64 {
        let id = std::mem::size_of::<BlockId>() as u64;
        self.index
            .heap_bytes()
            .saturating_add(self.order.len() as u64 * 4)
            .saturating_add((self.blocks.len() as u64 + 1) * 4)
            .saturating_add(self.blocks.reads() * id)
    }
}

/// Builds owners' indexes through `cache` (installed in the cluster by the daemon).
pub struct Builder {
    cache: Arc<Cache>,
}

impl Builder {
    /// A builder listing datasets through `cache`.
    pub fn new(cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Builder { cache })
    }
}

impl IndexBuilder for Builder {
    fn estimate(&self, a: &Announcement) -> u64 {
        OwnedIndex::bytes_for(a.listing.count, a.block_reads)
    }

    fn build(
        &self,
        a: Announcement,
        owns: Owns,
    ) -> BoxFuture<'static, Result<Arc<dyn PositionIndex>, Ignored>> {
        let cache = self.cache.clone();
        // On a blocking thread: listing is metadata work and sorting the reads CPU work, and
        // the listing's futures are not `Send`.
        async move {
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || rt.block_on(build(&cache, &a, owns)))
                .await
                .map_err(|e| Ignored::Unavailable(format!("index build failed: {e}")))?
        }
        .boxed()
    }
}

/// The owner's index of `a` (see the module header).
async fn build(
    cache: &Arc<Cache>,
    a: &Announcement,
    owns: Owns,
) -> Result<Arc<dyn PositionIndex>, Ignored> {
    let unavailable = |e: String| Ignored::Unavailable(format!("{}: {e}", a.dataset));
    let root = LogicalPath::parse(&a.dataset).map_err(|e| unavailable(e.to_string()))?;
    let dataset = Dataset::index(cache, &root)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let blocks = sample_blocks(cache, &dataset);
    let here = listing(&dataset, &blocks);
    if here != a.listing {
        return Err(Ignored::Listing {
            dataset: a.dataset.clone(),
            here: here.count,
            here_hash: here.hash,
            there: a.listing.count,
            there_hash: a.listing.hash,
        });
    }
    if here.count.saturating_mul(2) > u64::from(u32::MAX)
        || blocks.reads().saturating_mul(2) > u64::from(u32::MAX)
    {
        return Err(unavailable("too large to index in 32-bit positions".into()));
    }
    let owned = SampleBlocks::new((0..blocks.len() as u64).map(|i| {
        blocks
            .of(i)
            .iter()
            .copied()
            .filter(|id| owns(*id))
            .collect::<Vec<_>>()
    }));
    let this = order(here.count, a.seed, a.epoch, a.shuffle);
    let next = order(here.count, a.seed, a.epoch.saturating_add(1), a.shuffle);
    Ok(Arc::new(OwnedIndex::new(owned, &this, &next)))
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
