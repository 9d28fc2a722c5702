//! The distributed cache with real processes: etcd and three loaderd nodes on loopback, a
//! moto S3 bucket below them. Every node reads every file byte-exact, each block is cached
//! on its owner only (so the cluster fetches it from S3 once), a node killed in the middle of
//! sustained reads costs no read, its lease expires and it rejoins with its SSD tier, etcd
//! going away leaves the last members in force, a peer without the token is refused, and a
//! shared-memory client gets blocks a peer owns from one peer fetch, without a gRPC re-read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use loaderctl::client::shm::ShmClient;
use loaderd_tests::cluster::{
    ClusterFixture, Etcd, Netns, cached_bytes, etcd_unavailable, owners, ufs_gets, via_etcd,
    wait_members,
};
use loaderd_tests::{
    Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, file_mount_args, free_port, sha256,
    shm_read_mapped,
};

const MIB: u64 = 1 << 20;

fn skip() -> bool {
    match etcd_unavailable() {
        Some(why) => {
            eprintln!("skipping: {why}");
            true
        }
        None => false,
    }
}

/// Blocks of a file of `size` bytes with 1 MiB blocks.
fn blocks(size: u64) -> u64 {
    size.div_ceil(MIB).max(1)
}

/// A loopback address for a peer API: port 0, the daemon takes what the kernel gives it and
/// advertises that.
fn local() -> String {
    "127.0.0.1:0".to_string()
}

fn start_nodes(
    fx: &ClusterFixture,
    ids: &[&str],
    membership: &[String],
    s3: &S3Sandbox,
) -> Vec<Daemon> {
    ids.iter()
        .map(|id| {
            Daemon::start(&fx.node_args(id, &local(), membership, &s3.mount_args("/ds", "ds")))
        })
        .collect()
}

