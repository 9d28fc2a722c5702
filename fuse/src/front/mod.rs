//! The thin FUSE front (`loaderd fuse --socket … MOUNTPOINT`): the file system served from
//! the node's worker through its local sockets, with no cache of its own and no place in
//! the cluster. Attributes, listings and capacity come over gRPC (the worker's Unix socket);
//! data over the shared-memory socket (the worker's memory-tier arena mapped read-only,
//! copied once into the reply; gRPC for extents not in memory, or when shared memory cannot
//! serve).
//!
//! A worker restart does not reach the readers: while the worker is unreachable (socket
//! gone, connection refused or reset) a request retries with backoff for up to
//! `fuse.worker_wait`, then fails `EIO` with a warning naming the cause; it resumes on the
//! restarted worker. Open files stay valid across the restart (a handle is a path and a
//! version, nothing of the worker's), and a read after it is pinned to the version the file
//! was opened at, so an object changed meanwhile fails (`ESTALE`) instead of serving other
//! bytes.
//!
//! A front restart does not reach them either ([`restart`]): `loaderd fuse` is a supervisor
//! holding the mount and running the serving front as its child; a SIGTERMed serving front
//! hands the mount to the next, a crashed one is replaced, and both share the inode table
//! and open files through the mount's state memfd.

mod backend;
pub mod restart;
mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backend::{HEAD, Head, WorkerBackend};
pub use worker::{Attempt, Worker, from_status, unreachable};

use crate::fs::LoaderFs;
use crate::mount::{FuseMount, MountError};
use crate::options::Options;

/// What the front serves and how.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// The worker's gRPC socket.
    pub socket: PathBuf,
    /// Its shared-memory socket; `None`: beside the gRPC socket (`<name>.shm.sock`).
    pub shm_socket: Option<PathBuf>,
    pub mount_point: PathBuf,
    pub options: Options,
    /// How long a request waits for an unreachable worker before failing `EIO`.
    pub worker_wait: Duration,
    /// Mode of entries whose source has none (object stores).
    pub object_mode: u32,
}

/// The worker's gRPC socket from `--socket`: the path itself, or `loaderd.sock` in it when
/// it names a directory (the hostPath the worker's socket lives in).
pub fn worker_socket(arg: &Path) -> PathBuf {
    if arg.is_dir() {
        arg.join("loaderd.sock")
    } else {
        arg.to_path_buf()
    }
}

/// Mounts the front at `cfg.mount_point` and serves it until the returned mount is
/// unmounted or dropped. The worker need not be up yet: requests wait for it.
pub fn mount(cfg: &FrontConfig) -> Result<FuseMount, MountError> {
    let worker =
        Worker::new(&cfg.socket, cfg.shm_socket.as_deref(), cfg.worker_wait).map_err(|source| {
            MountError::Mount {
                path: cfg.mount_point.clone(),
                source,
            }
        })?;
    let fs = LoaderFs::new(WorkerBackend::new(worker, cfg.object_mode), &cfg.options);
    FuseMount::mount(&cfg.mount_point, fs, &cfg.options)
}
