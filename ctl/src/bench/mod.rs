//! `loaderctl bench`: throughput of reads (gRPC, shared memory, against the store read
//! directly), of the FUSE view, of the training pipeline, and across nodes.
//!
//! `bench pipeline --gpu` adds [`gpu`]'s comparison with a loader on a CUDA device.
//! [`common`] holds what the benches share and imports none of them; `bench read` goes to
//! [`read`] or, with `--remote`, to [`remote`] from [`run_read`] here alone.

mod common;
pub mod epochs;
pub mod fuse;
mod gpu;
pub mod pipeline;
pub mod read;
mod remote;

use crate::client::{Client, ShmClient};
use common::Corpus;

/// `loaderctl bench read`: the local bench, or the remote one with `--remote`.
pub async fn run_read(
    c: &mut Client,
    shm: impl Fn() -> Option<ShmClient>,
    args: read::ReadArgs,
) -> anyhow::Result<()> {
    let corpus = Corpus::open(c, &args.path, &args.ufs, &args.options, args.concurrency).await?;
    if args.remote {
        remote::run(c, &corpus, args.passes.max(1), args.json).await
    } else {
        read::run(c, shm, &corpus, args.local.as_deref(), args.json).await
    }
}
