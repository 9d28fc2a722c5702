//! One client's pipeline: dataset index → sampler → decode + augment workers → batch ring.
//!
//! A sample that cannot be read or decoded is skipped (named in the batch, counted in metrics;
//! the batch is compacted, so it holds fewer samples) or, with `on_error = fail`, fails its
//! batch and the loader. Dropping the session stops the workers and gives its shared memory
//! back to the budget.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loaderd_cache::{Cache, LogicalPath};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::dataset::{Dataset, DatasetError};
use crate::decode::DecodeLimits;
use crate::limits::{self, Plan};
use crate::registry::{BudgetError, LoaderInfo, Pipelines, Registration, Reservation};
use crate::ring::{BatchRing, Delivery, RingError, SlotMemory};
use crate::sampler::{Sampler, SamplerError, SamplerState};
use crate::schedule;
use crate::scheduled::{self, Slot, Then};
use crate::spec::{Batch, BatchError, LoaderSpec, Opened, RingMemory};
use crate::worker::{Metas, Recipe, Shared, Workers};
use loaderd_cache::sync::lock;

/// Why a loader cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("invalid loader request: {0}")]
    Invalid(String),
    #[error("{field} = {value} is over this daemon's limit of {limit} ({key})")]
    Limit {
        field: &'static str,
        value: u64,
        limit: u64,
        key: &'static str,
    },
    #[error(
        "cannot start decode thread {} of {want}: {source}; the {started} started were \
         stopped (the daemon's thread limit is reached: ask for fewer workers)",
        started + 1
    )]
    Threads {
        started: usize,
        want: usize,
        source: std::io::Error,
    },
}

/// A running pipeline for one client.
pub struct Session {
    /// The ring's client side (host or device memory).
    ring: Arc<dyn Delivery>,
    metas: Arc<Metas>,
    stop: Arc<AtomicBool>,
    workers: Workers,
    batches: u64,
    next: u64,
    opened: Opened,
    /// Set once a batch failed (`on_error = fail`): every later request gets this error.
    failed: Option<String>,
    registration: Registration,
    /// This loader's future reads, registered with the cache while it is open (once built),
    /// and the prefetcher following them; both stop with the session.
    schedule: Option<Arc<Slot>>,
}

/// The dataset indexed and this rank's order drawn, counted in the loader's reservation.
pub(crate) struct Indexed {
    pub root: LogicalPath,
    pub dataset: Arc<Dataset>,
    pub indices: Arc<Vec<u64>>,
    pub world: u32,
}

/// A loader admitted and indexed, before its ring and workers exist.
pub(crate) struct Admitted {
    pub indexed: Indexed,
    pub batches: u64,
    pub registration: Registration,
    pub schedule: Option<Arc<Slot>>,
}

impl Admitted {
    /// What its workers share, filling `ring`.
    pub fn shared<M: SlotMemory>(
        &self,
        cache: &Arc<Cache>,
        rt: &Handle,
        ring: Arc<BatchRing<M>>,
    ) -> Arc<Shared<M>> {
        Shared::new(
            (cache, rt),
            &self.indexed.dataset,
            &self.indexed.indices,
            ring,
            self.registration.stats(),
            self.schedule.clone(),
        )
    }
}

/// How the workers make every sample of `req` as `plan` checked it, in an epoch of `batches`.
pub(crate) fn recipe(plan: &Plan, req: &LoaderSpec, limits: DecodeLimits, batches: u64) -> Recipe {
    Recipe {
        spec: plan.spec,
        limits,
        on_error: plan.on_error,
        predecoded: req.predecoded,
        batch: plan.batch,
        batches,
        seed: req.seed,
        epoch: req.epoch,
    }
}

impl Session {
    /// Checks the request against every limit, reserves its memory and threads, indexes the
    /// dataset, builds the ring and starts the workers. Nothing is indexed or allocated before
    /// the limits and budgets pass, and a start that fails midway stops every worker it
    /// started and gives the reservation back.
    ///
    /// A request for a CUDA device is served by GPU workers into a device ring when the
    /// daemon has that device open; otherwise (gpu.mode = off, no driver, no such device, or
    /// the device could not take the loader) from the CPU into a host ring, saying why in
    /// [`Opened::gpu_reason`] and status.
    pub fn open(
        cache: &Arc<Cache>,
        pipelines: &Arc<Pipelines>,
        rt: &Handle,
        req: &LoaderSpec,
    ) -> Result<Self, SessionError> {
        let plan = limits::plan(req, pipelines.config())?;
        let gpu_reason = match req.cuda_device {
            None => None,
            Some(n) => match crate::gpu::open(cache, pipelines, rt, req, &plan, n)? {
                Ok(session) => return Ok(session),
                Err(reason) => {
                    warn!(device = n, %reason, "CUDA loader served from the CPU");
                    metrics::counter!("loaderd_pipeline_gpu_fallback_loaders_total").increment(1);
                    Some(reason)
                }
            },
        };
        Self::open_cpu(cache, pipelines, rt, req, &plan, gpu_reason)
    }

