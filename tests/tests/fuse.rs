//! The FUSE view: a real mount of the daemon's namespace read with std::fs and Python, as
//! legacy training scripts do. Byte-exact walks, read-only POSIX errors, kernel timeouts
//! against UFS changes, parallel readers, and recovery from a daemon killed while mounted.
//! Every test runs twice: against the daemon's own mount (`in_daemon::`) and against the
//! thin front serving the mount from the daemon's sockets (`front::`). Every test skips with
//! a printed reason where FUSE cannot be mounted.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use loaderd_tests::{
    Dataset, FuseDaemon, FuseServer, S3Sandbox, args, assert_bytes_eq, file_mount_args,
    fuse_mounts, fuse_unavailable, random_bytes, sha256, tail,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn start(server: FuseServer, data: &Dataset, extra: &[&str]) -> Option<FuseDaemon> {
    let mut a = file_mount_args("/data", &data.root);
    a.extend(args(&["--block-size", "64KiB"]));
    a.extend(args(extra));
    match FuseDaemon::start_with(server, &a) {
        Ok(d) => Some(d),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// Every file below `root`, relative, found by walking the directory tree.
fn walk(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                assert!(
                    ft.is_file(),
                    "{} is neither file nor dir",
                    e.path().display()
                );
                let rel = e.path().strip_prefix(root).expect("below root").to_owned();
                out.insert(rel.display().to_string());
            }
        }
    }
    out
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

const EROFS: i32 = 30;
const ENOENT: i32 = 2;

fn walk_stat_and_read_match_the_source(server: FuseServer) {
    let data = Dataset::new(3, 8, &[3 * MIB + 17, 200_000, 64 * KIB, 0]);
    let Some(d) = start(server, &data, &[]) else {
        return;
    };
    let root = d.path("data");

    let want: BTreeSet<String> = data.files.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(walk(&root), want, "walk of the mount vs the source");
    let top: BTreeSet<String> = fs::read_dir(&d.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, BTreeSet::from(["data".to_string()]));

    for (rel, src) in &data.files {
        let p = root.join(rel);
        let m = fs::metadata(&p).unwrap_or_else(|e| panic!("stat {rel}: {e}"));
        let sm = fs::metadata(src).unwrap();
        assert!(m.is_file());
        assert_eq!(m.len(), sm.len(), "size of {rel}");
        assert_eq!(m.permissions().mode() & 0o7777, 0o444, "mode of {rel}");
        assert_eq!(m.mtime(), sm.mtime(), "mtime of {rel}");
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert_bytes_eq(&got, &data.read(rel), rel);
    }
    let dm = fs::metadata(root.join("blobs")).unwrap();
    assert!(dm.is_dir());
    assert_eq!(dm.permissions().mode() & 0o7777, 0o555);
    // Inode numbers are stable: the same path, the same number.
    let ino = fs::metadata(root.join("blobs/blob_01.bin")).unwrap().ino();
    assert_eq!(
        fs::metadata(root.join("blobs/blob_01.bin")).unwrap().ino(),
        ino
    );

    // Ranges that cross 64 KiB block boundaries.
    let blob = data.read("blobs/blob_00.bin");
    let mut f = fs::File::open(root.join("blobs/blob_00.bin")).unwrap();
    for (off, len) in [
        (65_530usize, 20usize),
        (0, 1),
        (MIB - 3, 200_000),
        (blob.len() - 5, 5),
    ] {
        let mut buf = vec![0; len];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf, &blob[off..off + len], "range {off}+{len}");
    }

    // Python, as a training script would read it.
    let script = format!(
        "import os,hashlib,sys\n\
         root={root:?}\n\
         names=sorted(os.listdir(os.path.join(root,'blobs')))\n\
         print(','.join(names))\n\
         print(hashlib.sha256(open(os.path.join(root,'blobs','blob_00.bin'),'rb').read()).hexdigest())\n\
         print(sum(len(fs) for _,_,fs in os.walk(root)))\n\
         s=os.statvfs(root); print(s.f_blocks>0)\n",
        root = root.display().to_string()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "blob_00.bin,blob_01.bin,blob_02.bin,blob_03.bin",
        "{text}"
    );
    assert_eq!(lines[1], sha256(&blob), "{text}");
    assert_eq!(lines[2], data.files.len().to_string(), "{text}");
    assert_eq!(
        lines[3], "True",
        "statfs reports the cache capacity: {text}"
    );

    // Read-only and missing paths.
    let existing = root.join("blobs/blob_01.bin");
    assert_eq!(errno(fs::write(root.join("new.txt"), b"x")), Some(EROFS));
    assert_eq!(errno(fs::write(&existing, b"x")), Some(EROFS));
    assert_eq!(
        errno(fs::OpenOptions::new().append(true).open(&existing)),
        Some(EROFS)
    );
    assert_eq!(errno(fs::create_dir(root.join("newdir"))), Some(EROFS));
    assert_eq!(errno(fs::remove_file(&existing)), Some(EROFS));
    assert_eq!(errno(fs::remove_dir(root.join("blobs"))), Some(EROFS));
    assert_eq!(
        errno(fs::rename(&existing, root.join("moved"))),
        Some(EROFS)
    );
    assert_eq!(
        errno(fs::set_permissions(
            &existing,
            fs::Permissions::from_mode(0o644)
        )),
        Some(EROFS)
    );
    assert_eq!(errno(fs::metadata(root.join("nope.bin"))), Some(ENOENT));
    assert_eq!(errno(fs::read(root.join("blobs/nope.bin"))), Some(ENOENT));
    assert_eq!(errno(fs::metadata(d.path("nomount/x"))), Some(ENOENT));
    assert_eq!(fs::read(&existing).unwrap(), data.read("blobs/blob_01.bin"));
    assert!(
        !d.log().contains("Not Implemented"),
        "a FUSE operation fell through to a default: {}",
        tail(&d.log(), 3000)
    );
}

