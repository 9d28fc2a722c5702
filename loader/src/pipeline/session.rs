//! One client's pipeline: dataset index → sampler → decode + augment workers → batch ring.
//!
//! Worker threads (not the runtime: decoding is CPU work) each take a free ring slot, *then*
//! the next batch number, so the oldest undelivered batch always holds a slot and in-order
//! delivery can never deadlock on a full ring. A worker fetches each sample's bytes through
//! the cache (on the runtime, via its handle), decodes and augments it straight into the slot,
//! and publishes the slot under the batch number. A sample that cannot be read or decoded is
//! skipped (named in the batch, counted in metrics; the batch is compacted, so it holds fewer
//! samples) or, with `on_error = fail`, fails its batch and the loader. Dropping the session
//! stops the workers and gives its shared memory back to the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loaderd_cache::{Cache, LogicalPath};
use loaderd_proto::v1 as pb;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use super::augment::{Layout, TransformSpec, process};
use super::dataset::{Dataset, DatasetError, fetch};
use super::decode::{DecodeLimits, Decoder};
use super::limits::{self, Plan};
use super::registry::{BudgetError, LoaderInfo, LoaderStats, Pipelines, Registration, Stage};
use super::ring::{BatchRing, RingError};
use super::sampler::{Sampler, SamplerError, SamplerState, sample_rng};
use crate::config::OnError;

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

impl SessionError {
    /// The gRPC code a client sees.
    pub fn code(&self) -> tonic::Code {
        match self {
            SessionError::Dataset(DatasetError::Cache(e)) => crate::server::to_status(e).code(),
            SessionError::Dataset(_)
            | SessionError::Sampler(_)
            | SessionError::Invalid(_)
            | SessionError::Limit { .. } => tonic::Code::InvalidArgument,
            SessionError::Ring(_) | SessionError::Budget(_) | SessionError::Threads { .. } => {
                tonic::Code::ResourceExhausted
            }
        }
    }
}

#[derive(Debug, Default)]
struct BatchMeta {
    labels: Vec<i64>,
    keys: Vec<String>,
    skipped: Vec<String>,
    /// With `on_error = fail`: the sample that failed the batch, and why.
    failed: Option<String>,
}

