//! Protobuf messages and tonic services of loaderd's control API.
//!
//! One package, `loaderd.v1`: the `Loader` service that `loaderctl`, the Python client and the
//! FUSE view talk to over the daemon's Unix socket (or loopback TCP).
//!
//! [`transport`] holds what both sides share besides the messages: socket paths, gRPC
//! sizes, and the shared-memory socket's datagrams and read-only mappings.

pub mod transport;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("loaderd.v1");
}
