//! The gRPC `Loader` service over the cache.
//!
//! Every handler parses and normalizes the logical path first, so nothing reaches the cache
//! that could escape a mount. Cache errors become `tonic::Status` in exactly one place
//! ([`to_status`]), by error class.

use crate::auth::Access;
use crate::shm::clients::ShmClients;
use crate::shm::loader_status;
use loaderd_cache::mount::RuntimeMountPolicy;
use loaderd_pipeline::Pipelines;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use loaderd_cache::cluster::service::{node_status, tier_status};
use loaderd_cache::{Cache, Error, LogicalPath, MountSpec, ReadType, Stat};
use loaderd_proto::v1 as pb;
use loaderd_proto::v1::loader_server::Loader;
use metrics::histogram;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

/// Largest data chunk per streamed message.
pub const CHUNK: usize = 2 << 20;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct LoaderService {
    cache: Arc<Cache>,
    pipelines: Arc<Pipelines>,
    gpu: pb::GpuStatus,
    readahead: usize,
    load_parallelism: usize,
    access: Access,
    mount_policy: Arc<RuntimeMountPolicy>,
    /// Shared-memory clients, for the leased bytes in status.
    shm_clients: Option<Arc<ShmClients>>,
}

impl LoaderService {
    /// Admin calls only for the callers `access` names; runtime mounts only as `policy`
    /// allows (the default: admins are uid 0 and the daemon's uid, no runtime mounts).
    pub fn with_access(mut self, access: Access, policy: RuntimeMountPolicy) -> Self {
        self.access = access;
        self.mount_policy = Arc::new(policy);
        self
    }

    fn mount_infos(&self) -> Vec<pb::MountInfo> {
        self.cache
            .mounts()
            .list()
            .iter()
            .map(|m| mount_info(&m.spec))
            .collect()
    }

    /// Serves `cache`.
    pub fn new(
        cache: Arc<Cache>,
        pipelines: Arc<Pipelines>,
        gpu: pb::GpuStatus,
        readahead: usize,
        load_parallelism: usize,
    ) -> Self {
        LoaderService {
            cache,
            pipelines,
            gpu,
            readahead,
            load_parallelism,
            access: Access::default(),
            mount_policy: Arc::default(),
            shm_clients: None,
        }
    }

    /// Shows `clients`' leases and connections in status.
    pub fn with_shm_clients(mut self, clients: Arc<ShmClients>) -> Self {
        self.shm_clients = Some(clients);
        self
    }
}

pub use loaderd_cache::error::to_status;

/// Like [`to_status`], naming the logical path when the error does not already.
pub fn status_at(path: &LogicalPath, e: &Error) -> Status {
    let s = to_status(e);
    if s.message().contains(path.as_str()) {
        s
    } else {
        Status::new(s.code(), format!("{path}: {}", s.message()))
    }
}

fn parse(path: &str) -> Result<LogicalPath, Status> {
    LogicalPath::parse(path).map_err(|e| to_status(&e))
}

/// The bits and owner the source gives `path` (`FileInfo.mode`), where it has any.
fn file_mode(cache: &Cache, path: &LogicalPath) -> Option<pb::FileMode> {
    let daemon = loaderd_fuse::Owner::process_ids();
    crate::fuse::perm::source_owner(cache, path, daemon).map(|o| pb::FileMode {
        perm: u32::from(o.perm),
        uid: o.uid,
        gid: o.gid,
    })
}

fn file_info(cache: &Cache, path: &LogicalPath, stat: &Stat) -> pb::FileInfo {
    match stat {
        Stat::Dir => pb::FileInfo {
            path: path.to_string(),
            is_dir: true,
            ..Default::default()
        },
        Stat::File(f) => {
            let fh = match cache.mounts().resolve(path) {
                Ok(loaderd_cache::mount::Resolved::InMount(mount, _)) => {
                    Some(loaderd_cache::FileHandle {
                        path: path.clone(),
                        mount,
                        meta: f.clone(),
                    })
                }
                _ => None,
            };
            pb::FileInfo {
                path: path.to_string(),
                is_dir: false,
                size: f.size,
                version: f.version.clone(),
                mtime_unix_ms: f.mtime_ms,
                cached_bytes: fh.as_ref().map_or(0, |fh| cache.cached_bytes(fh)),
                owners: match (cache.cluster(), &fh) {
                    (Some(c), Some(fh)) => cache
                        .blocks(fh, 0..fh.meta.size)
                        .iter()
                        .map(|b| c.owner(b.id).map(|m| m.id).unwrap_or_default())
                        .collect(),
                    _ => Vec::new(),
                },
                mode: None,
            }
        }
    }
}

