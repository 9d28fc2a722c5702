//! The serving side: take the mount from its holder, serve it with fuser until told to
//! stop, then release it with no request left unanswered.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Filesystem, Notifier, Session, SessionInit, SessionStopper};
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, info_span, warn};

use super::HandoverError;
use super::log::StateLog;
use super::state::FsState;
use super::wire::{self, Message};
use loaderd_proto::transport::connect_to;

/// Environment variable naming the handover socket for a server the supervisor starts.
pub const HANDOVER_SOCKET_ENV: &str = "LOADERD_FUSE_HANDOVER";

/// The mount as granted to this server: the connection to the kernel, the file system's
/// state replayed from the state memfd, and what FUSE_INIT settled (`None`: this server
/// answers FUSE_INIT).
#[derive(Debug)]
pub struct Takeover {
    /// The `/dev/fuse` descriptor of the mount.
    pub fuse: OwnedFd,
    /// The inode table and handles, as the previous servers left them.
    pub state: Arc<FsState>,
    /// What FUSE_INIT settled, if a previous server answered it.
    pub init: Option<SessionInit>,
    /// How many servers the mount had before this one.
    pub generation: u64,
    /// Whether replay stopped at a torn record (a crash mid-append).
    pub torn: bool,
    holder: OwnedFd,
}

impl Takeover {
    /// Connects to the holder at `socket` and waits (up to `wait`) for the mount: the holder
    /// grants it once the previous server is gone.
    pub fn connect(socket: &Path, wait: Duration) -> Result<Takeover, HandoverError> {
        let _span = info_span!("fuse_takeover", socket = %socket.display()).entered();
        let deadline = Instant::now() + wait;
        let holder = loop {
            match connect_to(socket) {
                Ok(fd) => break fd,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "holder not there yet");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(HandoverError::Connect(e)),
            }
        };
        wire::send(
            holder.as_fd(),
            &Message::Hello {
                pid: std::process::id(),
            },
            &[],
        )?;
        let (msg, mut fds) = wire::recv(holder.as_fd())?;
        let (generation, init) = match msg {
            Message::Grant { generation, init } => (generation, init),
            Message::Refused { protocol, reason } => {
                return Err(HandoverError::Refused { protocol, reason });
            }
            other => return Err(HandoverError::Unexpected(format!("{other:?}"))),
        };
        if fds.len() != 2 {
            return Err(HandoverError::Unexpected(format!(
                "a grant with {} descriptors, not 2",
                fds.len()
            )));
        }
        let state_fd = fds
            .pop()
            .ok_or(HandoverError::Unexpected("no state".into()))?;
        let fuse = fds
            .pop()
            .ok_or(HandoverError::Unexpected("no fuse".into()))?;
        let (log, replay) = StateLog::open(state_fd)?;
        let torn = replay.torn;
        if torn {
            warn!("the state log ended in a torn record (a server died mid-append)");
        }
        let state = Arc::new(FsState::new(log, replay)?);
        let (inodes, handles) = state.counts();
        info!(
            generation,
            resumed = init.is_some(),
            inodes,
            handles,
            "mount granted"
        );
        Ok(Takeover {
            fuse,
            state,
            init,
            generation,
            torn,
            holder,
        })
    }

    /// Serves the mount with `fs` (built on [`Takeover::state`]) until the [`SessionStopper`]
    /// given to `on_stopper` is stopped, then releases it. A server after the first one
    /// first asks the kernel to resend the requests a crashed predecessor read and never
    /// answered. `config` must not set `clone_fd` (requests read on a clone die with the
    /// process that holds it).
    pub fn serve<FS, F>(
        self,
        fs: FS,
        config: fuser::Config,
        options: ServeOptions,
        on_stopper: F,
    ) -> Result<Served, HandoverError>
    where
        FS: Filesystem + Send + 'static,
        F: FnOnce(SessionStopper),
    {
        let _span = info_span!("fuse_serve", generation = self.generation).entered();
        if config.clone_fd {
            return Err(HandoverError::CloneFd);
        }
        let acl = config.acl;
        let dup = || self.fuse.try_clone().map_err(HandoverError::Session);
        if !options.no_resend && self.generation > 0 {
            // Before reading anything: requests a crashed predecessor read and never answered
            // (FUSE_INIT itself among them, if it died in the handshake) are queued again.
            // After a clean release there are none, and this does nothing.
            match Notifier::from_device(dup()?).resend() {
                Ok(()) => info!("asked the kernel to resend unanswered requests"),
                Err(e) => warn!(
                    error = %e,
                    "FUSE_NOTIFY_RESEND refused (Linux < 6.9?): requests a crashed server held stay unanswered"
                ),
            }
        }
        let mut after_announce = options.after_announce;
        let holder = self.holder.as_fd();
        // The holder learns the INIT outcome before the kernel gets its reply: if this
        // process dies in between, the successor resumes and answers the resent INIT.
        let mut announce = |init: &SessionInit| -> std::io::Result<()> {
            let msg = Message::Initialised { init: init.clone() };
            wire::send(holder, &msg, &[]).map_err(std::io::Error::other)?;
            info!(abi = %init.proto_version, "answering FUSE_INIT");
            if let Some(f) = after_announce.take() {
                f();
            }
            Ok(())
        };
        let mut session = match self.init.clone() {
            Some(init) => Session::resume(fs, dup()?, acl, config, init),
            None => Session::from_fd_announcing(fs, dup()?, acl, config, &mut announce),
        }
        .map_err(HandoverError::Session)?;
        on_stopper(session.stopper());
        let started = Instant::now();
        session.run().map_err(HandoverError::Session)?;
        wire::send(self.holder.as_fd(), &Message::Released, &[])?;
        info!(
            served_s = started.elapsed().as_secs_f64(),
            "released the mount"
        );
        Ok(Served {
            generation: self.generation,
        })
    }
}

/// How [`Takeover::serve`] serves.
#[derive(Default)]
pub struct ServeOptions {
    /// Do not send FUSE_NOTIFY_RESEND after taking over (tests: shows what it is for).
    pub no_resend: bool,
    /// Called once the INIT outcome reached the holder, before INIT is answered (a test
    /// crashes the server there).
    pub after_announce: Option<Box<dyn FnOnce()>>,
}

/// What a finished [`Takeover::serve`] reports.
#[derive(Debug)]
pub struct Served {
    /// This server's generation.
    pub generation: u64,
}

/// SIGTERM and SIGINT, blocked in every thread and taken by [`StopSignals::wait`]: call
/// [`StopSignals::block`] first thing in `main`, before any thread starts.
#[derive(Debug)]
pub struct StopSignals(SigSet);

impl StopSignals {
    /// Blocks SIGTERM and SIGINT in this thread (and the threads it starts later).
    pub fn block() -> nix::Result<StopSignals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.thread_block()?;
        Ok(StopSignals(set))
    }

    /// Waits for SIGTERM or SIGINT.
    pub fn wait(&self) -> nix::Result<Signal> {
        self.0.wait()
    }
}
