//! The block cache over the unified namespace: the one entry point the daemon uses.
//!
//! A block read tries the node's [`TierStack`] (memory, then SSD, never moving the block
//! between them), then a peer that owns it ([`remote`]), then fetches from the UFS.
//! Concurrent misses on one block share a single fetch ([`InFlight`]): the first reader
//! spawns it, later readers join. The spawned fetch finishes even if every reader goes away,
//! so no work is wasted by a cancelled client. Fetches hold permits of the in-flight byte
//! budget, so a burst of misses waits instead of growing memory without bound. The fetched
//! block goes to the memory tier before the readers are answered and to the SSD tier right
//! after, with the fetch still in flight, so a reader arriving meanwhile joins instead of
//! fetching again. Shared-memory clients get blocks as arena leases ([`Cache::lease_block`]),
//! a block outside the memory tier in a transient lease filled from its one read.
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tracing::{Instrument, debug, info_span};

use crate::block::{BlockId, BlockRef, blocks_for};
use crate::budget::{BudgetPermit, InflightBudget};
use crate::cluster::Cluster;
use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::evict::NextUseOracle;
use crate::inflight::{EndOnDrop, InFlight, Ticket};
use crate::meta::{DirEntry, Metadata, Stat};
use crate::mount::{Mount, MountSpec, MountTable, Resolved};
use crate::path::LogicalPath;
use crate::prefetch::{Ewma, Ledger, LinkRate, Served};
use crate::stats;
use crate::tier::{Lease, MemoryTier, TierStack, TierStatus};
use crate::ufs::FileMeta;

mod load;
mod prefetch;
mod remote;
pub use load::LoadProgress;
pub use prefetch::{PrefetchGauge, Prefetched};
use remote::Keep;

/// How a read treats the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadType {
    /// Cache blocks on a miss; hits never move blocks between tiers.
    #[default]
    Cache,
    /// Use cached blocks when present, otherwise read the UFS without caching.
    NoCache,
}

/// An open file: its mount and the metadata every block id is derived from.
#[derive(Debug, Clone)]
pub struct FileHandle {
    pub path: LogicalPath,
    pub mount: Arc<Mount>,
    pub meta: FileMeta,
}

impl FileHandle {
    /// The bytes of a read of `length` bytes (0: to the end) from `offset`, clipped to the
    /// file; an offset past the end is [`Error::Range`] (OUT_OF_RANGE, on every path).
    pub fn span(&self, offset: u64, length: u64) -> Result<Range<u64>> {
        let size = self.meta.size;
        if offset > size {
            return Err(Error::Range {
                path: self.path.to_string(),
                offset,
                length,
                size,
            });
        }
        Ok(match length {
            0 => offset..size,
            n => offset..offset.saturating_add(n).min(size),
        })
    }
}

/// Everything `Status` reports.
#[derive(Debug, Clone)]
pub struct CacheStatus {
    pub tiers: Vec<TierStatus>,
    pub counters: stats::Counters,
    pub block_size: u64,
    pub metadata_entries: u64,
    pub metadata_bytes: u64,
    pub inflight_bytes: u64,
    pub inflight_capacity: u64,
    /// Prefetch bytes in flight now, and the most at once since start.
    pub prefetch_inflight: (u64, u64),
    pub uptime: Duration,
}

/// A block fetch's outcome, shared by every reader that joined it.
type Fetched = std::result::Result<Bytes, Arc<Error>>;

/// The cache.
pub struct Cache {
    cfg: CacheConfig,
    mounts: MountTable,
    meta: Metadata,
    /// Memory, then SSD: the read order (see [`TierStack`]).
    tiers: Arc<TierStack>,
    /// Block fetches in flight, one per block; each ends when its tier writes are done.
    fetches: Arc<InFlight<BlockId, Fetched>>,
    /// The in-flight fetch budget, with a reserve per mount (see [`crate::budget`]).
    budget: Arc<InflightBudget>,
    started: Instant,
    /// Set when this node is part of a cluster: blocks it does not own come from peers.
    cluster: OnceLock<Arc<Cluster>>,
    /// The schedules that tell the clairvoyant policy when each block is next read.
    oracle: Arc<NextUseOracle>,
    /// Which blocks prefetchers planned, started or brought in (hits and late prefetches).
    ledger: Arc<Ledger>,
    /// This node's block fetches from the UFS and from peers: how long one takes.
    latency: Arc<Ewma>,
    /// This node's UFS link: bytes a second while busy.
    link: Arc<LinkRate>,
    /// Prefetch bytes in flight now, and the most at once since start.
    prefetching: PrefetchGauge,
}

