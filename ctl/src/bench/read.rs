//! `loaderctl bench read`: the same files read (a) straight from the UFS with `object_store`,
//! (b) through loaderd cold (after `free`), (c) through loaderd warm, and optionally (d) from a
//! local copy in the page cache — all in one run, reported as MB/s and ratios.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use loaderd_cache::config::UfsConfig;
use loaderd_cache::ufs::{FileMeta, Ufs};
use loaderd_proto::v1 as pb;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use serde_json::json;

use crate::cat::read_to;
use crate::client::Client;
use crate::client::{Piece, ShmClient};
use crate::{parse_options, rpc_err};

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Logical directory to read (every file below it).
    #[arg(long)]
    path: String,
    /// The UFS URI mounted at `--path`, read directly as the baseline.
    #[arg(long)]
    ufs: String,
    /// Backend option KEY=VALUE for the direct UFS reads (repeatable).
    #[arg(short = 'o', long = "option")]
    options: Vec<String>,
    /// A local copy of the same files, read from the page cache as a second baseline.
    #[arg(long)]
    local: Option<PathBuf>,
    /// Files read concurrently in every phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// In a cluster: read the files whose blocks peers own, from the peers, then the same
    /// files from this node's own cache, against the UFS read directly.
    #[arg(long)]
    remote: bool,
    /// With --remote: timed passes of the peer and local phases (their rates are over all
    /// passes together).
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(super) struct Phase {
    pub name: &'static str,
    pub bytes: u64,
    pub secs: f64,
}

impl Phase {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

pub async fn read(
    c: &mut Client,
    shm: impl Fn() -> Option<ShmClient>,
    args: ReadArgs,
) -> anyhow::Result<()> {
    let root = args.path.trim_end_matches('/').to_string();
    let files = list_files(c, &root).await?;
    let n = args.concurrency.max(1);
    let ufs = Ufs::open(
        &args.ufs,
        &parse_options(&args.options)?,
        &UfsConfig::default(),
    )?;
    if args.remote {
        let passes = args.passes.max(1);
        return super::remote::remote(c, &ufs, &root, files, n, passes, args.json).await;
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let mut phases = vec![ufs_direct(&ufs, &files, n).await?];

    c.free(pb::FreeRequest { path: root.clone() })
        .await
        .map_err(rpc_err)?;
    let whole = whole_files(&root, &files);
    for name in ["loaderd-cold", "loaderd-warm"] {
        let t = Instant::now();
        let bytes = grpc_reads(c, &whole, n).await?;
        phases.push(Phase {
            name,
            bytes,
            secs: t.elapsed().as_secs_f64(),
        });
    }

    let mut clients: Vec<ShmClient> = (0..n).map_while(|_| shm()).collect();
    if !clients.is_empty() {
        // One pass to map the arena's pages into this process (a long-lived client has them
        // mapped already, as the page-cache baseline has its pages cached), then the timed pass.
        tokio::task::block_in_place(|| shm_reads(&mut clients, &whole))?;
        let t = Instant::now();
        let bytes = tokio::task::block_in_place(|| shm_reads(&mut clients, &whole))?;
        phases.push(Phase {
            name: "loaderd-warm-shm",
            bytes,
            secs: t.elapsed().as_secs_f64(),
        });
    }

    if let Some(dir) = &args.local {
        // One pass to fill the page cache, then the timed pass.
        for timed in [false, true] {
            let t = Instant::now();
            let reqs = local_files(dir, &files);
            let bytes = tokio::task::block_in_place(|| fs_reads(&reqs, n, false))?;
            if timed {
                phases.push(Phase {
                    name: "local-page-cache",
                    bytes,
                    secs: t.elapsed().as_secs_f64(),
                });
            }
        }
    }

    for p in &phases {
        if p.bytes != total {
            bail!("{} read {} bytes, expected {total}", p.name, p.bytes);
        }
    }
    let base = phases[0].mbps();
    let warm = phases[2].mbps();
    let local = phases
        .iter()
        .find(|p| p.name == "local-page-cache")
        .map(Phase::mbps);
    if args.json {
        let rows: Vec<_> = phases
            .iter()
            .map(|p| {
                json!({"phase": p.name, "bytes": p.bytes, "secs": p.secs, "mb_per_s": p.mbps(),
                "vs_ufs": p.mbps() / base, "vs_local": local.map(|l| p.mbps() / l)})
            })
            .collect();
        println!(
            "{}",
            json!({"files": files.len(), "bytes": total, "concurrency": n, "phases": rows,
                "warm_vs_ufs": warm / base})
        );
    } else {
        println!("{}", summary_line(files.len(), total, n));
        println!(
            "{:<18} {:>10} {:>10} {:>10}",
            "phase", "secs", "MB/s", "vs UFS"
        );
        for p in &phases {
            println!(
                "{:<18} {:>10.3} {:>10.1} {:>9.2}x",
                p.name,
                p.secs,
                p.mbps(),
                p.mbps() / base
            );
        }
        if let Some(local) = phases.iter().find(|p| p.name == "local-page-cache") {
            for p in phases.iter().filter(|p| p.name.starts_with("loaderd-warm")) {
                println!(
                    "{} / local page cache: {:.2}",
                    p.name,
                    p.mbps() / local.mbps()
                );
            }
        }
    }
    Ok(())
}

/// The baseline phase: `files` read straight from the UFS, `n` at a time.
pub(super) async fn ufs_direct(ufs: &Ufs, files: &[FileMeta], n: usize) -> anyhow::Result<Phase> {
    let t = Instant::now();
    let bytes: u64 = futures::stream::iter(files.iter())
        .map(|f| async { ufs.get_range(f, 0..f.size).await.map(|b| b.len() as u64) })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
        .context("reading the UFS directly")?;
    Ok(Phase {
        name: "ufs-direct",
        bytes,
        secs: t.elapsed().as_secs_f64(),
    })
}

/// Every file below logical directory `root` (recursively), paths relative to it.
pub(super) async fn list_files(c: &mut Client, root: &str) -> anyhow::Result<Vec<FileMeta>> {
    let listing = crate::client::list_all(c, root, true)
        .await
        .map_err(rpc_err)?;
    let files: Vec<FileMeta> = listing
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| FileMeta {
            rel: e
                .path
                .strip_prefix(&format!("{root}/"))
                .unwrap_or(&e.path)
                .to_string(),
            size: e.size,
            version: e.version.clone(),
            mtime_ms: e.mtime_unix_ms,
        })
        .collect();
    if files.is_empty() {
        bail!("no files under {root}");
    }
    Ok(files)
}

/// One read: a path (logical, or local/FUSE), an offset and a length (0: to the end).
#[derive(Debug, Clone)]
pub(super) struct ReadReq<P> {
    pub path: P,
    pub offset: u64,
    pub length: u64,
}

/// Whole-file reads of `files` by logical path.
pub(super) fn whole_files(root: &str, files: &[FileMeta]) -> Vec<ReadReq<String>> {
    files
        .iter()
        .map(|f| ReadReq {
            path: format!("{root}/{}", f.rel),
            offset: 0,
            length: 0,
        })
        .collect()
}

/// Whole-file reads of `files` under a local (or FUSE) directory.
pub(super) fn local_files(dir: &Path, files: &[FileMeta]) -> Vec<ReadReq<PathBuf>> {
    files
        .iter()
        .map(|f| ReadReq {
            path: dir.join(&f.rel),
            offset: 0,
            length: 0,
        })
        .collect()
}

/// Reads over gRPC, `n` at a time; returns the bytes read.
pub(super) async fn grpc_reads(
    c: &Client,
    reqs: &[ReadReq<String>],
    n: usize,
) -> anyhow::Result<u64> {
    futures::stream::iter(reqs.iter())
        .map(|r| {
            let mut c = c.clone();
            let req = pb::ReadRequest {
                path: r.path.clone(),
                offset: r.offset,
                length: r.length,
                ..Default::default()
            };
            async move { read_to(&mut c, req, &mut std::io::sink()).await }
        })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
}

/// Runs `f` over `items` on `n` threads taking the next item as they go; sums the results.
pub(super) fn par_sum<T: Sync, S: Send>(
    items: &[T],
    states: &mut [S],
    f: impl Fn(&mut S, &T) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<u64> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = states
            .iter_mut()
            .map(|state| {
                let (next, f) = (&next, &f);
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut total = 0u64;
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        total += f(state, item)?;
                    }
                    Ok(total)
                })
            })
            .collect();
        workers.into_iter().try_fold(0, |acc, w| {
            let n = w
                .join()
                .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
            Ok(acc + n)
        })
    })
}

