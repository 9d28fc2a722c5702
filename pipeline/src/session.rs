//! One client's pipeline: dataset index → sampler → decode + augment workers → batch ring.
//!
//! A sample that cannot be read or decoded is skipped (named in the batch, counted in metrics;
//! the batch is compacted, so it holds fewer samples) or, with `on_error = fail`, fails its
//! batch and the loader. Dropping the session stops the workers and gives its shared memory
//! back to the budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loaderd_cache::{Cache, LogicalPath};
use tokio::runtime::Handle;
use tracing::info;

use crate::dataset::{Dataset, DatasetError};
use crate::decode::DecodeLimits;
use crate::limits::{self, Plan};
use crate::registry::{BudgetError, LoaderInfo, Pipelines, Registration, Reservation};
use crate::ring::{BatchRing, RingError};
use crate::sampler::{Sampler, SamplerError, SamplerState};
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
    shared: Arc<Shared>,
    workers: Workers,
    batches: u64,
    next: u64,
    opened: Opened,
    /// Set once a batch failed (`on_error = fail`): every later request gets this error.
    failed: Option<String>,
    registration: Registration,
}

/// The dataset indexed and this rank's order drawn, counted in the loader's reservation.
struct Indexed {
    root: LogicalPath,
    dataset: Arc<Dataset>,
    indices: Arc<Vec<u64>>,
    world: u32,
}

impl Session {
    /// Checks the request against every limit, reserves its memory and threads, indexes the
    /// dataset, builds the ring and starts the workers. Nothing is indexed or allocated before
    /// the limits and budgets pass, and a start that fails midway stops every worker it
    /// started and gives the reservation back.
    pub fn open(
        cache: &Arc<Cache>,
        pipelines: &Arc<Pipelines>,
        rt: &Handle,
        req: &LoaderSpec,
    ) -> Result<Self, SessionError> {
        let config = pipelines.config();
        let plan = limits::plan(req, config)?;
        // Before indexing (which may LIST a whole bucket): an over-budget request costs nothing.
        let mut reservation = pipelines.reserve(plan.fixed_bytes, plan.workers)?;
        let indexed = index(cache, rt, req, &mut reservation)?;
        let batches = indexed.indices.len().div_ceil(plan.batch) as u64;
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
            ..LoaderInfo::default()
        });
        let shared = Arc::new(Shared {
            cache: cache.clone(),
            rt: rt.clone(),
            dataset: indexed.dataset.clone(),
            indices: indexed.indices.clone(),
            ring: Arc::new(BatchRing::new(
                "loaderd-batches",
                plan.depth,
                plan.slot_bytes,
            )?),
            metas: Arc::new(Metas::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            next_batch: AtomicU64::new(0),
            stats: registration.stats().clone(),
        });
        let recipe = Recipe {
            spec: plan.spec,
            limits: DecodeLimits {
                max_pixels: config.max_pixels,
            },
            on_error: plan.on_error,
            predecoded: req.predecoded,
            batch: plan.batch,
            batches,
            seed: req.seed,
            epoch: req.epoch,
        };
        // On failure the registration drops too, giving the memory and threads back.
        let workers =
            Workers::start(&shared, recipe, plan.workers).map_err(|(started, source)| {
                metrics::counter!("loaderd_pipeline_open_refusals_total", "reason" => "threads")
                    .increment(1);
                SessionError::Threads {
                    started,
                    want: plan.workers,
                    source,
                }
            })?;
        info!(
            dataset = %indexed.root,
            name = %registration.stats().info().name,
            samples = indexed.indices.len(),
            batches,
            batch = plan.batch,
            depth = plan.depth,
            workers = workers.len(),
            "loader opened"
        );
        let opened = opened(&plan, batches, &indexed);
        Ok(Session {
            shared,
            workers,
            batches,
            next: 0,
            opened,
            failed: None,
            registration,
        })
    }

    /// What the client needs to map and interpret the ring.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// The ring (its descriptor goes to the client).
    pub fn ring(&self) -> &BatchRing {
        &self.shared.ring
    }

    /// Releases `release` (if any) and waits for the next batch in order; `None` once the
    /// epoch is over.
    pub fn next(&mut self, release: Option<usize>) -> Result<Option<Batch>, BatchError> {
        let stats = self.registration.stats().clone();
        stats.requested();
        let ring = &self.shared.ring;
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
        let meta = lock(&self.shared.metas).remove(&seq).unwrap_or_default();
        if let Some(failed) = meta.failed {
            // The client never sees this slot: free it, stop decoding, fail from now on.
            let _ = ring.release(slot);
            self.shared.stop.store(true, Ordering::SeqCst);
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

fn opened(plan: &Plan, batches: u64, indexed: &Indexed) -> Opened {
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
