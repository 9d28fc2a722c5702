//! Never mixed versions: a 10 MiB object replaced while a read of it is under way yields
//! exactly the old bytes or a clear "object changed during the read" error — on S3 (moto) and
//! `file://`, after `invalidate` and after the metadata TTL expires, over shared memory with
//! gRPC fallback pieces, over gRPC alone, over FUSE, for a file read in ranges, and for the
//! pipeline's tar members (read at the shard version their offsets were indexed from).
//!
//! The read is slow for real: `loaderctl cat` writes into a pipe this test drains only after
//! the change, and a 4 MiB memory tier leaves most of the object to fallback pieces that the
//! client reads after the mapped ones, so they are requested after the change.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use loaderd_tests::{
    Daemon, Dataset, FuseDaemon, S3Sandbox, args, assert_bytes_eq, bin, clean_env, file_mount_args,
    random_bytes, sha256,
};

const MIB: usize = 1 << 20;
const SIZE: usize = 10 * MIB;
const REL: &str = "blobs/blob_00.bin";
const PATH: &str = "/data/blobs/blob_00.bin";
const TTL: Duration = Duration::from_secs(2);
const CAT_TIMEOUT: Duration = Duration::from_secs(120);
/// Linux's errno for a file whose version is gone under an open handle.
const ESTALE: i32 = 116;

/// How the daemon learns about the change while the read runs.
#[derive(Debug, Clone, Copy)]
enum Change {
    Invalidate,
    TtlExpiry,
}

struct Setup {
    data: Dataset,
    /// Where the object lives: S3, or (`None`) the dataset directory mounted as `file://`.
    s3: Option<S3Sandbox>,
    daemon: Daemon,
}

impl Setup {
    /// A daemon over one 10 MiB object with 1 MiB blocks, a 4 MiB memory tier (most of the
    /// object is read as fallback pieces over shared memory) and a short metadata TTL.
    fn start(s3: bool, extra: &[&str]) -> Setup {
        let data = Dataset::blobs(&[SIZE]);
        let mut daemon_args = args(&[
            "--block-size",
            "1MiB",
            "--memory-capacity",
            "4MiB",
            "--metadata-ttl",
            &format!("{}s", TTL.as_secs()),
        ]);
        daemon_args.extend(args(extra));
        let s3 = if s3 {
            let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
            daemon_args.extend(s3.mount_args("/data", "ds"));
            Some(s3)
        } else {
            daemon_args.extend(file_mount_args("/data", &data.root));
            None
        };
        let daemon = Daemon::start(&daemon_args);
        Setup { data, s3, daemon }
    }

    fn old(&self) -> Vec<u8> {
        self.data.read(REL)
    }

    /// Replaces the object with `new` (same size, other bytes) in its store.
    fn replace(&self, new: &[u8]) {
        match &self.s3 {
            Some(s3) => s3.put_object(&format!("ds/{REL}"), new),
            None => {
                // A new file renamed over the old one: the old inode's bytes stay whole, and
                // the new file's modification time differs (the version of a file:// object).
                thread::sleep(Duration::from_millis(20));
                let dst = self.data.root.join(REL);
                let tmp = dst.with_extension("tmp");
                fs::write(&tmp, new).expect("write the new version");
                fs::rename(&tmp, &dst).expect("rename the new version into place");
            }
        }
    }

    /// Replaces the object and makes the daemon see it (invalidate, or wait out the TTL).
    fn change(&self, how: Change, new: &[u8]) {
        self.replace(new);
        match how {
            Change::Invalidate => {
                self.daemon.ctl_ok(&["invalidate", PATH]);
            }
            Change::TtlExpiry => thread::sleep(TTL + Duration::from_millis(1500)),
        }
    }

    fn version(&self) -> String {
        self.daemon.stat_json(PATH)["version"]
            .as_str()
            .expect("stat version")
            .to_string()
    }
}

/// `loaderctl cat` writing into a pipe that the test drains at its own pace.
struct SlowCat {
    child: Child,
    stdout: ChildStdout,
    stderr: thread::JoinHandle<Vec<u8>>,
}

impl SlowCat {
    fn start(socket: &Path, cat_args: &[&str]) -> SlowCat {
        let mut child = clean_env(&mut Command::new(bin("loaderctl")))
            .arg("--socket")
            .arg(socket)
            .arg("cat")
            .args(cat_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn loaderctl cat");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        });
        SlowCat {
            child,
            stdout,
            stderr,
        }
    }

    /// The first `n` bytes (the read is then blocked on the full pipe).
    fn read_prefix(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.stdout
            .read_exact(&mut buf)
            .expect("read the first bytes of cat");
        buf
    }

    /// Everything else, the exit status and stderr; kills a cat that runs past the limit.
    fn finish(mut self, mut got: Vec<u8>) -> (Vec<u8>, ExitStatus, String) {
        let pid = self.child.id();
        let deadline = Instant::now() + CAT_TIMEOUT;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if rx.recv_timeout(CAT_TIMEOUT).is_err() {
                // Still running: end it so the test reports instead of hanging.
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        });
        let _ = self.stdout.read_to_end(&mut got);
        let status = self.child.wait().expect("wait for cat");
        let _ = tx.send(());
        let _ = watchdog.join();
        assert!(
            Instant::now() < deadline,
            "loaderctl cat did not finish within {CAT_TIMEOUT:?}"
        );
        let stderr = String::from_utf8_lossy(&self.stderr.join().unwrap_or_default()).into_owned();
        (got, status, stderr)
    }
}