fn mount_info(spec: &MountSpec) -> pb::MountInfo {
    pb::MountInfo {
        path: spec.path.clone(),
        uri: spec.uri.clone(),
        options: spec.redacted_options().into_iter().collect(),
    }
}

/// Records a Read's duration into the latency histogram when its stream is dropped.
struct ReadTimer(Instant);

impl Drop for ReadTimer {
    fn drop(&mut self) {
        histogram!("loaderd_read_latency_seconds", "api" => "grpc")
            .record(self.0.elapsed().as_secs_f64());
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Loader for LoaderService {
    async fn stat(&self, req: Request<pb::StatRequest>) -> Result<Response<pb::FileInfo>, Status> {
        let path = parse(&req.get_ref().path)?;
        let stat = self
            .cache
            .stat(&path)
            .await
            .map_err(|e| status_at(&path, &e))?;
        let mut info = file_info(&self.cache, &path, &stat);
        if req.get_ref().with_mode {
            info.mode = file_mode(&self.cache, &path);
        }
        Ok(Response::new(info))
    }

    type ListStream = BoxStream<pb::ListResponse>;

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.get_ref();
        let path = parse(&r.path)?;
        let span = info_span!("list", path = %path, recursive = r.recursive);
        let entries = self
            .cache
            .list(&path, r.recursive)
            .instrument(span.clone())
            .await
            .map_err(|e| status_at(&path, &e))?;
        span.in_scope(|| debug!(entries = entries.len(), "listed"));
        let (cache, with_mode) = (self.cache.clone(), r.with_mode);
        let pages = crate::list::pages(entries, r.page_size).map(move |mut page| {
            if with_mode {
                for e in &mut page.entries {
                    if let Ok(path) = LogicalPath::parse(&e.path) {
                        e.mode = file_mode(&cache, &path);
                    }
                }
            }
            Ok(page)
        });
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }

    type ReadStream = BoxStream<pb::ReadChunk>;

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let timer = ReadTimer(Instant::now());
        let r = req.into_inner();
        let path = parse(&r.path)?;
        let span = info_span!("read", path = %path, offset = r.offset, length = r.length);
        let fh = self
            .cache
            .open_file_at(&path, &r.version)
            .instrument(span.clone())
            .await
            .map_err(|e| status_at(&path, &e))?;
        let range = fh
            .span(r.offset, r.length)
            .map_err(|e| status_at(&path, &e))?;
        let read_type = match pb::ReadType::try_from(r.read_type) {
            Ok(pb::ReadType::NoCache) => ReadType::NoCache,
            _ => ReadType::Cache,
        };
        let blocks = self
            .cache
            .read(fh, range, read_type, self.readahead)
            .map_err(|e| status_at(&path, &e))?;
        let stream = blocks
            .flat_map(move |res| {
                let chunks: Vec<Result<pb::ReadChunk, Status>> = match res {
                    Err(e) => {
                        warn!(path = %path, error = %e, "read failed");
                        vec![Err(status_at(&path, &e))]
                    }
                    Ok((offset, data)) => (0..data.len())
                        .step_by(CHUNK)
                        .map(|at| {
                            Ok(pb::ReadChunk {
                                offset: offset + at as u64,
                                data: data.slice(at..(at + CHUNK).min(data.len())),
                            })
                        })
                        .collect(),
                };
                futures::stream::iter(chunks)
            })
            .inspect(move |_| {
                // Lives as long as the stream: recorded when the read ends or is dropped.
                let _ = &timer;
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type LoadStream = BoxStream<pb::LoadProgress>;

    async fn load(
        &self,
        req: Request<pb::LoadRequest>,
    ) -> Result<Response<Self::LoadStream>, Status> {
        let r = req.into_inner();
        let path = parse(&r.path)?;
        let parallelism = match r.parallelism {
            0 => self.load_parallelism,
            n => n as usize,
        };
        info!(path = %path, parallelism, local = r.local, "load started");
        let rx = self
            .cache
            .load(&path, parallelism, r.local)
            .await
            .map_err(|e| status_at(&path, &e))?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |p| {
            if p.done {
                info!(path = %path, files = p.files_done, failed = p.files_failed, bytes = p.bytes_done, not_cached = p.bytes_not_cached, "load finished");
            }
            Ok(pb::LoadProgress {
                files_total: p.files_total,
                files_done: p.files_done,
                bytes_total: p.bytes_total,
                bytes_done: p.bytes_done,
                bytes_cached_before: p.bytes_cached_before,
                files_failed: p.files_failed,
                done: p.done,
                first_error: p.first_error.unwrap_or_default(),
                blocks_not_cached: p.blocks_not_cached,
                bytes_not_cached: p.bytes_not_cached,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn free(
        &self,
        req: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        self.access.require_admin(&req, "free")?;
        let path = parse(&req.get_ref().path)?;
        let (blocks, bytes) = self
            .cache
            .free(&path)
            .await
            .map_err(|e| status_at(&path, &e))?;
        info!(path = %path, blocks, bytes, "freed");
        Ok(Response::new(pb::FreeResponse {
            blocks_freed: blocks,
            bytes_freed: bytes,
        }))
    }

    async fn invalidate(
        &self,
        req: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        self.access.require_admin(&req, "invalidate")?;
        let path = parse(&req.get_ref().path)?;
        let n = self.cache.invalidate(&path).map_err(|e| to_status(&e))?;
        info!(path = %path, entries = n, "metadata invalidated");
        Ok(Response::new(pb::InvalidateResponse { entries_dropped: n }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.cache.status();
        let c = s.counters;
        let (loaders, ring_bytes) = self.pipelines.status();
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: s.uptime.as_secs(),
            tiers: s.tiers.iter().map(tier_status).collect(),
            hits: c.hits,
            misses: c.misses,
            hit_ratio: c.hit_ratio(),
            bytes_from_ufs: c.bytes_from_ufs,
            bytes_from_cache: c.bytes_from_cache,
            block_size: s.block_size,
            metadata_entries: s.metadata_entries,
            metadata_bytes: s.metadata_bytes,
            inflight_bytes: s.inflight_bytes,
            inflight_capacity_bytes: s.inflight_capacity,
            mounts: self.mount_infos(),
            corrupt_blocks: c.corrupt_blocks,
            ufs_errors: c.ufs_errors,
            loaders: loaders.iter().map(loader_status).collect(),
            ring_bytes,
            ring_capacity_bytes: self.pipelines.config().max_total_bytes.0,
            cluster: match self.cache.cluster() {
                Some(c) => Some(c.status(node_status(&self.cache)).await),
                None => None,
            },
            gpu: Some(self.gpu.clone()),
            shm_leased_bytes: self.shm_clients.as_ref().map_or(0, |c| c.leased()),
            shm_leased_capacity_bytes: self
                .shm_clients
                .as_ref()
                .map_or(0, |c| c.limits().max_leased_total),
            shm_connections: self
                .shm_clients
                .as_ref()
                .map_or(0, |c| c.connections() as u64),
            prefetch: Some(prefetch_status(&s, &self.pipelines)),
        }))
    }

    async fn mount_add(
        &self,
        req: Request<pb::MountAddRequest>,
    ) -> Result<Response<pb::MountInfo>, Status> {
        self.access.require_admin(&req, "mount add")?;
        let r = req.into_inner();
        let spec = MountSpec {
            path: parse(&r.path)?.to_string(),
            uri: r.uri,
            options: r.options.into_iter().collect(),
        };
        let m = self
            .cache
            .mount_add(spec, &self.mount_policy)
            .map_err(|e| {
                if matches!(e, Error::NotAllowed { .. }) {
                    crate::auth::refused("mount", "mount_policy");
                    warn!(error = %e, "runtime mount refused");
                }
                to_status(&e)
            })?;
        info!(path = %m.point, uri = %m.spec.uri, "mounted");
        Ok(Response::new(mount_info(&m.spec)))
    }

    async fn mount_remove(
        &self,
        req: Request<pb::MountRemoveRequest>,
    ) -> Result<Response<pb::MountRemoveResponse>, Status> {
        self.access.require_admin(&req, "mount rm")?;
        let path = parse(&req.get_ref().path)?;
        self.cache.mount_remove(&path).map_err(|e| to_status(&e))?;
        info!(path = %path, "unmounted");
        Ok(Response::new(pb::MountRemoveResponse {}))
    }

    async fn mount_list(
        &self,
        _: Request<pb::MountListRequest>,
    ) -> Result<Response<pb::MountListResponse>, Status> {
        Ok(Response::new(pb::MountListResponse {
            mounts: self.mount_infos(),
        }))
    }
}

/// Prefetch on this node, for `Status`.
fn prefetch_status(s: &loaderd_cache::CacheStatus, pipelines: &Pipelines) -> pb::PrefetchStatus {
    let c = &s.counters;
    let p = pipelines.prefetching();
    pb::PrefetchStatus {
        enabled: p.config.enabled,
        prefetched_blocks: c.prefetched,
        prefetched_bytes: c.prefetched_bytes,
        hits: c.prefetch_hits,
        late: c.prefetch_late,
        failed: c.prefetch_failed,
        inflight_bytes: s.prefetch_inflight.0,
        peak_inflight_bytes: s.prefetch_inflight.1,
        ahead_bytes: p.total.used(),
        max_bytes: p.config.max_bytes.0,
    }
}
