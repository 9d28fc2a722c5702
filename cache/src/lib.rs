//! loaderd's block cache over object storage.
//!
//! * [`ufs`]: under file systems (S3, local) via `object_store`, with deadlines and retries.
//! * [`mount`]: the mount table that makes one logical namespace out of many UFS URIs.
//! * [`meta`]: stat/list caching and persisted dataset manifests.
//! * [`tier`]: the memory tier (a shared-memory arena) and the SSD tier (checksummed files).
//! * [`evict`]: watermark-driven eviction with pluggable policies.
//! * [`placement`]: rendezvous hashing of blocks over cluster members.
//! * [`budget`]: the in-flight fetch budget, with a reserve per mount.
//! * [`inflight`]: single flight per key (block fetches, manifest LISTs).
//! * [`prefetch`]: what prefetching needs of the cache (marks, fetch latency, read tallies).
//! * [`cache`]: the read path tying them together, with single-flight misses.
#![warn(missing_docs)]
#![allow(missing_docs)] // Field-level docs live on the types; see each module header.

pub mod alloc;
pub mod arena;
pub mod block;
pub mod budget;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod evict;
pub mod inflight;
pub mod meta;
pub mod mount;
pub mod path;
pub mod placement;
pub mod prefetch;

pub mod stats;
pub mod sync;
pub mod tier;
pub mod ufs;

pub use cache::{Cache, CacheStatus, FileHandle, LoadProgress, ReadType};
pub use config::{ByteSize, CacheConfig, ClusterConfig, Eviction, MemberConfig, Secs};
pub use error::{Error, ErrorKind, Result};
pub use meta::Stat;
pub use mount::MountSpec;
pub use path::LogicalPath;
