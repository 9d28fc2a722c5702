//! loaderd, the daemon: one per node, as a library so tests and benches run the same code.
//!
//! * [`config`]: TOML + flags + env configuration with our tuning defaults.
//! * [`daemon`]: listeners, signals, graceful shutdown ([`daemon::run`]).
//! * [`server`]: the gRPC `Loader` service over the cache.
//! * [`shm`]: zero-copy reads and training loaders over the shared-memory socket; the one
//!   place that translates between wire messages and pipeline types.
//! * [`auth`]: who may call what (the admin role, TCP tokens).
//! * [`fuse`]: the read-only POSIX view of the namespace, mounted by the daemon.
//! * [`front`]: `loaderd fuse`, the thin FUSE front that serves the view from a worker.
//! * [`http`]: Prometheus metrics and health.
//! * [`list`]: listing replies in pages.
//! * [`listen`]: connection caps, handshake timeouts and the descriptor limit of every listener.
//! * [`socket`]: the Unix socket files (directory, stale sockets, mode and group).
//!
//! The cache is `loaderd-cache`, the training pipeline `loaderd-pipeline`, the wire types and
//! transport `loaderd-proto`, the FUSE file system `loaderd-fuse`, the Rust client
//! `loaderd-client` and `loaderctl` the `loaderctl` crate.

pub mod auth;
pub mod config;
pub mod daemon;
pub mod front;
pub mod fuse;
pub mod http;
pub mod list;
pub mod listen;
pub mod server;
pub mod shm;
pub mod socket;
