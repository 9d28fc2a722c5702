//! loaderd's training pipeline, the same for every client of a node's daemon.
//!
//! A client's [`LoaderSpec`] names a dataset and how to cut it; [`Session::open`] checks every
//! field against the daemon's [`PipelineConfig`] ([`limits`]), reserves the loader's memory
//! and decode threads ([`registry`]) before anything is indexed or allocated, indexes the
//! dataset through the cache ([`dataset`]), draws this rank's order ([`sampler`]), builds the
//! loader's [`ring`] of batch slots in a memfd arena and starts decode threads (the private
//! `worker` module: fetch through the cache, [`decode`], [`augment`] + [`resize`] straight
//! into a slot). [`Session::next`] releases the client's previous slot and hands out the next
//! batch, in order.
//!
//! A loader that asks for a CUDA device the daemon opened ([`Gpus`]) is served by [`gpu`]'s
//! batch workers instead: nvJPEG and the fused augment kernel of `loaderd-gpu` decode each
//! batch straight into a slot of a device ring, an exported CUDA allocation the client maps;
//! its crops are the CPU path's. Without that device it is served from the CPU, saying why.
//!
//! The sampler's order is a pure function of (seed, epoch, dataset length), so every node
//! computes the same global order without talking to the others, and any rank's future reads
//! are known in advance: an open loader registers its [`schedule`] (this epoch's rest and the
//! next epoch) with the cache's next-use oracle, which the clairvoyant eviction asks, and a [`prefetch`]er brings the blocks of the samples
//! about to be read into the memory tier ahead of their readers. Crops and layouts are `loaderd-image`'s types ([`CropBox`], [`Rect`],
//! [`Layout`], [`Normalize`]), re-exported here, the same the GPU path (`loaderd-gpu`) takes.
//!
//! This crate knows nothing of the wire: the daemon translates its protocol into
//! [`LoaderSpec`], and the answers ([`Opened`], [`Batch`], [`LoaderStatus`], and the errors
//! [`SessionError`] and [`BatchError`]) back.

pub mod announce;
pub mod augment;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod gpu;
pub mod lead;
pub mod limits;
pub mod prefetch;
pub mod registry;
pub mod remote;
pub mod resize;
pub mod ring;
pub mod sampler;
pub mod schedule;
pub mod scheduled;
pub mod session;
pub mod spec;
mod worker;

pub use config::{OnError, PipelineConfig};
pub use gpu::Gpus;
pub use loaderd_image::{CropBox, DType, Layout, Normalize, Rect};
pub use registry::Pipelines;
pub use session::{Session, SessionError};
pub use spec::{Batch, BatchError, LoaderSpec, LoaderStatus, Opened, RingMemory};
