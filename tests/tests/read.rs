//! Reads through the daemon return exactly the bytes stored in the UFS, a
//! `load` makes later reads pure cache hits, and concurrent cold reads of one
//! block cost one GET.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use loaderd_tests::{
    Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, bin, file_mount_args, http_get, metric_sum,
    sha256, tiers_sum, wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GET: &str = "loaderd_ufs_requests_total{op=\"get\"}";

/// JPEGs plus blobs that are multi-block, unaligned, exactly one block, and empty.
fn dataset() -> Dataset {
    Dataset::new(4, 10, &[MIB, 200_000, 64 * KIB, 0])
}

/// Every file under `point` reads back byte-exact, is listed by `ls -R`, has
/// the right `stat` size, and ranges of the multi-block blob match slices.
fn check_mount_matches(daemon: &Daemon, data: &Dataset, point: &str) {
    for (rel, _) in &data.files {
        let want = data.read(rel);
        let got = daemon.cat(&format!("{point}/{rel}"));
        assert_eq!(
            sha256(&got),
            sha256(&want),
            "cat {point}/{rel}: {} bytes vs {} expected",
            got.len(),
            want.len()
        );

        let stat = daemon.stat_json(&format!("{point}/{rel}"));
        assert_eq!(
            stat["size"].as_u64(),
            Some(want.len() as u64),
            "stat {point}/{rel}: {stat}"
        );
        assert_eq!(
            stat["is_dir"].as_bool(),
            Some(false),
            "stat {point}/{rel}: {stat}"
        );
    }

    let listing = daemon.ctl_ok(&["ls", "-R", point]);
    let lines: BTreeSet<&str> = listing.lines().map(str::trim).collect();
    for (rel, _) in &data.files {
        let full = format!("{point}/{rel}");
        assert!(
            lines.contains(full.as_str()) || lines.contains(rel.as_str()),
            "ls -R {point} does not list {full}:\n{listing}"
        );
    }

    let long = daemon.ctl_ok(&["ls", "-l", &format!("{point}/blobs")]);
    let blob_line = long
        .lines()
        .find(|l| l.contains("blob_01.bin"))
        .unwrap_or_else(|| panic!("ls -l {point}/blobs lacks blob_01.bin:\n{long}"));
    assert!(
        blob_line.split_whitespace().any(|w| w == "200000"),
        "ls -l shows no size 200000: {blob_line:?}"
    );

    let blob = data.read("blobs/blob_00.bin");
    let path = format!("{point}/blobs/blob_00.bin");
    let len = blob.len();
    let block = 64 * KIB;
    for (offset, length) in [
        (0, 1),
        (block - 1, 2),
        (block, block),
        (100_000, 300_000),
        (3 * block + 17, 5 * block),
        (len - 10, 10),
    ] {
        let got = daemon.ctl_bytes(&[
            "cat",
            "--offset",
            &offset.to_string(),
            "--length",
            &length.to_string(),
            &path,
        ]);
        assert_eq!(
            sha256(&got),
            sha256(&blob[offset..offset + length]),
            "cat --offset {offset} --length {length} {path}: got {} bytes",
            got.len()
        );
    }
    let got = daemon.ctl_bytes(&["cat", "--offset", &(len - 100).to_string(), &path]);
    assert_bytes_eq(
        &got,
        &blob[len - 100..],
        &format!("cat --offset {} (to the end) {path}", len - 100),
    );
}

#[test]
fn s3_reads_are_byte_exact() {
    let data = dataset();
    let s3 = S3Sandbox::start(&[(&data.root, "imagenet")]);
    assert_eq!(s3.objects, data.files.len());
    let mut daemon_args = args(&["--block-size", "64KiB"]);
    daemon_args.extend(s3.mount_args("/data", "imagenet"));
    let daemon = Daemon::start(&daemon_args);

    check_mount_matches(&daemon, &data, "/data");
}

#[test]
fn file_mount_reads_are_byte_exact() {
    let data = dataset();
    let mut daemon_args = args(&["--block-size", "64KiB"]);
    daemon_args.extend(file_mount_args("/local", &data.root));
    let daemon = Daemon::start(&daemon_args);

    check_mount_matches(&daemon, &data, "/local");
}

#[test]
fn load_makes_reads_pure_cache_hits() {
    let data = dataset();
    let s3 = S3Sandbox::start(&[(&data.root, "imagenet")]);
    let mut daemon_args = args(&["--block-size", "64KiB", "--memory-capacity", "256MiB"]);
    daemon_args.extend(s3.mount_args("/data", "imagenet"));
    let daemon = Daemon::start(&daemon_args);

    let summary = daemon.ctl_ok(&["load", "--no-progress", "/data"]);
    let expected = format!(
        "loaded {} files, {} bytes",
        data.files.len(),
        data.total_bytes()
    );
    assert!(
        summary.contains(&expected),
        "load summary {summary:?} lacks {expected:?}"
    );

    let blocks_needed: u64 = data
        .files
        .iter()
        .map(|(rel, _)| data.read(rel).len().div_ceil(64 * KIB) as u64)
        .sum();
    let status = daemon.status_json();
    assert!(
        tiers_sum(&status, "blocks") >= blocks_needed,
        "after load, status shows {} cached blocks, expected at least {blocks_needed}: {status}",
        tiers_sum(&status, "blocks")
    );

    let gets = daemon.metric(GET);
    let misses = daemon.metric("loaderd_cache_misses_total");
    let hits = daemon.metric("loaderd_cache_hits_total");
    for (rel, _) in &data.files {
        let got = daemon.cat(&format!("/data/{rel}"));
        assert_eq!(sha256(&got), sha256(&data.read(rel)), "cat /data/{rel}");
    }
    assert_eq!(
        daemon.metric(GET),
        gets,
        "reading loaded files issued UFS GETs"
    );
    assert_eq!(
        daemon.metric("loaderd_cache_misses_total"),
        misses,
        "reading loaded files missed the cache"
    );
    assert!(
        daemon.metric("loaderd_cache_hits_total") >= hits + blocks_needed as f64,
        "expected at least {blocks_needed} more cache hits"
    );

    // `free` drops the blocks again: the next read goes back to the UFS.
    daemon.ctl_ok(&["free", "/data"]);
    let status = daemon.status_json();
    assert_eq!(
        tiers_sum(&status, "blocks"),
        0,
        "blocks left after free: {status}"
    );
    let gets = daemon.metric(GET);
    let got = daemon.cat("/data/blobs/blob_00.bin");
    assert_eq!(sha256(&got), sha256(&data.read("blobs/blob_00.bin")));
    assert!(
        daemon.metric(GET) > gets,
        "a read after free was served without the UFS"
    );
}

