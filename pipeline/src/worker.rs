//! A loader's decode threads.
//!
//! Each worker takes a free ring slot, *then* the next batch number, so the oldest undelivered
//! batch always holds a slot and in-order delivery can never deadlock on a full ring. It
//! fetches each sample's bytes through the cache (on the runtime, via its handle), decodes and
//! augments it straight into the slot, and publishes the slot under the batch number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loaderd_cache::Cache;
use loaderd_cache::arena::Arena;
use loaderd_cache::prefetch::tallied;
use tokio::runtime::Handle;
use tracing::{error, warn};

use crate::augment::{TransformSpec, process};
use crate::config::OnError;
use crate::dataset::{Dataset, Sample, Source, fetch};
use crate::decode::{DecodeLimits, Decoder};
use crate::registry::{LoaderStats, Stage};
use crate::ring::{BatchRing, SlotMemory, SlotWriter};
use crate::sampler::sample_rng;
use crate::scheduled::Slot;
use loaderd_cache::sync::lock;

/// What a decoded batch carries besides its pixels, from its worker to its delivery.
#[derive(Debug, Default)]
pub(crate) struct BatchMeta {
    pub labels: Vec<i64>,
    pub keys: Vec<String>,
    pub skipped: Vec<String>,
    /// With `on_error = fail`: the sample that failed the batch, and why.
    pub failed: Option<String>,
}

impl BatchMeta {
    /// Records how `sample` went: in the batch, skipped, or (with `on_error = fail`) failing
    /// the batch. False when the batch failed: fill no more of it.
    pub fn record(
        &mut self,
        sample: &Sample,
        result: Result<(), impl std::fmt::Display>,
        on_error: OnError,
    ) -> bool {
        match result {
            Ok(()) => {
                self.labels.push(sample.label);
                self.keys.push(sample.key.clone());
                true
            }
            Err(e) if on_error == OnError::Fail => {
                error!(key = %sample.key, error = %e, "sample failed its batch (on_error = fail)");
                self.failed = Some(format!("sample {}: {e}", sample.key));
                self.skipped.push(sample.key.clone());
                false
            }
            Err(e) => {
                warn!(key = %sample.key, error = %e, "sample skipped");
                self.skipped.push(sample.key.clone());
                true
            }
        }
    }
}

/// Batch metadata between decode and delivery, by batch number.
pub(crate) type Metas = Mutex<HashMap<u64, BatchMeta>>;

/// Heap bytes of one batch's metadata held between decode and delivery (labels, keys, and
/// the map entry), estimating a key at `KEY_BYTES`: counted per ring slot in the budget.
pub(crate) fn batch_meta_bytes(batch: usize) -> u64 {
    const KEY_BYTES: u64 = 64;
    let per_sample =
        (std::mem::size_of::<i64>() + std::mem::size_of::<String>()) as u64 + KEY_BYTES;
    (std::mem::size_of::<(u64, BatchMeta)>() as u64).saturating_add(per_sample * batch as u64)
}

/// What every worker of one loader shares: where samples come from and where batches go (a
/// ring in host memory, or on a GPU for [`crate::gpu`]'s workers).
pub(crate) struct Shared<M: SlotMemory = Arena> {
    pub cache: Arc<Cache>,
    pub rt: Handle,
    pub dataset: Arc<Dataset>,
    /// This rank's sample order for the epoch.
    pub indices: Arc<Vec<u64>>,
    pub ring: Arc<BatchRing<M>>,
    pub metas: Arc<Metas>,
    pub stop: Arc<AtomicBool>,
    /// The next batch number a worker takes.
    pub next_batch: AtomicU64,
    pub stats: Arc<LoaderStats>,
    /// The loader's schedule (once built), told which samples are being read.
    pub schedule: Option<Arc<Slot>>,
}

impl<M: SlotMemory> Shared<M> {
    /// What the workers of a loader share: samples `indices` of `dataset`, filling `ring`,
    /// counted in `stats`.
    pub fn new(
        (cache, rt): (&Arc<Cache>, &Handle),
        dataset: &Arc<Dataset>,
        indices: &Arc<Vec<u64>>,
        ring: Arc<BatchRing<M>>,
        stats: &Arc<LoaderStats>,
        schedule: Option<Arc<Slot>>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            cache: cache.clone(),
            rt: rt.clone(),
            dataset: dataset.clone(),
            indices: indices.clone(),
            ring,
            metas: Arc::new(Metas::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            next_batch: AtomicU64::new(0),
            stats: stats.clone(),
            schedule,
        })
    }

    /// Samples `range` of this rank's order are about to be read: the schedule judges their
    /// blocks by their following reads, and the prefetcher moves past them.
    pub fn reading(&self, range: std::ops::Range<usize>) {
        if let Some(s) = self.schedule.as_ref().and_then(|s| s.get()) {
            s.reading(range);
        }
    }

    /// A worker's loop: until the loader stops or the epoch's `batches` are all taken, takes
    /// a free slot *then* the next batch number (so the oldest pending batch always has a
    /// slot), has `fill` write the batch of `batch` samples (their dataset indices, from
    /// position `start` of this rank's order, which `fill` marks [`Shared::reading`]) into
    /// it, and publishes it with the metadata `fill` returns.
    pub fn serve(
        &self,
        batches: u64,
        batch: usize,
        mut fill: impl FnMut(&mut SlotWriter<'_, M>, usize, &[u64]) -> BatchMeta,
    ) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some(mut slot) = self.ring.acquire(Duration::from_millis(100)) else {
                continue;
            };
            let seq = self.next_batch.fetch_add(1, Ordering::SeqCst);
            if seq >= batches {
                return;
            }
            let start = seq as usize * batch;
            let end = (start + batch).min(self.indices.len());
            let meta = fill(&mut slot, start, &self.indices[start..end]);
            self.stats
                .batch_ready(meta.labels.len(), meta.skipped.len());
            lock(&self.metas).insert(seq, meta);
            slot.publish(seq);
        }
    }
}

