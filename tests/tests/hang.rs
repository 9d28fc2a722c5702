//! One hung object store must not stall the rest: readers of a hung mount share one manifest
//! LIST (and its error) instead of queueing to redo it, and GETs that never answer cannot take
//! the fetch budget of another mount.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loaderd_tests::{
    BlackHole, Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, bin, config_file_args,
    file_mount_args, free_port, wait_until, write_random_file,
};

/// A `loaderctl cat PATH` running in the background (no backtrace on its error: symbolizing
/// one takes seconds in a debug build, which would blur the timings measured here).
fn spawn_cat(daemon: &Daemon, path: &str) -> Child {
    Command::new(bin("loaderctl"))
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cat", path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loaderctl cat")
}

/// `--mount POINT=s3://hung/ds` at an endpoint that accepts connections and never answers.
fn hung_mount_args(point: &str, port: u16) -> Vec<String> {
    let mut out = args(&["--mount", &format!("{point}=s3://hung-bucket/ds")]);
    for (k, v) in [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("region", "us-east-1".into()),
        ("access_key_id", "test".into()),
        ("secret_access_key", "test".into()),
        ("allow_http", "true".into()),
    ] {
        out.push("--mount-option".into());
        out.push(format!("{point}:{k}={v}"));
    }
    out
}

/// Six first reads of a hung mount at once: with `timeout = 1s, retries = 1` one manifest LIST
/// fails after about 2 s. Serialized loads made the k-th reader wait k × 2 s, and each redid
/// the LIST (six failed LISTs for one hang).
#[test]
fn concurrent_first_reads_of_a_hung_store_share_one_list() {
    const READERS: usize = 6;
    let port = free_port();
    let _hole = BlackHole::bind(port);
    let conf = tempfile::tempdir().expect("tempdir");
    let mut daemon_args = config_file_args(
        conf.path(),
        "[cache.ufs]\ntimeout = \"1s\"\nretries = 1\ninitial_backoff = \"100ms\"\n",
    );
    daemon_args.extend(hung_mount_args("/hung", port));
    let daemon = Daemon::start(&daemon_args);

    let began = Instant::now();
    let readers: Vec<(Instant, Child)> = (0..READERS)
        .map(|i| {
            let path = format!("/hung/file_{i}.bin");
            (Instant::now(), spawn_cat(&daemon, &path))
        })
        .collect();
    let mut took = Vec::new();
    for (i, (started, reader)) in readers.into_iter().enumerate() {
        let out = reader.wait_with_output().expect("wait for loaderctl cat");
        took.push(started.elapsed());
        assert!(
            !out.status.success(),
            "reader {i} of a hung store succeeded"
        );
    }
    let all = began.elapsed();
    // One flight: about 2.1 s for everyone. Serialized: 2.1, 4.2, ... 12.6 s.
    let slowest = took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(6),
        "first reads of a hung store took {took:?} (one LIST with timeout 1s and 1 retry \
         is about 2s; all {READERS} readers should share it)"
    );
    let errors = daemon.metric("loaderd_ufs_errors_total");
    let retries = daemon.metric("loaderd_ufs_retries_total");
    // A reader started after the shared LIST failed may start one more; never one per reader.
    assert!(
        errors <= 2.0 && retries <= 2.0,
        "{READERS} concurrent readers made {errors} failed LISTs ({retries} retries) in {all:?}"
    );
    daemon.ctl_ok(&["status"]);
}

/// Six 4 MiB GETs hang on one store with a 24 MiB in-flight budget (all of it, as one pool).
/// A cold read of another mount must not wait for them.
#[test]
fn a_hung_store_leaves_other_mounts_their_fetch_budget() {
    let data = Dataset::blobs(&[4 << 20; 6]);
    let mut s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let healthy = tempfile::tempdir().expect("tempdir");
    let small = write_random_file(&healthy.path().join("small.bin"), 1 << 20, 7);
    let big = write_random_file(&healthy.path().join("big.bin"), 9 << 20, 8);

    let conf = tempfile::tempdir().expect("tempdir");
    let mut daemon_args = config_file_args(
        conf.path(),
        "[cache]\nblock_size = \"4MiB\"\n[cache.ufs]\nmax_inflight_bytes = \"24MiB\"\n\
         timeout = \"20s\"\nretries = 0\n",
    );
    daemon_args.extend(s3.mount_args("/hung", "ds"));
    daemon_args.extend(file_mount_args("/ok", healthy.path()));
    let daemon = Daemon::start(&daemon_args);
    // The manifest of /hung is loaded while its store answers; then the store hangs.
    daemon.ctl_ok(&["stat", "/hung/blobs/blob_00.bin"]);
    s3.stop();
    let _hole = BlackHole::bind(s3.port);

    let mut hung: Vec<Child> = (0..6)
        .map(|i| spawn_cat(&daemon, &format!("/hung/blobs/blob_{i:02}.bin")))
        .collect();
    let inflight = |d: &Daemon| d.status_json()["inflight_bytes"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(10), || inflight(&daemon) >= 12 << 20),
        "the hung GETs never held the budget: {}",
        daemon.ctl_ok(&["status", "--json"])
    );

    let began = Instant::now();
    let got = daemon.cat("/ok/small.bin");
    let small_took = began.elapsed();
    assert_bytes_eq(&got, &small, "cat /ok/small.bin while /hung hangs");
    let began = Instant::now();
    let got = daemon.cat("/ok/big.bin");
    let big_took = began.elapsed();
    assert_bytes_eq(&got, &big, "cat /ok/big.bin while /hung hangs");
    assert!(
        small_took < Duration::from_secs(3) && big_took < Duration::from_secs(3),
        "cold reads of a healthy mount took {small_took:?} (1 MiB) and {big_took:?} (9 MiB) \
         while six GETs hung on another store (timeout 20s)"
    );
    for c in &mut hung {
        assert!(
            c.try_wait().expect("try_wait").is_none(),
            "a read of the hung store ended before the healthy reads were done"
        );
    }
    for mut c in hung {
        let _ = c.kill();
        let _ = c.wait();
    }
}
