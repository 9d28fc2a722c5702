//! `loaderctl`: the command-line client of a loaderd daemon.

mod bench;
mod bench_fuse;
mod bench_pipeline;
mod bench_remote;
pub mod dataset;
mod ls;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use loaderd_proto::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::client::{self, Client};
use crate::config::default_socket;
use crate::shm::client::{Piece, ShmClient, ShmError};
use crate::shm::default_shm_socket;

/// loaderctl: talk to the local loaderd.
#[derive(Parser, Debug)]
#[command(
    name = "loaderctl",
    version,
    about = "Control and inspect a loaderd daemon"
)]
pub struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, env = "LOADERD_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Reach the daemon over TCP instead (host:port).
    #[arg(long, env = "LOADERD_ADDR", global = true, conflicts_with = "socket")]
    addr: Option<String>,
    /// File holding the TCP API's token (data or admin), sent with `--addr`.
    #[arg(long, env = "LOADERD_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum MountCmd {
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
enum BenchCmd {
    /// Read the same files from the UFS directly, through loaderd cold, and warm.
    Read(bench::ReadArgs),
    /// Read the same files through the FUSE view, the daemon's API and the page cache.
    Fuse(bench_fuse::FuseArgs),
    /// One epoch of training batches from the daemon's pipeline (decode + augment into
    /// shared memory): img/s and MB/s.
    Pipeline(bench_pipeline::PipelineArgs),
}

#[derive(Subcommand, Debug)]
enum DatasetCmd {
    /// Generate ImageNet-like JPEGs in class folders.
    Gen(GenArgs),
}

#[derive(Args, Debug)]
struct GenArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    #[arg(long, default_value_t = 500)]
    width: u32,
    #[arg(long, default_value_t = 375)]
    height: u32,
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Per-pixel noise amplitude; 0 makes smooth (small, fast-decoding) images.
    #[arg(long, default_value_t = 18)]
    noise: u8,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Parses `KEY=VALUE` options.
pub(crate) fn parse_options(opts: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    opts.iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("option {o:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Entry point of the `loaderctl` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(run(cli)) {
        // `loaderctl cat ... | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(match &cli.addr {
        Some(addr) => {
            let token = match &cli.token_file {
                Some(path) => client::BearerToken::from_file(path)?,
                None => client::BearerToken::default(),
            };
            client::connect_tcp(addr, token).await?
        }
        None => client::connect_unix(&cli.socket.clone().unwrap_or_else(default_socket)).await?,
    })
}

/// A zero-copy connection to the local daemon, when it offers one.
pub(crate) fn connect_shm(cli_socket: Option<&PathBuf>, tcp: bool) -> Option<ShmClient> {
    if tcp {
        return None;
    }
    let socket = cli_socket.cloned().unwrap_or_else(default_socket);
    let path = default_shm_socket(&socket);
    if !path.exists() {
        return None;
    }
    match ShmClient::connect(&path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("loaderctl: shared-memory reads unavailable ({e}); using gRPC");
            None
        }
    }
}

