//! The command line of `loaderctl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bench;

#[derive(Parser, Debug)]
#[command(
    name = "loaderctl",
    version,
    about = "Control and inspect a loaderd daemon"
)]
pub struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, env = "LOADERD_SOCKET", global = true)]
    pub(crate) socket: Option<PathBuf>,
    /// Reach the daemon over TCP instead (host:port).
    #[arg(long, env = "LOADERD_ADDR", global = true, conflicts_with = "socket")]
    pub(crate) addr: Option<String>,
    /// File holding the TCP API's token (data or admin), sent with `--addr`.
    #[arg(long, env = "LOADERD_TOKEN_FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Capacity, usage per tier, hit ratio, mounts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List a directory.
    Ls {
        /// Every file below, recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Show sizes.
        #[arg(short = 'l', long)]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Metadata of a path.
    Stat {
        #[arg(long)]
        json: bool,
        path: String,
    },
    /// Write a file's bytes to stdout.
    Cat {
        /// Read without caching what is missing (read type NO_CACHE).
        #[arg(long)]
        no_cache: bool,
        /// Always read over gRPC, not by mapping the daemon's memory tier.
        #[arg(long)]
        no_shm: bool,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (default: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
        /// Only read object version V (`stat`'s version): fail if the object is another one
        /// now, so that a file read in several ranges is of one version.
        #[arg(long, value_name = "V")]
        if_version: Option<String>,
        path: String,
    },
    /// Warm the cache with everything under a path.
    Load {
        /// Files fetched concurrently (default: the daemon's).
        #[arg(long, default_value_t = 0)]
        parallelism: u32,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// In a cluster: keep a copy of every block on this node too (for its own trainers),
        /// not only on the block's owner.
        #[arg(long)]
        local: bool,
        /// Exit nonzero when any loaded byte could not be cached (tier or disk full).
        #[arg(long)]
        strict: bool,
        path: String,
    },
    /// Drop cached blocks of everything under a path.
    Free { path: String },
    /// Drop cached metadata (listings, manifest) of a path.
    Invalidate { path: String },
    /// Manage the mount table.
    #[command(subcommand)]
    Mount(MountCmd),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Sample data.
    #[command(subcommand)]
    Dataset(DatasetCmd),
}

#[derive(Subcommand, Debug)]
pub(crate) enum MountCmd {
    /// Mount a UFS URI at a logical path.
    Add {
        path: String,
        uri: String,
        /// Backend option KEY=VALUE (repeatable): endpoint, region, allow_http, ...
        #[arg(short = 'o', long = "option")]
        options: Vec<String>,
    },
    /// Remove a mount.
    Rm { path: String },
    /// List mounts.
    Ls,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCmd {
    /// Read the same files from the UFS directly, through loaderd cold, and warm.
    Read(bench::read::ReadArgs),
    /// Read the same files through the FUSE view, the daemon's API and the page cache.
    Fuse(bench::fuse::FuseArgs),
    /// One epoch of training batches from the daemon's pipeline (decode + augment into
    /// shared memory): img/s and MB/s; with `--gpu`, also through a loader on a GPU.
    Pipeline(bench::pipeline::PipelineArgs),
    /// Shuffled epochs over a dataset larger than the memory tier, one daemon per eviction
    /// policy, against the offline optimum: hit ratio, UFS bytes, img/s, starved share.
    Epochs(bench::epochs::EpochsArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum DatasetCmd {
    /// Generate ImageNet-like JPEGs in class folders.
    Gen(GenArgs),
}

#[derive(Args, Debug)]
pub(crate) struct GenArgs {
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub(crate) classes: usize,
    #[arg(long, default_value_t = 50)]
    pub(crate) per_class: usize,
    #[arg(long, default_value_t = 500)]
    pub(crate) width: u32,
    #[arg(long, default_value_t = 375)]
    pub(crate) height: u32,
    #[arg(long, default_value_t = 90)]
    pub(crate) quality: u8,
    /// Per-pixel noise amplitude; 0 makes smooth (small, fast-decoding) images.
    #[arg(long, default_value_t = 18)]
    pub(crate) noise: u8,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}