    /// The CPU path: decode threads into a host ring.
    fn open_cpu(
        cache: &Arc<Cache>,
        pipelines: &Arc<Pipelines>,
        rt: &Handle,
        req: &LoaderSpec,
        plan: &Plan,
        gpu_reason: Option<String>,
    ) -> Result<Self, SessionError> {
        let config = pipelines.config();
        // Before indexing (which may LIST a whole bucket): an over-budget request costs nothing.
        let reservation = pipelines.reserve(plan.fixed_bytes, plan.workers)?;
        let info = LoaderInfo {
            device: "cpu".into(),
            gpu_reason: gpu_reason.clone().unwrap_or_default(),
            ..LoaderInfo::default()
        };
        let admitted = admit(cache, rt, req, plan, reservation, info)?;
        let ring = Arc::new(BatchRing::new(
            "loaderd-batches",
            plan.depth,
            plan.slot_bytes,
        )?);
        let shared = admitted.shared(cache, rt, ring.clone());
        let limits = DecodeLimits {
            max_pixels: config.max_pixels,
        };
        let recipe = recipe(plan, req, limits, admitted.batches);
        // On failure the registration drops too, giving the memory and threads back.
        let workers = Workers::start(&shared, recipe, plan.workers)
            .map_err(|(started, source)| threads_error(started, plan.workers, source))?;
        let mut opened = opened(plan, &admitted);
        opened.gpu_reason = gpu_reason;
        Ok(Self::running(
            ring,
            &shared.metas,
            &shared.stop,
            workers,
            opened,
            admitted,
        ))
    }

    /// A started loader: its ring's client side, the metadata and stop flag its workers
    /// share, and the workers.
    pub(crate) fn running(
        ring: Arc<dyn Delivery>,
        metas: &Arc<Metas>,
        stop: &Arc<AtomicBool>,
        workers: Workers,
        opened: Opened,
        admitted: Admitted,
    ) -> Self {
        let Admitted {
            indexed,
            batches,
            registration,
            schedule,
        } = admitted;
        info!(
            dataset = %indexed.root,
            name = %registration.stats().info().name,
            device = %registration.stats().info().device,
            samples = indexed.indices.len(),
            batches,
            batch_bytes = opened.slot_bytes,
            depth = opened.depth,
            workers = workers.len(),
            "loader opened"
        );
        Session {
            ring,
            metas: metas.clone(),
            stop: stop.clone(),
            workers,
            batches,
            next: 0,
            opened,
            failed: None,
            registration,
            schedule,
        }
    }

    /// What the client needs to map and interpret the ring.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// A new descriptor of the ring's memory for the client: the memfd of a host ring (read
    /// only), the POSIX fd of a device ring's CUDA allocation.
    pub fn descriptor(&self) -> Result<OwnedFd, RingError> {
        self.ring.descriptor()
    }

    /// Releases `release` (if any) and waits for the next batch in order; `None` once the
    /// epoch is over.
    pub fn next(&mut self, release: Option<usize>) -> Result<Option<Batch>, BatchError> {
        let stats = self.registration.stats().clone();
        stats.requested();
        let ring = &self.ring;
        if let Some(slot) = release {
            ring.release(slot)?;
        }
        if let Some(failed) = &self.failed {
            return Err(BatchError::Failed(failed.clone()));
        }
        if self.next >= self.batches {
            return Ok(None);
        }
        let seq = self.next;
        let asked = Instant::now();
        let slot = loop {
            if let Some(slot) = ring.deliver(seq, Duration::from_millis(200)) {
                break slot;
            }
            if self.workers.all_finished() {
                return Err(BatchError::WorkersStopped);
            }
        };
        stats.delivered(asked.elapsed());
        self.next += 1;
        if let Some(s) = self.schedule.as_ref().and_then(|s| s.get()) {
            s.delivered(self.next);
        }
        let meta = lock(&self.metas).remove(&seq).unwrap_or_default();
        if let Some(failed) = meta.failed {
            // The client never sees this slot: free it, stop decoding, fail from now on.
            let _ = ring.release(slot);
            self.stop.store(true, Ordering::SeqCst);
            self.failed = Some(failed.clone());
            return Err(BatchError::Failed(failed));
        }
        Ok(Some(Batch {
            seq,
            slot: slot as u32,
            labels: meta.labels,
            keys: meta.keys,
            skipped: meta.skipped,
        }))
    }
}

