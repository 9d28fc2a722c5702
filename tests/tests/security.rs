//! The control socket is private, secrets are never echoed, and paths cannot
//! escape a mount.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use loaderd_tests::{
    Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, bin, file_mount_args, free_port,
    output_with_timeout,
};

const SECRET: &str = "s3cr3t-value";

#[test]
fn control_socket_has_no_permissions_for_others() {
    let daemon = Daemon::start(&[]);
    let mode = fs::metadata(&daemon.socket)
        .expect("socket metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o007,
        0,
        "socket {} has mode {mode:o}",
        daemon.socket.display()
    );
}

#[test]
fn secret_key_is_never_printed() {
    let data = Dataset::blobs(&[1000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let mount = s3.mount_args_with_secret("/data", "ds", SECRET);
    let mut daemon_args = args(&["--log-level", "debug", "--allowed-endpoint", &s3.endpoint]);
    daemon_args.extend(mount.clone());
    let daemon = Daemon::start(&daemon_args);

    // The secret is in use (moto accepts any) ...
    assert_bytes_eq(
        &daemon.cat("/data/blobs/blob_00.bin"),
        &data.read("blobs/blob_00.bin"),
        "cat /data/blobs/blob_00.bin",
    );

    // ... including for a mount added at run time ...
    let other = "an0ther-s3cr3t";
    let mut add = vec![
        "mount".to_string(),
        "add".into(),
        "/more".into(),
        s3.uri("ds"),
    ];
    for (key, value) in s3.options_with_secret(other) {
        add.push("-o".into());
        add.push(format!("{key}={value}"));
    }
    daemon.ctl_ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
    assert_bytes_eq(
        &daemon.cat("/more/blobs/blob_00.bin"),
        &data.read("blobs/blob_00.bin"),
        "cat /more/blobs/blob_00.bin",
    );

    // ... but never shown.
    let status = daemon.ctl_ok(&["status", "--json"]);
    let plain = daemon.ctl_ok(&["status"]);
    let mounts = daemon.ctl_ok(&["mount", "ls"]);
    for (what, text) in [
        ("status --json", &status),
        ("status", &plain),
        ("mount ls", &mounts),
    ] {
        assert!(
            !text.contains(SECRET) && !text.contains(other),
            "{what} prints the secret key:\n{text}"
        );
    }
    assert!(
        status.contains("/data") && status.contains("/more"),
        "status --json lists no mounts:\n{status}"
    );
    let metrics = daemon.metrics();
    assert!(
        !metrics.contains(SECRET) && !metrics.contains(other),
        "/metrics shows the secret key"
    );
    let log = daemon.log();
    assert!(
        !log.contains(SECRET) && !log.contains(other),
        "the daemon log contains the secret key"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let out = output_with_timeout(
        Command::new(bin("loaderd"))
            .arg("--print-config")
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .args(&mount),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "--print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("/data"),
        "--print-config shows no mount:\n{printed}"
    );
    assert!(
        !printed.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET),
        "--print-config prints the secret key:\n{printed}"
    );
}

#[test]
fn dot_dot_paths_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = dir.path().join("inner");
    fs::create_dir_all(inner.join("sub")).expect("mkdir");
    fs::write(inner.join("sub/ok.txt"), b"inside the mount").expect("write");
    let outside = "outside the mount: must not be readable";
    fs::write(dir.path().join("outside.txt"), outside).expect("write");
    let daemon = Daemon::start(&file_mount_args("/files", &inner));

    assert_bytes_eq(
        &daemon.cat("/files/sub/ok.txt"),
        b"inside the mount",
        "cat /files/sub/ok.txt",
    );
    for path in [
        "/files/../outside.txt",
        "/files/sub/../../outside.txt",
        "/files/sub/../../../etc/passwd",
    ] {
        let out = daemon.ctl(&["cat", path]);
        assert!(!out.status.success(), "cat {path} succeeded");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(outside),
            "cat {path} escaped the mount"
        );
        let out = daemon.ctl(&["stat", path]);
        assert!(!out.status.success(), "stat {path} succeeded");
    }
    let out = daemon.ctl(&["ls", "/files/.."]);
    assert!(
        !out.status.success(),
        "ls /files/.. succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn dot_dot_paths_cannot_leave_an_s3_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = dir.path().join("mounted");
    let private = dir.path().join("private");
    fs::create_dir_all(&mounted).expect("mkdir");
    fs::create_dir_all(&private).expect("mkdir");
    fs::write(mounted.join("ok.txt"), b"inside the mount").expect("write");
    let outside = "another prefix of the bucket: must not be readable";
    fs::write(private.join("key.txt"), outside).expect("write");
    // A sibling prefix that shares the mounted prefix as a string prefix.
    let s3 = S3Sandbox::start(&[(&mounted, "ds"), (&private, "ds-private")]);
    let daemon = Daemon::start(&s3.mount_args("/data", "ds"));

    assert_bytes_eq(
        &daemon.cat("/data/ok.txt"),
        b"inside the mount",
        "cat /data/ok.txt",
    );
    let listing = daemon.ctl_ok(&["ls", "-R", "/data"]);
    assert!(
        !listing.contains("key.txt"),
        "ls -R /data lists a sibling prefix:\n{listing}"
    );
    let out = daemon.ctl(&["cat", "/data-private/key.txt"]);
    assert!(!out.status.success(), "cat /data-private/key.txt succeeded");
    for path in [
        "/data/../ds-private/key.txt",
        "/data/x/../../ds-private/key.txt",
        "/data/../../ds-private/key.txt",
    ] {
        let out = daemon.ctl(&["cat", path]);
        assert!(!out.status.success(), "cat {path} succeeded");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(outside),
            "cat {path} read outside the mounted prefix"
        );
    }
    for path in ["/data/..", "/data/../ds-private"] {
        let out = daemon.ctl(&["ls", path]);
        assert!(
            !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("key.txt"),
            "ls {path} listed outside the mounted prefix: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
