//! What a client asks a loader for, and what the loader answers: plain types, so that the
//! pipeline knows nothing of the wire. The daemon translates its protocol into these.

use loaderd_image::{DType, Layout};

use crate::config::OnError;
use crate::ring::RingError;

/// A loader request: which samples of which dataset, in what order and shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderSpec {
    /// The dataset's logical path (`/mount/prefix`).
    pub dataset: String,
    pub batch_size: u32,
    pub rank: u32,
    /// 0 means 1.
    pub world_size: u32,
    pub seed: u64,
    pub epoch: u64,
    /// Samples of this epoch already consumed by all ranks together (resume).
    pub consumed: u64,
    /// RandomResizedCrop + flip (true) or resize + centre crop (false).
    pub train: bool,
    /// Output side; 0 = 224.
    pub size: u32,
    /// Shorter side before the centre crop (validation); 0 = 256.
    pub resize: u32,
    /// `None`: [`Layout::NhwcU8`].
    pub layout: Option<Layout>,
    /// Ring slots; 0 = `pipeline.depth`.
    pub depth: u32,
    pub drop_last: bool,
    pub shuffle: bool,
    /// Decode threads; 0 = `pipeline.workers` (or one per core). A GPU loader runs
    /// [`crate::gpu::GPU_WORKERS`] batch workers whatever this says.
    pub workers: u32,
    /// `None`: `pipeline.on_error`.
    pub on_error: Option<OnError>,
    /// A label for status and logs.
    pub name: String,
    /// Benchmark of the handoff alone: every sample is a copy of one image decoded once (CPU
    /// loaders only: a GPU loader always decodes).
    pub predecoded: bool,
    /// `Some(n)`: batches decoded on and delivered into CUDA device `n` (the daemon's
    /// numbering) when the daemon has it open, else from the CPU into a host ring with
    /// [`Opened::gpu_reason`]; `None`: a host ring decoded on the CPU.
    pub cuda_device: Option<u32>,
}

/// Where a loader's ring lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RingMemory {
    /// A memfd the client maps read-only.
    #[default]
    Host,
    /// An exportable allocation on CUDA device `device` (a POSIX-fd handle).
    Cuda { device: u32 },
}

/// What a client needs to map and interpret a loader's ring.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub slot_bytes: u64,
    pub depth: u32,
    /// Batches this epoch will deliver to this rank.
    pub batches: u64,
    pub dataset_len: u64,
    pub sample_shape: [u32; 3],
    pub dtype: DType,
    pub sample_bytes: u64,
    /// Samples this epoch will deliver to this rank.
    pub samples: u64,
    /// Where the ring is.
    pub memory: RingMemory,
    /// Bytes the client maps: `slot_bytes × depth`, rounded up to the device's allocation
    /// granularity for a CUDA ring.
    pub ring_bytes: u64,
    /// Set when the request asked for a CUDA device and is served from the CPU: why.
    pub gpu_reason: Option<String>,
}

/// One batch, ready in ring slot `slot`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub seq: u64,
    pub slot: u32,
    pub labels: Vec<i64>,
    /// The key of each sample in the slot, in order.
    pub keys: Vec<String>,
    /// Samples left out of this batch because they could not be read or decoded.
    pub skipped: Vec<String>,
}

/// Why a loader cannot give the next batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The client released a slot it does not hold.
    #[error(transparent)]
    Release(#[from] RingError),
    /// A sample failed (`on_error = fail`): this and every later request fails.
    #[error("{0}")]
    Failed(String),
    /// Every decode thread has stopped.
    #[error("decode workers stopped")]
    WorkersStopped,
}

/// One open loader's numbers, for status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderStatus {
    pub name: String,
    pub dataset: String,
    pub rank: u32,
    pub world_size: u32,
    pub epoch: u64,
    pub batches_delivered: u64,
    pub batches_total: u64,
    pub samples: u64,
    pub skipped: u64,
    pub elapsed_secs: f64,
    pub samples_per_sec: f64,
    /// Share of the time since its first request that the client spent waiting for a batch.
    pub starved_percent: f64,
    pub fetch_secs: f64,
    pub decode_secs: f64,
    pub augment_secs: f64,
    /// Batches decoded and waiting for the client.
    pub ready_batches: u32,
    pub depth: u32,
    pub ring_bytes: u64,
    pub workers: u32,
    /// "cpu", or "cuda:N" for a loader decoding on and delivering into GPU N.
    pub device: String,
    /// Samples nvJPEG decoded.
    pub gpu_samples: u64,
    /// Samples of a GPU loader decoded on the CPU and uploaded.
    pub cpu_fallback_samples: u64,
    /// Seconds of GPU stream time spent on this loader's batches.
    pub gpu_secs: f64,
    /// Its block reads served from this node's tiers, and not (fetched, joined, a peer's),
    /// and the first over both (0 before any read).
    pub block_reads_cached: u64,
    pub block_reads_uncached: u64,
    pub hit_ratio: f64,
    /// Blocks (and bytes) its prefetcher brought in, and bytes planned ahead of its position.
    pub prefetched_blocks: u64,
    pub prefetched_bytes: u64,
    pub prefetch_ahead_bytes: u64,
    /// Why a loader that asked for a CUDA device is served from the CPU (empty otherwise).
    pub gpu_reason: String,
    /// Device memory the loader holds (ring and decode buffers).
    pub device_bytes: u64,
}
