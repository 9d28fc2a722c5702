//! Helpers for the end-to-end tests.
//!
//! Every test runs real processes: an S3 server (`scripts/s3_sandbox.py`, moto),
//! a `loaderd` daemon and `loaderctl` clients. Nothing is mocked, so a passing
//! test means the shipped binaries behave as documented.
//!
//! The binaries are not built by these tests: run `cargo build --bins` first,
//! or point `LOADERD_BIN_DIR` at a directory holding `loaderd` and `loaderctl`.
//! All helpers panic with the relevant log on failure; a test has nothing to
//! clean up, since every process and temporary directory is owned by a value
//! whose `Drop` kills or removes it.
//!
//! One module a job, everything re-exported here: [`process`] (binaries, environment,
//! bounded waits), [`data`] (random bytes, datasets, digests), [`net`] (ports, a server
//! that never answers, HTTP), [`metrics`] (Prometheus text), [`s3`] (the moto server),
//! [`daemon`] (`loaderd` and `loaderctl`), [`fuse`] (the FUSE view), [`pipeline`]
//! (`bench pipeline` runs), [`epochs`] (shuffled epochs over a dataset larger than the
//! memory tier, and what MIN predicts of them) and [`cluster`] (etcd and multi-node fixtures).

pub mod cluster;
pub mod daemon;
pub mod data;
pub mod epochs;
pub mod fuse;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod process;
pub mod s3;

pub use daemon::{Daemon, config_file_args, file_mount_args, file_uri, loaderctl, tier, tiers_sum};
pub use data::{
    Dataset, assert_bytes_eq, flip_byte, gen_dataset, list_files, random_bytes, sha256,
    ssd_block_files, write_random_file,
};
pub use fuse::{Front, FuseDaemon, FuseServer, fuse_mounts, fuse_unavailable};
pub use metrics::metric_sum;
pub use net::{BlackHole, free_port, http_get, try_http_get};
pub use pipeline::{shm_read_mapped, small_epoch};
pub use process::{args, bin, clean_env, output_with_timeout, repo_root, tail, wait_until};
pub use s3::{BUCKET, S3Sandbox};