/// A gRPC status as a readable error.
pub(crate) fn rpc_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Dataset(DatasetCmd::Gen(g)) = &cli.command {
        return gen_dataset(g);
    }
    let mut c = connect(&cli).await?;
    let shm = || connect_shm(cli.socket.as_ref(), cli.addr.is_some());
    match cli.command {
        Command::Status { json } => status(&mut c, json).await,
        Command::Ls {
            recursive,
            long,
            path,
        } => ls::ls(&mut c, path, recursive, long).await,
        Command::Stat { json, path } => {
            let f = c
                .stat(pb::StatRequest { path })
                .await
                .map_err(rpc_err)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"path": f.path, "is_dir": f.is_dir, "size": f.size,
                        "version": f.version, "mtime_unix_ms": f.mtime_unix_ms,
                        "cached_bytes": f.cached_bytes, "owners": f.owners})
                );
            } else if f.is_dir {
                println!("{}: directory", f.path);
            } else {
                println!(
                    "{}: file, {} bytes, version {}, mtime {} ms, {} bytes cached",
                    f.path, f.size, f.version, f.mtime_unix_ms, f.cached_bytes
                );
                if !f.owners.is_empty() {
                    println!("  block owners: {}", f.owners.join(" "));
                }
            }
            Ok(())
        }
        Command::Cat {
            no_cache,
            no_shm,
            offset,
            length,
            if_version,
            path,
        } => {
            let version = if_version.unwrap_or_default();
            // NO_CACHE must not fill the memory tier, so it never takes the shared-memory path;
            // a pinned version goes over gRPC, which checks it.
            if !no_cache
                && !no_shm
                && version.is_empty()
                && let Some(mut s) = shm()
            {
                let mut out = std::io::stdout().lock();
                if cat_shm(&mut s, &mut c, &path, offset, length, &mut out)? {
                    out.flush()?;
                    return Ok(());
                }
            }
            let read_type = if no_cache {
                pb::ReadType::NoCache
            } else {
                pb::ReadType::Cache
            };
            let req = pb::ReadRequest {
                path,
                offset,
                length,
                read_type: read_type as i32,
                version,
            };
            let mut out = std::io::stdout().lock();
            read_to(&mut c, req, &mut out).await?;
            out.flush()?;
            Ok(())
        }
        Command::Load {
            parallelism,
            no_progress,
            local,
            strict,
            path,
        } => load(&mut c, path, parallelism, no_progress, local, strict).await,
        Command::Free { path } => {
            let r = c
                .free(pb::FreeRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!(
                "freed {} blocks, {} bytes under {path}",
                r.blocks_freed, r.bytes_freed
            );
            Ok(())
        }
        Command::Invalidate { path } => {
            let r = c
                .invalidate(pb::InvalidateRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!(
                "dropped {} metadata entries under {path}",
                r.entries_dropped
            );
            Ok(())
        }
        Command::Mount(m) => mount(&mut c, m).await,
        Command::Bench(BenchCmd::Read(args)) => bench::read(&mut c, shm, args).await,
        Command::Bench(BenchCmd::Fuse(args)) => bench_fuse::fuse(&mut c, shm, args).await,
        Command::Bench(BenchCmd::Pipeline(args)) => {
            let socket = cli.socket.clone().unwrap_or_else(default_socket);
            tokio::task::block_in_place(|| bench_pipeline::run(default_shm_socket(&socket), args))
        }
        Command::Dataset(_) => unreachable!("handled before connecting"),
    }
}

/// Streams a Read into `out`; retries from the start if the object changed before any byte
/// was written and the read is not pinned to a version (never mixes two versions). Returns
/// the bytes written.
pub(crate) async fn read_to(
    c: &mut Client,
    req: pb::ReadRequest,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut written = 0u64;
        let res: Result<(), tonic::Status> = async {
            let mut stream = c.read(req.clone()).await?.into_inner();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                out.write_all(&chunk.data)
                    .map_err(|e| tonic::Status::internal(format!("writing output: {e}")))?;
                written += chunk.data.len() as u64;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => return Ok(written),
            Err(s)
                if s.code() == Code::Aborted
                    && written == 0
                    && req.version.is_empty()
                    && attempts < 3 =>
            {
                continue;
            }
            Err(s) => return Err(rpc_err(s)),
        }
    }
}

/// Writes a file's bytes from the mapped memory tier, reading fallback pieces over gRPC.
/// `false` (nothing written) when the daemon refused to lease the read (a lease cap): the
/// caller then reads it over gRPC.
fn cat_shm(
    s: &mut ShmClient,
    c: &mut Client,
    path: &str,
    offset: u64,
    length: u64,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Handle::current();
    let res = tokio::task::block_in_place(|| {
        s.read(path, offset, length, |_, piece| match piece {
            Piece::Mapped(bytes) => out.write_all(bytes),
            Piece::Fallback {
                offset,
                len,
                version,
            } => {
                // Pinned to the version of the mapped pieces: a changed object fails the
                // read instead of splicing the new version into the old.
                let req = pb::ReadRequest {
                    path: path.to_string(),
                    offset,
                    length: len,
                    read_type: pb::ReadType::Cache as i32,
                    version: version.to_string(),
                };
                rt.block_on(read_to(c, req, out))
                    .map(drop)
                    .map_err(std::io::Error::other)
            }
        })
    });
    match res {
        Ok(_) => Ok(true),
        // Refused before any piece was handed out: nothing is written yet.
        Err(ShmError::Status {
            code: Code::ResourceExhausted,
            message,
        }) => {
            eprintln!("loaderctl: shared-memory read refused ({message}); reading over gRPC");
            Ok(false)
        }
        Err(ShmError::Io(io)) => Err(anyhow::Error::new(io)),
        Err(other) => Err(anyhow::anyhow!("{other}")),
    }
}