/// How every sample of one loader is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipe {
    pub spec: TransformSpec,
    pub limits: DecodeLimits,
    pub on_error: OnError,
    pub predecoded: bool,
    /// Samples per batch.
    pub batch: usize,
    pub batches: u64,
    pub seed: u64,
    pub epoch: u64,
}

/// A loader's decode threads: dropping this stops and joins every one of them (a session
/// that closes, or a start that failed after some threads were running).
pub(crate) struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` CPU decode workers; on a failed spawn the ones started are stopped and
    /// joined, and the error says how many had started.
    pub fn start(
        shared: &Arc<Shared>,
        recipe: Recipe,
        n: usize,
    ) -> Result<Self, (usize, std::io::Error)> {
        Self::spawn(&shared.stop, n, "loaderd-decode", |_| {
            let w = Worker {
                shared: shared.clone(),
                recipe,
            };
            move || w.run()
        })
    }

    /// Starts `n` threads named `name-i` running `body(i)`, which must return once `stop` is
    /// set; on a failed spawn the ones started are stopped and joined.
    pub fn spawn<F: FnOnce() + Send + 'static>(
        stop: &Arc<AtomicBool>,
        n: usize,
        name: &str,
        mut body: impl FnMut(usize) -> F,
    ) -> Result<Self, (usize, std::io::Error)> {
        let mut workers = Workers {
            stop: stop.clone(),
            handles: Vec::with_capacity(n),
        };
        for i in 0..n {
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(body(i));
            match spawned {
                Ok(h) => workers.handles.push(h),
                // Dropping `workers` stops and joins the ones started.
                Err(e) => return Err((i, e)),
            }
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn all_finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.handles.drain(..) {
            let _ = w.join();
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    recipe: Recipe,
}

impl Worker {
    fn run(self) {
        let (s, r) = (&*self.shared, &self.recipe);
        let mut decoder = Decoder::new(r.limits);
        // With `predecoded`, the first good sample's output, copied into every later one.
        let mut template: Option<Vec<u8>> = None;
        let sample_bytes = r.spec.sample_bytes();
        s.serve(r.batches, r.batch, |slot, start, indices| {
            let mut meta = BatchMeta::default();
            let bytes = slot.bytes();
            for (k, &index) in indices.iter().enumerate() {
                // Marked one sample at a time, just before its read: a block of a sample not
                // yet read keeps its near next use, so no admission evicts it meanwhile.
                s.reading(start + k..start + k + 1);
                let sample = &s.dataset.samples[index as usize];
                let at = meta.labels.len() * sample_bytes;
                let out = &mut bytes[at..at + sample_bytes];
                let res = match &template {
                    Some(t) => {
                        out.copy_from_slice(t);
                        Ok(())
                    }
                    None => self.sample(&mut decoder, index, &sample.source, out),
                };
                if res.is_ok() && r.predecoded && template.is_none() {
                    template = Some(out.to_vec());
                }
                if !meta.record(sample, res, r.on_error) {
                    break;
                }
            }
            meta
        });
    }

    /// Fetches, decodes and augments one sample into `out`, timing each stage.
    fn sample(
        &self,
        decoder: &mut Decoder,
        index: u64,
        source: &Source,
        out: &mut [u8],
    ) -> Result<(), SampleError> {
        let (s, r) = (&*self.shared, &self.recipe);
        let started = Instant::now();
        let reads = s.stats.reads().clone();
        let data = s.rt.block_on(tallied(reads, fetch(&s.cache, source)));
        s.stats.record(Stage::Fetch, started.elapsed());
        let data = data.map_err(SampleError::Fetch)?;
        let mut rng = sample_rng(r.seed, r.epoch, index);
        let info = process(decoder, &data, &mut rng, &r.spec, out).map_err(SampleError::Decode)?;
        s.stats.record(Stage::Decode, info.decode_time);
        s.stats.record(Stage::Augment, info.augment_time);
        Ok(())
    }
}

/// Why one sample is not in its batch.
#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error(transparent)]
    Fetch(loaderd_cache::Error),
    #[error(transparent)]
    Decode(crate::decode::DecodeError),
}