/// A running pipeline for one client.
pub struct Session {
    ring: Arc<BatchRing>,
    metas: Arc<Mutex<HashMap<u64, BatchMeta>>>,
    stop: Arc<AtomicBool>,
    workers: Workers,
    batches: u64,
    next: u64,
    opened: pb::LoaderOpened,
    /// Set once a batch failed (`on_error = fail`): every later request gets this error.
    failed: Option<String>,
    registration: Registration,
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
        req: &pb::OpenLoader,
    ) -> Result<Self, SessionError> {
        let config = pipelines.config();
        let plan = limits::plan(req, config)?;
        let Plan {
            batch,
            depth,
            spec,
            layout,
            on_error,
            sample_bytes,
            slot_bytes,
            ..
        } = plan;
        // Before indexing (which may LIST a whole bucket): an over-budget request costs nothing.
        let mut reservation = pipelines.reserve(plan.fixed_bytes, plan.workers)?;
        let root = LogicalPath::parse(&req.dataset)
            .map_err(|e| SessionError::Dataset(DatasetError::Cache(e)))?;
        let dataset = Arc::new(rt.block_on(Dataset::index(cache, &root))?);
        let state = SamplerState {
            seed: req.seed,
            epoch: req.epoch,
            consumed: req.consumed,
        };
        let world = u64::from(req.world_size.max(1));
        let sampler = Sampler::new(
            dataset.len() as u64,
            state,
            u64::from(req.rank),
            world,
            !req.no_shuffle,
            req.drop_last,
        )?;
        let indices: Arc<Vec<u64>> = Arc::new(sampler.indices().to_vec());
        let index_bytes = dataset
            .heap_bytes()
            .saturating_add((indices.len() * std::mem::size_of::<u64>()) as u64);
        reservation.grow(index_bytes)?;
        let batches = indices.len().div_ceil(batch) as u64;
        let registration = reservation.register(LoaderInfo {
            name: if req.name.is_empty() {
                format!("rank {}/{}", req.rank, world)
            } else {
                req.name.clone()
            },
            dataset: root.to_string(),
            rank: req.rank,
            world_size: world as u32,
            epoch: req.epoch,
            batches,
            depth: depth as u32,
            ..LoaderInfo::default()
        });
        let ring = Arc::new(BatchRing::new("loaderd-batches", depth, slot_bytes)?);
        let metas = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let next_batch = Arc::new(AtomicU64::new(0));
        let limits = DecodeLimits {
            max_pixels: config.max_pixels,
        };
        let spawn = |i: usize| {
            let w = Worker {
                cache: cache.clone(),
                rt: rt.clone(),
                dataset: dataset.clone(),
                indices: indices.clone(),
                ring: ring.clone(),
                metas: metas.clone(),
                stop: stop.clone(),
                next_batch: next_batch.clone(),
                stats: registration.stats().clone(),
                spec,
                limits,
                on_error,
                predecoded: req.predecoded,
                batch,
                batches,
                seed: req.seed,
                epoch: req.epoch,
            };
            std::thread::Builder::new()
                .name(format!("loaderd-decode-{i}"))
                .spawn(move || w.run())
        };
        let mut workers = Workers {
            stop: stop.clone(),
            handles: Vec::with_capacity(plan.workers),
        };
        for i in 0..plan.workers {
            match spawn(i) {
                Ok(h) => workers.handles.push(h),
                Err(source) => {
                    metrics::counter!("loaderd_pipeline_open_refusals_total", "reason" => "threads")
                        .increment(1);
                    // Dropping `workers` stops and joins the ones started; dropping the
                    // registration gives the memory and thread budget back.
                    return Err(SessionError::Threads {
                        started: i,
                        want: plan.workers,
                        source,
                    });
                }
            }
        }
        info!(
            dataset = %root,
            name = %registration.stats().info().name,
            samples = indices.len(),
            batches,
            batch,
            depth,
            workers = workers.handles.len(),
            "loader opened"
        );
        let opened = pb::LoaderOpened {
            code: 0,
            error: String::new(),
            slot_bytes: slot_bytes as u64,
            depth: depth as u32,
            batches,
            dataset_len: dataset.len() as u64,
            sample_shape: match layout {
                Layout::NhwcU8 => vec![spec.size, spec.size, 3],
                Layout::NchwF32 | Layout::NchwF16 => vec![3, spec.size, spec.size],
            },
            dtype: match layout {
                Layout::NhwcU8 => "uint8",
                Layout::NchwF32 => "float32",
                Layout::NchwF16 => "float16",
            }
            .into(),
            sample_bytes: sample_bytes as u64,
            samples: indices.len() as u64,
        };
        Ok(Session {
            ring,
            metas,
            stop,
            workers,
            batches,
            next: 0,
            opened,
            failed: None,
            registration,
        })
    }

    /// What the client needs to map and interpret the ring.
    pub fn opened(&self) -> &pb::LoaderOpened {
        &self.opened
    }

    /// The ring (its descriptor goes to the client).
    pub fn ring(&self) -> &BatchRing {
        &self.ring
    }

    /// Releases `release` (if any) and waits for the next batch in order.
    pub fn next(&mut self, release: Option<usize>) -> pb::BatchReady {
        let stats = self.registration.stats().clone();
        stats.requested();
        if let Some(slot) = release
            && let Err(e) = self.ring.release(slot)
        {
            return batch_error(tonic::Code::InvalidArgument, e.to_string());
        }
        if let Some(failed) = &self.failed {
            return batch_error(tonic::Code::DataLoss, failed.clone());
        }
        if self.next >= self.batches {
            return pb::BatchReady {
                end: true,
                ..Default::default()
            };
        }
        let seq = self.next;
        let asked = Instant::now();
        let slot = loop {
            if let Some(slot) = self.ring.deliver(seq, Duration::from_millis(200)) {
                break slot;
            }
            if self.workers.handles.iter().all(JoinHandle::is_finished) {
                return batch_error(tonic::Code::Internal, "decode workers stopped".into());
            }
        };
        stats.delivered(asked.elapsed());
        self.next += 1;
        let meta = lock(&self.metas).remove(&seq).unwrap_or_default();
        if let Some(failed) = meta.failed {
            // The client never sees this slot: free it, stop decoding, fail from now on.
            let _ = self.ring.release(slot);
            self.stop.store(true, Ordering::SeqCst);
            self.failed = Some(failed.clone());
            return batch_error(tonic::Code::DataLoss, failed);
        }
        pb::BatchReady {
            code: 0,
            error: String::new(),
            seq,
            slot: slot as u32,
            samples: meta.labels.len() as u32,
            labels: meta.labels,
            keys: meta.keys,
            skipped: meta.skipped,
            end: false,
        }
    }
}

