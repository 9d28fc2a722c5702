//! What the daemon and its clients share besides the messages: where the sockets are, the
//! gRPC transport's sizes, and the shared-memory socket's datagrams and mappings.
//!
//! The shared-memory socket (SOCK_SEQPACKET, so every protobuf message is one datagram)
//! carries `Shm*` and loader messages; the daemon passes *read-only* descriptors of its arena
//! and of each batch ring (SCM_RIGHTS), which clients map with [`ReadOnlyMap`]. This module
//! holds that plumbing, the only `unsafe` of this crate.
#![deny(clippy::undocumented_unsafe_blocks)]

mod map;
mod seqpacket;

use std::path::{Path, PathBuf};

pub use map::ReadOnlyMap;
pub use seqpacket::{
    MAX_PASSED_FDS, accept_on, connect_to, listen_at, recv_msg, recv_msg_fds, send_msg,
    send_msg_fds,
};

/// Version of the shared-memory protocol, sent in `ShmHello`; a client refuses another.
pub const SHM_PROTOCOL_VERSION: u32 = 2;

/// Largest gRPC message either side accepts (a data chunk is far smaller).
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;
/// HTTP/2 flow-control windows: large, so one stream can move GB/s over a Unix socket.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Connection-level window.
pub const CONNECTION_WINDOW: u32 = 64 << 20;
/// HTTP/2 frame size limit (the protocol's maximum): fewer frames per data chunk.
pub const MAX_FRAME: u32 = (16 << 20) - 1;
/// The gRPC metadata key of the TCP API's bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// Largest message either side of the shared-memory socket sends.
pub const MAX_SHM_MESSAGE: usize = 1 << 20;

/// The shared-memory socket that goes with gRPC socket `grpc`: `loaderd.sock` → `loaderd.shm.sock`.
pub fn default_shm_socket(grpc: &Path) -> PathBuf {
    let stem = grpc
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "loaderd".into());
    grpc.with_file_name(format!("{stem}.shm.sock"))
}

/// `/run/loaderd/loaderd.sock` for root, else `/tmp/loaderd-<uid>/loaderd.sock`.
pub fn default_socket() -> PathBuf {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/loaderd/loaderd.sock")
    } else {
        PathBuf::from(format!("/tmp/loaderd-{uid}/loaderd.sock"))
    }
}
