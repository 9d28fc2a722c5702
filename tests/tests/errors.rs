//! Failures are reported clearly and bounded in time, and the daemon keeps
//! serving through a UFS outage.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loaderd_tests::{BlackHole, Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, bin, sha256};

#[test]
fn missing_paths_are_errors_naming_the_path() {
    let data = Dataset::blobs(&[1000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut daemon_args = args(&[]);
    daemon_args.extend(s3.mount_args("/data", "ds"));
    let daemon = Daemon::start(&daemon_args);

    let err = daemon.ctl_err(&["cat", "/data/nope"]);
    assert!(
        err.contains("/data/nope"),
        "cat error does not name the path: {err:?}"
    );
    let err = daemon.ctl_err(&["stat", "/data/nope"]);
    assert!(
        err.contains("/data/nope"),
        "stat error does not name the path: {err:?}"
    );
    let err = daemon.ctl_err(&["ls", "/nomount"]);
    assert!(
        err.contains("/nomount"),
        "ls error does not name the path: {err:?}"
    );
    let err = daemon.ctl_err(&["cat", "/nomount/file"]);
    assert!(
        err.contains("/nomount/file"),
        "cat error does not name the path: {err:?}"
    );

    // Errors do not disturb the daemon.
    daemon.ctl_ok(&["status"]);
    assert_bytes_eq(
        &daemon.cat("/data/blobs/blob_00.bin"),
        &data.read("blobs/blob_00.bin"),
        "cat /data/blobs/blob_00.bin",
    );
}

/// Upper bound for a failed read with `--ufs-timeout 2s --ufs-retries 1`:
/// two attempts of 2 s each (metadata and data may each need them) plus
/// backoff and process start-up.
const FAIL_WITHIN: Duration = Duration::from_secs(12);

fn spawn_cat(daemon: &Daemon, path: &str) -> Child {
    Command::new(bin("loaderctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cat", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loaderctl cat")
}

/// Two mounts of the same bucket: `/warm` has its metadata cached before the
/// outage (so reads fail on GET), `/cold` does not (reads fail on LIST/HEAD).
#[test]
fn ufs_outage_fails_within_timeout_and_recovers() {
    let data = Dataset::blobs(&[300_000, 200_000]);
    let mut s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mut daemon_args = args(&[
        "--block-size",
        "64KiB",
        "--ufs-timeout",
        "2s",
        "--ufs-retries",
        "1",
    ]);
    daemon_args.extend(s3.mount_args("/warm", "ds"));
    daemon_args.extend(s3.mount_args("/cold", "ds"));
    let daemon = Daemon::start(&daemon_args);
    for (rel, _) in &data.files {
        daemon.ctl_ok(&["stat", &format!("/warm/{rel}")]);
    }
    // Error messages that fail to name the logical path; checked last so the
    // timing and recovery checks still run.
    let mut unnamed = Vec::new();

    // Server gone: connections are refused.
    s3.stop();
    for path in ["/warm/blobs/blob_00.bin", "/cold/blobs/blob_00.bin"] {
        let began = Instant::now();
        let err = daemon.ctl_err(&["cat", path]);
        assert!(
            began.elapsed() < FAIL_WITHIN,
            "cat {path} with the UFS down took {:?}",
            began.elapsed()
        );
        if !err.contains(path) {
            unnamed.push(format!("cat {path} (UFS down): {}", first_line(&err)));
        }
        daemon.ctl_ok(&["status"]);
    }

    // Server hangs: connections are accepted and never answered. Reads must
    // give up after the UFS timeout, and the daemon must keep answering
    // other requests meanwhile.
    let hole = BlackHole::bind(s3.port);
    let began = Instant::now();
    let paths = ["/warm/blobs/blob_01.bin", "/cold/blobs/blob_01.bin"];
    let readers: Vec<Child> = paths.iter().map(|p| spawn_cat(&daemon, p)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let status_began = Instant::now();
    daemon.ctl_ok(&["status"]);
    assert!(
        status_began.elapsed() < Duration::from_secs(2),
        "status took {:?} while reads hung on the UFS",
        status_began.elapsed()
    );
    for (path, reader) in paths.iter().zip(readers) {
        let out = reader.wait_with_output().expect("wait for loaderctl cat");
        let took = began.elapsed();
        assert!(
            !out.status.success(),
            "cat {path} from a hanging UFS succeeded"
        );
        assert!(
            took < FAIL_WITHIN,
            "cat {path} from a hanging UFS took {took:?} (timeout 2s, 1 retry)"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains(path) {
            unnamed.push(format!("cat {path} (UFS hangs): {}", first_line(&err)));
        }
    }
    drop(hole);
    daemon.ctl_ok(&["status"]);

    // Server back on the same port: reads succeed, byte-exact, in both mounts.
    s3.restart();
    for point in ["/warm", "/cold"] {
        for (rel, _) in &data.files {
            let got = daemon.cat(&format!("{point}/{rel}"));
            assert_eq!(
                sha256(&got),
                sha256(&data.read(rel)),
                "cat {point}/{rel} after the UFS recovered"
            );
        }
    }
    assert!(
        unnamed.is_empty(),
        "UFS errors do not name the logical path:\n{}",
        unnamed.join("\n")
    );
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `loaderctl` run by a user the socket's 0660 mode keeps out says so, and names the group
/// that grants access; a member of that group then gets in. Needs root (to switch users with
/// `setpriv`); skips otherwise.
#[test]
fn a_permission_denied_socket_names_the_group_that_grants_access() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv to run loaderctl as another user");
        return;
    }
    // Group `daemon` (gid 1) owns the socket: the message must name it, not the owner.
    let daemon = Daemon::start(&args(&["--socket-group", "daemon"]));
    // Only the socket's own mode may keep the user out: open the daemon's private directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the daemon's directory");
    let as_user = |gid: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ])
            .arg(bin("loaderctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("status")
            .stdin(Stdio::null())
            .output()
            .expect("run loaderctl under setpriv")
    };

    let out = as_user("65534");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody reached a 0660 socket: {err}");
    assert!(
        err.contains("permission denied") && err.contains("group daemon"),
        "the error does not say permission denied and name group daemon: {err}"
    );
    assert!(
        !err.contains("is the daemon running"),
        "the error blames a stopped daemon: {err}"
    );

    let out = as_user("1");
    assert!(
        out.status.success(),
        "a member of group daemon was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.ctl_ok(&["status"]);
}
