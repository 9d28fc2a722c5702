//! `loaderctl bench read`: the same files read (a) straight from the UFS with `object_store`,
//! (b) through loaderd cold (after `free`), (c) through loaderd warm, and optionally (d) from a
//! local copy in the page cache — all in one run, reported as MB/s and ratios.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use loaderd_cache::config::UfsConfig;
use loaderd_cache::ufs::{FileMeta, Ufs};
use loaderd_proto::v1 as pb;
use serde_json::json;

use super::{parse_options, read_to, rpc_err};
use crate::client::Client;
use crate::shm::client::{Piece, ShmClient};

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
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

struct Phase {
    name: &'static str,
    bytes: u64,
    secs: f64,
}

impl Phase {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

pub async fn read(
    c: &mut Client,
    shm: impl Fn() -> Option<ShmClient>,
    args: ReadArgs,
) -> anyhow::Result<()> {
    let root = args.path.trim_end_matches('/').to_string();
    let listing = c
        .list(pb::ListRequest {
            path: root.clone(),
            recursive: true,
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    let files: Vec<FileMeta> = listing
        .entries
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
    let total: u64 = files.iter().map(|f| f.size).sum();
    let n = args.concurrency.max(1);
    let ufs = Ufs::open(
        &args.ufs,
        &parse_options(&args.options)?,
        &UfsConfig::default(),
    )?;
    let mut phases = Vec::new();

    let t = Instant::now();
    let bytes: u64 = futures::stream::iter(files.iter())
        .map(|f| async { ufs.get_range(f, 0..f.size).await.map(|b| b.len() as u64) })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
        .context("reading the UFS directly")?;
    phases.push(Phase {
        name: "ufs-direct",
        bytes,
        secs: t.elapsed().as_secs_f64(),
    });

    c.free(pb::FreeRequest { path: root.clone() })
        .await
        .map_err(rpc_err)?;
    for name in ["loaderd-cold", "loaderd-warm"] {
        let t = Instant::now();
        let bytes = read_all(c, &root, &files, n).await?;
        phases.push(Phase {
            name,
            bytes,
            secs: t.elapsed().as_secs_f64(),
        });
    }

    let clients: Vec<ShmClient> = (0..n).map_while(|_| shm()).collect();
    if !clients.is_empty() {
        let t = Instant::now();
        let bytes = tokio::task::block_in_place(|| read_shm(clients, &root, &files))?;
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
            let bytes = read_local(dir, &files, n).await?;
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
        println!(
            "{} files, {:.1} MB ({:.0} KB avg), concurrency {n}",
            files.len(),
            total as f64 / 1e6,
            total as f64 / files.len() as f64 / 1e3
        );
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

async fn read_all(c: &Client, root: &str, files: &[FileMeta], n: usize) -> anyhow::Result<u64> {
    futures::stream::iter(files.iter())
        .map(|f| {
            let mut c = c.clone();
            let req = pb::ReadRequest {
                path: format!("{root}/{}", f.rel),
                ..Default::default()
            };
            async move { read_to(&mut c, req, &mut std::io::sink()).await }
        })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
}

/// Reads every file through shared memory, one client per thread, copying each file into a
/// fresh buffer (as `read(2)` into a buffer does, so the comparison with the page cache is fair).
fn read_shm(clients: Vec<ShmClient>, root: &str, files: &[FileMeta]) -> anyhow::Result<u64> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let next = &next;
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut total = 0u64;
                    while let Some(f) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let mut buf = Vec::with_capacity(f.size as usize);
                        let path = format!("{root}/{}", f.rel);
                        client.read(&path, 0, 0, |_, piece| match piece {
                            Piece::Mapped(b) => {
                                buf.extend_from_slice(b);
                                Ok(())
                            }
                            Piece::Fallback { .. } => Err(std::io::Error::other(
                                "not in the memory tier (is it large enough for the files?)",
                            )),
                        })?;
                        total += buf.len() as u64;
                    }
                    Ok(total)
                })
            })
            .collect();
        workers.into_iter().try_fold(0, |acc, w| {
            let n = w
                .join()
                .map_err(|_| anyhow::anyhow!("shared-memory reader panicked"))??;
            Ok(acc + n)
        })
    })
}

async fn read_local(dir: &std::path::Path, files: &[FileMeta], n: usize) -> anyhow::Result<u64> {
    futures::stream::iter(files.iter())
        .map(|f| {
            let p = dir.join(&f.rel);
            async move {
                tokio::task::spawn_blocking(move || {
                    std::fs::read(&p)
                        .map(|b| b.len() as u64)
                        .with_context(|| format!("reading {}", p.display()))
                })
                .await?
            }
        })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
}