#[test]
fn every_block_is_cached_once_on_its_owner_and_read_everywhere() {
    if skip() {
        return;
    }
    let data = Dataset::new(2, 6, &[3 * MIB as usize + 5]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let etcd = Etcd::start();
    let fx = ClusterFixture::new();
    let nodes = start_nodes(&fx, &["a", "b", "c"], &via_etcd(&etcd), &s3);
    for n in &nodes {
        wait_members(n, &["a", "b", "c"], Duration::from_secs(20));
    }

    for n in &nodes {
        for (rel, _) in &data.files {
            assert_bytes_eq(&n.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
        }
    }

    let mut total_blocks = 0;
    let mut owned: BTreeMap<String, u64> = BTreeMap::new();
    for (rel, path) in &data.files {
        let path_l = format!("/ds/{rel}");
        let size = std::fs::metadata(path).expect("metadata").len();
        let own = owners(&nodes[0], &path_l);
        assert_eq!(own.len() as u64, blocks(size), "{rel}: {own:?}");
        for n in &nodes[1..] {
            assert_eq!(
                owners(n, &path_l),
                own,
                "every node computes the same owners"
            );
        }
        total_blocks += own.len() as u64;
        let cached: Vec<u64> = nodes.iter().map(|n| cached_bytes(n, &path_l)).collect();
        assert_eq!(
            cached.iter().sum::<u64>(),
            size,
            "{rel}: one copy in the cluster, {cached:?}"
        );
        if own.len() == 1 {
            let holder = ["a", "b", "c"]
                .iter()
                .position(|id| *id == own[0])
                .expect("owner id");
            assert_eq!(cached[holder], size, "{rel} cached on its owner {}", own[0]);
        }
        for id in own {
            *owned.entry(id).or_default() += 1;
        }
    }
    assert!(owned.len() >= 2, "blocks spread over the nodes: {owned:?}");
    // Each node fetched each block it does not own from its owner exactly once (a
    // shared-memory read gets such a block in a transient lease from that one fetch).
    let peer_reads: u64 = nodes
        .iter()
        .map(|n| {
            n.status_json()["cluster"]["peer_reads"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        peer_reads,
        total_blocks * 2,
        "3 nodes, each block owned by one"
    );
    let failures = |nodes: &[Daemon]| -> u64 {
        nodes
            .iter()
            .map(|n| {
                n.status_json()["cluster"]["peer_read_failures"]
                    .as_u64()
                    .unwrap_or(1)
            })
            .sum()
    };
    assert_eq!(failures(&nodes), 0, "every peer reply passed its checksum");
    // Again: now served from the owners' memory with the checksums they kept.
    for n in &nodes {
        for (rel, _) in &data.files {
            assert_bytes_eq(&n.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
        }
    }
    assert_eq!(failures(&nodes), 0, "kept checksums match the bytes");
    let gets: f64 = nodes.iter().map(ufs_gets).sum();
    assert_eq!(
        gets as u64, total_blocks,
        "the cluster fetched each block from S3 once"
    );
    let status = nodes[0].status_json();
    assert!(
        status["cluster"]["peer_reads"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
    assert_eq!(status["cluster"]["membership"], "etcd", "{status}");
    let text = nodes[0].ctl_ok(&["status"]);
    assert!(
        text.contains("member b") && text.contains("this node"),
        "{text}"
    );
}

#[test]
fn loading_from_one_node_warms_each_block_on_its_owner_once() {
    let data = Dataset::new(2, 8, &[2 * MIB as usize]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let fx = ClusterFixture::new();
    // A static cluster: no etcd needed.
    let (pa, pb) = (free_port(), free_port());
    let a = Daemon::start(&fx.node_args(
        "a",
        &format!("127.0.0.1:{pa}"),
        &args(&["--peer", &format!("b=127.0.0.1:{pb}")]),
        &s3.mount_args("/ds", "ds"),
    ));
    let b = Daemon::start(&fx.node_args(
        "b",
        &format!("127.0.0.1:{pb}"),
        &args(&["--peer", &format!("a=127.0.0.1:{pa}")]),
        &s3.mount_args("/ds", "ds"),
    ));
    a.ctl_ok(&["load", "/ds"]);
    let total_blocks: u64 = data
        .files
        .iter()
        .map(|(_, p)| blocks(std::fs::metadata(p).expect("metadata").len()))
        .sum();
    assert_eq!((ufs_gets(&a) + ufs_gets(&b)) as u64, total_blocks);
    assert!(ufs_gets(&b) > 0.0, "b fetched the blocks it owns");
    let cached: u64 = data
        .files
        .iter()
        .map(|(rel, _)| {
            cached_bytes(&a, &format!("/ds/{rel}")) + cached_bytes(&b, &format!("/ds/{rel}"))
        })
        .sum();
    assert_eq!(
        cached,
        data.total_bytes(),
        "exactly one copy across the two nodes"
    );
    // Both nodes now read everything without another S3 request.
    for n in [&a, &b] {
        for (rel, _) in &data.files {
            assert_bytes_eq(&n.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
        }
    }
    assert_eq!((ufs_gets(&a) + ufs_gets(&b)) as u64, total_blocks);
    // `load --local` pins a copy on this node as well.
    b.ctl_ok(&["load", "--local", "/ds"]);
    let on_b: u64 = data
        .files
        .iter()
        .map(|(rel, _)| cached_bytes(&b, &format!("/ds/{rel}")))
        .sum();
    assert_eq!(on_b, data.total_bytes());
    assert_eq!(b.status_json()["cluster"]["membership"], "static");

    // The remote-read bench on a: b's files from b, then from a's own pinned copy, then
    // given back; a's UFS requests do not move (the direct phase is loaderctl's own).
    let gets_before = ufs_gets(&a);
    let mut bench = args(&["bench", "read", "--path", "/ds", "--ufs", &s3.uri("ds")]);
    for (k, v) in s3.options() {
        bench.extend(["-o".to_string(), format!("{k}={v}")]);
    }
    bench.extend(args(&["--remote", "--json"]));
    let out = a.ctl_ok(&bench.iter().map(String::as_str).collect::<Vec<_>>());
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(phases, ["ufs-direct", "peer", "local"], "{report}");
    assert!(
        report["peer_vs_ufs"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert_eq!(ufs_gets(&a), gets_before, "{report}");
    // One read at a time: a reply's last frame must not wait for the reader's delayed ACK.
    // With Nagle on the owner's socket, some peer reads stall up to 40 ms (measured here:
    // 0.11 of local speed; 0.46 without).
    bench.extend(args(&["--concurrency", "1", "--passes", "5"]));
    let out = a.ctl_ok(&bench.iter().map(String::as_str).collect::<Vec<_>>());
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
    let ratio = report["peer_vs_local"].as_f64().unwrap_or(0.0);
    assert!(ratio > 0.2, "sequential peer reads stall: {report}");
    let on_a: u64 = data
        .files
        .iter()
        .map(|(rel, _)| cached_bytes(&a, &format!("/ds/{rel}")))
        .sum();
    assert!(on_a < data.total_bytes(), "pinned copies were freed again");
}

#[test]
fn a_killed_node_costs_no_read_and_rejoins_with_its_ssd_tier() {
    if skip() {
        return;
    }
    let data = Dataset::new(3, 10, &[]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let etcd = Etcd::start();
    let fx = ClusterFixture::new();
    let mut nodes = start_nodes(&fx, &["a", "b", "c"], &via_etcd(&etcd), &s3);
    for n in &nodes {
        wait_members(n, &["a", "b", "c"], Duration::from_secs(20));
    }
    nodes[0].ctl_ok(&["load", "/ds"]);
    let c_files: Vec<String> = data
        .files
        .iter()
        .map(|(rel, _)| format!("/ds/{rel}"))
        .filter(|p| owners(&nodes[0], p) == ["c"])
        .collect();
    assert!(!c_files.is_empty(), "c owns some files");

    // Sustained reads on a; kill -9 c in the middle.
    let expected: Arc<Vec<(String, String)>> = Arc::new(
        data.files
            .iter()
            .map(|(rel, p)| {
                (
                    format!("/ds/{rel}"),
                    sha256(&std::fs::read(p).expect("read")),
                )
            })
            .collect(),
    );
    let (attempted, completed, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (socket, expected) = (nodes[0].socket.clone(), expected.clone());
        let (attempted, completed, wrong, done) = (
            attempted.clone(),
            completed.clone(),
            wrong.clone(),
            done.clone(),
        );
        thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                for (path, sum) in expected.iter() {
                    attempted.fetch_add(1, Ordering::SeqCst);
                    let out = loaderd_tests::loaderctl(&socket, &["cat", path]);
                    if out.status.success() {
                        completed.fetch_add(1, Ordering::SeqCst);
                        if sha256(&out.stdout) != *sum {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(1500));
    nodes[2].kill9();
    let killed_at = Instant::now();
    reader.join().expect("reader thread");
    assert!(done.load(Ordering::SeqCst));
    let (n, ok, bad) = (
        attempted.load(Ordering::SeqCst),
        completed.load(Ordering::SeqCst),
        wrong.load(Ordering::SeqCst),
    );
    eprintln!("reads attempted/completed/wrong = {n}/{ok}/{bad}");
    assert_eq!((ok, bad), (n, 0), "every read completed, none wrong");

    // c's lease expires (3 s): it leaves every view and its blocks move to the survivors.
    wait_members(&nodes[0], &["a", "b"], Duration::from_secs(15));
    assert!(killed_at.elapsed() < Duration::from_secs(15));
    for p in &c_files {
        assert_ne!(owners(&nodes[0], p), ["c"], "{p} re-hashed to a survivor");
    }

    // c comes back with the same id and SSD directory: it rejoins and serves its blocks
    // from SSD, without going to S3.
    nodes[2].restart();
    for n in &nodes {
        wait_members(n, &["a", "b", "c"], Duration::from_secs(20));
    }
    for p in &c_files {
        assert_eq!(owners(&nodes[0], p), ["c"]);
        let rel = p.trim_start_matches("/ds/");
        assert_bytes_eq(&nodes[0].cat(p), &data.read(rel), p);
    }
    assert_eq!(
        ufs_gets(&nodes[2]),
        0.0,
        "c served its blocks from its SSD tier"
    );
}

#[test]
fn with_etcd_down_nodes_keep_the_last_members_and_say_so() {
    if skip() {
        return;
    }
    let data = Dataset::new(1, 6, &[]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut etcd = Etcd::start();
    let fx = ClusterFixture::new();
    let nodes = start_nodes(&fx, &["a", "b"], &via_etcd(&etcd), &s3);
    for n in &nodes {
        wait_members(n, &["a", "b"], Duration::from_secs(20));
    }
    etcd.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes[0].status_json()["cluster"]["membership_healthy"] != false {
        assert!(Instant::now() < deadline, "etcd loss not noticed");
        thread::sleep(Duration::from_millis(200));
    }
    wait_members(&nodes[0], &["a", "b"], Duration::from_secs(1));
    let text = nodes[0].ctl_ok(&["status"]);
    assert!(text.contains("UNHEALTHY"), "{text}");
    for n in &nodes {
        for (rel, _) in &data.files {
            assert_bytes_eq(&n.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
        }
    }
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes[0].status_json()["cluster"]["membership_healthy"] != true {
        assert!(
            Instant::now() < deadline,
            "did not re-register:\n{}",
            nodes[0].log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    for n in &nodes {
        wait_members(n, &["a", "b"], Duration::from_secs(20));
    }
}

#[test]
fn a_peer_without_the_token_is_refused_and_reads_fall_back_to_s3() {
    let data = Dataset::new(1, 12, &[]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let fx = ClusterFixture::new();
    let other = ClusterFixture::new();
    std::fs::write(&other.token_file, "not-the-cluster-token-at-all").expect("write token");
    let (pa, px) = (free_port(), free_port());
    let a = Daemon::start(&fx.node_args(
        "a",
        &format!("127.0.0.1:{pa}"),
        &args(&["--peer", &format!("x=127.0.0.1:{px}")]),
        &s3.mount_args("/ds", "ds"),
    ));
    let x = Daemon::start(&other.node_args(
        "x",
        &format!("127.0.0.1:{px}"),
        &args(&["--peer", &format!("a=127.0.0.1:{pa}")]),
        &s3.mount_args("/ds", "ds"),
    ));
    for (rel, _) in &data.files {
        assert_bytes_eq(&x.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
    }
    let refused = a.status_json()["cluster"]["peer_requests_refused"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused >= 1, "a refused x's requests");
    assert!(a.metric("loaderd_peer_requests_refused_total") >= 1.0);
    let sx = x.status_json();
    assert!(
        sx["cluster"]["peer_read_failures"].as_u64().unwrap_or(0) >= 1,
        "{sx}"
    );
    assert_eq!(
        cached_bytes(&a, &format!("/ds/{}", data.files[0].0)),
        0,
        "nothing reached a"
    );
}

#[test]
fn a_partitioned_node_reads_from_the_ufs_and_heals() {
    if skip() {
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping: cannot create a network namespace: {why}");
            return;
        }
    };
    // A file:// UFS: the partition cuts the nodes apart, not the node from its storage.
    let data = Dataset::new(2, 10, &[]);
    let mount = file_mount_args("/ds", &data.root);
    let etcd = Etcd::start_on(&ns.host_ip);
    let fx = ClusterFixture::new();
    let on_host = |id: &str| {
        let listen = format!("{}:0", ns.host_ip);
        Daemon::start(&fx.node_args(id, &listen, &via_etcd(&etcd), &mount))
    };
    let (a, b) = (on_host("a"), on_host("b"));
    let c_listen = format!("{}:0", ns.inner_ip);
    let c = Daemon::start_wrapped(
        &ns.wrapper(),
        &fx.node_args("c", &c_listen, &via_etcd(&etcd), &mount),
    );
    for n in [&a, &b, &c] {
        wait_members(n, &["a", "b", "c"], Duration::from_secs(20));
    }
    let read_all = |n: &Daemon| {
        for (rel, _) in &data.files {
            assert_bytes_eq(&n.cat(&format!("/ds/{rel}")), &data.read(rel), rel);
        }
    };
    read_all(&c);
    let before = c.status_json()["cluster"]["peer_reads"]
        .as_u64()
        .unwrap_or(0);
    assert!(before > 0, "c read blocks from its peers");

    ns.partition();
    // Both sides keep reading correctly: peers that do not answer are skipped.
    let started = Instant::now();
    read_all(&c);
    read_all(&a);
    assert!(started.elapsed() < Duration::from_secs(30), "reads stalled");
    // c's lease expires on the majority side; c keeps its last view and reports etcd lost.
    wait_members(&a, &["a", "b"], Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.status_json()["cluster"]["membership_healthy"] != false {
        assert!(Instant::now() < deadline, "c did not notice the partition");
        thread::sleep(Duration::from_millis(200));
    }

    ns.heal();
    for n in [&a, &b, &c] {
        wait_members(n, &["a", "b", "c"], Duration::from_secs(30));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.status_json()["cluster"]["membership_healthy"] != true {
        assert!(Instant::now() < deadline, "c did not re-register");
        thread::sleep(Duration::from_millis(200));
    }
    // Suspicions expire (3 s) and c reads from its peers again.
    thread::sleep(Duration::from_secs(4));
    let mid = c.status_json()["cluster"]["peer_reads"]
        .as_u64()
        .unwrap_or(0);
    read_all(&c);
    let after = c.status_json()["cluster"]["peer_reads"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        after > mid,
        "peer reads resumed after the partition ({mid} -> {after})"
    );
}

#[test]
fn a_shared_memory_read_of_peer_owned_blocks_is_one_peer_fetch_into_a_lease() {
    if skip() {
        return;
    }
    // 9 blocks of 1 MiB over two nodes: each owns some (rendezvous hashing; asserted).
    let data = Dataset::blobs(&[8 * MIB as usize + 5]);
    let (rel, path) = ("blobs/blob_00.bin", "/ds/blobs/blob_00.bin");
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let etcd = Etcd::start();
    let fx = ClusterFixture::new();
    let nodes = start_nodes(&fx, &["a", "b"], &via_etcd(&etcd), &s3);
    for n in &nodes {
        wait_members(n, &["a", "b"], Duration::from_secs(20));
    }
    let a = &nodes[0];
    let own = owners(a, path);
    let of_b = own.iter().filter(|o| *o == "b").count() as u64;
    assert!(0 < of_b && of_b < 9, "owners {own:?}");

    let mut c = ShmClient::connect(&a.dir().join("loaderd.shm.sock")).expect("connect");
    let (got, fallback) = shm_read_mapped(&mut c, path);
    assert_eq!(fallback, 0, "fallback extents for blocks b owns");
    assert_bytes_eq(&got, &data.read(rel), "shared-memory read through a");

    let status = a.status_json();
    assert_eq!(
        status["cluster"]["peer_reads"].as_u64(),
        Some(of_b),
        "one peer fetch per block b owns: {status}"
    );
    assert_eq!(
        a.metric("loaderd_cache_transient_leases_total"),
        of_b as f64,
        "b's blocks were leased from the peer fetch"
    );
    assert_eq!(a.metric("loaderd_shm_fallback_bytes_total"), 0.0);
    assert_eq!(
        a.metric("loaderd_read_latency_seconds_count{api=\"grpc\"}"),
        0.0,
        "no gRPC re-read"
    );
    assert_eq!(
        (ufs_gets(a) + ufs_gets(&nodes[1])) as u64,
        9,
        "each block fetched from S3 once, on its owner"
    );
    assert_eq!(
        cached_bytes(a, path) + cached_bytes(&nodes[1], path),
        8 * MIB + 5,
        "one copy in the cluster: the transient leases cached nothing on a"
    );
    drop(c);
    assert!(
        a.leases_released(),
        "closing the connection frees the leases"
    );
}
