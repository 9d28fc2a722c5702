//! Prefetch: bringing one block where a reader will want it, through the paths readers use.
//!
//! [`Cache::prefetch_block`] is `load`'s warm path for one block, aimed at the memory tier: a
//! block this node owns (or every block outside a cluster) is fetched from the UFS through
//! the single-flight fetch readers use, so a reader arriving meanwhile joins it and the block
//! is fetched once; a block on the SSD tier is promoted into memory; a block another node
//! owns is warmed there (`GetBlock{discard}`), one copy of UFS egress for the cluster. Every
//! block enters a tier through its policy's admission, and a block that no tier would admit
//! now is not fetched at all (its reader would fetch it again).
//!
//! Every read tells the ledger and the reader's tally what served it ([`Cache::served`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Cache, FileHandle, Keep, ReadType};
use crate::block::BlockRef;
use crate::error::Result;
use crate::prefetch::{self, Ledger, Served};
use crate::stats;
use crate::tier::Tier;

/// What a prefetch of one block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetched {
    /// The memory tier holds it already: nothing to do.
    Resident,
    /// Fetched from the UFS into the tiers (or joined a fetch in flight).
    Fetched,
    /// Read from the SSD tier into the memory tier.
    Promoted,
    /// Its owner was asked to cache it.
    Warmed,
    /// No tier would admit it now (the policy keeps what is resident): not fetched.
    NotAdmitted,
}

impl Prefetched {
    /// Whether the block was brought in (counted as prefetched).
    pub fn brought_in(self) -> bool {
        matches!(
            self,
            Prefetched::Fetched | Prefetched::Promoted | Prefetched::Warmed
        )
    }
}

/// Prefetch bytes in flight, and the most at once.
#[derive(Debug, Default)]
pub struct PrefetchGauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl PrefetchGauge {
    /// (in flight now, most at once since start).
    pub fn get(&self) -> (u64, u64) {
        (
            self.now.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        )
    }

    fn enter(&self, bytes: u64) -> GaugeGuard<'_> {
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("loaderd_prefetch_inflight_bytes").set(now as f64);
        GaugeGuard { gauge: self, bytes }
    }
}

struct GaugeGuard<'a> {
    gauge: &'a PrefetchGauge,
    bytes: u64,
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        let now = self.gauge.now.fetch_sub(self.bytes, Ordering::Relaxed) - self.bytes;
        metrics::gauge!("loaderd_prefetch_inflight_bytes").set(now as f64);
    }
}

impl Cache {
    /// The marks of this node's prefetchers.
    pub fn prefetch_ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// How long a block fetch (UFS or peer) takes on this node, on average; `None` before the
    /// first.
    pub fn fetch_latency(&self) -> Option<Duration> {
        self.latency.get()
    }

    /// Bytes a second this node's UFS link carries: what it carried while busy, and never more
    /// than `cache.ufs.max_bandwidth`; that cap alone before anything was measured, `None`
    /// when neither is known.
    pub fn ufs_rate(&self) -> Option<u64> {
        let cap = Some(self.cfg.ufs.max_bandwidth.0).filter(|c| *c > 0);
        match (self.link.bytes_per_sec(), cap) {
            (Some(seen), Some(cap)) => Some(seen.min(cap)),
            (seen, cap) => seen.or(cap),
        }
    }

    /// Prefetch bytes in flight now, and the most at once since start.
    pub fn prefetch_inflight(&self) -> (u64, u64) {
        self.prefetching.get()
    }

    /// A reader read block `b`, served as `served`: the ledger judges it (hit, late) and the
    /// reader's tally counts it.
    pub(super) fn served(&self, b: &BlockRef, served: Served) {
        self.ledger.read(b.id, served);
        prefetch::tally(served);
    }

    /// Brings block `b` of `fh` where the next reader wants it (see the module header); waits
    /// until it is there, tier writes included. Counted as prefetched when it was brought in,
    /// as failed when it errs.
    pub async fn prefetch_block(&self, fh: &FileHandle, b: &BlockRef) -> Result<Prefetched> {
        let res = self.prefetch_one(fh, b).await;
        match &res {
            Ok(done) if done.brought_in() => {
                let how = match done {
                    Prefetched::Promoted => "promoted",
                    Prefetched::Warmed => "warmed",
                    _ => "fetched",
                };
                stats::prefetched(how, b.len());
            }
            Ok(_) => {}
            Err(_) => stats::prefetch_failed(),
        }
        res
    }

    async fn prefetch_one(&self, fh: &FileHandle, b: &BlockRef) -> Result<Prefetched> {
        if self.tiers.memory().contains(b.id) {
            return Ok(Prefetched::Resident);
        }
        let _inflight = self.prefetching.enter(b.len());
        if let Some(c) = self.cluster()
            && !c.owns(b.id)
        {
            if self.tiers.contains(b.id) {
                return Ok(Prefetched::Resident);
            }
            self.fetch_remote(c, fh, b, ReadType::Cache, Keep::Discard)
                .await?;
            return Ok(Prefetched::Warmed);
        }
        if let Some(taken) = self.tiers.promote(b).await {
            return Ok(if taken {
                Prefetched::Promoted
            } else {
                Prefetched::NotAdmitted
            });
        }
        if !self.tiers.would_admit(b.id, b.len()) {
            return Ok(Prefetched::NotAdmitted);
        }
        let res = self.fetch_owned(fh, b, ReadType::Cache).await;
        self.refreshed(fh, res.map(|(data, _)| data)).await?;
        self.settled(b).await;
        Ok(Prefetched::Fetched)
    }
}
