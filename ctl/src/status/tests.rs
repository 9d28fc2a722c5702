//! The report of a status with every part filled in, and of a bare one, as text and JSON:
//! the files under testdata/ are the output `loaderctl status` gave before it was split
//! into parts, so a change to them is a change of the command's output.

use std::collections::HashMap;

use loaderd_proto::v1 as pb;

use super::{json, text};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn member(id: &str, local: bool, reachable: bool, suspect: bool, error: &str) -> pb::MemberStatus {
    pb::MemberStatus {
        id: id.into(),
        addr: format!("127.0.0.1:70{}", id.len()),
        local,
        suspect,
        reachable,
        used_bytes: 3 * MIB,
        capacity_bytes: GIB,
        hit_ratio: 0.25,
        error: error.into(),
    }
}

/// GPU mode `mode` with one H200 open, under a driver of CUDA `driver_version`.
fn one_h200(mode: &str, driver_version: u32) -> pb::GpuStatus {
    pb::GpuStatus {
        mode: mode.into(),
        available: true,
        reason: String::new(),
        devices: vec![pb::GpuDevice {
            ordinal: 0,
            name: "H200".into(),
            total_memory: 140 * GIB,
            compute_major: 9,
            compute_minor: 0,
            driver_version,
        }],
    }
}

/// A status with two tiers (the SSD one lowered to fit its file system, the memory one having
/// evicted by schedule), prefetch, two mounts, a GPU, an unhealthy cluster with a member in
/// each state, and a loader that read and prefetched.
fn full() -> pb::StatusResponse {
    pb::StatusResponse {
        version: "9.8.7".into(),
        uptime_secs: 42,
        tiers: vec![
            pb::TierStatus {
                name: "memory".into(),
                capacity_bytes: GIB,
                used_bytes: 256 * MIB,
                blocks: 64,
                evictions: 3,
                high_watermark: 0.95,
                low_watermark: 0.8,
                location: "memfd".into(),
                fs_free_bytes: 0,
                fs_total_bytes: 0,
                configured_capacity_bytes: GIB,
                evictions_by_reason: [("lru", 0), ("stable", 0), ("unneeded", 1), ("farthest", 2)]
                    .into_iter()
                    .map(|(reason, blocks)| pb::EvictionCount {
                        reason: reason.into(),
                        blocks,
                    })
                    .collect(),
            },
            pb::TierStatus {
                name: "ssd".into(),
                capacity_bytes: 8 * GIB,
                used_bytes: 0,
                blocks: 0,
                evictions: 0,
                high_watermark: 0.9,
                low_watermark: 0.7,
                location: "/var/cache/loaderd".into(),
                fs_free_bytes: 7 * GIB,
                fs_total_bytes: 20 * GIB,
                configured_capacity_bytes: 16 * GIB,
                evictions_by_reason: Vec::new(),
            },
        ],
        hits: 30,
        misses: 10,
        hit_ratio: 0.75,
        bytes_from_ufs: 9 * MIB,
        bytes_from_cache: 27 * MIB,
        block_size: 4 * MIB,
        metadata_entries: 5,
        metadata_bytes: 702,
        inflight_bytes: MIB,
        inflight_capacity_bytes: 256 * MIB,
        mounts: vec![
            pb::MountInfo {
                path: "/ds".into(),
                uri: "s3://datasets/ds".into(),
                options: HashMap::from([
                    ("region".to_string(), "us-east-1".to_string()),
                    ("allow_http".to_string(), "true".to_string()),
                ]),
            },
            pb::MountInfo {
                path: "/local".into(),
                uri: "file:///data".into(),
                options: HashMap::new(),
            },
        ],
        corrupt_blocks: 1,
        ufs_errors: 2,
        loaders: vec![pb::LoaderStatus {
            name: "train".into(),
            dataset: "/ds/train".into(),
            rank: 1,
            world_size: 4,
            epoch: 2,
            batches_delivered: 10,
            batches_total: 40,
            samples: 640,
            skipped: 0,
            elapsed_secs: 2.5,
            samples_per_sec: 256.0,
            starved_percent: 12.5,
            fetch_secs: 0.64,
            decode_secs: 3.2,
            augment_secs: 1.28,
            ready_batches: 2,
            depth: 4,
            ring_bytes: 6 * MIB,
            workers: 3,
            device: "cpu".into(),
            block_reads_cached: 600,
            block_reads_uncached: 40,
            hit_ratio: 0.9375,
            prefetched_blocks: 320,
            prefetched_bytes: 320 * 4 * MIB,
            prefetch_ahead_bytes: 16 * MIB,
            ..Default::default()
        }],
        prefetch: Some(pb::PrefetchStatus {
            enabled: true,
            prefetched_blocks: 320,
            prefetched_bytes: 320 * 4 * MIB,
            hits: 300,
            late: 12,
            failed: 1,
            inflight_bytes: 8 * MIB,
            peak_inflight_bytes: 64 * MIB,
            ahead_bytes: 16 * MIB,
            max_bytes: GIB,
        }),
        ring_bytes: 6 * MIB,
        ring_capacity_bytes: 16 * GIB,
        cluster: Some(pb::ClusterStatus {
            enabled: true,
            node_id: "a".into(),
            membership: "etcd".into(),
            membership_healthy: false,
            membership_error: "etcd down".into(),
            replication: 1,
            members: vec![
                member("a", true, true, false, ""),
                member("bb", false, true, false, ""),
                member("ccc", false, true, true, ""),
                member("dddd", false, false, false, "connection refused"),
            ],
            peer_reads: 7,
            peer_read_failures: 1,
            peer_requests_refused: 2,
            remote_schedules: Some(pb::RemoteSchedulesStatus {
                held: 2,
                by_peer: [("ccc".to_string(), 1), ("bb".to_string(), 1)].into(),
                bytes: 3 * MIB,
                refused: 1,
                ignored: 1,
                expired: 0,
            }),
        }),
        gpu: Some(one_h200("auto", 12040)),
        shm_leased_bytes: 4 * MIB,
        shm_leased_capacity_bytes: 512 * MIB,
        shm_connections: 3,
    }
}