async fn status(c: &mut Client, as_json: bool) -> anyhow::Result<()> {
    let s = c
        .status(pb::StatusRequest {})
        .await
        .map_err(rpc_err)?
        .into_inner();
    if as_json {
        let tiers: Vec<_> = s
            .tiers
            .iter()
            .map(|t| {
                json!({"name": t.name, "capacity_bytes": t.capacity_bytes, "used_bytes": t.used_bytes,
                    "blocks": t.blocks, "evictions": t.evictions, "high_watermark": t.high_watermark,
                    "low_watermark": t.low_watermark, "location": t.location,
                    "fs_free_bytes": t.fs_free_bytes, "fs_total_bytes": t.fs_total_bytes,
                    "configured_capacity_bytes": t.configured_capacity_bytes})
            })
            .collect();
        let mounts: Vec<_> = s
            .mounts
            .iter()
            .map(|m| json!({"path": m.path, "uri": m.uri, "options": m.options}))
            .collect();
        let loaders: Vec<_> = s
            .loaders
            .iter()
            .map(|l| {
                json!({"name": l.name, "dataset": l.dataset, "rank": l.rank,
                    "world_size": l.world_size, "epoch": l.epoch,
                    "batches_delivered": l.batches_delivered, "batches_total": l.batches_total,
                    "samples": l.samples, "skipped": l.skipped, "elapsed_secs": l.elapsed_secs,
                    "samples_per_sec": l.samples_per_sec, "starved_percent": l.starved_percent,
                    "fetch_secs": l.fetch_secs, "decode_secs": l.decode_secs,
                    "augment_secs": l.augment_secs, "ready_batches": l.ready_batches,
                    "depth": l.depth, "ring_bytes": l.ring_bytes, "workers": l.workers})
            })
            .collect();
        println!(
            "{}",
            json!({"version": s.version, "uptime_secs": s.uptime_secs, "tiers": tiers,
                "hits": s.hits, "misses": s.misses, "hit_ratio": s.hit_ratio,
                "bytes_from_ufs": s.bytes_from_ufs, "bytes_from_cache": s.bytes_from_cache,
                "block_size": s.block_size, "metadata_entries": s.metadata_entries,
                "metadata_bytes": s.metadata_bytes, "inflight_bytes": s.inflight_bytes,
                "inflight_capacity_bytes": s.inflight_capacity_bytes,
                "corrupt_blocks": s.corrupt_blocks, "ufs_errors": s.ufs_errors, "mounts": mounts,
                "loaders": loaders, "ring_bytes": s.ring_bytes,
                "ring_capacity_bytes": s.ring_capacity_bytes,
                "shm_leased_bytes": s.shm_leased_bytes,
                "shm_leased_capacity_bytes": s.shm_leased_capacity_bytes,
                "shm_connections": s.shm_connections,
                "cluster": s.cluster.as_ref().map(cluster_json),
                "gpu": s.gpu.as_ref().map(gpu_json)})
        );
        return Ok(());
    }
    println!(
        "loaderd {} up {}s, block size {}",
        s.version,
        s.uptime_secs,
        human(s.block_size)
    );
    for t in &s.tiers {
        let pct = if t.capacity_bytes == 0 {
            0.0
        } else {
            100.0 * t.used_bytes as f64 / t.capacity_bytes as f64
        };
        println!(
            "  tier {:<6} {:>10} / {:>10} ({pct:5.1}%), {} blocks, {} evictions, watermarks {:.2}/{:.2}, {}",
            t.name,
            human(t.used_bytes),
            human(t.capacity_bytes),
            t.blocks,
            t.evictions,
            t.high_watermark,
            t.low_watermark,
            t.location
        );
        if t.fs_total_bytes > 0 {
            let lowered = if t.capacity_bytes < t.configured_capacity_bytes {
                format!(
                    "; capacity lowered from the configured {} to fit",
                    human(t.configured_capacity_bytes)
                )
            } else {
                String::new()
            };
            println!(
                "         file system {} free of {}{lowered}",
                human(t.fs_free_bytes),
                human(t.fs_total_bytes)
            );
        }
    }
    println!(
        "  hits {} misses {} (hit ratio {:.1}%), from cache {}, from UFS {}",
        s.hits,
        s.misses,
        100.0 * s.hit_ratio,
        human(s.bytes_from_cache),
        human(s.bytes_from_ufs)
    );
    println!(
        "  metadata {} entries ({}), in flight {} / {}, corrupt blocks {}, UFS errors {}",
        s.metadata_entries,
        human(s.metadata_bytes),
        human(s.inflight_bytes),
        human(s.inflight_capacity_bytes),
        s.corrupt_blocks,
        s.ufs_errors
    );
    for m in &s.mounts {
        println!("  mount {} -> {}", m.path, m.uri);
    }
    if let Some(g) = &s.gpu {
        if g.devices.is_empty() {
            println!("  gpu {}: none used ({})", g.mode, g.reason);
        }
        for d in &g.devices {
            println!(
                "  gpu {}: {} ({}, compute {}.{}, driver {}.{})",
                d.ordinal,
                d.name,
                human(d.total_memory),
                d.compute_major,
                d.compute_minor,
                d.driver_version / 1000,
                d.driver_version % 1000 / 10
            );
        }
    }
    if let Some(k) = &s.cluster {
        println!(
            "  cluster: node {:?}, {} members ({} membership{}), replication {}; peer reads {} ({} failed), refused requests {}",
            k.node_id,
            k.members.len(),
            k.membership,
            if k.membership_healthy {
                String::new()
            } else {
                format!(
                    ", UNHEALTHY: {}; serving with the last known members",
                    k.membership_error
                )
            },
            k.replication,
            k.peer_reads,
            k.peer_read_failures,
            k.peer_requests_refused
        );
        for m in &k.members {
            let state = match (m.local, m.reachable, m.suspect) {
                (true, _, _) => "this node".to_string(),
                (false, true, false) => "up".to_string(),
                (false, true, true) => "up, suspect".to_string(),
                (false, false, _) => format!("unreachable: {}", m.error),
            };
            println!(
                "    member {:<16} {:<22} {:>10} / {:>10}, hit ratio {:5.1}%  {state}",
                m.id,
                m.addr,
                human(m.used_bytes),
                human(m.capacity_bytes),
                100.0 * m.hit_ratio
            );
        }
    }
    println!(
        "  loaders {} open, rings {} / {}",
        s.loaders.len(),
        human(s.ring_bytes),
        human(s.ring_capacity_bytes)
    );
    println!(
        "  shared memory: {} leased / {} (not evictable while leased), {} connections",
        human(s.shm_leased_bytes),
        human(s.shm_leased_capacity_bytes),
        s.shm_connections
    );
    for l in &s.loaders {
        // Busy seconds per sample, per stage, summed over the loader's decode threads.
        let per = |secs: f64| 1e3 * secs / (l.samples + l.skipped).max(1) as f64;
        println!(
            "  loader {:?} {} rank {}/{} epoch {}: batch {}/{}, {:.0} img/s, starved {:.1}%, \
             {} skipped, ready {}/{}, {} workers; ms/sample fetch {:.2} decode {:.2} augment {:.2}",
            l.name,
            l.dataset,
            l.rank,
            l.world_size,
            l.epoch,
            l.batches_delivered,
            l.batches_total,
            l.samples_per_sec,
            l.starved_percent,
            l.skipped,
            l.ready_batches,
            l.depth,
            l.workers,
            per(l.fetch_secs),
            per(l.decode_secs),
            per(l.augment_secs)
        );
    }
    Ok(())
}

