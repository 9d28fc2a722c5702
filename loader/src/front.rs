//! `loaderd fuse`: the thin FUSE front ([`loaderd_fuse::front`]) as a subcommand of the
//! daemon's binary — one binary in the image, the same config file (`[fuse]`) and flag
//! parsing — that opens no cache, joins no cluster and serves the mount from the node's
//! worker until SIGTERM or SIGINT.
//!
//! By default it is a supervisor ([`loaderd_fuse::front::restart`]): it mounts, holds the
//! mount and runs the serving front (`loaderd fuse` again, with `LOADERD_FUSE_HANDOVER` set)
//! as its child, restarting it whenever it exits, so a crashed or SIGTERMed serving front
//! costs readers a pause, not ENOTCONN. `--takeover SOCKET` serves a mount another
//! supervisor holds (an upgrade: the new binary waits, the old serving front is SIGTERMed);
//! `--no-supervisor` mounts and serves in one process (a restart unmounts).

use std::path::PathBuf;

use anyhow::Context;
use loaderd_cache::Secs;
use loaderd_fuse::front::restart::{self, HANDOVER_SOCKET_ENV};
use loaderd_fuse::front::{self, FrontConfig};
use loaderd_fuse::handover::StopSignals;
use tracing::info;

use crate::config::DaemonConfig;

/// `loaderd fuse [OPTIONS] --socket PATH MOUNTPOINT`.
#[derive(clap::Args, Debug)]
pub struct FrontArgs {
    /// TOML config file (the worker's): its `[fuse]` section, `server.socket`,
    /// `server.shm_socket` and `server.log_level` are read.
    #[arg(long, env = "LOADERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// The worker's gRPC socket, or the directory holding `loaderd.sock` (its shared-memory
    /// socket is beside it).
    #[arg(long, env = "LOADERD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Threads serving FUSE requests (about the number of concurrent readers).
    #[arg(long, env = "LOADERD_FUSE_THREADS")]
    pub threads: Option<usize>,
    /// How long the kernel trusts a name lookup, e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ENTRY_TIMEOUT")]
    pub entry_timeout: Option<Secs>,
    /// How long the kernel trusts attributes (size, mtime), e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ATTR_TIMEOUT")]
    pub attr_timeout: Option<Secs>,
    /// How long a request waits for an unreachable worker before failing with EIO
    /// (`[fuse] worker_wait`), e.g. 60s.
    #[arg(long, env = "LOADERD_FUSE_WORKER_WAIT")]
    pub worker_wait: Option<Secs>,
    /// Log filter (`[server] log_level`), e.g. info or loaderd_fuse=debug.
    #[arg(long, env = "LOADERD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve the mount the supervisor at this handover socket holds, instead of mounting:
    /// how the supervisor starts its serving front, and how a new binary takes over (it
    /// waits until the serving front is SIGTERMed).
    #[arg(long, env = HANDOVER_SOCKET_ENV, value_name = "SOCKET", conflicts_with = "no_supervisor")]
    pub takeover: Option<PathBuf>,
    /// The supervisor's handover socket (default: in the temporary directory, named after
    /// the mount point; the supervisor logs it).
    #[arg(long, value_name = "SOCKET")]
    pub handover_socket: Option<PathBuf>,
    /// Mount and serve in this one process, without a supervisor: a restart or crash of
    /// the front unmounts (readers get ENOTCONN until it mounts again).
    #[arg(long)]
    pub no_supervisor: bool,
    /// Where to mount.
    pub mount_point: PathBuf,
}

/// How `loaderd fuse` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Mount, hold the mount and run the serving front as a child (the default).
    Supervisor { handover_socket: PathBuf },
    /// Serve the mount held at this handover socket.
    Takeover(PathBuf),
    /// Mount and serve in this process.
    Alone,
}

/// The front's configuration: the config file's `[fuse]` section under the flags.
pub fn config(args: &FrontArgs) -> anyhow::Result<(FrontConfig, Role, String)> {
    let mut cfg = match &args.config {
        Some(path) => DaemonConfig::from_file(path)?,
        None => DaemonConfig::default(),
    };
    let f = &mut cfg.fuse;
    if let Some(v) = args.threads {
        f.threads = v;
    }
    for (slot, flag) in [
        (&mut f.entry_timeout, &args.entry_timeout),
        (&mut f.attr_timeout, &args.attr_timeout),
        (&mut f.worker_wait, &args.worker_wait),
    ] {
        if let Some(v) = flag {
            *slot = *v;
        }
    }
    cfg.validate()?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| cfg.server.socket.clone());
    let mount_point = std::path::absolute(&args.mount_point)
        .with_context(|| format!("mount point {:?}", args.mount_point))?;
    let log = args
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.server.log_level.clone());
    let role = match (&args.takeover, args.no_supervisor) {
        (Some(socket), _) => Role::Takeover(socket.clone()),
        (None, true) => Role::Alone,
        (None, false) => Role::Supervisor {
            handover_socket: args
                .handover_socket
                .clone()
                .unwrap_or_else(|| restart::default_handover_socket(&mount_point)),
        },
    };
    Ok((
        FrontConfig {
            socket: front::worker_socket(&socket),
            shm_socket: cfg.server.shm_socket.clone(),
            mount_point,
            options: crate::fuse::options(&cfg.fuse),
            worker_wait: cfg.fuse.worker_wait.0,
            object_mode: cfg.fuse.object_mode,
        },
        role,
        log,
    ))
}

