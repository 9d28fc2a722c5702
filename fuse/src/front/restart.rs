//! The front served through the handover ([`crate::handover`]), so that replacing or
//! restarting it does not unmount: [`supervise`] mounts, holds `/dev/fuse` and the state
//! memfd and runs the serving front (this same program, started with
//! [`HANDOVER_SOCKET_ENV`] set) as its child, restarting it whenever it exits;
//! [`serve`] is the serving front, which takes the mount over, serves it on the mount's
//! logged state ([`State::shared`]) until SIGTERM, then releases it to the next server.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::{FrontConfig, Worker, WorkerBackend};
use crate::fs::LoaderFs;
use crate::handover::{
    HandoverError, MountConfig, ServeOptions, Served, StopSignals, SupervisorConfig, Takeover,
};
use crate::mount::{MountError, clear_stale_mount, raise_readahead, session_config};
use crate::state::State;

pub use crate::handover::HANDOVER_SOCKET_ENV;

/// Bytes of each of the two regions of the front's state log (inodes the kernel knows and
/// open files; compacted when a region fills).
pub const STATE_REGION: usize = 64 << 20;

/// How long a serving front waits to be granted the mount: a successor started by hand
/// waits until the serving front it replaces has been told to stop.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(600);

/// The handover socket of the mount at `mount_point` when none is given: in the temporary
/// directory, named after the mount point (one per mount on a node).
pub fn default_handover_socket(mount_point: &Path) -> PathBuf {
    let hash = xxhash_rust::xxh3::xxh3_64(mount_point.as_os_str().as_bytes());
    std::env::temp_dir().join(format!("loaderd-fuse-{hash:016x}.sock"))
}

/// What can stop the front's supervisor or serving process.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("connecting to the worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// Mounts `cfg.mount_point` (detaching a stale mount first), runs `server` (the serving
/// front's command line) with [`HANDOVER_SOCKET_ENV`] naming `socket`, restarts it whenever
/// it exits, and on SIGTERM or SIGINT stops it and unmounts. Call it from `main` before any
/// thread starts.
pub fn supervise(
    cfg: &FrontConfig,
    socket: &Path,
    server: Vec<OsString>,
) -> Result<(), RestartError> {
    clear_stale_mount(&cfg.mount_point)?;
    std::fs::create_dir_all(&cfg.mount_point).map_err(|source| MountError::MountPoint {
        path: cfg.mount_point.clone(),
        source,
    })?;
    let sup = SupervisorConfig {
        mount_point: cfg.mount_point.clone(),
        mount: MountConfig {
            allow_other: cfg.options.allow_other,
            default_permissions: cfg.options.default_permissions,
            max_read: cfg.options.max_read,
            ..MountConfig::default()
        },
        socket: socket.to_path_buf(),
        server,
        state_region_len: STATE_REGION,
        restart_delay: Duration::from_millis(100),
    };
    info!(
        mount_point = %cfg.mount_point.display(),
        handover_socket = %socket.display(),
        "FUSE front supervisor: the mount outlives its serving process"
    );
    Ok(crate::handover::supervise(&sup)?)
}

/// Serves the mount that the holder at `socket` grants (a supervisor, after the previous
/// serving front is gone) until SIGTERM or SIGINT, then releases it. `signals` must have
/// been blocked first thing in `main`. A front started by the supervisor dies with it
/// (SIGKILL: with the supervisor gone nothing could take the mount over, so it ends at once
/// and the next supervisor detaches the dead mount).
pub fn serve(
    cfg: &FrontConfig,
    socket: &Path,
    signals: StopSignals,
) -> Result<Served, RestartError> {
    if std::env::var_os(HANDOVER_SOCKET_ENV).is_some()
        && let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
    {
        warn!(error = %e, "cannot tie the serving front to its supervisor");
    }
    let takeover = Takeover::connect(socket, TAKEOVER_WAIT)?;
    let worker = Worker::new(&cfg.socket, cfg.shm_socket.as_deref(), cfg.worker_wait)
        .map_err(RestartError::Worker)?;
    let state = State::shared(takeover.state.clone(), takeover.generation);
    let fs = LoaderFs::with_state(
        WorkerBackend::new(worker, cfg.object_mode),
        &cfg.options,
        state,
    );
    let mut config = session_config(&cfg.options);
    // Requests read on a cloned descriptor die with this process: one descriptor, so a
    // successor (or the kernel's resend after a crash) gets every one.
    config.clone_fd = false;
    let first = takeover.init.is_none();
    let (mount_point, max_read) = (cfg.mount_point.clone(), cfg.options.max_read);
    info!(
        generation = takeover.generation,
        mount_point = %cfg.mount_point.display(),
        socket = %cfg.socket.display(),
        "FUSE front serving from the worker"
    );
    let served = takeover.serve(fs, config, ServeOptions::default(), move |stopper| {
        std::thread::spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!(signal = %sig, "FUSE front: finishing the requests in flight, then handing over");
            }
            stopper.stop();
        });
        if first {
            // Blocks until FUSE_INIT is answered, which this process does once it serves.
            std::thread::spawn(move || raise_readahead(&mount_point, max_read));
        }
    })?;
    Ok(served)
}
