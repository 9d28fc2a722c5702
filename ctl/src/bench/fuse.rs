//! `loaderctl bench fuse`: the same files read through the daemon's FUSE view, through its
//! API (gRPC, and the shared-memory path when offered) and from a local copy in the page
//! cache — sequential whole-file reads, random 4–64 KiB reads, and a metadata walk — in one
//! run, as MB/s and ratios. With `--front`, every FUSE phase also runs through a thin front
//! (`loaderd fuse`) over the same daemon, with its ratio to the in-daemon view.
//!
//! The daemon's cache is warmed first, so every phase measures serving cached data. FUSE
//! reads are timed twice: with the files' kernel pages dropped first (`fadvise DONTNEED`:
//! every read goes to the daemon) and again (the kernel's page cache, which `keep_cache`
//! keeps across opens).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use loaderd_cache::ufs::FileMeta;
use loaderd_proto::v1 as pb;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::common::{
    ReadReq, fs_reads, grpc_reads, list_files, local_files, par_sum, shm_reads, summary_line,
    whole_files,
};
use crate::client::Client;
use crate::client::ShmClient;
use crate::rpc_err;

#[derive(Args, Debug)]
pub struct FuseArgs {
    /// Logical directory to read (every file below it).
    #[arg(long)]
    path: String,
    /// Where the daemon's FUSE view is mounted (`loaderd --fuse-mount`); the files are read
    /// at `<mount><path>/...`.
    #[arg(long)]
    mount: PathBuf,
    /// A local copy of the same files, read from the page cache as the baseline.
    #[arg(long)]
    local: Option<PathBuf>,
    /// Where a thin FUSE front over the same daemon is mounted (`loaderd fuse --socket …
    /// MOUNTPOINT`): the FUSE phases run through it too (`fuse-front` rows, `vs fuse`).
    #[arg(long)]
    front: Option<PathBuf>,
    /// Concurrent readers in every phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Random reads per file.
    #[arg(long, default_value_t = 4)]
    random_per_file: usize,
    /// Seed of the random offsets and lengths.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

struct Row {
    workload: &'static str,
    via: &'static str,
    ops: u64,
    bytes: u64,
    secs: f64,
}

impl Row {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// Throughput for reads, operations for the walk.
    fn rate(&self) -> f64 {
        if self.workload == "walk" {
            self.ops_per_s()
        } else {
            self.mbps()
        }
    }
}

fn timed(
    rows: &mut Vec<Row>,
    workload: &'static str,
    via: &'static str,
    ops: usize,
    f: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let bytes = f().with_context(|| format!("{workload} via {via}"))?;
    rows.push(Row {
        workload,
        via,
        ops: ops as u64,
        bytes,
        secs: t.elapsed().as_secs_f64(),
    });
    Ok(())
}

pub async fn fuse(
    c: &mut Client,
    shm: impl Fn() -> Option<ShmClient>,
    args: FuseArgs,
) -> anyhow::Result<()> {
    let root = args.path.trim_end_matches('/').to_string();
    let fuse_dir = args.mount.join(root.trim_start_matches('/'));
    if !fuse_dir.is_dir() {
        bail!(
            "{} is not a directory: is the FUSE view mounted at {} (loaderd --fuse-mount)?",
            fuse_dir.display(),
            args.mount.display()
        );
    }
    let files = list_files(c, &root).await?;
    let n = args.concurrency.max(1);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let whole = whole_files(&root, &files);
    let rand = random_reads(&files, args.random_per_file, args.seed);
    let rand_logical: Vec<ReadReq<String>> = rand
        .iter()
        .map(|r| ReadReq {
            path: format!("{root}/{}", r.path),
            offset: r.offset,
            length: r.length,
        })
        .collect();
    let rand_in = |dir: &Path| -> Vec<ReadReq<PathBuf>> {
        rand.iter()
            .map(|r| ReadReq {
                path: dir.join(&r.path),
                offset: r.offset,
                length: r.length,
            })
            .collect()
    };
    let rand_fuse = rand_in(&fuse_dir);
    let whole_fuse = local_files(&fuse_dir, &files);
    let front_dir = args
        .front
        .as_ref()
        .map(|m| m.join(root.trim_start_matches('/')));
    if let Some(d) = front_dir.as_ref().filter(|d| !d.is_dir()) {
        bail!("{} is not a directory: is the front mounted?", d.display());
    }
    let (rand_front, whole_front) = match &front_dir {
        Some(d) => (rand_in(d), local_files(d, &files)),
        None => (Vec::new(), Vec::new()),
    };
    let mut rows = Vec::new();

    // The walk first: the kernel has cached the fewest entries yet.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        timed(&mut rows, "walk", "fuse", files.len(), || {
            walk(&fuse_dir, n)
        })?;
        match &front_dir {
            Some(d) => timed(&mut rows, "walk", "fuse-front", files.len(), || walk(d, n)),
            None => Ok(()),
        }
    })?;
    let t = Instant::now();
    let listed = list_files(c, &root).await?;
    futures::stream::iter(listed.iter())
        .map(|f| {
            let mut c = c.clone();
            let path = format!("{root}/{}", f.rel);
            async move {
                c.stat(pb::StatRequest {
                    path,
                    with_mode: false,
                })
                .await
                .map_err(rpc_err)
            }
        })
        .buffer_unordered(n)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    rows.push(Row {
        workload: "walk",
        via: "grpc",
        ops: listed.len() as u64,
        bytes: 0,
        secs: t.elapsed().as_secs_f64(),
    });
    if let Some(dir) = &args.local {
        tokio::task::block_in_place(|| {
            timed(&mut rows, "walk", "local", files.len(), || walk(dir, n))
        })?;
    }

    // Warm the daemon's cache (untimed).
    let warmed = grpc_reads(c, &whole, n).await?;
    if warmed != total {
        bail!("warm-up read {warmed} bytes, expected {total}");
    }

    for (workload, fuse_reqs, front_reqs, logical, random) in [
        ("sequential", &whole_fuse, &whole_front, &whole, false),
        ("random", &rand_fuse, &rand_front, &rand_logical, true),
    ] {
        let ops = logical.len();
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            drop_pages(&whole_fuse)?;
            timed(&mut rows, workload, "fuse", ops, || {
                fs_reads(fuse_reqs, n, random)
            })?;
            timed(&mut rows, workload, "fuse-page-cache", ops, || {
                fs_reads(fuse_reqs, n, random)
            })?;
            if front_dir.is_some() {
                drop_pages(&whole_front)?;
                timed(&mut rows, workload, "fuse-front", ops, || {
                    fs_reads(front_reqs, n, random)
                })?;
                timed(&mut rows, workload, "fuse-front-page-cache", ops, || {
                    fs_reads(front_reqs, n, random)
                })?;
            }
            Ok(())
        })?;
        let t = Instant::now();
        let bytes = grpc_reads(c, logical, n).await?;
        rows.push(Row {
            workload,
            via: "grpc",
            ops: ops as u64,
            bytes,
            secs: t.elapsed().as_secs_f64(),
        });
        let mut clients: Vec<ShmClient> = (0..n).map_while(|_| shm()).collect();
        if !clients.is_empty() {
            tokio::task::block_in_place(|| {
                shm_reads(&mut clients, logical)?; // map the arena's pages, as the page cache is warm
                timed(&mut rows, workload, "shm", ops, || {
                    shm_reads(&mut clients, logical)
                })
            })?;
        }
        if let Some(dir) = &args.local {
            let reqs = if random {
                rand_in(dir)
            } else {
                local_files(dir, &files)
            };
            tokio::task::block_in_place(|| -> anyhow::Result<()> {
                fs_reads(&reqs, n, random)?; // fill the page cache
                timed(&mut rows, workload, "local-page-cache", ops, || {
                    fs_reads(&reqs, n, random)
                })
            })?;
        }
    }

    let want = |w: &str| -> u64 {
        match w {
            "sequential" => total,
            "random" => rand.iter().map(|r| r.length).sum(),
            _ => 0,
        }
    };
    for r in &rows {
        if r.workload != "walk" && r.bytes != want(r.workload) {
            bail!(
                "{} via {} read {} bytes, expected {}",
                r.workload,
                r.via,
                r.bytes,
                want(r.workload)
            );
        }
    }
    report(&rows, &files, total, n, args.json);
    Ok(())
}

