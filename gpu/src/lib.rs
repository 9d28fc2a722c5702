//! loaderd's GPU path: everything that touches CUDA, NVRTC or nvJPEG, behind a small safe API.
//!
//! Nothing here links against CUDA. `cudarc` is built with dynamic loading, NVRTC and nvJPEG
//! are opened with `libloading` at run time, so the workspace builds and its tests pass on a
//! machine with no driver; the daemon asks [`detect()`] once at start-up and falls back to the CPU
//! path when it says [`GpuAvailability::Unavailable`].
//!
//! - [`mod@detect`]: driver + device discovery that never panics (probes `libcuda.so.1` before
//!   letting `cudarc` near it, and catches a panic from a missing symbol as a last resort);
//! - [`pinned`]: [`PinnedRegion`] registers a host range (the batch arena) with
//!   `cuMemHostRegister(PORTABLE)` once and unregisters it on drop, before the owner unmaps it;
//!   [`H2dStream`] is one client's copy stream with events; [`pinned::UploadStaging`] stages
//!   pageable host bytes (CPU-decoded fallback images) in a reused pinned buffer;
//! - [`augment`]: the fused crop + resize + flip + normalize + layout kernel
//!   (`kernels/augment.cu`, compiled by [`nvrtc`] at run time), and [`mod@reference`], the same
//!   arithmetic in Rust, which is what the kernel is tested against;
//! - [`nvjpeg`]: the nvJPEG entry points, resolved from whichever `libnvjpeg` the machine has,
//!   and [`JpegDecoder`], batched decode into one device buffer with per-image errors; [`jpeg`]
//!   reads headers on the CPU to decide which images nvJPEG's fast path takes;
//! - [`batch`]: [`GpuBatchPipeline`], decode → CPU-fallback upload → one augment launch per
//!   batch into a [`DeviceSliceMut`], with a [`BatchReport`] saying which samples failed or
//!   took the CPU decoder;
//! - [`device`]: [`GpuDevice`], one opened GPU ([`GpuDevice::open`], [`open_all`]), made once
//!   by the daemon at start: context, libraries, VMM export support checked, the augment
//!   kernel compiled once for all of its [`GpuDevice::batch_pipeline`]s;
//! - [`export`]: [`ExportedMemory`], device memory (the device ring) another process maps
//!   through a POSIX file descriptor, and [`ImportedMemory`], the importer's side;
//! - [`mod@slice`]: [`DeviceSliceMut`], a mutable view of device memory (a [`DeviceBuffer`] or a
//!   ring slot), the output of a batch.
//!
//! Crops, output layouts and normalization are `loaderd-image`'s types (re-exported here), the
//! same the CPU pipeline uses, so a GPU batch and a CPU batch are described alike.
//!
//! Every CUDA, NVRTC and nvJPEG call is unsafe and stays inside this crate, behind safe types;
//! each unsafe block has a `// SAFETY:` note. It is not the workspace's only unsafe code: the
//! transport (descriptor passing, read-only maps), the memfd arena and the batch ring's slots,
//! the pipeline's libjpeg-turbo decoder and a few calls in the daemon and the client have
//! their own, each behind a small safe API.
#![warn(missing_docs)]

pub mod augment;
pub mod batch;
pub mod detect;
pub mod device;
mod error;
pub mod export;
pub mod jpeg;
mod libsearch;
pub mod nvjpeg;
pub mod nvrtc;
pub mod pinned;
pub mod reference;
pub mod slice;
#[cfg(test)]
mod testdata;

pub use augment::{AugmentKernel, SampleParams};
pub use batch::{
    BatchConfig, BatchReport, CpuDecoder, CpuReason, GpuBatchPipeline, GpuSample, HostImage,
    RgbImage, SampleError, SampleOutcome, SampleSource,
};
pub use detect::{GpuAvailability, GpuInfo, detect};
pub use device::{GpuDevice, open_all};
pub use error::GpuError;
pub use export::{ExportedMemory, ImportedMemory, round_up_to_granularity};
pub use loaderd_image::{CropBox, Layout, Normalize};
pub use nvjpeg::{DecodedBatch, DecodedImage, ImageError, JpegDecoder, NvJpeg};
pub use nvrtc::Nvrtc;
pub use pinned::{
    CopyEvent, DeviceBuffer, GpuContext, H2dStream, HostMemory, PageBuffer, PinnedRegion,
};
pub use slice::DeviceSliceMut;