/// The read is all of one version, or failed naming the change. Returns whether it failed.
fn assert_one_version(
    what: &str,
    old: &[u8],
    got: &[u8],
    status: ExitStatus,
    stderr: &str,
) -> bool {
    if status.success() {
        assert_eq!(
            (got.len(), sha256(got)),
            (old.len(), sha256(old)),
            "{what}: exit 0 with bytes that are not exactly the old version ({} of the first {} bytes match it)",
            got.iter().zip(old).take_while(|(a, b)| a == b).count(),
            got.len()
        );
        false
    } else {
        assert!(
            stderr.contains("object changed during the read") && stderr.contains(PATH),
            "{what}: failed without saying the object changed: {stderr}"
        );
        assert!(
            got.len() < old.len() && got[..] == old[..got.len()],
            "{what}: the bytes written before the error are not a prefix of the old version"
        );
        true
    }
}

/// One slow `cat` with the object changed after its first MiB was consumed.
fn slow_read_during_change(s3: bool, how: Change, cat_args: &[&str]) -> bool {
    let setup = Setup::start(s3, &[]);
    let old = setup.old();
    let new = random_bytes(SIZE, 4242);
    let mut all = cat_args.to_vec();
    all.push(PATH);
    let mut cat = SlowCat::start(&setup.daemon.socket, &all);
    let first = cat.read_prefix(MIB);
    assert_bytes_eq(&first, &old[..MIB], "first MiB, read before the change");
    setup.change(how, &new);
    let (got, status, stderr) = cat.finish(first);
    let what = format!(
        "cat {cat_args:?} on {} with {how:?}",
        if s3 { "S3" } else { "file://" }
    );
    let failed = assert_one_version(&what, &old, &got, status, &stderr);
    // Afterwards a fresh read gets the new version, whole.
    assert_bytes_eq(
        &setup.daemon.cat(PATH),
        &new,
        &format!("{what}: read after"),
    );
    failed
}

/// The fallback pieces (6 of the 10 MiB) are requested after the change and the old version
/// is gone from the store and from the cache: the read must fail, not splice.
fn shm_read_with_fallback_pieces_fails(s3: bool) {
    for how in [Change::Invalidate, Change::TtlExpiry] {
        assert!(
            slow_read_during_change(s3, how, &[]),
            "{how:?}: the old version's fallback pieces cannot exist any more, yet cat succeeded"
        );
    }
}

#[test]
fn shm_read_with_fallback_pieces_never_mixes_on_s3() {
    shm_read_with_fallback_pieces_fails(true);
}

#[test]
fn shm_read_with_fallback_pieces_never_mixes_on_file_mount() {
    shm_read_with_fallback_pieces_fails(false);
}

#[test]
fn grpc_read_never_mixes() {
    for s3 in [true, false] {
        for how in [Change::Invalidate, Change::TtlExpiry] {
            // One stream of one version: old bytes (already fetched or cached) or an error.
            slow_read_during_change(s3, how, &["--no-shm"]);
        }
    }
}

#[test]
fn ranges_pinned_to_a_version_fail_once_it_changed() {
    for s3 in [true, false] {
        let setup = Setup::start(s3, &[]);
        let old = setup.old();
        let v1 = setup.version();
        let mib = MIB.to_string();
        let first = setup
            .daemon
            .ctl_bytes(&["cat", "--length", &mib, "--if-version", &v1, PATH]);
        assert_bytes_eq(&first, &old[..MIB], "first range at the pinned version");
        let new = random_bytes(SIZE, 77);
        setup.change(Change::Invalidate, &new);
        let v2 = setup.version();
        assert_ne!(v1, v2, "the replaced object must have a new version");
        for cat_args in [
            vec!["cat", "--offset", &mib, "--if-version", &v1, PATH],
            vec![
                "cat",
                "--no-shm",
                "--offset",
                &mib,
                "--if-version",
                &v1,
                PATH,
            ],
        ] {
            let err = setup.daemon.ctl_err(&cat_args);
            let want = format!("object changed during the read: {PATH} (version {v1} → {v2})");
            assert!(
                err.contains(&want),
                "{cat_args:?}: stderr {err:?}, want {want:?}"
            );
        }
        let rest = setup
            .daemon
            .ctl_bytes(&["cat", "--offset", &mib, "--if-version", &v2, PATH]);
        assert_bytes_eq(&rest, &new[MIB..], "rest at the new version");
    }
}

