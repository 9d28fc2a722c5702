//! FUSE handover: replace the process serving a mount without unmounting it.
//!
//! The kernel sends FUSE_INIT once per mount and ends the connection (ENOTCONN for every
//! reader) when the last descriptor of its `/dev/fuse` file is closed. So the mount must
//! outlive its server:
//!
//! - a **supervisor** ([`supervise`]) mounts, holds the `/dev/fuse` descriptor and a state
//!   memfd for the mount's whole life, and grants both to one **server** at a time over a
//!   Unix socket (SOCK_SEQPACKET, SCM_RIGHTS), with what FUSE_INIT settled and a protocol
//!   version ([`wire`]);
//! - a server ([`Takeover::connect`], then [`Takeover::serve`]) serves the mount with
//!   fuser — answering FUSE_INIT if it is the first, resuming without a handshake otherwise
//!   (fuser's `Session::resume`, a patch of ours: `third_party/fuser/PATCHES.md`);
//! - **SIGTERM** (an upgrade): the server stops reading requests, answers those it read,
//!   tells the supervisor it released the mount and exits; the next server (restarted by the
//!   supervisor, or one already waiting on the socket) is granted the mount;
//! - **a crash**: the supervisor's copy of the descriptor keeps the connection, and the
//!   requests the dead server had read stay queued in the kernel unanswered; the next server
//!   sends FUSE_NOTIFY_RESEND (Linux ≥ 6.9) before reading, and the kernel queues them again.
//!
//! Readers see a pause. The file system's own state (inode table, open handles) lives in
//! the state memfd ([`FsState`] over [`StateLog`]), so the next server knows every inode and
//! handle the kernel holds.

mod log;
mod map;
mod mount;
mod server;
mod state;
mod supervisor;
pub mod wire;

pub use fuser::SessionInit;
pub use log::{LogError, MIN_REGION_LEN, Replay, StateLog};
pub use mount::{MountConfig, MountError, mount_fuse, unmount};
pub use server::{HANDOVER_SOCKET_ENV, ServeOptions, Served, StopSignals, Takeover};
pub use state::{FsState, Handle, Inode, ROOT_INO, StateError};
pub use supervisor::{SupervisorConfig, supervise};

/// What can go wrong handing a mount over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("connecting to the handover socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("listening on the handover socket: {0}")]
    Listen(#[source] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("the holder refused the mount (it speaks handover protocol {protocol}): {reason}")]
    Refused { protocol: u32, reason: String },
    #[error("unexpected handover message: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("serving the mount: {0}")]
    Session(#[source] std::io::Error),
    #[error("signals: {0}")]
    Signals(#[source] nix::errno::Errno),
    #[error("clone_fd cannot be handed over: requests read on a clone die with its process")]
    CloneFd,
}
