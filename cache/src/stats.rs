//! Counters of the cache, kept twice on purpose: process-wide atomics that `Status` reads
//! exactly, and `metrics` facade counters that the daemon exports to Prometheus.
//!
//! Metric names (all prefixed `loaderd_`): `cache_hits_total{tier}`, `cache_misses_total`,
//! `cache_bytes_read_total{source=cache|peer|ufs}`, `cache_evictions_total{tier,reason}`,
//! `cache_corrupt_blocks_total`, `ssd_dropped_at_start_total{reason}`,
//! `cache_passthrough_total{reason}`, `ufs_requests_total{op}`,
//! `ufs_bytes_total`, `ufs_retries_total`, `ufs_errors_total`, `singleflight_joins_total`,
//! `cache_transient_leases_total` and `cache_transient_lease_bytes_total` (blocks handed to a
//! shared-memory client in a slot of their own because the memory tier does not hold them),
//! `prefetch_blocks_total{how=fetched|promoted|warmed}`, `prefetch_bytes_total`,
//! `prefetch_hits_total`, `prefetch_late_total` and `prefetch_failed_total` (see
//! [`crate::prefetch`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::counter;

/// A snapshot of the process-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_ufs: u64,
    pub ufs_gets: u64,
    pub ufs_lists: u64,
    pub ufs_heads: u64,
    pub ufs_errors: u64,
    pub corrupt_blocks: u64,
    pub singleflight_joins: u64,
    /// Blocks this node read from the peers that own them, and their bytes.
    pub peer_reads: u64,
    pub bytes_from_peers: u64,
    /// Blocks (and bytes) a prefetcher brought in: fetched into the tiers, promoted from SSD
    /// to memory, or warmed on their owner.
    pub prefetched: u64,
    pub prefetched_bytes: u64,
    /// Reads that found a block a prefetcher brought in (once per prefetched block).
    pub prefetch_hits: u64,
    /// Reads of a block a prefetcher had in its window but had not brought in yet.
    pub prefetch_late: u64,
    /// Prefetches that failed (the reader will fetch the block itself).
    pub prefetch_failed: u64,
}

