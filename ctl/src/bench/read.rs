//! `loaderctl bench read`: the same files read (a) straight from the UFS with `object_store`,
//! (b) through loaderd cold (after `free`), (c) through loaderd warm, and optionally (d) from a
//! local copy in the page cache — all in one run, reported as MB/s and ratios.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use loaderd_proto::v1 as pb;
use serde_json::json;

use super::common::{
    Corpus, Phase, fs_reads, grpc_reads, local_files, shm_reads, summary_line, ufs_direct,
    whole_files,
};
use crate::client::{Client, ShmClient};
use crate::rpc_err;

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Logical directory to read (every file below it).
    #[arg(long)]
    pub(super) path: String,
    /// The UFS URI mounted at `--path`, read directly as the baseline.
    #[arg(long)]
    pub(super) ufs: String,
    /// Backend option KEY=VALUE for the direct UFS reads (repeatable).
    #[arg(short = 'o', long = "option")]
    pub(super) options: Vec<String>,
    /// A local copy of the same files, read from the page cache as a second baseline.
    #[arg(long)]
    pub(super) local: Option<PathBuf>,
    /// Files read concurrently in every phase.
    #[arg(long, default_value_t = 8)]
    pub(super) concurrency: usize,
    /// In a cluster: read the files whose blocks peers own, from the peers, then the same
    /// files from this node's own cache, against the UFS read directly.
    #[arg(long)]
    pub(super) remote: bool,
    /// With --remote: timed passes of the peer and local phases (their rates are over all
    /// passes together).
    #[arg(long, default_value_t = 3)]
    pub(super) passes: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub(super) json: bool,
}

/// The local bench (not `--remote`): `corpus` from the UFS directly, through the daemon
/// cold and warm (gRPC, then shared memory when offered), and from `local_copy` in the page cache.
pub(super) async fn run(
    c: &mut Client,
    shm: impl Fn() -> Option<ShmClient>,
    corpus: &Corpus,
    local_copy: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<()> {
    let (root, files, n) = (&corpus.root, &corpus.files, corpus.concurrency);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let mut phases = vec![ufs_direct(&corpus.ufs, files, n).await?];

    c.free(pb::FreeRequest { path: root.clone() })
        .await
        .map_err(rpc_err)?;
    let whole = whole_files(root, files);
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

    if let Some(dir) = local_copy {
        // One pass to fill the page cache, then the timed pass.
        for timed in [false, true] {
            let t = Instant::now();
            let reqs = local_files(dir, files);
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
    if as_json {
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
