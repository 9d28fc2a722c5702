//! Authorization, attacked as a local user would: a member of the socket's group who is not
//! an admin, a client of the TCP API without the token, a runtime mount that points the
//! daemon's credentials at a listener, and any local user reading the FUSE view.
//!
//! The tests run as root; the unprivileged caller is `setpriv --reuid=65534 --regid=65534`
//! (nobody/nogroup), with the daemon's socket group set to 65534.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use loaderd_tests::{
    Daemon, FuseDaemon, FuseServer, args, bin, clean_env, file_mount_args, file_uri, free_port,
    tail, wait_until,
};

const NOBODY: &str = "65534";
/// A gid with no name: the admin group of these tests.
const ADMIN_GID: &str = "4242";

/// Whether this machine lets the tests act as another user.
fn can_switch_users() -> bool {
    let root = nix_is_root();
    if !root {
        eprintln!("skipping: the tests need root to act as an unprivileged user");
    }
    root
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}

/// `setpriv` arguments running a command as nobody, in `groups` (none when empty).
fn as_user(groups: &[&str]) -> Vec<String> {
    let mut a = args(&["setpriv", "--reuid", NOBODY, "--regid", NOBODY]);
    if groups.is_empty() {
        a.push("--clear-groups".into());
    } else {
        a.push(format!("--groups={}", groups.join(",")));
    }
    a
}

/// `loaderctl --socket S ARGS...` run as nobody in `groups`.
fn ctl_as(daemon: &Daemon, groups: &[&str], ctl: &[&str]) -> Output {
    let user = as_user(groups);
    clean_env(&mut Command::new(&user[0]))
        .args(&user[1..])
        .arg(bin("loaderctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(ctl)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv loaderctl")
}

fn text(out: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)]),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A daemon whose socket nobody's group (65534) may use, with admins in [`ADMIN_GID`].
fn group_daemon(extra: &[&str]) -> Daemon {
    let mut a = args(&["--socket-group", "nogroup", "--admin-group", ADMIN_GID]);
    a.extend(args(extra));
    let daemon = Daemon::start(&a);
    // The daemon's private directory holds the socket; let others reach it (the socket
    // itself stays 0660, group nogroup).
    fs::set_permissions(daemon.dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    daemon
}

#[test]
fn a_socket_group_member_reads_but_cannot_mount_free_or_invalidate() {
    if !can_switch_users() {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    fs::write(data.path().join("a.txt"), b"dataset bytes").expect("write");
    let allowed = tempfile::tempdir().expect("tempdir");
    let root = allowed.path().display().to_string();
    let mut extra = file_mount_args("/data", data.path());
    extra.extend(args(&["--allowed-root", &root]));
    let daemon = group_daemon(&extra.iter().map(String::as_str).collect::<Vec<_>>());

    // Data calls work for a plain member of the socket's group.
    let out = ctl_as(&daemon, &[NOBODY], &["cat", "/data/a.txt"]);
    assert!(
        out.status.success(),
        "cat as a group member: {}",
        text(&out)
    );
    assert_eq!(out.stdout, b"dataset bytes");
    let out = ctl_as(&daemon, &[NOBODY], &["status"]);
    assert!(
        out.status.success(),
        "status as a group member: {}",
        text(&out)
    );

    // The attack of the report: mount /etc and read /etc/shadow through the root daemon.
    let out = ctl_as(&daemon, &[NOBODY], &["mount", "add", "/etc", "file:///etc"]);
    assert!(
        !out.status.success(),
        "mount add by a non-admin: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mount add needs an admin caller")
            && err.contains("uid 0")
            && err.contains(ADMIN_GID)
            && err.contains("uid 65534"),
        "the refusal does not name the rule: {err}"
    );
    let out = ctl_as(&daemon, &[NOBODY], &["cat", "/etc/shadow"]);
    assert!(!out.status.success(), "cat /etc/shadow: {}", text(&out));
    // Refused for the role, not the roots: the same user cannot mount an allowed root.
    let out = ctl_as(
        &daemon,
        &[NOBODY],
        &["mount", "add", "/ok", &file_uri(allowed.path())],
    );
    assert!(
        !out.status.success(),
        "mount add by a non-admin: {}",
        text(&out)
    );
    for cmd in [
        &["mount", "rm", "/data"][..],
        &["free", "/data"],
        &["invalidate", "/data"],
    ] {
        let out = ctl_as(&daemon, &[NOBODY], cmd);
        assert!(
            !out.status.success(),
            "{cmd:?} by a non-admin: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs an admin caller"),
            "{cmd:?}: {}",
            text(&out)
        );
    }
    assert!(
        daemon.ctl_ok(&["mount", "ls"]).contains("/data"),
        "the mount was removed"
    );
    assert!(
        daemon.metric("loaderd_requests_refused_total{reason=\"not_admin\"}") >= 5.0,
        "refusals are not counted:\n{}",
        daemon.metrics()
    );

    // A member of the admin group may.
    let out = ctl_as(
        &daemon,
        &[NOBODY, ADMIN_GID],
        &["mount", "add", "/ok", &file_uri(allowed.path())],
    );
    assert!(
        out.status.success(),
        "mount add by an admin-group member: {}",
        text(&out)
    );
    let out = ctl_as(&daemon, &[NOBODY, ADMIN_GID], &["invalidate", "/data"]);
    assert!(
        out.status.success(),
        "invalidate by an admin: {}",
        text(&out)
    );
}

