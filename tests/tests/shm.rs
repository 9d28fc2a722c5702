//! Zero-copy local reads: `loaderctl cat` maps the daemon's memory tier read-only and gets
//! extents over the shared-memory socket; bytes are exact, the fallback for blocks outside
//! the memory tier is exact too, and the socket is as private as the gRPC one.

use std::os::unix::fs::PermissionsExt;

use loaderd_tests::{Daemon, Dataset, args, file_mount_args, sha256};

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