impl Cache {
    /// Builds the tiers (rebuilding the SSD index) and the mounts of `specs`.
    pub fn open(cfg: CacheConfig, specs: Vec<MountSpec>) -> Result<Arc<Self>> {
        cfg.validate()?;
        let oracle = NextUseOracle::new();
        let tiers = Arc::new(TierStack::open(&cfg, &oracle)?);
        let mounts = MountTable::default();
        let budget =
            InflightBudget::new(cfg.ufs.max_inflight_bytes.0, cfg.ufs.mount_reserved_bytes.0);
        for spec in specs {
            budget.add_mount(&mounts.add(spec, &cfg.ufs)?);
        }
        Ok(Arc::new(Cache {
            meta: Metadata::new(
                cfg.metadata.clone(),
                cfg.ssd.as_ref().map(|s| s.dir.clone()),
            ),
            tiers,
            mounts,
            fetches: Arc::default(),
            budget,
            started: Instant::now(),
            cluster: OnceLock::new(),
            oracle,
            ledger: Arc::default(),
            latency: Arc::default(),
            link: Arc::default(),
            prefetching: PrefetchGauge::default(),
            cfg,
        }))
    }

    /// Makes this cache a cluster node: from now on only blocks it owns are cached here, and
    /// others are read from their owners. Set once, at start.
    pub fn join_cluster(&self, cluster: Arc<Cluster>) -> Result<()> {
        if self.cfg.eviction == crate::config::Eviction::Clairvoyant {
            // Other nodes' loaders' schedules feed this node's eviction of the blocks it owns.
            cluster.schedules().attach_oracle(self.oracle.clone());
        }
        self.cluster
            .set(cluster)
            .map_err(|_| Error::Membership("this cache is already in a cluster".into()))
    }

