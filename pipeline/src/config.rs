//! The pipeline's settings (`[pipeline]` of the daemon's config file).

use loaderd_cache::ByteSize;
use serde::{Deserialize, Serialize};

/// What a sample that cannot be read or decoded does to its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Left out of its batch (the batch is shorter), named in the batch metadata, counted.
    #[default]
    Skip,
    /// The batch fails with an error naming the sample.
    Fail,
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(OnError::Skip),
            "fail" => Ok(OnError::Fail),
            other => Err(format!(
                "on_error must be \"skip\" or \"fail\", not {other:?}"
            )),
        }
    }
}

/// Training batches decoded by the daemon into each client's shared-memory ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Ring slots (batches prepared ahead) for a client that does not ask for a number.
    pub depth: usize,
    /// Decode threads per client that does not ask for a number; 0 = one per core.
    pub workers: usize,
    /// Shared memory one client's ring may take (batch bytes × depth).
    pub max_client_bytes: ByteSize,
    /// Shared memory all clients' rings may take together.
    pub max_total_bytes: ByteSize,
    /// Clients with an open loader at once.
    pub max_clients: usize,
    /// Images whose header claims more pixels are refused before any pixel memory is
    /// allocated (decompression bombs).
    pub max_pixels: u64,
    /// The default for clients that do not say: `skip` or `fail`.
    pub on_error: OnError,
    /// Largest `depth` (ring slots) a client may ask for.
    pub max_depth: usize,
    /// Largest `batch_size` a client may ask for.
    pub max_batch_size: usize,
    /// Largest `workers` one loader may ask for; the default (`workers`, or one per core) is
    /// capped to it.
    pub max_workers: usize,
    /// Decode threads of all loaders together.
    pub max_total_workers: usize,
    /// Largest output `size` and `resize` (pixels per side) a client may ask for.
    pub max_image_size: u32,
    /// Device memory all GPU loaders' device rings and decode buffers may take on one GPU
    /// (default 4 GiB: a few loaders of 256 × 224² f32 batches, a small share of a
    /// training GPU's memory, which the model needs).
    pub max_device_bytes: ByteSize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            depth: 4,
            workers: 0,
            max_client_bytes: ByteSize(4 << 30),
            max_total_bytes: ByteSize(16 << 30),
            max_clients: 64,
            max_pixels: 64 << 20,
            on_error: OnError::Skip,
            max_depth: 64,
            max_batch_size: 4096,
            max_workers: 64,
            max_total_workers: 256,
            max_image_size: 2048,
            max_device_bytes: ByteSize(4 << 30),
        }
    }
}
