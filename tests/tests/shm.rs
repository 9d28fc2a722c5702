//! Zero-copy local reads: `loaderctl cat` maps the daemon's memory tier read-only and gets
//! extents over the shared-memory socket; bytes are exact, the fallback for blocks outside
//! the memory tier is exact too, blocks held only on the SSD tier are leased from one SSD
//! read, and the socket is as private as the gRPC one.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use loaderctl::client::shm::ShmClient;
use loaderd_tests::{
    Daemon, Dataset, args, assert_bytes_eq, file_mount_args, sha256, shm_read_mapped,
    ssd_block_files, tier, wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const SHM_READS: &str = "loaderd_shm_reads_total";

fn daemon(data: &Dataset, extra: &[&str]) -> Daemon {
    let mut a = file_mount_args("/data", &data.root);
    a.extend(args(&["--block-size", "64KiB"]));
    a.extend(args(extra));
    Daemon::start(&a)
}

#[test]
fn shared_memory_reads_are_byte_exact() {
    let data = Dataset::new(2, 5, &[MIB, 200_000, 64 * KIB, 0]);
    let d = daemon(&data, &[]);
    let shm_socket = d.dir().join("loaderd.shm.sock");
    assert!(
        shm_socket.exists(),
        "no shared-memory socket at {}",
        shm_socket.display()
    );
    let mode = std::fs::metadata(&shm_socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o007,
        0,
        "shared-memory socket is open to others: {mode:o}"
    );

    let before = d.metric(SHM_READS);
    for (rel, _) in &data.files {
        let want = data.read(rel);
        let path = format!("/data/{rel}");
        // Cold (fetched, then leased) and warm (leased directly).
        for round in ["cold", "warm"] {
            let got = d.ctl_bytes(&["cat", &path]);
            assert_eq!(sha256(&got), sha256(&want), "{round} cat {path}");
        }
    }
    let reads = d.metric(SHM_READS) - before;
    assert_eq!(
        reads,
        2.0 * data.files.len() as f64,
        "every cat went through shared memory"
    );

    // Ranges across block boundaries.
    let blob = data.read("blobs/blob_00.bin");
    for (off, len) in [
        (0usize, 1usize),
        (65_535, 2),
        (100_000, 300_000),
        (MIB - 10, 0),
    ] {
        let got = d.ctl_bytes(&[
            "cat",
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
            "/data/blobs/blob_00.bin",
        ]);
        let end = if len == 0 { blob.len() } else { off + len };
        assert_eq!(got, &blob[off..end], "range {off}+{len}");
    }

    // gRPC gives the same bytes and does not touch the shared-memory path.
    let before = d.metric(SHM_READS);
    let got = d.ctl_bytes(&["cat", "--no-shm", "/data/blobs/blob_00.bin"]);
    assert_eq!(sha256(&got), sha256(&blob));
    assert_eq!(d.metric(SHM_READS), before);

    let err = d.ctl_err(&["cat", "/data/blobs/nope.bin"]);
    assert!(err.contains("/data/blobs/nope.bin"), "{err}");
}

#[test]
fn blocks_outside_the_memory_tier_fall_back_exactly() {
    // A 3 MiB file through a 1 MiB memory tier: most blocks cannot be leased at once, so
    // the reply names fallback extents that the client reads over gRPC.
    let data = Dataset::blobs(&[3 * MIB]);
    let d = daemon(&data, &["--memory-capacity", "1MiB"]);
    let want = data.read("blobs/blob_00.bin");
    for _ in 0..2 {
        let got = d.ctl_bytes(&["cat", "/data/blobs/blob_00.bin"]);
        assert_eq!(sha256(&got), sha256(&want));
    }
    assert!(
        d.metric("loaderd_shm_fallback_bytes_total") > 0.0,
        "the fallback path was not exercised"
    );
    let status = d.status_json();
    let mem = &status["tiers"][0];
    assert!(
        mem["used_bytes"].as_u64().unwrap() <= mem["capacity_bytes"].as_u64().unwrap(),
        "{status}"
    );
}

#[test]
fn no_memory_tier_means_no_shared_memory_socket() {
    let data = Dataset::blobs(&[100_000]);
    let d = daemon(&data, &["--memory-capacity", "0"]);
    assert!(!d.dir().join("loaderd.shm.sock").exists());
    let got = d.ctl_bytes(&["cat", "/data/blobs/blob_00.bin"]);
    assert_eq!(sha256(&got), sha256(&data.read("blobs/blob_00.bin")));
}

const SSD_HITS: &str = "loaderd_cache_hits_total{tier=\"ssd\"}";
const TRANSIENT: &str = "loaderd_cache_transient_leases_total";
const FALLBACK: &str = "loaderd_shm_fallback_bytes_total";
const GRPC_READS: &str = "loaderd_read_latency_seconds_count{api=\"grpc\"}";

#[test]
fn blocks_on_the_ssd_tier_only_are_leased_from_one_ssd_read() {
    // 5 + 1 blocks of 64 KiB, cached on both tiers by a first read; after a restart the
    // memory tier is empty and the SSD tier holds every block.
    let data = Dataset::blobs(&[300_000, 64 * KIB]);
    let ssd = tempfile::tempdir().expect("tempdir");
    let ssd_dir = ssd.path().to_str().expect("utf-8 path");
    let mut d = daemon(&data, &["--ssd-dir", ssd_dir, "--ssd-capacity", "64MiB"]);
    let files: Vec<(String, Vec<u8>)> = data
        .files
        .iter()
        .map(|(rel, _)| (format!("/data/{rel}"), data.read(rel)))
        .collect();
    for (path, want) in &files {
        assert_bytes_eq(&d.cat(path), want, path);
    }
    let blocks = 6;
    assert!(
        wait_until(Duration::from_secs(30), || ssd_block_files(ssd.path())
            .len()
            == blocks),
        "SSD blocks: {:?}",
        ssd_block_files(ssd.path())
    );
    d.restart();
    let status = d.status_json();
    assert_eq!(tier(&status, "memory")["blocks"], 0, "{status}");
    assert_eq!(tier(&status, "ssd")["blocks"], blocks, "{status}");

    let mut c = ShmClient::connect(&shm_socket(&d)).expect("connect");
    for (path, want) in &files {
        let (got, fallback) = shm_read_mapped(&mut c, path);
        assert_eq!(fallback, 0, "{path}: fallback extents for blocks on SSD");
        assert_bytes_eq(&got, want, path);
    }
    assert_eq!(d.metric(SSD_HITS), blocks as f64, "one SSD read per block");
    assert_eq!(
        d.metric(TRANSIENT),
        blocks as f64,
        "one transient lease per block"
    );
    assert_eq!(d.metric(FALLBACK), 0.0);
    assert_eq!(d.metric(GRPC_READS), 0.0, "no gRPC read");
    assert_eq!(d.metric("loaderd_shm_reads_total"), files.len() as f64);
    let status = d.status_json();
    assert_eq!(
        tier(&status, "memory")["blocks"],
        0,
        "a CACHE read moves nothing into the memory tier: {status}"
    );
    assert!(status["shm_leased_bytes"].as_u64() > Some(0), "{status}");
    drop(c);
    assert!(
        d.leases_released(),
        "a closed connection gives its transient leases back"
    );
}

fn shm_socket(d: &Daemon) -> std::path::PathBuf {
    Path::new(d.dir()).join("loaderd.shm.sock")
}
