//! The supervisor: a tiny process that mounts, holds the mount's `/dev/fuse` descriptor and
//! the state memfd for the mount's whole life, and grants both to one server at a time.
//! While it holds them the kernel keeps the connection (and every request a dead server had
//! read) alive, so a crash costs readers a pause, never ENOTCONN.
//!
//! One thread, one poll loop: a signalfd (SIGCHLD, SIGTERM, SIGINT), the listening socket,
//! and the connection of the serving server. A server is granted the mount only once the
//! previous one's connection is closed (it exited), so two never read the device at once and
//! the newcomer's FUSE_NOTIFY_RESEND only ever brings back the dead server's requests.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{error, info, info_span, warn};

use super::log::StateLog;
use super::mount::{MountConfig, mount_fuse, unmount};
use super::server::HANDOVER_SOCKET_ENV;
use super::wire::{self, HANDOVER_PROTOCOL, Message, WireError};
use super::{HandoverError, SessionInit};
use loaderd_proto::transport::{accept_on, listen_at};

/// What the supervisor mounts, where it listens, and what it runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The mount point (an existing directory).
    pub mount_point: PathBuf,
    /// How the mount looks.
    pub mount: MountConfig,
    /// The handover socket servers connect to.
    pub socket: PathBuf,
    /// The server's command line, started (and restarted whenever it exits) with
    /// [`HANDOVER_SOCKET_ENV`] naming the socket; empty: servers are started by others.
    pub server: Vec<OsString>,
    /// Bytes of each of the state log's two regions.
    pub state_region_len: usize,
    /// Wait before restarting a server that exited.
    pub restart_delay: Duration,
}

/// How long a new connection may take to say hello.
const HELLO_WAIT: u16 = 2000;

struct Supervisor<'a> {
    cfg: &'a SupervisorConfig,
    fuse: OwnedFd,
    state: OwnedFd,
    init: Option<SessionInit>,
    generation: u64,
    /// The serving server's connection and process id.
    serving: Option<(OwnedFd, u32)>,
    waiting: VecDeque<(OwnedFd, u32)>,
    child: Option<Child>,
    restart_at: Option<Instant>,
    stopping: bool,
}