#[test]
fn concurrent_cold_reads_of_one_block_issue_one_get() {
    let data = Dataset::blobs(&[MIB]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut daemon_args = args(&["--block-size", "1MiB", "--memory-capacity", "64MiB"]);
    daemon_args.extend(s3.mount_args("/data", "ds"));
    let daemon = Daemon::start(&daemon_args);
    let want = data.read("blobs/blob_00.bin");

    let gets = daemon.metric(GET);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(bin("loaderctl"))
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["cat", "/data/blobs/blob_00.bin"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn loaderctl cat")
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let out = reader.wait_with_output().expect("wait for loaderctl cat");
        assert!(
            out.status.success(),
            "reader {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha256(&out.stdout),
            sha256(&want),
            "reader {i} got {} bytes",
            out.stdout.len()
        );
    }
    assert_eq!(
        daemon.metric(GET) - gets,
        1.0,
        "8 concurrent cold reads of a one-block file must cost exactly one GET (singleflight joins: {})",
        daemon.metric("loaderd_singleflight_joins_total")
    );
}

#[test]
fn metrics_and_healthz_are_served() {
    let data = Dataset::blobs(&[100_000]);
    let mut daemon_args = args(&["--block-size", "64KiB"]);
    daemon_args.extend(file_mount_args("/local", &data.root));
    let daemon = Daemon::start(&daemon_args);

    http_get(&daemon.metrics_addr, "/healthz");
    assert_bytes_eq(
        &daemon.cat("/local/blobs/blob_00.bin"),
        &data.read("blobs/blob_00.bin"),
        "cat /local/blobs/blob_00.bin",
    );
    // The latency is recorded when the read's stream is dropped, which may
    // be just after the client has its bytes.
    let mut text = String::new();
    wait_until(Duration::from_secs(2), || {
        text = daemon.metrics();
        text.contains("loaderd_read_latency_seconds_bucket")
    });
    assert!(
        text.contains("loaderd_read_latency_seconds_bucket"),
        "no read latency histogram in /metrics:\n{text}"
    );
    assert!(
        metric_sum(&text, "loaderd_read_latency_seconds_count") >= 1.0,
        "read latency histogram counted no reads"
    );
    assert!(
        metric_sum(&text, "loaderd_cache_misses_total") >= 2.0,
        "a cold two-block read counted fewer than 2 misses"
    );
    assert!(
        metric_sum(&text, "loaderd_ufs_bytes_total") >= 100_000.0,
        "UFS bytes not counted"
    );
}

/// An offset past the end of a file is OUT_OF_RANGE over gRPC and over shared memory alike,
/// with the same message; the end itself is an empty read.
#[test]
fn an_offset_past_the_end_is_out_of_range_on_every_path() {
    use loaderctl::client::shm::{ShmClient, ShmError};
    use loaderd_proto::v1 as pb;

    let data = Dataset::blobs(&[200_000]);
    let d = Daemon::start(&file_mount_args("/data", &data.root));
    let path = "/data/blobs/blob_00.bin";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let grpc = |offset: u64| {
        rt.block_on(async {
            let mut c = loaderctl::client::connect_unix(&d.socket)
                .await
                .expect("connect");
            let req = pb::ReadRequest {
                path: path.into(),
                offset,
                ..Default::default()
            };
            let mut stream = c.read(req).await?.into_inner();
            let mut n = 0;
            while let Some(chunk) = stream.message().await? {
                n += chunk.data.len();
            }
            Ok::<_, tonic::Status>(n)
        })
    };
    assert_eq!(grpc(200_000).expect("a read at the end"), 0);
    let over_grpc = grpc(200_001).expect_err("a read past the end");
    assert_eq!(over_grpc.code(), tonic::Code::OutOfRange, "{over_grpc:?}");

    let mut c = ShmClient::connect(&d.dir().join("loaderd.shm.sock")).expect("connect");
    let over_shm = match c.read(path, 200_001, 0, |_, _| Ok(())) {
        Err(ShmError::Status { code, message }) => (code, message),
        other => panic!("a shared-memory read past the end: {other:?}"),
    };
    assert_eq!(over_shm.0, tonic::Code::OutOfRange, "{over_shm:?}");
    assert_eq!(over_shm.1, over_grpc.message(), "one error, said once");
    assert!(over_shm.1.contains(path), "{over_shm:?}");
}