#[test]
fn fuse_reads_never_mix_versions() {
    let data = Dataset::blobs(&[SIZE]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut daemon_args = args(&[
        "--block-size",
        "1MiB",
        "--memory-capacity",
        "64MiB",
        // The kernel keeps the old attributes: only the daemon can tell it the file changed.
        "--fuse-attr-timeout",
        "60s",
        "--fuse-entry-timeout",
        "60s",
    ]);
    daemon_args.extend(s3.mount_args("/data", "ds"));
    let fuse = match FuseDaemon::start(&daemon_args) {
        Ok(f) => f,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };
    let old = data.read(REL);
    let file = fuse.path(&format!("data/{REL}"));

    // An open file keeps reading its version, or fails (ESTALE); never the new bytes.
    let mut f = fs::File::open(&file).expect("open through FUSE");
    let mut got = vec![0u8; MIB];
    f.read_exact(&mut got).expect("first MiB through FUSE");
    assert_bytes_eq(&got, &old[..MIB], "first MiB through FUSE");
    let new = random_bytes(SIZE, 99);
    s3.put_object(&format!("ds/{REL}"), &new);
    fuse.daemon.ctl_ok(&["invalidate", PATH]);
    match f.read_to_end(&mut got) {
        Ok(_) => assert_bytes_eq(&got, &old, "an open FUSE file read across the change"),
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(ESTALE),
                "error of the open file: {e}"
            );
            assert_eq!(got[..], old[..got.len()], "bytes before the error");
        }
    }
    drop(f);

    // A new open sees the new version whole: the kernel's cached pages of the old one (the
    // first MiB at least) are dropped, not joined with the new bytes.
    let reread = fs::read(&file).expect("read the new version through FUSE");
    assert_bytes_eq(&reread, &new, "a new open after the change");
}

/// Writes a WebDataset shard of `n` solid 32×32 PNGs (stored uncompressed, so every member
/// has the same size and both versions of the shard the same layout): sample `i` is
/// RGB `(i * 5, 100, blue)` with label `i + label_base`.
fn write_shard(path: &Path, n: usize, blue: u8, label_base: usize) {
    let script = r#"
import io, struct, sys, tarfile, zlib
path, n, blue, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def png(rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * 32 for _ in range(32))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))
with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as t:
    for i in range(n):
        for name, data in ((f"s{i:03}.png", png((i * 5, 100, blue))), (f"s{i:03}.cls", str(i + base).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
import os
os.rename(path + ".tmp", path)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .args([n.to_string(), blue.to_string(), label_base.to_string()])
        .status()
        .expect("run python3 to write a shard");
    assert!(status.success(), "writing the shard failed");
}

#[test]
fn pipeline_reads_tar_members_of_the_indexed_shard_version() {
    use loaderctl::client::shm::BatchClient;
    use loaderd_proto::v1 as pb;

    const N: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = dir.path().join("shard-000.tar");
    write_shard(&shard, N, 200, 0);
    let daemon = Daemon::start(&file_mount_args("/ds", dir.path()));
    // One sample per batch, one worker, one slot: most members are read after the change.
    let mut loader = BatchClient::open(
        &daemon.dir().join("loaderd.shm.sock"),
        pb::OpenLoader {
            dataset: "/ds".into(),
            batch_size: 1,
            size: 32,
            depth: 1,
            workers: 1,
            no_shuffle: true,
            on_error: pb::OnSampleError::Fail as i32,
            name: "versions test".into(),
            ..Default::default()
        },
    )
    .expect("open a loader over the shard");
    let first = loader.next_batch().expect("first batch").expect("a batch");
    assert_eq!(first.labels, [0], "first sample");
    // The same layout with other pixels and labels: the old index's offsets stay plausible.
    thread::sleep(Duration::from_millis(20));
    write_shard(&shard, N, 50, 100);
    daemon.ctl_ok(&["invalidate", "/ds"]);
    let mut delivered = 1;
    let end = loop {
        match loader.next_batch() {
            Ok(Some(b)) => {
                let (label, pixel) = (b.labels[0], &b.data[..3]);
                assert!(
                    label < N as i64 && pixel[2] > 150,
                    "sample with label {label} has pixels {pixel:?} of the rewritten shard: \
                     a member was read at offsets indexed from the old version"
                );
                delivered += 1;
            }
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let err = end.unwrap_or_else(|| {
        panic!("all {delivered} samples delivered although the shard changed after the first")
    });
    assert!(
        err.contains("object changed during the read") && err.contains("shard-000.tar"),
        "the loader failed without naming the change: {err}"
    );
}