fn gpu_json(g: &pb::GpuStatus) -> serde_json::Value {
    let devices: Vec<_> = g
        .devices
        .iter()
        .map(|d| {
            json!({"ordinal": d.ordinal, "name": d.name, "total_memory": d.total_memory,
                "compute_capability": format!("{}.{}", d.compute_major, d.compute_minor),
                "driver_version": d.driver_version})
        })
        .collect();
    json!({"mode": g.mode, "available": g.available, "reason": g.reason, "devices": devices})
}

fn cluster_json(k: &pb::ClusterStatus) -> serde_json::Value {
    let members: Vec<_> = k
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "addr": m.addr, "local": m.local, "suspect": m.suspect,
                "reachable": m.reachable, "used_bytes": m.used_bytes,
                "capacity_bytes": m.capacity_bytes, "hit_ratio": m.hit_ratio, "error": m.error})
        })
        .collect();
    json!({"node_id": k.node_id, "membership": k.membership,
        "membership_healthy": k.membership_healthy, "membership_error": k.membership_error,
        "replication": k.replication, "members": members, "peer_reads": k.peer_reads,
        "peer_read_failures": k.peer_read_failures,
        "peer_requests_refused": k.peer_requests_refused})
}

async fn load(
    c: &mut Client,
    path: String,
    parallelism: u32,
    no_progress: bool,
    local: bool,
    strict: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let show = !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )?);
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    let req_path = path.clone();
    let req = pb::LoadRequest {
        path,
        parallelism,
        local,
    };
    let last = run_load(c, req, |p| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!(
            "{}/{} files",
            p.files_done + p.files_failed,
            p.files_total
        ));
    })
    .await;
    bar.finish_and_clear();
    let last = last?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {} files, {} bytes ({} already cached) in {secs:.2}s, {:.1} MB/s; {} failed; {} bytes ({} blocks) not cached",
        last.files_done,
        last.bytes_done,
        last.bytes_cached_before,
        last.bytes_done as f64 / secs / 1e6,
        last.files_failed,
        last.bytes_not_cached,
        last.blocks_not_cached
    );
    if last.bytes_not_cached > 0 {
        let pct = 100.0 * last.bytes_not_cached as f64 / last.bytes_done.max(1) as f64;
        eprintln!(
            "warning: {} of {} loaded bytes ({pct:.0}%) are not cached (a tier or its disk is full; see `loaderctl status`)",
            last.bytes_not_cached, last.bytes_done
        );
        if strict {
            bail!(
                "load of {}: {} bytes ({} blocks) not cached (--strict)",
                req_path,
                last.bytes_not_cached,
                last.blocks_not_cached
            );
        }
    }
    Ok(())
}

