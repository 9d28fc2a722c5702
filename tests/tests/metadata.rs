//! Metadata caching: an object changed in the UFS becomes visible after the
//! metadata TTL or at once after `invalidate`, and reads never mix versions.

use std::thread;
use std::time::{Duration, Instant};

use loaderd_tests::{Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, random_bytes, sha256};

/// Long enough that the steps between a stat and the overwrite (a python
/// process upload) fit inside it even on a loaded machine.
const TTL: Duration = Duration::from_secs(4);
const KEY: &str = "ds/blobs/blob_00.bin";
const PATH: &str = "/data/blobs/blob_00.bin";

/// Also returns when the daemon was spawned: no metadata it holds is older.
fn start(old_size: usize) -> (Dataset, S3Sandbox, Daemon, Instant) {
    let data = Dataset::blobs(&[old_size]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut daemon_args = args(&[
        "--block-size",
        "64KiB",
        "--metadata-ttl",
        &format!("{}s", TTL.as_secs()),
    ]);
    daemon_args.extend(s3.mount_args("/data", "ds"));
    let spawned = Instant::now();
    let daemon = Daemon::start(&daemon_args);
    (data, s3, daemon, spawned)
}

fn size(daemon: &Daemon) -> u64 {
    daemon.stat_json(PATH)["size"].as_u64().expect("stat size")
}

#[test]
fn changed_object_visible_after_ttl_or_invalidate() {
    let (data, s3, daemon, spawned) = start(1000);
    let v1 = data.read("blobs/blob_00.bin");

    assert_eq!(size(&daemon), 1000);
    assert_bytes_eq(&daemon.cat(PATH), &v1, "cat before the change");

    let v2 = random_bytes(2000, 99);
    s3.put_object(KEY, &v2);
    let written = Instant::now();
    // The cached entry was fetched after the daemon was spawned, so it is
    // fresh for at least TTL from then.
    if spawned.elapsed() < TTL {
        assert_eq!(
            size(&daemon),
            1000,
            "stat within the metadata TTL must serve the cached size"
        );
    } else {
        eprintln!(
            "skipping the within-TTL check: the overwrite came {:?} after spawn",
            spawned.elapsed()
        );
    }

    thread::sleep(
        (written + TTL + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(
        size(&daemon),
        2000,
        "stat after the TTL must show the new size"
    );
    assert_reads_new_object(&daemon, &v2);

    let v3 = random_bytes(1500, 7);
    s3.put_object(KEY, &v3);
    daemon.ctl_ok(&["invalidate", PATH]);
    assert_eq!(
        size(&daemon),
        1500,
        "stat right after invalidate must show the new size"
    );
    let got = daemon.cat(PATH);
    assert_eq!(
        sha256(&got),
        sha256(&v3),
        "read after invalidate returned {} bytes, not the new object",
        got.len()
    );
}

#[test]
fn read_during_change_never_mixes_versions() {
    let (data, s3, daemon, _) = start(200_000);
    let v1 = data.read("blobs/blob_00.bin");

    // Cache only the first block of the old version.
    let first = daemon.ctl_bytes(&["cat", "--offset", "0", "--length", "65536", PATH]);
    assert_bytes_eq(&first, &v1[..65536], "first block");

    let v2 = random_bytes(300_000, 77);
    s3.put_object(KEY, &v2);

    // Within the TTL the daemon may serve the old version or detect the change
    // and serve the new one, or fail; it must never splice the two.
    let out = daemon.ctl(&["cat", PATH]);
    if out.status.success() {
        let got = sha256(&out.stdout);
        assert!(
            got == sha256(&v1) || got == sha256(&v2),
            "read during change returned {} bytes matching neither version (old block 0 + new rest?)",
            out.stdout.len()
        );
    } else {
        eprintln!(
            "read during change failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    thread::sleep(TTL + Duration::from_secs(1));
    assert_reads_new_object(&daemon, &v2);
}

#[test]
fn added_and_deleted_objects_follow_invalidate() {
    let (data, s3, daemon, _) = start(1000);
    let listing = daemon.ctl_ok(&["ls", "/data/blobs"]);
    assert!(
        listing.contains("blob_00.bin") && !listing.contains("new.bin"),
        "ls /data/blobs:\n{listing}"
    );
    assert_bytes_eq(
        &daemon.cat(PATH),
        &data.read("blobs/blob_00.bin"),
        "cat before the change",
    );

    let new = random_bytes(70_000, 5);
    s3.put_object("ds/blobs/new.bin", &new);
    s3.delete_object(KEY);
    daemon.ctl_ok(&["invalidate", "/data"]);

    let listing = daemon.ctl_ok(&["ls", "/data/blobs"]);
    assert!(
        listing.contains("new.bin") && !listing.contains("blob_00.bin"),
        "ls /data/blobs after invalidate:\n{listing}"
    );
    assert_bytes_eq(
        &daemon.cat("/data/blobs/new.bin"),
        &new,
        "cat /data/blobs/new.bin",
    );
    let err = daemon.ctl_err(&["cat", PATH]);
    assert!(
        err.contains(PATH),
        "reading a deleted object: error does not name the path: {err:?}"
    );
}

/// A read of `PATH` after the TTL returns exactly the new object.
#[track_caller]
fn assert_reads_new_object(daemon: &Daemon, v2: &[u8]) {
    let got = daemon.cat(PATH);
    assert_eq!(
        sha256(&got),
        sha256(v2),
        "read after the TTL returned {} bytes, not the new object",
        got.len()
    );
}
