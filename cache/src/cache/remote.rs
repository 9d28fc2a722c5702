//! Blocks in a cluster: those this node reads from the peers that own them, and those a peer
//! asks this node for as their owner.

use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::{Cache, FileHandle, ReadType};
use crate::block::BlockRef;
use crate::cluster::Cluster;
use crate::cluster::peer::block_request;
use crate::error::Result;
use crate::prefetch::Served;
use crate::stats;

/// What a read of a block this node does not own keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Nothing: the owner caches it (no passive duplication).
    Nothing,
    /// A local copy too (pinned for this node's own trainers).
    Local,
    /// Nothing, and the bytes are not wanted (warming the owner).
    Discard,
}

impl Cache {
    /// A block a peer asks this node for, as its owner: from the tiers, or fetched from the
    /// UFS once and cached. Never forwarded (the peer already chose this node), so differing
    /// member views cannot bounce a request around. Returns the bytes, their CRC32C (kept
    /// with a memory-tier block, so a hot block is checksummed once) and whether the block
    /// was cached already.
    pub async fn get_block_as_owner(
        &self,
        fh: &FileHandle,
        b: &BlockRef,
    ) -> Result<(Bytes, u32, bool)> {
        if let Some((data, crc)) = self.tiers.memory().get_with_crc(b.id) {
            stats::hit("memory", data.len() as u64);
            self.served(b, Served::Tier);
            return Ok((data, crc, true));
        }
        let (data, was_cached) = match self.tiers.get_lower(b).await {
            Some(data) => {
                self.served(b, Served::Tier);
                (data, true)
            }
            None => {
                let res = self.fetch_owned(fh, b, ReadType::Cache).await;
                let res = res.map(|(data, served)| {
                    self.served(b, served);
                    data
                });
                (self.refreshed(fh, res).await?, false)
            }
        };
        let crc = crc32c::crc32c(&data);
        Ok((data, crc, was_cached))
    }

    /// A block this node does not own: from its owners in rendezvous order (skipping
    /// suspects), taking it over when this node is next in line, else from the UFS uncached.
    pub(super) async fn fetch_remote(
        &self,
        c: &Cluster,
        fh: &FileHandle,
        b: &BlockRef,
        read_type: ReadType,
        keep: Keep,
    ) -> Result<Option<Bytes>> {
        let len = b.len();
        let bs = self.cfg.block_size.0;
        for m in c.candidates(b.id) {
            if c.is_me(&m) {
                // The owners before this node are down: it is the owner now.
                return Ok(Some(self.fetch_owned(fh, b, read_type).await?.0));
            }
            if c.peers().is_suspect(&m.addr) {
                continue;
            }
            let req = block_request(fh, b, bs, keep == Keep::Discard);
            let started = Instant::now();
            let answer = c.peers().get_block(&m, req).await;
            if answer.is_ok() {
                self.latency.record(started.elapsed());
            }
            match answer {
                Ok(block) if keep == Keep::Discard => {
                    let _ = block;
                    return Ok(None);
                }
                Ok(block) => {
                    stats::peer_hit(len);
                    if keep == Keep::Local {
                        self.tiers.put(b.id, &block.data).await;
                    }
                    return Ok(Some(block.data));
                }
                Err(e) => debug!(error = %e, "peer read failed; trying the next"),
            }
        }
        // No owner answered: read the UFS without caching (this node does not own it).
        stats::passthrough("peers_unavailable");
        let _permit = self.reserve(fh, len).await;
        let data = fh.mount.ufs.get_range(&fh.meta, b.range.clone()).await?;
        stats::miss(len);
        if keep == Keep::Local {
            self.tiers.put(b.id, &data).await;
        }
        Ok(Some(data))
    }
}