fn report(rows: &[Row], files: &[FileMeta], total: u64, n: usize, as_json: bool) {
    let base = |workload: &str, via: &str| {
        rows.iter()
            .find(|r| r.workload == workload && r.via == via)
            .map(Row::rate)
    };
    if as_json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"workload": r.workload, "via": r.via, "ops": r.ops, "bytes": r.bytes,
                    "secs": r.secs, "mb_per_s": r.mbps(), "ops_per_s": r.ops_per_s(),
                    "vs_local": base(r.workload, "local-page-cache").or(base(r.workload, "local"))
                        .map(|l| r.rate() / l),
                    "vs_grpc": base(r.workload, "grpc").map(|g| r.rate() / g),
                    "vs_fuse": r.via.starts_with("fuse-front")
                        .then(|| base(r.workload, in_daemon(r.via)).map(|f| r.rate() / f))
                        .flatten()})
            })
            .collect();
        println!(
            "{}",
            json!({"files": files.len(), "bytes": total, "concurrency": n, "rows": out})
        );
        return;
    }
    println!("{}", summary_line(files.len(), total, n));
    let fronted = rows.iter().any(|r| r.via.starts_with("fuse-front"));
    println!(
        "{:<11} {:<22} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9}{}",
        "workload",
        "via",
        "secs",
        "ops",
        "ops/s",
        "MB/s",
        "vs local",
        "vs grpc",
        if fronted { "   vs fuse" } else { "" }
    );
    for r in rows {
        let local = base(r.workload, "local-page-cache").or(base(r.workload, "local"));
        let ratio = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}x", r.rate() / b));
        let mbps = if r.workload == "walk" {
            "-".to_string()
        } else {
            format!("{:.1}", r.mbps())
        };
        let vs_fuse = if fronted && r.via.starts_with("fuse-front") {
            format!(" {:>9}", ratio(base(r.workload, in_daemon(r.via))))
        } else {
            String::new()
        };
        println!(
            "{:<11} {:<22} {:>8.3} {:>9} {:>10.0} {:>10} {:>9} {:>9}{vs_fuse}",
            r.workload,
            r.via,
            r.secs,
            r.ops,
            r.ops_per_s(),
            mbps,
            ratio(local),
            ratio(base(r.workload, "grpc"))
        );
    }
}