/// Mounts, serves the mount through successive servers until SIGTERM or SIGINT, then stops
/// the server and unmounts. Blocks SIGCHLD, SIGTERM and SIGINT in the calling thread: call
/// it from `main` before starting threads.
pub fn supervise(cfg: &SupervisorConfig) -> Result<(), HandoverError> {
    let _span = info_span!("fuse_supervisor", mount_point = %cfg.mount_point.display()).entered();
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    mask.thread_block().map_err(HandoverError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(HandoverError::Signals)?;
    let state = StateLog::create(cfg.state_region_len)?;
    if cfg.socket.exists() {
        std::fs::remove_file(&cfg.socket).map_err(HandoverError::Listen)?;
    }
    let listener = listen_at(&cfg.socket).map_err(HandoverError::Listen)?;
    // Whoever connects is handed the mount: only this user may.
    std::fs::set_permissions(
        &cfg.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(HandoverError::Listen)?;
    let fuse = mount_fuse(&cfg.mount_point, &cfg.mount)?;
    info!(socket = %cfg.socket.display(), "mounted; waiting for a server");
    let mut sup = Supervisor {
        cfg,
        fuse,
        state,
        init: None,
        generation: 0,
        serving: None,
        waiting: VecDeque::new(),
        child: None,
        restart_at: Some(Instant::now()),
        stopping: false,
    };
    let res = sup.run(&signals, listener.as_fd());
    if let Err(e) = unmount(&cfg.mount_point) {
        warn!(error = %e, "unmounting");
    }
    let _ = std::fs::remove_file(&cfg.socket);
    info!(mount_point = %cfg.mount_point.display(), "FUSE view unmounted");
    res
}

impl Supervisor<'_> {
    fn run(&mut self, signals: &SignalFd, listener: BorrowedFd<'_>) -> Result<(), HandoverError> {
        loop {
            self.grant_next();
            if self.stopping && self.serving.is_none() && self.child.is_none() {
                return Ok(());
            }
            if let Some(at) = self.restart_at
                && Instant::now() >= at
            {
                self.restart_at = None;
                self.spawn();
            }
            let timeout = self
                .restart_at
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(1000)
                .min(1000) as u16;
            let mut fds = vec![
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener, PollFlags::POLLIN),
            ];
            if let Some((s, _)) = &self.serving {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(HandoverError::Signals(e)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (sig, conn, serving) = (ready(0), ready(1), ready(2));
            drop(fds);
            if sig {
                self.on_signals(signals);
            }
            if conn {
                self.accept(listener);
            }
            if serving {
                self.on_server_message();
            }
        }
    }

    fn spawn(&mut self) {
        let Some((program, args)) = self.cfg.server.split_first() else {
            return;
        };
        match Command::new(program)
            .args(args)
            .env(HANDOVER_SOCKET_ENV, &self.cfg.socket)
            .spawn()
        {
            Ok(child) => {
                info!(pid = child.id(), "started the server");
                self.child = Some(child);
            }
            Err(e) => {
                error!(error = %e, "starting the server; retrying");
                self.restart_at =
                    Some(Instant::now() + self.cfg.restart_delay.max(Duration::from_millis(100)));
            }
        }
    }

    fn on_signals(&mut self, signals: &SignalFd) {
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(sig) => {
                    info!(signal = %sig, "stopping: the server is asked to release the mount");
                    self.stopping = true;
                    self.restart_at = None;
                    // Waiting servers see their connection close and exit; the serving one
                    // (ours or started by someone else) releases the mount.
                    self.waiting.clear();
                    if let Some((_, pid)) = &self.serving
                        && let Ok(pid) = i32::try_from(*pid)
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGTERM,
                        );
                    }
                }
                Err(_) => {}
            }
        }
    }

    fn reap(&mut self) {
        let Some(child) = &mut self.child else { return };
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    info!(
                        pid = child.id(),
                        "the server exited after releasing the mount"
                    );
                } else if self.stopping {
                    info!(pid = child.id(), %status, "the server exited");
                } else {
                    warn!(pid = child.id(), %status, "the server died; restarting it");
                }
                self.child = None;
                if !self.stopping && !self.connection_alive() {
                    warn!("the mount was unmounted from outside; stopping");
                    self.stopping = true;
                    self.waiting.clear();
                }
                if !self.stopping {
                    self.restart_at = Some(Instant::now() + self.cfg.restart_delay);
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "waiting for the server"),
        }
    }

    /// Whether the kernel still serves the mount: an unmounted (or aborted) connection polls
    /// as an error, and a server would only exit again at once.
    fn connection_alive(&self) -> bool {
        let mut fds = [PollFd::new(self.fuse.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
            Err(_) => true,
        }
    }

    fn accept(&mut self, listener: BorrowedFd<'_>) {
        let conn = match accept_on(listener) {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "accepting a server"),
        };
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(HELLO_WAIT)), Ok(1)) {
            return warn!("a connection said nothing; closed");
        }
        match wire::recv(conn.as_fd()) {
            Ok((Message::Hello { pid }, _)) if !self.stopping => {
                info!(pid, "a server waits for the mount");
                self.waiting.push_back((conn, pid));
            }
            Ok((other, _)) => warn!(message = ?other, "not a hello; closed"),
            Err(WireError::Protocol(protocol)) => {
                warn!(protocol, "a server of another handover protocol; refused");
                let refusal = Message::Refused {
                    protocol: HANDOVER_PROTOCOL,
                    reason: format!("this supervisor speaks handover protocol {HANDOVER_PROTOCOL}"),
                };
                let _ = wire::send(conn.as_fd(), &refusal, &[]);
            }
            Err(e) => warn!(error = %e, "a bad hello; closed"),
        }
    }

    fn grant_next(&mut self) {
        while self.serving.is_none() && !self.stopping {
            let Some((conn, pid)) = self.waiting.pop_front() else {
                return;
            };
            let grant = Message::Grant {
                generation: self.generation,
                init: self.init.clone(),
            };
            match wire::send(
                conn.as_fd(),
                &grant,
                &[self.fuse.as_fd(), self.state.as_fd()],
            ) {
                Ok(()) => {
                    info!(pid, generation = self.generation, "granted the mount");
                    self.generation += 1;
                    self.serving = Some((conn, pid));
                }
                Err(e) => warn!(pid, error = %e, "a waiting server is gone"),
            }
        }
    }

    fn on_server_message(&mut self) {
        let Some((conn, _)) = &self.serving else {
            return;
        };
        match wire::recv(conn.as_fd()) {
            Ok((Message::Initialised { init }, _)) => {
                info!(abi = %init.proto_version, "the server settled FUSE_INIT (its reply follows)");
                self.init = Some(init);
            }
            Ok((Message::Released, _)) => info!("the server released the mount"),
            Ok((other, _)) => warn!(message = ?other, "unexpected message from the server"),
            Err(WireError::Closed) => {
                info!("the server's connection closed; the mount waits for the next");
                self.serving = None;
            }
            Err(e) => {
                warn!(error = %e, "the server's connection failed");
                self.serving = None;
            }
        }
    }
}