#[test]
fn runtime_file_mounts_only_under_allowed_roots_after_resolving_symlinks() {
    let allowed = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(allowed.path().join("ds")).expect("mkdir");
    fs::write(allowed.path().join("ds/x.txt"), b"inside").expect("write");
    fs::write(outside.path().join("secret.txt"), b"outside the roots").expect("write");
    symlink("/etc", allowed.path().join("etc-link")).expect("symlink");
    symlink(outside.path(), allowed.path().join("out-link")).expect("symlink");
    // Links inside a mounted directory: to a file outside the roots, to /etc/shadow, and to
    // a file inside the roots (which stays readable).
    let ds = allowed.path().join("ds");
    symlink(
        outside.path().join("secret.txt"),
        ds.join("secret-link.txt"),
    )
    .expect("symlink");
    symlink("/etc/shadow", ds.join("shadow")).expect("symlink");
    symlink(ds.join("x.txt"), ds.join("x-link.txt")).expect("symlink");

    // No roots configured: no runtime file:// mount at all, even for root.
    let none = Daemon::start(&[]);
    let err = none.ctl_err(&["mount", "add", "/etc", "file:///etc"]);
    assert!(err.contains("allowed_roots"), "{err}");
    let err = none.ctl_err(&["mount", "add", "/ds", &file_uri(&allowed.path().join("ds"))]);
    assert!(err.contains("allowed_roots"), "{err}");

    let root = allowed.path().display().to_string();
    let daemon = Daemon::start(&args(&["--allowed-root", &root]));
    let base = file_uri(allowed.path());
    for (point, uri) in [
        ("/etc", "file:///etc".to_string()),
        ("/l", format!("{base}/etc-link")),
        ("/o", format!("{base}/out-link")),
        ("/up", format!("{base}/ds/../..")),
    ] {
        let err = daemon.ctl_err(&["mount", "add", point, &uri]);
        assert!(
            err.contains("not under mounts.allowed_roots"),
            "mount add {uri}: {err}"
        );
    }
    for path in ["/etc/shadow", "/l/shadow", "/o/secret.txt"] {
        daemon.ctl_err(&["cat", path]);
    }
    daemon.ctl_ok(&["mount", "add", "/ds", &format!("{base}/ds")]);
    assert_eq!(daemon.cat("/ds/x.txt"), b"inside");
    assert_eq!(daemon.cat("/ds/x-link.txt"), b"inside");
    for path in ["/ds/secret-link.txt", "/ds/shadow"] {
        let out = daemon.ctl(&["cat", path]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "cat {path} read through a symlink out of the roots: {}",
            text(&out)
        );
        daemon.ctl_err(&["cat", "--no-shm", path]);
    }
    let listing = daemon.ctl_ok(&["ls", "-R", "/ds"]);
    assert!(
        !listing.contains("secret-link") && !listing.contains("shadow"),
        "ls lists links out of the roots:\n{listing}"
    );
    assert!(
        daemon.metric("loaderd_requests_refused_total{reason=\"mount_policy\"}") >= 4.0,
        "policy refusals are not counted"
    );
}

