//! `loaderd fuse`: the thin FUSE front ([`loaderd_fuse::front`]) as a subcommand of the
//! daemon's binary — one binary in the image, the same config file (`[fuse]`) and flag
//! parsing — that opens no cache, joins no cluster and serves the mount from the node's
//! worker until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use loaderd_cache::Secs;
use loaderd_fuse::front::{self, FrontConfig};
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
    /// Where to mount.
    pub mount_point: PathBuf,
}

/// The front's configuration: the config file's `[fuse]` section under the flags.
pub fn config(args: &FrontArgs) -> anyhow::Result<(FrontConfig, String)> {
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
    Ok((
        FrontConfig {
            socket: front::worker_socket(&socket),
            shm_socket: cfg.server.shm_socket.clone(),
            mount_point,
            options: crate::fuse::options(&cfg.fuse),
            worker_wait: cfg.fuse.worker_wait.0,
            object_mode: cfg.fuse.object_mode,
        },
        log,
    ))
}

/// Mounts the front and serves until SIGTERM or SIGINT, then unmounts.
pub fn run(cfg: FrontConfig) -> anyhow::Result<()> {
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