/// A loader's decode threads: dropping this stops and joins every one of them (a session
/// that closes, or a start that failed after some threads were running).
struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.handles.drain(..) {
            let _ = w.join();
        }
    }
}

/// Heap bytes of one batch's metadata held between decode and delivery (labels, keys, and
/// the map entry), estimating a key at [`KEY_BYTES`]: counted per ring slot in the budget.
pub(super) fn batch_meta_bytes(batch: usize) -> u64 {
    const KEY_BYTES: u64 = 64;
    let per_sample =
        (std::mem::size_of::<i64>() + std::mem::size_of::<String>()) as u64 + KEY_BYTES;
    (std::mem::size_of::<(u64, BatchMeta)>() as u64).saturating_add(per_sample * batch as u64)
}

fn batch_error(code: tonic::Code, error: String) -> pb::BatchReady {
    pb::BatchReady {
        code: code as i32,
        error,
        ..Default::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Worker {
    cache: Arc<Cache>,
    rt: Handle,
    dataset: Arc<Dataset>,
    indices: Arc<Vec<u64>>,
    ring: Arc<BatchRing>,
    metas: Arc<Mutex<HashMap<u64, BatchMeta>>>,
    stop: Arc<AtomicBool>,
    next_batch: Arc<AtomicU64>,
    stats: Arc<LoaderStats>,
    spec: TransformSpec,
    limits: DecodeLimits,
    on_error: OnError,
    predecoded: bool,
    batch: usize,
    batches: u64,
    seed: u64,
    epoch: u64,
}

impl Worker {
    fn run(self) {
        let mut decoder = Decoder::new(self.limits);
        // With `predecoded`, the first good sample's output, copied into every later one.
        let mut template: Option<Vec<u8>> = None;
        let sample_bytes = self.spec.sample_bytes();
        while !self.stop.load(Ordering::SeqCst) {
            // A slot first, then the batch number: the oldest pending batch always has a slot.
            let Some(mut slot) = self.ring.acquire(Duration::from_millis(100)) else {
                continue;
            };
            let seq = self.next_batch.fetch_add(1, Ordering::SeqCst);
            if seq >= self.batches {
                return;
            }
            let start = seq as usize * self.batch;
            let end = (start + self.batch).min(self.indices.len());
            let mut meta = BatchMeta::default();
            let bytes = slot.bytes();
            for &index in &self.indices[start..end] {
                let sample = &self.dataset.samples[index as usize];
                let at = meta.labels.len() * sample_bytes;
                let out = &mut bytes[at..at + sample_bytes];
                let res = match &template {
                    Some(t) => {
                        out.copy_from_slice(t);
                        Ok(())
                    }
                    None => self.sample(&mut decoder, index, &sample.source, out),
                };
                match res {
                    Ok(()) => {
                        if self.predecoded && template.is_none() {
                            template = Some(out.to_vec());
                        }
                        meta.labels.push(sample.label);
                        meta.keys.push(sample.key.clone());
                    }
                    Err(e) if self.on_error == OnError::Fail => {
                        error!(key = %sample.key, error = %e, "sample failed its batch (on_error = fail)");
                        meta.failed = Some(format!("sample {}: {e}", sample.key));
                        meta.skipped.push(sample.key.clone());
                        break;
                    }
                    Err(e) => {
                        warn!(key = %sample.key, error = %e, "sample skipped");
                        meta.skipped.push(sample.key.clone());
                    }
                }
            }
            self.stats
                .batch_ready(meta.labels.len(), meta.skipped.len());
            lock(&self.metas).insert(seq, meta);
            slot.publish(seq);
        }
    }

    /// Fetches, decodes and augments one sample into `out`, timing each stage.
    fn sample(
        &self,
        decoder: &mut Decoder,
        index: u64,
        source: &super::dataset::Source,
        out: &mut [u8],
    ) -> Result<(), String> {
        let started = Instant::now();
        let data = self.rt.block_on(fetch(&self.cache, source));
        self.stats.record(Stage::Fetch, started.elapsed());
        let data = data.map_err(|e| e.to_string())?;
        let mut rng = sample_rng(self.seed, self.epoch, index);
        let info = process(decoder, &data, &mut rng, &self.spec, out).map_err(|e| e.to_string())?;
        self.stats.record(Stage::Decode, info.decode_time);
        self.stats.record(Stage::Augment, info.augment_time);
        Ok(())
    }
}