/// Runs a load to its end, showing each progress message to `progress`; fails when the
/// stream ends early or any file failed.
pub(crate) async fn run_load(
    c: &mut Client,
    req: pb::LoadRequest,
    mut progress: impl FnMut(&pb::LoadProgress),
) -> anyhow::Result<pb::LoadProgress> {
    let path = req.path.clone();
    let mut stream = c.load(req).await.map_err(rpc_err)?.into_inner();
    let mut last = pb::LoadProgress::default();
    while let Some(p) = stream.next().await {
        let p = p.map_err(rpc_err)?;
        progress(&p);
        last = p;
    }
    if !last.done {
        bail!("load of {path} ended early (daemon went away?)");
    }
    if last.files_failed > 0 {
        bail!(
            "load of {path}: {} files failed; first: {}",
            last.files_failed,
            last.first_error
        );
    }
    Ok(last)
}

async fn mount(c: &mut Client, cmd: MountCmd) -> anyhow::Result<()> {
    match cmd {
        MountCmd::Add { path, uri, options } => {
            let m = c
                .mount_add(pb::MountAddRequest {
                    path,
                    uri,
                    options: parse_options(&options)?.into_iter().collect(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!("mounted {} -> {}", m.path, m.uri);
        }
        MountCmd::Rm { path } => {
            c.mount_remove(pb::MountRemoveRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?;
            println!("unmounted {path}");
        }
        MountCmd::Ls => {
            let r = c
                .mount_list(pb::MountListRequest {})
                .await
                .map_err(rpc_err)?
                .into_inner();
            for m in r.mounts {
                let opts: BTreeMap<_, _> = m.options.into_iter().collect();
                let opts: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{} -> {} {}", m.path, m.uri, opts.join(","));
            }
        }
    }
    Ok(())
}

fn gen_dataset(g: &GenArgs) -> anyhow::Result<()> {
    let spec = dataset::DatasetSpec {
        out: g.out.clone(),
        classes: g.classes,
        per_class: g.per_class,
        width: g.width,
        height: g.height,
        quality: g.quality,
        noise: g.noise,
        seed: g.seed,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let s = dataset::generate(&spec, threads)
        .with_context(|| format!("generating dataset in {}", g.out.display()))?;
    println!(
        "generated {} JPEGs, {} in {} ({:.1}s)",
        s.files,
        human(s.bytes),
        g.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Bytes in binary units.
pub(crate) fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