/// Indexes the dataset and draws this rank's order under `reservation` (grown by what both
/// hold), then registers the loader with `info` (its name, dataset, rank and sizes filled in
/// here).
pub(crate) fn admit(
    cache: &Arc<Cache>,
    rt: &Handle,
    req: &LoaderSpec,
    plan: &Plan,
    mut reservation: Reservation,
    info: LoaderInfo,
) -> Result<Admitted, SessionError> {
    let pipelines = reservation.pipelines().clone();
    let indexed = index(cache, rt, req, &mut reservation)?;
    let batches = indexed.indices.len().div_ceil(plan.batch) as u64;
    let schedule = scheduled::reserve(cache, &indexed.dataset, &mut reservation);
    let registration = reservation.register(LoaderInfo {
        name: if req.name.is_empty() {
            format!("rank {}/{}", req.rank, indexed.world)
        } else {
            req.name.clone()
        },
        dataset: indexed.root.to_string(),
        rank: req.rank,
        world_size: indexed.world,
        epoch: req.epoch,
        batches,
        depth: plan.depth as u32,
        ..info
    });
    if let Some(slot) = &schedule {
        let prefetching = pipelines.prefetching();
        let then = Then {
            prefetch: prefetching.config.enabled.then(|| prefetching.clone()),
            stats: registration.stats().prefetch().clone(),
            announce: req.clone(),
        };
        let sp = schedule::Plan {
            dataset: req.dataset.clone(),
            drop_last: req.drop_last,
            seed: req.seed,
            epoch: req.epoch,
            shuffle: req.shuffle,
            consumed: req.consumed,
            batch: plan.batch as u64,
            rank: u64::from(req.rank),
            world: u64::from(indexed.world),
        };
        // Built after this returns, while the loader answers its client and runs.
        scheduled::start(slot, cache, rt, &indexed.dataset, sp, then);
    }
    Ok(Admitted {
        indexed,
        batches,
        registration,
        schedule,
    })
}

/// The error of a decode thread that did not start (the threads started before it were
/// stopped).
pub(crate) fn threads_error(started: usize, want: usize, source: std::io::Error) -> SessionError {
    metrics::counter!("loaderd_pipeline_open_refusals_total", "reason" => "threads").increment(1);
    SessionError::Threads {
        started,
        want,
        source,
    }
}

/// Indexes the dataset and draws this rank's order, growing the reservation by what both
/// hold in memory.
fn index(
    cache: &Arc<Cache>,
    rt: &Handle,
    req: &LoaderSpec,
    reservation: &mut Reservation,
) -> Result<Indexed, SessionError> {
    let root = LogicalPath::parse(&req.dataset)
        .map_err(|e| SessionError::Dataset(DatasetError::Cache(e)))?;
    let dataset = Arc::new(rt.block_on(Dataset::index(cache, &root))?);
    let state = SamplerState {
        seed: req.seed,
        epoch: req.epoch,
        consumed: req.consumed,
    };
    let world = req.world_size.max(1);
    let sampler = Sampler::new(
        dataset.len() as u64,
        state,
        u64::from(req.rank),
        u64::from(world),
        req.shuffle,
        req.drop_last,
    )?;
    let indices: Arc<Vec<u64>> = Arc::new(sampler.indices().to_vec());
    let index_bytes = dataset
        .heap_bytes()
        .saturating_add((indices.len() * std::mem::size_of::<u64>()) as u64);
    reservation.grow(index_bytes)?;
    Ok(Indexed {
        root,
        dataset,
        indices,
        world,
    })
}

/// What a host ring's client needs (a device ring's session sets `memory` and `ring_bytes`).
pub(crate) fn opened(plan: &Plan, admitted: &Admitted) -> Opened {
    let (indexed, batches) = (&admitted.indexed, admitted.batches);
    Opened {
        slot_bytes: plan.slot_bytes as u64,
        depth: plan.depth as u32,
        batches,
        dataset_len: indexed.dataset.len() as u64,
        sample_shape: plan.spec.layout.sample_shape(plan.spec.size),
        dtype: plan.spec.layout.dtype(),
        sample_bytes: plan.sample_bytes as u64,
        samples: indexed.indices.len() as u64,
        memory: RingMemory::Host,
        ring_bytes: plan.slot_bytes as u64 * plan.depth as u64,
        gpu_reason: None,
    }
}