fn parallel_readers_are_byte_exact(server: FuseServer) {
    let data = Dataset::new(4, 10, &[2 * MIB, 300_000, 100_000]);
    let Some(d) = start(server, &data, &["--fuse-threads", "8"]) else {
        return;
    };
    let root = d.path("data");
    let want: Vec<(String, String)> = data
        .files
        .iter()
        .map(|(rel, _)| (rel.clone(), sha256(&data.read(rel))))
        .collect();
    thread::scope(|s| {
        for t in 0..8 {
            let (root, want) = (&root, &want);
            s.spawn(move || {
                // Each thread starts at a different file so cold misses overlap.
                for i in 0..want.len() {
                    let (rel, hash) = &want[(i + t * 5) % want.len()];
                    let got = fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
                    assert_eq!(&sha256(&got), hash, "thread {t} read {rel}");
                }
            });
        }
    });
}

fn ufs_changes_appear_after_invalidate_and_kernel_timeouts(server: FuseServer) {
    let data = Dataset::blobs(&[1000]);
    let rel = "blobs/blob_00.bin";
    // Metadata trusted for a day in both; the kernel's timeouts short in one, long in the other.
    let Some(short) = start(
        server,
        &data,
        &[
            "--metadata-ttl",
            "24h",
            "--fuse-entry-timeout",
            "1s",
            "--fuse-attr-timeout",
            "1s",
        ],
    ) else {
        return;
    };
    let Some(long) = start(server, &data, &["--metadata-ttl", "24h"]) else {
        return;
    };
    let (sp, lp) = (short.path("data").join(rel), long.path("data").join(rel));
    assert_eq!(fs::read(&sp).unwrap(), data.read(rel));
    assert_eq!(fs::metadata(&lp).unwrap().len(), 1000);

    let v2 = random_bytes(2500, 42);
    fs::write(data.root.join(rel), &v2).unwrap();
    thread::sleep(Duration::from_millis(1200));
    // The kernel asked again, but the daemon's metadata is still within its TTL.
    assert_eq!(
        fs::metadata(&sp).unwrap().len(),
        1000,
        "seen before invalidate"
    );

    short.ctl_ok(&["invalidate", "/data"]);
    long.ctl_ok(&["invalidate", "/data"]);
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        fs::metadata(&sp).unwrap().len(),
        2500,
        "not seen after invalidate + timeout"
    );
    assert_bytes_eq(
        &fs::read(&sp).unwrap(),
        &v2,
        "new version through the mount",
    );
    // The long kernel timeout still answers from its own cache.
    assert_eq!(
        fs::metadata(&lp).unwrap().len(),
        1000,
        "long attr timeout ignored"
    );

    // SIGTERM while a file on the mount is open: the busy mount is detached lazily and
    // the daemon still exits cleanly.
    let (mut short, mut long) = (short, long);
    let held = fs::File::open(&sp).unwrap();
    short.stop();
    assert_eq!(fuse_mounts(&short.mnt), 0, "busy mount left behind");
    drop(held);
    long.stop();
    assert_eq!(fuse_mounts(&long.mnt), 0);
}

