//! Local zero-copy reads and training batches over the shared-memory socket.
//!
//! gRPC moves every byte through HTTP/2 framing and three copies; for data already in the
//! memory tier a local client can do better. The daemon listens on a second Unix socket
//! (SOCK_SEQPACKET, so every protobuf message is one datagram; the plumbing is in
//! `loaderd_proto::transport`), sends a *read-only* descriptor of its arena once per
//! connection (SCM_RIGHTS), and answers each read with the arena extents that hold the bytes.
//! Those extents are leased: the daemon does not reuse their slots until the client releases
//! the read or disconnects (a killed client frees everything it held). Bytes not in the memory
//! tier are named as fallback extents, which the client reads over gRPC. The same socket
//! carries a client's training loader ([`loader`]).

pub mod clients;
mod loader;

pub use loader::loader_status;
pub mod server;