/// An HTTP server on loopback that records the head of every request and answers 403.
struct Recorder {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                h.lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Recorder {
            port,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const AMBIENT_KEY: &str = "AKIAAMBIENTDAEMON0001";
const AMBIENT_TOKEN: &str = "ambient-session-token-of-the-daemon";

/// A daemon with ambient AWS credentials in its environment.
fn daemon_with_ambient_credentials(extra: &[String]) -> Daemon {
    let wrapper = args(&[
        "env",
        &format!("AWS_ACCESS_KEY_ID={AMBIENT_KEY}"),
        "AWS_SECRET_ACCESS_KEY=ambient-secret-of-the-daemon",
        &format!("AWS_SESSION_TOKEN={AMBIENT_TOKEN}"),
    ]);
    let mut a = args(&["--ufs-retries", "0", "--ufs-timeout", "10s"]);
    a.extend_from_slice(extra);
    Daemon::start_wrapped(&wrapper, &a)
}

fn mount_s3(daemon: &Daemon, point: &str, endpoint: &str, more: &[&str]) -> Output {
    let endpoint = format!("endpoint={endpoint}");
    let mut cmd = vec![
        "mount",
        "add",
        point,
        "s3://datasets/ds",
        "-o",
        &endpoint,
        "-o",
        "allow_http=true",
        "-o",
        "region=us-east-1",
    ];
    for m in more {
        cmd.extend(["-o", m]);
    }
    daemon.ctl(&cmd)
}

#[test]
fn runtime_s3_endpoints_are_allow_listed_and_get_no_ambient_credentials() {
    let rec = Recorder::start();

    // Not in the allow list (empty): refused before any request is sent.
    let closed = daemon_with_ambient_credentials(&[]);
    let out = mount_s3(&closed, "/x", &rec.endpoint(), &[]);
    assert!(
        !out.status.success(),
        "mount add with any endpoint: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowed_endpoints"), "{err}");
    closed.ctl_err(&["ls", "/x"]);
    let other = format!("http://127.0.0.1:{}", free_port());
    let open = daemon_with_ambient_credentials(&args(&["--allowed-endpoint", &other]));
    let err =
        String::from_utf8_lossy(&mount_s3(&open, "/x", &rec.endpoint(), &[]).stderr).into_owned();
    assert!(err.contains("allowed_endpoints"), "{err}");
    assert!(
        rec.heads().is_empty(),
        "requests were sent: {:?}",
        rec.heads()
    );

    // Allowed endpoint, no keys of its own: unsigned, none of the daemon's credentials.
    let daemon = daemon_with_ambient_credentials(&args(&["--allowed-endpoint", &rec.endpoint()]));
    let out = mount_s3(&daemon, "/x", &rec.endpoint(), &[]);
    assert!(out.status.success(), "mount add: {}", text(&out));
    let _ = daemon.ctl(&["ls", "/x"]);
    assert!(
        wait_until(Duration::from_secs(20), || !rec.heads().is_empty()),
        "the listener got no request; daemon log:\n{}",
        tail(&daemon.log(), 3000)
    );
    for head in rec.heads() {
        let lower = head.to_ascii_lowercase();
        assert!(
            !head.contains(AMBIENT_KEY)
                && !head.contains(AMBIENT_TOKEN)
                && !lower.contains("\r\nauthorization:"),
            "the daemon sent its own credentials to a runtime endpoint:\n{head}"
        );
    }

    // Only when asked (credentials=ambient) are they used: the listener does see them then,
    // so the check above can see a leak.
    let n = rec.heads().len();
    let out = mount_s3(&daemon, "/y", &rec.endpoint(), &["credentials=ambient"]);
    assert!(
        out.status.success(),
        "mount add credentials=ambient: {}",
        text(&out)
    );
    let _ = daemon.ctl(&["ls", "/y"]);
    assert!(
        wait_until(Duration::from_secs(20), || rec.heads().len() > n),
        "no request for /y"
    );
    let signed = rec.heads()[n..].join("\n");
    assert!(
        signed.contains(AMBIENT_KEY) && signed.contains(AMBIENT_TOKEN),
        "credentials=ambient did not sign with the daemon's credentials:\n{signed}"
    );
}

fn write_token(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("{token}\n")).expect("write token");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path.display().to_string()
}

/// `loaderctl --addr ADDR [--token-file F] ARGS...`.
fn ctl_tcp(addr: &str, token_file: Option<&str>, ctl: &[&str]) -> Output {
    let mut cmd = Command::new(bin("loaderctl"));
    clean_env(&mut cmd).args(["--addr", addr]);
    if let Some(f) = token_file {
        cmd.args(["--token-file", f]);
    }
    cmd.args(ctl)
        .stdin(Stdio::null())
        .output()
        .expect("run loaderctl")
}