/// "N files, X MB (Y KB avg), concurrency C": the first line of every bench's report.
pub(super) fn summary_line(files: usize, total: u64, concurrency: usize) -> String {
    format!(
        "{files} files, {:.1} MB ({:.0} KB avg), concurrency {concurrency}",
        total as f64 / 1e6,
        total as f64 / files.max(1) as f64 / 1e3
    )
}

/// Reads through shared memory, one client per thread, copying each read into the thread's
/// buffer (as `read(2)` into a buffer does, so the comparison with the page cache is fair).
pub(super) fn shm_reads(
    clients: &mut [ShmClient],
    reqs: &[ReadReq<String>],
) -> anyhow::Result<u64> {
    let mut states: Vec<(&mut ShmClient, Vec<u8>)> =
        clients.iter_mut().map(|c| (c, Vec::new())).collect();
    par_sum(reqs, &mut states, |(client, buf), r| {
        buf.clear();
        client.read(&r.path, r.offset, r.length, |_, piece| match piece {
            Piece::Mapped(b) => {
                buf.extend_from_slice(b);
                Ok(())
            }
            Piece::Fallback { .. } => Err(std::io::Error::other(
                "not in the memory tier (is it large enough for the files?)",
            )),
        })?;
        Ok(buf.len() as u64)
    })
}

/// Reads files of a file system (local, or a FUSE mount) on `n` threads, each read with
/// its own open; `random` tells the kernel not to read ahead.
pub(super) fn fs_reads(reqs: &[ReadReq<PathBuf>], n: usize, random: bool) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut states: Vec<Vec<u8>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    par_sum(reqs, &mut states, |buf, r| {
        let f = std::fs::File::open(&r.path)
            .with_context(|| format!("opening {}", r.path.display()))?;
        if random {
            let _ = posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
        }
        if r.length == 0 {
            buf.clear();
            let mut f = f;
            f.read_to_end(buf)
                .with_context(|| format!("reading {}", r.path.display()))?;
            return Ok(buf.len() as u64);
        }
        buf.resize(r.length as usize, 0);
        f.read_exact_at(buf, r.offset)
            .with_context(|| format!("reading {}", r.path.display()))?;
        Ok(r.length)
    })
}
