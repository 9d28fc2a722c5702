//! `loaderd-fuse-testfs`: a read-only pass-through of a local directory served through the
//! FUSE handover mechanism, for its tests and for trying it by hand:
//!
//! ```text
//! loaderd-fuse-testfs supervise --mount /mnt/x --socket /tmp/x.sock -- \
//!     loaderd-fuse-testfs serve --source /data
//! kill -TERM <server>   # handover: the supervisor starts the next server
//! kill -9 <server>      # crash: the supervisor restarts it, the kernel resends
//! ```

mod fs;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use loaderd_fuse::handover::{
    HANDOVER_SOCKET_ENV, MountConfig, ServeOptions, StopSignals, SupervisorConfig, Takeover,
    supervise,
};
use tracing::info;

#[derive(Parser)]
#[command(about = "A pass-through FUSE file system served through loaderd's handover")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount, hold the mount, and run (and restart) the server command.
    Supervise {
        #[arg(long)]
        mount: PathBuf,
        #[arg(long)]
        socket: PathBuf,
        /// Bytes of each of the state log's two regions.
        #[arg(long, default_value_t = 64 << 20)]
        state_region: usize,
        #[arg(long, default_value_t = 0)]
        restart_delay_ms: u64,
        /// The server command line.
        #[arg(last = true)]
        server: Vec<OsString>,
    },
    /// Take the mount from the holder and serve `--source` until SIGTERM.
    Serve {
        #[arg(long)]
        source: PathBuf,
        /// The handover socket (default: $LOADERD_FUSE_HANDOVER).
        #[arg(long, env = HANDOVER_SOCKET_ENV)]
        socket: PathBuf,
        /// Written with this process's id once the mount is served.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Sleep before every read (widens the window a crash lands in).
        #[arg(long, default_value_t = 0)]
        read_delay_ms: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Do not send FUSE_NOTIFY_RESEND after taking over (to see what it is for).
        #[arg(long)]
        no_resend: bool,
        /// Kill this process (-9) in the file system's FUSE_INIT callback, before the INIT
        /// outcome is settled, unless this file exists (which it then creates).
        #[arg(long)]
        crash_once_in_init: Option<PathBuf>,
        /// Kill this process (-9) once the INIT outcome reached the supervisor and before
        /// INIT is answered, unless this file exists (which it then creates).
        #[arg(long)]
        crash_once_after_announce: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Supervise {
            mount,
            socket,
            state_region,
            restart_delay_ms,
            server,
        } => {
            let cfg = SupervisorConfig {
                mount_point: mount,
                mount: MountConfig {
                    fs_name: "loaderd-testfs".into(),
                    subtype: "loaderd-testfs".into(),
                    ..MountConfig::default()
                },
                socket,
                server,
                state_region_len: state_region,
                restart_delay: Duration::from_millis(restart_delay_ms),
            };
            supervise(&cfg).context("supervising the mount")
        }
        Command::Serve {
            source,
            socket,
            pid_file,
            read_delay_ms,
            threads,
            no_resend,
            crash_once_in_init,
            crash_once_after_announce,
        } => {
            // Before any thread: SIGTERM is taken by the waiting thread below.
            let signals = StopSignals::block().context("blocking SIGTERM")?;
            let takeover = Takeover::connect(&socket, Duration::from_secs(30))
                .context("taking the mount over")?;
            let fs = fs::PassFs::new(
                source,
                takeover.state.clone(),
                Duration::from_millis(read_delay_ms),
                crash_once_in_init,
            );
            let resent = fs.resent.clone();
            let mut config = fuser::Config::default();
            config.n_threads = Some(threads);
            config.acl = fuser::SessionACL::All;
            let options = ServeOptions {
                no_resend,
                after_announce: crash_once_after_announce
                    .map(|marker| Box::new(move || fs::crash_once(&marker)) as Box<dyn FnOnce()>),
            };
            let served = takeover
                .serve(fs, config, options, |stopper| {
                    std::thread::spawn(move || {
                        if let Ok(sig) = signals.wait() {
                            info!(signal = %sig, "stopping: finishing the requests in flight");
                        }
                        stopper.stop();
                    });
                    if let Some(p) = &pid_file
                        && let Err(e) = std::fs::write(p, std::process::id().to_string())
                    {
                        tracing::warn!(error = %e, "writing the pid file");
                    }
                })
                .context("serving the mount")?;
            info!(
                generation = served.generation,
                resent = resent.load(Ordering::Relaxed),
                "server exits"
            );
            Ok(())
        }
    }
}
