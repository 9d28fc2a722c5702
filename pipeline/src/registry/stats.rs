//! One loader's numbers: what it was opened with, its live counters (shared by its decode
//! threads and its connection thread), and the status `loaderctl status` shows of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::counter;

use crate::prefetch::LoaderPrefetch;
use crate::spec::LoaderStatus;
use loaderd_cache::prefetch::ReadTally;

/// A pipeline stage, for busy-time accounting.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Reading a sample's bytes through the cache.
    Fetch,
    /// JPEG/PNG decode of the crop's region.
    Decode,
    /// Resize, flip, normalize and layout into the slot.
    Augment,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Augment => "augment",
        }
    }
}

/// What a loader was opened with (fixed for its life).
#[derive(Debug, Clone, Default)]
pub struct LoaderInfo {
    pub name: String,
    pub dataset: String,
    pub rank: u32,
    pub world_size: u32,
    pub epoch: u64,
    pub batches: u64,
    pub depth: u32,
    pub ring_bytes: u64,
    pub workers: u32,
    /// "cpu", or "cuda:N" (set by the session; empty means "cpu").
    pub device: String,
    /// Why a loader that asked for a CUDA device is served from the CPU.
    pub gpu_reason: String,
    /// Device memory held (set from the reservation).
    pub device_bytes: u64,
}

/// One loader's live counters, shared by its decode threads and its connection thread.
#[derive(Debug)]
pub struct LoaderStats {
    info: LoaderInfo,
    first_request: OnceLock<Instant>,
    delivered: AtomicU64,
    samples: AtomicU64,
    skipped: AtomicU64,
    ready: AtomicU64,
    wait_ns: AtomicU64,
    stage_ns: [AtomicU64; 3],
    gpu_samples: AtomicU64,
    cpu_fallback_samples: AtomicU64,
    gpu_ns: AtomicU64,
    /// Its block reads: served from this node's tiers or not.
    reads: Arc<ReadTally>,
    /// What its prefetcher brought in.
    prefetch: Arc<LoaderPrefetch>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LoaderStats {
    pub(super) fn new(info: LoaderInfo) -> Self {
        LoaderStats {
            info,
            first_request: OnceLock::new(),
            delivered: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            stage_ns: Default::default(),
            gpu_samples: AtomicU64::new(0),
            cpu_fallback_samples: AtomicU64::new(0),
            gpu_ns: AtomicU64::new(0),
            reads: Arc::default(),
            prefetch: Arc::default(),
        }
    }

    /// What the loader was opened with.
    pub fn info(&self) -> &LoaderInfo {
        &self.info
    }

    /// The tally its block reads are counted in.
    pub fn reads(&self) -> &Arc<ReadTally> {
        &self.reads
    }

    /// Its prefetcher's counters.
    pub fn prefetch(&self) -> &Arc<LoaderPrefetch> {
        &self.prefetch
    }

    /// Busy time of one stage for one sample.
    pub fn record(&self, stage: Stage, took: Duration) {
        self.stage_ns[stage as usize].fetch_add(nanos(took), Ordering::Relaxed);
        counter!("loaderd_pipeline_stage_items_total", "stage" => stage.name()).increment(1);
        // Busy time in microseconds (sub-second times would round away in whole seconds).
        counter!("loaderd_pipeline_stage_micros_total", "stage" => stage.name())
            .increment(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// A decode thread finished a batch of `samples` good and `skipped` bad samples.
    pub fn batch_ready(&self, samples: usize, skipped: usize) {
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
        self.skipped.fetch_add(skipped as u64, Ordering::Relaxed);
        self.ready.fetch_add(1, Ordering::Relaxed);
        counter!("loaderd_pipeline_samples_total").increment(samples as u64);
        counter!("loaderd_pipeline_skipped_total").increment(skipped as u64);
        counter!("loaderd_pipeline_batches_total").increment(1);
    }

    /// A GPU worker's batch: `gpu` samples nvJPEG decoded, `cpu` decoded on the CPU and
    /// uploaded, and the stream time the batch took.
    pub fn gpu_batch(&self, gpu: usize, cpu: usize, stream_time: Duration) {
        self.gpu_samples.fetch_add(gpu as u64, Ordering::Relaxed);
        self.cpu_fallback_samples
            .fetch_add(cpu as u64, Ordering::Relaxed);
        self.gpu_ns.fetch_add(nanos(stream_time), Ordering::Relaxed);
        counter!("loaderd_pipeline_gpu_samples_total").increment(gpu as u64);
        counter!("loaderd_pipeline_gpu_cpu_fallback_samples_total").increment(cpu as u64);
        counter!("loaderd_pipeline_gpu_stream_micros_total")
            .increment(u64::try_from(stream_time.as_micros()).unwrap_or(u64::MAX));
    }

    /// The client asked for a batch (the trainer's clock starts at its first request).
    pub fn requested(&self) {
        self.first_request.get_or_init(Instant::now);
    }

    /// A batch went to the client after it waited `waited` for it.
    pub fn delivered(&self, waited: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .ready
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1));
        self.wait_ns.fetch_add(nanos(waited), Ordering::Relaxed);
        counter!("loaderd_pipeline_delivered_batches_total").increment(1);
        counter!("loaderd_pipeline_client_wait_micros_total")
            .increment(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
    }

    /// Status of this loader now.
    pub fn status(&self) -> LoaderStatus {
        let elapsed = self
            .first_request
            .get()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let secs = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
        let samples = self.samples.load(Ordering::Relaxed);
        let waited = secs(&self.wait_ns);
        let info = &self.info;
        LoaderStatus {
            name: info.name.clone(),
            dataset: info.dataset.clone(),
            rank: info.rank,
            world_size: info.world_size,
            epoch: info.epoch,
            batches_delivered: self.delivered.load(Ordering::Relaxed),
            batches_total: info.batches,
            samples,
            skipped: self.skipped.load(Ordering::Relaxed),
            elapsed_secs: elapsed,
            samples_per_sec: if elapsed > 0.0 {
                samples as f64 / elapsed
            } else {
                0.0
            },
            starved_percent: if elapsed > 0.0 {
                (100.0 * waited / elapsed).min(100.0)
            } else {
                0.0
            },
            fetch_secs: secs(&self.stage_ns[Stage::Fetch as usize]),
            decode_secs: secs(&self.stage_ns[Stage::Decode as usize]),
            augment_secs: secs(&self.stage_ns[Stage::Augment as usize]),
            ready_batches: u32::try_from(self.ready.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            depth: info.depth,
            ring_bytes: info.ring_bytes,
            workers: info.workers,
            device: if info.device.is_empty() {
                "cpu".into()
            } else {
                info.device.clone()
            },
            gpu_samples: self.gpu_samples.load(Ordering::Relaxed),
            cpu_fallback_samples: self.cpu_fallback_samples.load(Ordering::Relaxed),
            gpu_secs: secs(&self.gpu_ns),
            gpu_reason: info.gpu_reason.clone(),
            device_bytes: info.device_bytes,
            block_reads_cached: self.reads.get().0,
            block_reads_uncached: self.reads.get().1,
            hit_ratio: self.reads.hit_ratio(),
            prefetched_blocks: self.prefetch.blocks.load(Ordering::Relaxed),
            prefetched_bytes: self.prefetch.bytes.load(Ordering::Relaxed),
            prefetch_ahead_bytes: self.prefetch.ahead_bytes.load(Ordering::Relaxed),
        }
    }
}
