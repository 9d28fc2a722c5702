//! `loaderctl status`: the daemon's cache, tiers, mounts, loaders, cluster and GPUs.

use loaderd_proto::v1 as pb;
use serde_json::json;

use crate::client::Client;
use crate::{human, rpc_err};

pub(crate) async fn status(c: &mut Client, as_json: bool) -> anyhow::Result<()> {
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
