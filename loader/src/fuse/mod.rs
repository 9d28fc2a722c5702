//! The FUSE view served by the daemon itself (`--fuse-mount`): the file system of
//! [`loaderd_fuse`] over this daemon's [`Cache`] ([`CacheBackend`]), so a read is a call
//! into the cache in this process — the bytes of a cached block go from the memory tier
//! straight into the reply to the kernel, with no RPC hop and no second cache. The thin
//! front (`loaderd fuse`, [`loaderd_fuse::front`]) serves the same file system from a
//! worker's sockets instead.
//!
//! * Threads: fuser runs `fuse.threads` request loops, each blocking on one cache call at a
//!   time through the runtime's [`Handle`]; the runtime's own threads never block.
//! * Metadata: from the cache's metadata (the manifest); a change in the UFS is seen after
//!   both the metadata TTL (or `loaderctl invalidate`) and the kernel's timeouts.
//! * Lifecycle: a stale mount left by a crashed daemon (ENOTCONN on stat, or listed in
//!   `/proc/self/mountinfo`) is detached before mounting; shutdown unmounts and joins the
//!   session threads.

mod backend;
pub(crate) mod perm;

use std::path::Path;
use std::sync::Arc;

use loaderd_cache::Cache;
use loaderd_fuse::LoaderFs;
pub use loaderd_fuse::{FuseMount, MountError as FuseError, Options};
use tokio::runtime::Handle;

pub use backend::{CacheBackend, error};

use crate::config::FuseConfig;

/// The file system's options from the daemon's `[fuse]` section.
pub fn options(cfg: &FuseConfig) -> Options {
    Options {
        entry_timeout: cfg.entry_timeout.0,
        attr_timeout: cfg.attr_timeout.0,
        threads: cfg.threads,
        max_read: u32::try_from(cfg.max_read.0).unwrap_or(u32::MAX),
        allow_other: cfg.allow_other,
        default_permissions: cfg.default_permissions,
        keep_cache: cfg.keep_cache,
    }
}

/// Mounts the namespace of `cache` at `path`, detaching a stale mount first.
pub fn mount(
    path: &Path,
    cfg: &FuseConfig,
    cache: Arc<Cache>,
    rt: Handle,
) -> Result<FuseMount, FuseError> {
    let opts = options(cfg);
    let fs = LoaderFs::new(CacheBackend::new(cache, rt, cfg.object_mode), &opts);
    FuseMount::mount(path, fs, &opts)
}

#[cfg(test)]
mod tests;