    /// The cluster this node is in, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The configuration in force.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// The mount table.
    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }

    /// The next-use oracle of both tiers: register a schedule's [`crate::evict::NextUse`]
    /// here for the clairvoyant policy to evict by it (it stays while the registration lives).
    pub fn next_use(&self) -> &Arc<NextUseOracle> {
        &self.oracle
    }

    /// The memory tier (its arena can be shared with other processes).
    pub fn memory(&self) -> &Arc<MemoryTier> {
        self.tiers.memory()
    }

    /// Whether any tier of this node holds block `id` (no I/O).
    pub fn holds(&self, id: BlockId) -> bool {
        self.tiers.contains(id)
    }

    /// Mounts `spec` at runtime, if `policy` allows it.
    pub fn mount_add(
        &self,
        spec: MountSpec,
        policy: &crate::mount::RuntimeMountPolicy,
    ) -> Result<Arc<Mount>> {
        let m = self.mounts.add_runtime(spec, &self.cfg.ufs, policy)?;
        self.budget.add_mount(&m);
        Ok(m)
    }

    /// Removes the mount at `path`; its cached blocks age out by eviction.
    pub fn mount_remove(&self, path: &LogicalPath) -> Result<()> {
        let m = self.mounts.remove(path)?;
        self.budget.remove_mount(&m);
        self.meta.invalidate(&m, "");
        Ok(())
    }

    /// What `path` is.
    pub async fn stat(&self, path: &LogicalPath) -> Result<Stat> {
        match self.mounts.resolve(path)? {
            Resolved::Virtual(_) => Ok(Stat::Dir),
            Resolved::InMount(m, rel) => self.meta.stat(&m, &rel).await,
        }
    }

    /// The children of `path` (files and directories), or with `recursive` every file below it.
    pub async fn list(
        &self,
        path: &LogicalPath,
        recursive: bool,
    ) -> Result<Vec<(LogicalPath, Stat)>> {
        match self.mounts.resolve(path)? {
            Resolved::Virtual(children) if !recursive => children
                .into_iter()
                .map(|c| Ok((path.join(&c)?, Stat::Dir)))
                .collect(),
            Resolved::Virtual(children) => {
                let mut out = Vec::new();
                for c in children {
                    out.extend(Box::pin(self.list(&path.join(&c)?, true)).await?);
                }
                Ok(out)
            }
            Resolved::InMount(m, rel) => {
                match self.meta.stat(&m, &rel).await? {
                    Stat::File(f) => return Ok(vec![(path.clone(), Stat::File(f))]),
                    Stat::Dir => {}
                }
                if recursive {
                    self.meta
                        .walk(&m, &rel)
                        .await?
                        .into_iter()
                        .map(|f| Ok((m.point.join(&f.rel)?, Stat::File(f))))
                        .collect()
                } else {
                    self.meta
                        .list(&m, &rel)
                        .await?
                        .into_iter()
                        .map(|DirEntry { name, stat }| Ok((path.join(&name)?, stat)))
                        .collect()
                }
            }
        }
    }

    /// Opens a file for reading (metadata only; no UFS request with a manifest).
    pub async fn open_file(&self, path: &LogicalPath) -> Result<FileHandle> {
        match self.mounts.resolve(path)? {
            Resolved::Virtual(_) => Err(Error::IsDirectory {
                path: path.to_string(),
            }),
            Resolved::InMount(mount, rel) => match self.meta.stat(&mount, &rel).await? {
                Stat::Dir => Err(Error::IsDirectory {
                    path: path.to_string(),
                }),
                Stat::File(meta) => Ok(FileHandle {
                    path: path.clone(),
                    mount,
                    meta,
                }),
            },
        }
    }

    /// Opens a file for a read pinned to `version` (empty: whatever is current): a different
    /// current version, or the object gone, is [`Error::VersionChanged`], so a read continued
    /// in pieces (shared-memory fallbacks, one request per piece) never mixes two versions.
    pub async fn open_file_at(&self, path: &LogicalPath, version: &str) -> Result<FileHandle> {
        let changed = |new: String| Error::VersionChanged {
            path: path.to_string(),
            old: version.to_string(),
            new,
        };
        match self.open_file(path).await {
            Ok(fh) if version.is_empty() || fh.meta.version == version => Ok(fh),
            Ok(fh) => Err(changed(fh.meta.version)),
            Err(Error::NotFound { .. }) if !version.is_empty() => Err(changed(String::new())),
            Err(e) => Err(e),
        }
    }

    /// The blocks covering `range` of `fh`.
    pub fn blocks(&self, fh: &FileHandle, range: Range<u64>) -> Vec<BlockRef> {
        blocks_for(fh.mount.ufs.uri(), &fh.meta, self.cfg.block_size.0, range)
    }

    /// Bytes of `fh` held by any tier.
    pub fn cached_bytes(&self, fh: &FileHandle) -> u64 {
        self.blocks(fh, 0..fh.meta.size)
            .iter()
            .filter(|b| self.is_cached(b.id))
            .map(|b| b.len())
            .sum()
    }

    fn is_cached(&self, id: BlockId) -> bool {
        self.tiers.contains(id)
    }

    /// Streams bytes `range` of `fh` in order, `readahead` blocks fetched ahead.
    pub fn read(
        self: &Arc<Self>,
        fh: FileHandle,
        range: Range<u64>,
        read_type: ReadType,
        readahead: usize,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        let range = fh.span(range.start, 0)?.start..range.end.min(fh.meta.size);
        let blocks = self.blocks(&fh, range.clone());
        let this = self.clone();
        let fh = Arc::new(fh);
        Ok(futures::stream::iter(blocks)
            .map(move |b| {
                let (this, fh, range) = (this.clone(), fh.clone(), range.clone());
                async move {
                    let data = this.get_block(&fh, &b, read_type).await?;
                    let at = b.range.start + b.part(&range).start;
                    Ok((at, b.slice(&data, &range)))
                }
            })
            .buffered(readahead.max(1)))
    }

    /// One block of `fh`, from a tier or the UFS. An object found changed in the UFS has its
    /// metadata refreshed before the error is returned, so a retry reads the new version.
    pub async fn get_block(
        &self,
        fh: &FileHandle,
        b: &BlockRef,
        read_type: ReadType,
    ) -> Result<Bytes> {
        let res = self.fetch_block(fh, b, read_type).await;
        let res = res.map(|(data, served)| {
            self.served(b, served);
            data
        });
        self.refreshed(fh, res).await
    }

    /// `res`, or when it found `fh`'s object changed in the UFS, the metadata refreshed and an
    /// error naming both versions.
    async fn refreshed(&self, fh: &FileHandle, res: Result<Bytes>) -> Result<Bytes> {
        let e = match res {
            Err(e) if matches!(e.root(), Error::Changed { .. }) => e,
            other => return other,
        };
        match self.meta.refresh_file(&fh.mount, &fh.meta.rel).await {
            Ok(fresh) => Err(Error::VersionChanged {
                path: fh.path.to_string(),
                old: fh.meta.version.clone(),
                new: fresh.map(|f| f.version).unwrap_or_default(),
            }),
            Err(_) => Err(e),
        }
    }

    /// Block `b` pinned in the memory tier's arena, for a shared-memory client. A block the
    /// memory tier does not hold after one read (on SSD only, owned by a peer, or not admitted)
    /// is copied from that read into a transient lease (see [`MemoryTier::transient`]): the
    /// client maps it like a cached block, the memory tier's contents stay as a CACHE read
    /// leaves them, and the slot is freed when the client releases the read. `None` only
    /// when the arena has no room for that copy: the caller's fallback reads it again.
    pub async fn lease_block(&self, fh: &FileHandle, b: &BlockRef) -> Result<Option<Lease>> {
        let memory = self.tiers.memory();
        if let Some(lease) = memory.lease(b.id) {
            stats::hit("memory", lease.len());
            self.served(b, Served::Tier);
            return Ok(Some(lease));
        }
        let data = self.get_block(fh, b, ReadType::Cache).await?;
        if let Some(lease) = memory.lease(b.id) {
            return Ok(Some(lease));
        }
        Ok(memory.transient(&data))
    }

    /// Block `b` and where it came from (not yet counted as a read: see [`Cache::served`]).
    async fn fetch_block(
        &self,
        fh: &FileHandle,
        b: &BlockRef,
        read_type: ReadType,
    ) -> Result<(Bytes, Served)> {
        if let Some(data) = self.tiers.get(b).await {
            return Ok((data, Served::Tier));
        }
        match self.cluster() {
            Some(c) if !c.owns(b.id) => {
                let keep = Keep::Nothing;
                let data = self.fetch_remote(c, fh, b, read_type, keep).await?;
                let data = data.ok_or_else(|| Error::Membership("no data from a peer".into()))?;
                Ok((data, Served::Peer))
            }
            _ => self.fetch_owned(fh, b, read_type).await,
        }
    }

    /// A block this node owns (or every block, outside a cluster): single-flight UFS fetch.
    async fn fetch_owned(
        &self,
        fh: &FileHandle,
        b: &BlockRef,
        read_type: ReadType,
    ) -> Result<(Bytes, Served)> {
        let (mut hit, mut task) = (None, None);
        let flight = self.fetches.join_or_start(&b.id, |ticket| {
            if read_type == ReadType::NoCache {
                return None;
            }
            // Re-check under the lock: a fetch may have completed since the tier check.
            hit = self.tiers.get_memory(b);
            if hit.is_some() {
                return None;
            }
            let (fetched, run) = self.fetch_task(fh, b, ticket);
            task = Some(run);
            Some(fetched)
        });
        // Spawned once the flight is registered and its lock released (a task dropped at
        // once, by a runtime shutting down, ends its flight from its drop).
        if let Some(task) = task {
            tokio::spawn(task);
        }
        match (flight, hit) {
            (Some(flight), _) => {
                let served = if flight.joined {
                    stats::singleflight_join();
                    Served::Joined
                } else {
                    Served::Fetched
                };
                let data = flight.result.await.map_err(Error::Shared)?;
                Ok((data, served))
            }
            (None, Some(data)) => Ok((data, Served::Tier)),
            (None, None) => {
                let _permit = self.reserve(fh, b.len()).await;
                let data = fh.mount.ufs.get_range(&fh.meta, b.range.clone()).await?;
                stats::miss(b.len());
                Ok((data, Served::Fetched))
            }
        }
    }

    /// `len` bytes of the in-flight budget, charged to `fh`'s mount.
    async fn reserve(&self, fh: &FileHandle, len: u64) -> BudgetPermit {
        self.budget.acquire(&fh.mount, len.max(1)).await
    }

    /// The fetch of flight `ticket`: its result for the readers, and the task to spawn. The
    /// task runs to its end even if every reader goes away, puts the block in the memory tier
    /// before answering and in the SSD tier after, and ends the flight when it ends (finished
    /// or dropped).
    fn fetch_task(
        &self,
        fh: &FileHandle,
        b: &BlockRef,
        ticket: &Ticket<BlockId>,
    ) -> (
        impl Future<Output = Fetched> + Send + use<>,
        impl Future<Output = ()> + Send + use<>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let budget = self.budget.clone();
        let tiers = self.tiers.clone();
        let (mount, meta, block) = (fh.mount.clone(), fh.meta.clone(), b.clone());
        let span = info_span!("fetch_block", path = %fh.path, block = block.index);
        let flight = EndOnDrop::new(self.fetches.clone(), ticket);
        let (latency, link) = (self.latency.clone(), self.link.clone());
        let task = async move {
            let _flight = flight;
            let len = block.len();
            let _permit = budget.acquire(&mount, len.max(1)).await;
            let started = Instant::now();
            let on_link = link.begin();
            let res = mount.ufs.get_range(&meta, block.range.clone()).await;
            latency.record(started.elapsed());
            on_link.done(res.as_ref().map_or(0, |d| d.len() as u64));
            if let Ok(data) = &res {
                stats::miss(len);
                tiers.put_memory(block.id, data);
            }
            let shared = res.map_err(Arc::new);
            let _ = tx.send(shared.clone());
            if let Ok(data) = &shared {
                tiers.put_lower(block.id, data).await;
            }
            if let Err(e) = shared {
                debug!(error = %e, "block fetch failed");
            }
        }
        .instrument(span);
        let fetched = rx.map(|r| r.unwrap_or_else(|_| Err(Arc::new(Error::FetchDropped))));
        (fetched, task)
    }

    /// Drops every cached block of the files under `path`: (blocks, bytes) freed.
    pub async fn free(&self, path: &LogicalPath) -> Result<(u64, u64)> {
        let (mut blocks, mut bytes) = (0, 0);
        for fh in self.files_under(path).await? {
            for b in self.blocks(&fh, 0..fh.meta.size) {
                if self.tiers.remove(b.id) {
                    blocks += 1;
                    bytes += b.len();
                }
            }
        }
        Ok((blocks, bytes))
    }

    /// Drops cached metadata for `path` (and the manifest of its mount).
    pub fn invalidate(&self, path: &LogicalPath) -> Result<u64> {
        match self.mounts.resolve(path)? {
            Resolved::InMount(m, rel) => Ok(self.meta.invalidate(&m, &rel)),
            Resolved::Virtual(_) => Ok(self
                .mounts
                .list()
                .iter()
                .filter(|m| m.point.strip_prefix(path).is_some())
                .map(|m| self.meta.invalidate(m, ""))
                .sum()),
        }
    }

    async fn files_under(&self, path: &LogicalPath) -> Result<Vec<FileHandle>> {
        let mut out = Vec::new();
        for (p, stat) in self.list(path, true).await? {
            if let Stat::File(meta) = stat {
                let Resolved::InMount(mount, _) = self.mounts.resolve(&p)? else {
                    continue;
                };
                out.push(FileHandle {
                    path: p,
                    mount,
                    meta,
                });
            }
        }
        Ok(out)
    }

    /// Usage and counters.
    pub fn status(&self) -> CacheStatus {
        let (entries, bytes) = self.meta.usage();
        let (inflight_bytes, inflight_capacity) = self.budget.usage();
        CacheStatus {
            tiers: self.tiers.status(),
            counters: stats::snapshot(),
            block_size: self.cfg.block_size.0,
            metadata_entries: entries,
            metadata_bytes: bytes,
            inflight_bytes,
            inflight_capacity,
            prefetch_inflight: self.prefetching.get(),
            uptime: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod eviction_tests;
#[cfg(test)]
mod tests;