/// Runs the front as `role` says until SIGTERM or SIGINT. Call it from `main` before any
/// thread starts (the supervisor and the serving front take the signals on one thread).
pub fn run(cfg: FrontConfig, role: Role) -> anyhow::Result<()> {
    match role {
        Role::Supervisor { handover_socket } => {
            let exe = std::env::current_exe().context("the path of this program")?;
            let server = std::iter::once(exe.into_os_string())
                .chain(std::env::args_os().skip(1))
                .collect();
            restart::supervise(&cfg, &handover_socket, server).context("supervising the FUSE front")
        }
        Role::Takeover(socket) => {
            let signals = StopSignals::block().context("blocking SIGTERM")?;
            let served = restart::serve(&cfg, &socket, signals)
                .with_context(|| format!("serving the mount held at {}", socket.display()))?;
            info!(
                generation = served.generation,
                "FUSE front handed the mount over"
            );
            Ok(())
        }
        Role::Alone => run_alone(cfg),
    }
}

/// Mounts the front and serves until SIGTERM or SIGINT, then unmounts.
fn run_alone(cfg: FrontConfig) -> anyhow::Result<()> {
    let mount = front::mount(&cfg)?;
    info!(
        mount_point = %cfg.mount_point.display(),
        socket = %cfg.socket.display(),
        worker_wait = ?cfg.worker_wait,
        "FUSE front serving from the worker"
    );
    let signal = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::wait_for_signal())?;
    info!(signal, "FUSE front shutting down");
    mount.unmount();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        front: FrontArgs,
    }

    fn parsed(flags: &[&str]) -> anyhow::Result<FrontConfig> {
        let cli = Cli::try_parse_from(std::iter::once("fuse").chain(flags.iter().copied()))?;
        Ok(config(&cli.front)?.0)
    }

    fn role(flags: &[&str]) -> Role {
        let cli = Cli::try_parse_from(std::iter::once("fuse").chain(flags.iter().copied()))
            .expect("flags");
        config(&cli.front).expect("config").1
    }

    #[test]
    fn a_supervisor_by_default() {
        assert_eq!(
            role(&["/mnt/x"]),
            Role::Supervisor {
                handover_socket: restart::default_handover_socket(std::path::Path::new("/mnt/x"))
            }
        );
        assert_ne!(
            role(&["/mnt/x"]),
            role(&["/mnt/y"]),
            "one handover socket per mount point"
        );
        assert_eq!(
            role(&["--handover-socket", "/run/h.sock", "/mnt/x"]),
            Role::Supervisor {
                handover_socket: "/run/h.sock".into()
            }
        );
        assert_eq!(
            role(&["--takeover", "/run/h.sock", "/mnt/x"]),
            Role::Takeover("/run/h.sock".into())
        );
        assert_eq!(role(&["--no-supervisor", "/mnt/x"]), Role::Alone);
        assert!(parsed(&["--no-supervisor", "--takeover", "/h", "/mnt/x"]).is_err());
    }

    #[test]
    fn the_config_files_fuse_section_under_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loaderd.toml");
        std::fs::write(
            &file,
            "[server]\nsocket = \"/run/w/loaderd.sock\"\n\
             [fuse]\nworker_wait = \"5s\"\nthreads = 3\nkeep_cache = false\nobject_mode = 0o440\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let cfg = parsed(&["--config", file, "/mnt/x"]).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/run/w/loaderd.sock"));
        assert_eq!(cfg.shm_socket, None);
        assert_eq!(cfg.mount_point, PathBuf::from("/mnt/x"));
        assert_eq!(cfg.worker_wait, Duration::from_secs(5));
        assert_eq!((cfg.options.threads, cfg.options.keep_cache), (3, false));
        assert_eq!(cfg.object_mode, 0o440);

        let cfg = parsed(&[
            "--config",
            file,
            "--socket",
            dir.path().to_str().unwrap(),
            "--worker-wait",
            "2m",
            "--threads",
            "9",
            "--entry-timeout",
            "1s",
            "--attr-timeout",
            "2s",
            "/mnt/x",
        ])
        .unwrap();
        // A directory names the socket in it.
        assert_eq!(cfg.socket, dir.path().join("loaderd.sock"));
        assert_eq!(cfg.worker_wait, Duration::from_secs(120));
        assert_eq!(cfg.options.threads, 9);
        assert_eq!(cfg.options.entry_timeout, Duration::from_secs(1));
        assert_eq!(cfg.options.attr_timeout, Duration::from_secs(2));

        // The defaults, and the config's own checks.
        let cfg = parsed(&["/mnt/x"]).unwrap();
        assert_eq!(cfg.worker_wait, Duration::from_secs(60));
        assert!(parsed(&["--threads", "0", "/mnt/x"]).is_err());
        assert!(parsed(&[]).is_err(), "the mount point is required");
    }
}