#[test]
fn the_tcp_api_needs_its_token_and_admin_calls_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = write_token(dir.path(), "data", "data-token-0123456789");
    let admin = write_token(dir.path(), "admin", "admin-token-0123456789");
    let wrong = write_token(dir.path(), "wrong", "data-token-0123456780");
    let addr = format!("127.0.0.1:{}", free_port());

    // A TCP address without a token does not start.
    let err = match Daemon::try_start(&args(&["--tcp-addr", &addr])) {
        Ok(_) => panic!("loaderd served TCP without a token"),
        Err(log) => log,
    };
    assert!(err.contains("tcp_token_file"), "{err}");

    let daemon = Daemon::start(&args(&[
        "--tcp-addr",
        &addr,
        "--tcp-token-file",
        &data,
        "--tcp-admin-token-file",
        &admin,
    ]));
    for (what, token) in [("no token", None), ("a wrong token", Some(wrong.as_str()))] {
        let out = ctl_tcp(&addr, token, &["status"]);
        assert!(!out.status.success(), "status with {what}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("token"), "status with {what}: {err}");
    }
    let out = ctl_tcp(&addr, Some(&data), &["status"]);
    assert!(
        out.status.success(),
        "status with the data token: {}",
        text(&out)
    );
    let out = ctl_tcp(&addr, Some(&data), &["invalidate", "/"]);
    assert!(
        !out.status.success(),
        "invalidate with the data token: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin token"),
        "{}",
        text(&out)
    );
    let out = ctl_tcp(&addr, Some(&admin), &["invalidate", "/"]);
    assert!(
        out.status.success(),
        "invalidate with the admin token: {}",
        text(&out)
    );
    for reason in ["no_token", "wrong_token", "not_admin"] {
        assert!(
            daemon.metric(&format!(
                "loaderd_requests_refused_total{{api=\"tcp\",reason=\"{reason}\"}}"
            )) >= 1.0,
            "{reason} is not counted:\n{}",
            daemon.metrics()
        );
    }
}

/// Through the daemon's own mount and through the front (`FileInfo.mode` over gRPC).
fn fuse_shows_the_source_owner_and_modes_and_the_kernel_enforces_them(server: FuseServer) {
    if !can_switch_users() {
        return;
    }
    let src = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = |name: &str, mode: u32| {
        let p = src.path().join(name);
        fs::write(&p, format!("contents of {name}")).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    };
    file("secret.txt", 0o600);
    file("public.txt", 0o644);
    let theirs = file("theirs.txt", 0o640);
    let status = Command::new("chown")
        .args([&format!("{NOBODY}:{NOBODY}"), &theirs.display().to_string()])
        .status()
        .expect("chown");
    assert!(status.success());
    let d = match FuseDaemon::start_with(server, &file_mount_args("/data", src.path())) {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };
    let parent = d.mnt.parent().expect("parent");
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).expect("chmod");

    use std::os::unix::fs::MetadataExt;
    for (name, mode, uid) in [
        ("secret.txt", 0o400, 0),
        ("public.txt", 0o444, 0),
        ("theirs.txt", 0o440, 65534),
    ] {
        let m = fs::metadata(d.path(&format!("data/{name}"))).expect("stat");
        assert_eq!(m.mode() & 0o7777, mode, "mode of {name}");
        assert_eq!(m.uid(), uid, "owner of {name}");
    }

    let cat = |name: &str| {
        let user = as_user(&[]);
        Command::new(&user[0])
            .args(&user[1..])
            .arg("cat")
            .arg(d.path(&format!("data/{name}")))
            .output()
            .expect("cat as nobody")
    };
    let out = cat("secret.txt");
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "nobody read a 0600 file of root through FUSE: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out)
    );
    for name in ["public.txt", "theirs.txt"] {
        let out = cat(name);
        assert!(out.status.success(), "cat {name} as nobody: {}", text(&out));
        assert_eq!(out.stdout, format!("contents of {name}").as_bytes());
    }
}

loaderd_tests::against_both_fuse_servers!(
    fuse_shows_the_source_owner_and_modes_and_the_kernel_enforces_them
);
