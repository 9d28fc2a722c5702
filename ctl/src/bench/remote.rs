//! `loaderctl bench read --remote`: in a cluster, the files whose blocks all belong to other
//! nodes, read (a) straight from the UFS, (b) through this node from their owners (peer
//! reads), and (c) through this node from its own memory tier after pinning a local copy —
//! the same bytes each time, in one run, with the peer and local passes alternating.

use std::time::Instant;

use anyhow::bail;
use loaderd_proto::v1 as pb;
use serde_json::json;

use super::common::{Corpus, Phase, ReadReq, grpc_reads, summary_line, ufs_direct, whole_files};
use crate::client::Client;
use crate::load::run_load;
use crate::rpc_err;

/// The remote bench: `passes` timed passes of the peer and local phases.
pub(super) async fn run(
    c: &mut Client,
    corpus: &Corpus,
    passes: u32,
    as_json: bool,
) -> anyhow::Result<()> {
    let (root, files, n) = (&corpus.root, &corpus.files, corpus.concurrency);
    let status = c
        .status(pb::StatusRequest {})
        .await
        .map_err(rpc_err)?
        .into_inner();
    let Some(cluster) = status.cluster else {
        bail!("--remote needs a daemon in a cluster (cluster.listen_addr)");
    };
    // Every block to its owner, so the peer phase reads warm peers.
    run_load(c, load(root, false), |_| {}).await?;
    let mut remote = Vec::new();
    for f in files {
        let info = c
            .stat(pb::StatRequest {
                path: format!("{root}/{}", f.rel),
                with_mode: false,
            })
            .await
            .map_err(rpc_err)?
            .into_inner();
        if info.cached_bytes == 0 && info.owners.iter().all(|o| *o != cluster.node_id) {
            remote.push(f.clone());
        }
    }
    if remote.is_empty() {
        bail!(
            "node {} owns a block of every file under {root}: nothing to read from peers",
            cluster.node_id
        );
    }
    let total: u64 = remote.iter().map(|f| f.size).sum();
    let reads = whole_files(root, &remote);
    let mut phases = vec![ufs_direct(&corpus.ufs, &remote, n).await?];
    // Peer and local passes alternate, so a slow spell of the machine hits both alike.
    let mut peer = Phase {
        name: "peer",
        bytes: 0,
        secs: 0.0,
    };
    let mut local = Phase {
        name: "local",
        ..peer
    };
    for _ in 0..passes {
        timed(c, &mut peer, &reads, n).await?;
        for r in &reads {
            run_load(c, load(&r.path, true), |_| {}).await?;
        }
        timed(c, &mut local, &reads, n).await?;
        // Give the pinned copies back: only the owners keep the blocks.
        for r in &reads {
            c.free(pb::FreeRequest {
                path: r.path.clone(),
            })
            .await
            .map_err(rpc_err)?;
        }
    }
    phases.extend([peer, local]);
    for p in &phases {
        let want = if p.name == "ufs-direct" {
            total
        } else {
            total * u64::from(passes)
        };
        if p.bytes != want {
            bail!("{} read {} bytes, expected {want}", p.name, p.bytes);
        }
    }
    let (ufs_mbps, peer, local) = (phases[0].mbps(), phases[1].mbps(), phases[2].mbps());
    if as_json {
        let rows: Vec<_> = phases
            .iter()
            .map(|p| json!({"phase": p.name, "bytes": p.bytes, "secs": p.secs, "mb_per_s": p.mbps()}))
            .collect();
        println!(
            "{}",
            json!({"node": cluster.node_id, "files": remote.len(), "bytes": total,
                "concurrency": n, "passes": passes, "phases": rows, "peer_vs_local": peer / local,
                "peer_vs_ufs": peer / ufs_mbps})
        );
    } else {
        println!(
            "node {}: {} (blocks owned by peers)",
            cluster.node_id,
            summary_line(remote.len(), total, n)
        );
        for p in &phases {
            println!("{:<12} {:>8.3}s {:>10.1} MB/s", p.name, p.secs, p.mbps());
        }
        println!(
            "peer / local: {:.2}   peer / UFS direct: {:.2}",
            peer / local,
            peer / ufs_mbps
        );
    }
    Ok(())
}

/// One timed round of whole-file reads through this node, added to `phase`.
async fn timed(
    c: &Client,
    phase: &mut Phase,
    reads: &[ReadReq<String>],
    n: usize,
) -> anyhow::Result<()> {
    let t = Instant::now();
    phase.bytes += grpc_reads(c, reads, n).await?;
    phase.secs += t.elapsed().as_secs_f64();
    Ok(())
}

fn load(path: &str, local: bool) -> pb::LoadRequest {
    pb::LoadRequest {
        path: path.to_string(),
        parallelism: 0,
        local,
    }
}
