//! loaderd's training pipeline, the same for every client of a node's daemon.
//!
//! A client's [`LoaderSpec`] names a dataset and how to cut it; [`Session::open`] checks it
//! against the daemon's limits ([`limits`]) and budgets ([`registry`]), indexes the dataset
//! ([`dataset`]), draws this rank's order ([`sampler`]) and starts decode threads
//! ([`worker`]: fetch through the cache, [`decode`], [`augment`]) that fill a shared-memory
//! [`ring`] of batches. [`Session::next`] hands the batches out in order.
//!
//! The sampler's order is a pure function of (seed, epoch, dataset length), so every node
//! computes the same global order without talking to the others, and the daemon knows every
//! rank's future reads. This crate knows nothing of the wire: the daemon translates its
//! protocol into [`LoaderSpec`] and the answers ([`Opened`], [`Batch`], [`BatchError`],
//! [`SessionError`]) back.

pub mod augment;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod limits;
pub mod registry;
pub mod resize;
pub mod ring;
pub mod sampler;
pub mod session;
pub mod spec;
mod sync;
mod worker;

pub use config::{OnError, PipelineConfig};
pub use loaderd_image::{CropBox, DType, Layout, Normalize, Rect};
pub use registry::Pipelines;
pub use session::{Session, SessionError};
pub use spec::{Batch, BatchError, LoaderSpec, LoaderStatus, Opened};