impl Counters {
    /// Hits over hits + misses (0 before any lookup).
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static BYTES_CACHE: AtomicU64 = AtomicU64::new(0);
static BYTES_UFS: AtomicU64 = AtomicU64::new(0);
static UFS_GETS: AtomicU64 = AtomicU64::new(0);
static UFS_LISTS: AtomicU64 = AtomicU64::new(0);
static UFS_HEADS: AtomicU64 = AtomicU64::new(0);
static UFS_ERRORS: AtomicU64 = AtomicU64::new(0);
static CORRUPT: AtomicU64 = AtomicU64::new(0);
static JOINS: AtomicU64 = AtomicU64::new(0);
static PEER_READS: AtomicU64 = AtomicU64::new(0);
static BYTES_PEERS: AtomicU64 = AtomicU64::new(0);
static PREFETCHED: AtomicU64 = AtomicU64::new(0);
static PREFETCHED_BYTES: AtomicU64 = AtomicU64::new(0);
static PREFETCH_HITS: AtomicU64 = AtomicU64::new(0);
static PREFETCH_LATE: AtomicU64 = AtomicU64::new(0);
static PREFETCH_FAILED: AtomicU64 = AtomicU64::new(0);

/// Reads every counter.
pub fn snapshot() -> Counters {
    Counters {
        hits: HITS.load(Relaxed),
        misses: MISSES.load(Relaxed),
        bytes_from_cache: BYTES_CACHE.load(Relaxed),
        bytes_from_ufs: BYTES_UFS.load(Relaxed),
        ufs_gets: UFS_GETS.load(Relaxed),
        ufs_lists: UFS_LISTS.load(Relaxed),
        ufs_heads: UFS_HEADS.load(Relaxed),
        ufs_errors: UFS_ERRORS.load(Relaxed),
        corrupt_blocks: CORRUPT.load(Relaxed),
        singleflight_joins: JOINS.load(Relaxed),
        peer_reads: PEER_READS.load(Relaxed),
        bytes_from_peers: BYTES_PEERS.load(Relaxed),
        prefetched: PREFETCHED.load(Relaxed),
        prefetched_bytes: PREFETCHED_BYTES.load(Relaxed),
        prefetch_hits: PREFETCH_HITS.load(Relaxed),
        prefetch_late: PREFETCH_LATE.load(Relaxed),
        prefetch_failed: PREFETCH_FAILED.load(Relaxed),
    }
}

pub(crate) fn hit(tier: &'static str, bytes: u64) {
    HITS.fetch_add(1, Relaxed);
    BYTES_CACHE.fetch_add(bytes, Relaxed);
    counter!("loaderd_cache_hits_total", "tier" => tier).increment(1);
    counter!("loaderd_cache_bytes_read_total", "source" => "cache").increment(bytes);
}

pub(crate) fn peer_hit(bytes: u64) {
    PEER_READS.fetch_add(1, Relaxed);
    BYTES_PEERS.fetch_add(bytes, Relaxed);
    counter!("loaderd_cache_bytes_read_total", "source" => "peer").increment(bytes);
}

pub(crate) fn miss(bytes: u64) {
    MISSES.fetch_add(1, Relaxed);
    BYTES_UFS.fetch_add(bytes, Relaxed);
    counter!("loaderd_cache_misses_total").increment(1);
    counter!("loaderd_cache_bytes_read_total", "source" => "ufs").increment(bytes);
}

pub(crate) fn eviction(tier: &'static str, reason: &'static str) {
    counter!("loaderd_cache_evictions_total", "tier" => tier, "reason" => reason).increment(1);
}

/// A prefetcher brought a block in; `how` is `fetched`, `promoted` or `warmed`.
pub(crate) fn prefetched(how: &'static str, bytes: u64) {
    PREFETCHED.fetch_add(1, Relaxed);
    PREFETCHED_BYTES.fetch_add(bytes, Relaxed);
    counter!("loaderd_prefetch_blocks_total", "how" => how).increment(1);
    counter!("loaderd_prefetch_bytes_total").increment(bytes);
}

pub(crate) fn prefetch_hit() {
    PREFETCH_HITS.fetch_add(1, Relaxed);
    counter!("loaderd_prefetch_hits_total").increment(1);
}

pub(crate) fn prefetch_late() {
    PREFETCH_LATE.fetch_add(1, Relaxed);
    counter!("loaderd_prefetch_late_total").increment(1);
}

pub(crate) fn prefetch_failed() {
    PREFETCH_FAILED.fetch_add(1, Relaxed);
    counter!("loaderd_prefetch_failed_total").increment(1);
}

pub(crate) fn corrupt_block() {
    CORRUPT.fetch_add(1, Relaxed);
    counter!("loaderd_cache_corrupt_blocks_total").increment(1);
}

/// A broken SSD block file found and deleted while the index was rebuilt at start.
pub(crate) fn ssd_dropped_at_start(reason: &'static str) {
    corrupt_block();
    counter!("loaderd_ssd_dropped_at_start_total", "reason" => reason).increment(1);
}

pub(crate) fn transient_lease(bytes: u64) {
    counter!("loaderd_cache_transient_leases_total").increment(1);
    counter!("loaderd_cache_transient_lease_bytes_total").increment(bytes);
}

pub(crate) fn passthrough(reason: &'static str) {
    counter!("loaderd_cache_passthrough_total", "reason" => reason).increment(1);
}

pub(crate) fn singleflight_join() {
    JOINS.fetch_add(1, Relaxed);
    counter!("loaderd_singleflight_joins_total").increment(1);
}

pub(crate) fn ufs_get(bytes: u64) {
    UFS_GETS.fetch_add(1, Relaxed);
    counter!("loaderd_ufs_requests_total", "op" => "get").increment(1);
    counter!("loaderd_ufs_bytes_total").increment(bytes);
}

pub(crate) fn ufs_list() {
    UFS_LISTS.fetch_add(1, Relaxed);
    counter!("loaderd_ufs_requests_total", "op" => "list").increment(1);
}

pub(crate) fn ufs_head() {
    UFS_HEADS.fetch_add(1, Relaxed);
    counter!("loaderd_ufs_requests_total", "op" => "head").increment(1);
}

pub(crate) fn ufs_retry() {
    counter!("loaderd_ufs_retries_total").increment(1);
}

pub(crate) fn ufs_error() {
    UFS_ERRORS.fetch_add(1, Relaxed);
    counter!("loaderd_ufs_errors_total").increment(1);
}