/// The in-daemon row a front row compares with (`fuse-front-page-cache` → `fuse-page-cache`).
fn in_daemon(via: &str) -> &str {
    match via {
        "fuse-front" => "fuse",
        "fuse-front-page-cache" => "fuse-page-cache",
        other => other,
    }
}

/// Random reads of 4–64 KiB (at most the file), `per_file` per non-empty file, shuffled.
fn random_reads(files: &[FileMeta], per_file: usize, seed: u64) -> Vec<ReadReq<String>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(files.len() * per_file);
    for f in files.iter().filter(|f| f.size > 0) {
        for _ in 0..per_file {
            let length = rng.random_range(4096..=65536u64).min(f.size);
            let offset = rng.random_range(0..=f.size - length);
            out.push(ReadReq {
                path: f.rel.clone(),
                offset,
                length,
            });
        }
    }
    // Fisher-Yates, so concurrent readers do not walk files in order.
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out
}

/// Drops the kernel's cached pages of these files, so the next reads go to the daemon.
fn drop_pages(reqs: &[ReadReq<PathBuf>]) -> anyhow::Result<()> {
    for r in reqs {
        let f = std::fs::File::open(&r.path)
            .with_context(|| format!("opening {}", r.path.display()))?;
        posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .with_context(|| format!("dropping cached pages of {}", r.path.display()))?;
    }
    Ok(())
}

/// Lists every directory below `dir` and stats every entry; returns 0 (no bytes read).
fn walk(dir: &Path, n: usize) -> anyhow::Result<u64> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    par_sum(&files, &mut vec![(); n.max(1)], |_, p| {
        std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        Ok(0)
    })
}
