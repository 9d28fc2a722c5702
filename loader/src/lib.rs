//! loaderd: the daemon and `loaderctl`, as a library so tests and benches run the same code.
//!
//! * [`config`]: TOML + flags + env configuration with our tuning defaults.
//! * [`daemon`]: listeners, signals, graceful shutdown ([`daemon::run`]).
//! * [`server`]: the gRPC `Loader` service over the cache.
//! * [`fuse`]: the read-only POSIX view of the namespace, mounted by the daemon.
//! * [`http`]: Prometheus metrics and health.
//! * [`list`]: listing replies in pages.
//! * [`listen`]: connection caps, handshake timeouts and the descriptor limit of every listener.
//! * [`client`]: connecting to a daemon.
//! * [`pipeline`]: the sampler (global seeded shuffle sharded by rank).
//! * [`ctl`]: `loaderctl` commands, including `bench read` and the sample dataset generator.

pub mod auth;
pub mod client;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod fuse;
pub mod http;
pub mod list;
pub mod listen;
pub mod pipeline;
pub mod server;
pub mod shm;