/// Nothing open, no cluster, and a GPU status that says why none is used.
fn bare() -> pb::StatusResponse {
    pb::StatusResponse {
        version: "9.8.7".into(),
        block_size: 4 * MIB,
        gpu: Some(pb::GpuStatus {
            mode: "off".into(),
            available: false,
            reason: "gpu.mode is off".into(),
            devices: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Three loaders: one on GPU 0 (some samples by the CPU fallback), one that asked for a CUDA
/// device on a daemon without one, and a plain CPU one.
fn gpu_loaders() -> pb::StatusResponse {
    let loader = |name: &str, device: &str| pb::LoaderStatus {
        name: name.into(),
        dataset: "/ds/train".into(),
        world_size: 1,
        batches_delivered: 5,
        batches_total: 10,
        samples: 320,
        elapsed_secs: 1.0,
        samples_per_sec: 320.0,
        fetch_secs: 0.32,
        decode_secs: 0.64,
        ready_batches: 1,
        depth: 4,
        ring_bytes: MIB,
        workers: 2,
        device: device.into(),
        ..Default::default()
    };
    pb::StatusResponse {
        version: "9.8.7".into(),
        block_size: 4 * MIB,
        gpu: Some(one_h200("on", 13000)),
        loaders: vec![
            pb::LoaderStatus {
                gpu_samples: 300,
                cpu_fallback_samples: 20,
                gpu_secs: 0.75,
                device_bytes: 96 * MIB,
                ..loader("gpu", "cuda:0")
            },
            pb::LoaderStatus {
                gpu_reason: "CUDA device 3 is not open: this daemon has devices 0..=0".into(),
                ..loader("asked", "cpu")
            },
            loader("plain", "cpu"),
        ],
        ring_bytes: 3 * MIB,
        ring_capacity_bytes: 16 * GIB,
        ..Default::default()
    }
}

#[test]
fn text_of_gpu_loaders() {
    assert_eq!(
        text(&gpu_loaders()).unwrap(),
        include_str!("testdata/gpu.txt")
    );
}

#[test]
fn json_of_gpu_loaders() {
    assert_eq!(
        format!("{}\n", json(&gpu_loaders())),
        include_str!("testdata/gpu.json")
    );
}

#[test]
fn text_of_every_part() {
    assert_eq!(text(&full()).unwrap(), include_str!("testdata/full.txt"));
}

#[test]
fn text_with_nothing_open_and_no_gpu() {
    assert_eq!(text(&bare()).unwrap(), include_str!("testdata/bare.txt"));
}

#[test]
fn json_of_every_part() {
    assert_eq!(
        format!("{}\n", json(&full())),
        include_str!("testdata/full.json")
    );
}

#[test]
fn json_with_nothing_open_and_no_gpu() {
    assert_eq!(
        format!("{}\n", json(&bare())),
        include_str!("testdata/bare.json")
    );
}
