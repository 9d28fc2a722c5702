//! `loaderctl bench`: throughput of reads (gRPC, shared memory, against the store read
//! directly), of the FUSE view, of the training pipeline, and across nodes.

pub mod fuse;
pub mod pipeline;
pub mod read;
mod remote;