/// The process serving the mount (the daemon, or the front) killed and started again.
fn a_killed_daemon_leaves_a_stale_mount_that_the_next_start_clears(server: FuseServer) {
    let data = Dataset::blobs(&[300_000]);
    let rel = "data/blobs/blob_00.bin";
    let Some(mut d) = start(server, &data, &[]) else {
        return;
    };
    assert_eq!(
        fs::read(d.path(rel)).unwrap(),
        data.read("blobs/blob_00.bin")
    );

    d.kill9();
    assert_eq!(fuse_mounts(&d.mnt), 1, "the mount outlives its daemon");
    // ENOTCONN, or ECONNABORTED when the kernel aborts the connection while the request is
    // queued: both say the daemon is gone.
    let dead = errno(fs::read_dir(&d.mnt));
    assert!(
        matches!(dead, Some(107 | 103)),
        "a dead mount answers ENOTCONN: {dead:?}"
    );

    d.restart();
    assert_eq!(fuse_mounts(&d.mnt), 1, "stale mount replaced, not stacked");
    assert!(
        d.log().contains("stale FUSE mount"),
        "{}",
        tail(&d.log(), 2000)
    );
    assert_eq!(
        fs::read(d.path(rel)).unwrap(),
        data.read("blobs/blob_00.bin")
    );

    // SIGTERM unmounts cleanly.
    d.stop();
    assert_eq!(fuse_mounts(&d.mnt), 0, "still mounted after SIGTERM");
    assert!(d.log().contains("FUSE view unmounted"));
}

fn ufs_failures_are_eio_and_name_the_path(server: FuseServer) {
    if let Some(reason) = fuse_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let data = Dataset::blobs(&[100_000, 100_000]);
    let mut s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut a = args(&["--ufs-timeout", "2s", "--ufs-retries", "1"]);
    a.extend(s3.mount_args("/data", "ds"));
    let d = match FuseDaemon::start_with(server, &a) {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };
    let (cached, uncached) = (
        d.path("data/blobs/blob_00.bin"),
        d.path("data/blobs/blob_01.bin"),
    );
    assert_eq!(fs::read(&cached).unwrap(), data.read("blobs/blob_00.bin"));
    assert_eq!(fs::metadata(&uncached).unwrap().len(), 100_000);

    s3.stop();
    assert_eq!(errno(fs::read(&uncached)), Some(5), "EIO while S3 is down");
    let log = d.log();
    assert!(
        log.contains("FUSE request failed") && log.contains("/data/blobs/blob_01.bin"),
        "no warning naming the path: {}",
        tail(&log, 3000)
    );
    // Cached data is still served; after the outage everything is.
    assert_eq!(fs::read(&cached).unwrap(), data.read("blobs/blob_00.bin"));
    s3.restart();
    assert_eq!(fs::read(&uncached).unwrap(), data.read("blobs/blob_01.bin"));
}

loaderd_tests::against_both_fuse_servers!(
    walk_stat_and_read_match_the_source,
    parallel_readers_are_byte_exact,
    ufs_changes_appear_after_invalidate_and_kernel_timeouts,
    a_killed_daemon_leaves_a_stale_mount_that_the_next_start_clears,
    ufs_failures_are_eio_and_name_the_path,
);
