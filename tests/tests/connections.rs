//! Bounded connections: idle, silent or slow clients of the metrics endpoint and the gRPC
//! socket cannot exhaust the daemon's descriptors or hold connections forever, and
//! connections over a listener's cap are closed at once and counted.
//!
//! The daemon runs under `prlimit` where a descriptor limit matters, so exhausting it is
//! cheap and the caps (sized from it) are known: with 256 descriptors the metrics endpoint
//! takes at most 16 connections and each gRPC listener 64.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use loaderd_tests::{
    Daemon, args, assert_bytes_eq, bin, config_file_args, file_mount_args, output_with_timeout,
    try_http_get, wait_until, write_random_file,
};

/// The HTTP/2 client preface and an empty SETTINGS frame: a gRPC client's first bytes.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn limited_daemon(nofile: u32, extra: &[String]) -> Daemon {
    let wrapper = args(&["prlimit", &format!("--nofile={nofile}:{nofile}"), "--"]);
    Daemon::start_wrapped(&wrapper, extra)
}

/// Reads and discards until the peer closes; how long that took from `since`, or `None` if
/// the connection is still open at `since + limit`.
fn closed_within(stream: &mut impl Read, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    while since.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

fn unix(daemon: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&daemon.socket).expect("connect to the gRPC socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

/// `loaderctl ARGS` that must end within 20 s (a hung daemon fails the test, not blocks it).
fn ctl_bounded(daemon: &Daemon, ctl_args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("loaderctl"));
    cmd.env("RUST_BACKTRACE", "0")
        .arg("--socket")
        .arg(&daemon.socket)
        .args(ctl_args);
    output_with_timeout(&mut cmd, Duration::from_secs(20))
}

/// 1,100 idle TCP connections to the metrics port of a daemon limited to 256 descriptors:
/// before, they took every descriptor (`status` hung, `cat` failed).
#[test]
fn idle_metrics_connections_cannot_exhaust_descriptors() {
    let data = tempfile::tempdir().expect("tempdir");
    let want = write_random_file(&data.path().join("a.bin"), 3 << 20, 11);
    let daemon = limited_daemon(256, &file_mount_args("/data", data.path()));

    // Stops at the first connection the daemon's backlog no longer takes (before the fix:
    // once it was out of descriptors); `status` must work either way.
    let addr: std::net::SocketAddr = daemon.metrics_addr.parse().expect("metrics address");
    let idle: Vec<TcpStream> = (0..1100)
        .map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    let began = Instant::now();
    let status = ctl_bounded(&daemon, &["status"]);
    assert!(
        status.status.success(),
        "status with 1,100 idle metrics connections open failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let cat = ctl_bounded(&daemon, &["cat", "/data/a.bin"]);
    assert!(
        cat.status.success(),
        "cat with 1,100 idle metrics connections open failed: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_bytes_eq(&cat.stdout, &want, "cat /data/a.bin");
    assert_eq!(
        idle.len(),
        1100,
        "the metrics port stopped taking connections"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "status and cat took {:?} with idle connections open",
        began.elapsed()
    );
    // The idle ones in a slot are closed after the header timeout (5 s); then /metrics answers
    // with the refusals counted, while all 1,100 are still open on this side.
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            try_http_get(&daemon.metrics_addr, "/metrics")
                .map(|m| metrics = m)
                .is_ok()
        }),
        "/metrics never answered again"
    );
    let refused = loaderd_tests::metric_sum(
        &metrics,
        r#"loaderd_connections_refused_total{listener="metrics"}"#,
    );
    assert!(
        refused >= 1000.0,
        "{refused} of 1,100 idle connections refused (cap 16 with 256 descriptors)"
    );
    drop(idle);
    daemon.ctl_ok(&["status"]);
}

/// A client that sends its request headers one byte at a time is closed after the header
/// timeout (5 s by default), and counted.
#[test]
fn slowloris_metrics_connection_is_closed_within_the_header_timeout() {
    let daemon = Daemon::start(&[]);
    let began = Instant::now();
    let mut s = tcp(&daemon.metrics_addr);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    s.write_all(request).expect("send the request line");
    let mut closed = None;
    let mut buf = [0u8; 1024];
    while began.elapsed() < Duration::from_secs(15) {
        if s.write_all(b"a").is_err() {
            closed = Some(began.elapsed());
            break;
        }
        // The read waits 200 ms: one byte per 200 ms, headers never complete.
        match s.read(&mut buf) {
            Ok(0) => {
                closed = Some(began.elapsed());
                break;
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = Some(began.elapsed());
                break;
            }
        }
    }
    let took = closed.unwrap_or_else(|| panic!("a slowloris connection was open after 15 s"));
    assert!(
        took < Duration::from_secs(9),
        "a slowloris connection was closed only after {took:?} (header timeout 5s)"
    );
    assert!(
        daemon.metric(r#"loaderd_connections_timed_out_total{listener="metrics"}"#) >= 1.0,
        "the closed slowloris connection was not counted"
    );
}

/// With 64 connections open (the default cap), the 65th is closed at once and counted; the
/// endpoint answers again once they go.
#[test]
fn metrics_connections_over_the_cap_are_refused_and_counted() {
    let daemon = limited_daemon(4096, &[]);
    let held: Vec<TcpStream> = (0..64).map(|_| tcp(&daemon.metrics_addr)).collect();
    let began = Instant::now();
    let mut over = tcp(&daemon.metrics_addr);
    let closed = closed_within(&mut over, began, Duration::from_secs(3));
    assert!(
        closed.is_some(),
        "the 65th metrics connection (cap 64) was still open after 3 s"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || try_http_get(
            &daemon.metrics_addr,
            "/healthz"
        )
        .is_ok()),
        "/healthz never answered after the held connections closed"
    );
    let refused = daemon.metric(r#"loaderd_connections_refused_total{listener="metrics"}"#);
    assert!(refused >= 1.0, "refused metrics connections not counted");
}

/// With 256 descriptors a gRPC listener takes 64 connections: the 65th is closed at once (and
/// `status` fails promptly rather than hangs); all is well again once they go.
#[test]
fn grpc_connections_over_the_cap_are_refused_and_counted() {
    let daemon = limited_daemon(256, &[]);
    let held: Vec<UnixStream> = (0..64)
        .map(|_| {
            let mut s = unix(&daemon);
            s.write_all(H2_HELLO).expect("send the HTTP/2 preface");
            s
        })
        .collect();
    let began = Instant::now();
    let mut over = unix(&daemon);
    let _ = over.write_all(H2_HELLO);
    let closed = closed_within(&mut over, began, Duration::from_secs(3));
    assert!(
        closed.is_some(),
        "the 65th gRPC connection (cap 64) was still open after 3 s"
    );
    let began = Instant::now();
    let status = ctl_bounded(&daemon, &["status"]);
    assert!(
        !status.status.success(),
        "status over a full gRPC listener succeeded"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "status over a full gRPC listener took {:?} to fail",
        began.elapsed()
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .ctl(&["status"])
            .status
            .success()),
        "status never worked again after the held connections closed"
    );
    let refused = daemon.metric(r#"loaderd_connections_refused_total{listener="grpc"}"#);
    assert!(refused >= 2.0, "{refused} refused gRPC connections counted");
}

/// A gRPC connection that never sends its HTTP/2 preface is closed after the handshake
/// timeout; one that completes it and then stops answering pings is closed by keepalive.
#[test]
fn silent_and_unresponsive_grpc_connections_are_closed() {
    let conf = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config_file_args(
        conf.path(),
        "[server]\ngrpc_handshake_timeout = \"1s\"\ngrpc_keepalive_interval = \"1s\"\n\
         grpc_keepalive_timeout = \"1s\"\n",
    ));
    let began = Instant::now();
    let mut silent = unix(&daemon);
    let mut deaf = unix(&daemon);
    deaf.write_all(H2_HELLO).expect("send the HTTP/2 preface");
    // `deaf` reads the daemon's frames (SETTINGS, PINGs) and never answers a ping.
    let deaf_closed = closed_within(&mut deaf, began, Duration::from_secs(10));
    let silent_closed = closed_within(&mut silent, began, Duration::from_secs(10));
    let silent_closed = silent_closed
        .unwrap_or_else(|| panic!("a silent gRPC connection was open after 10 s (handshake 1s)"));
    let deaf_closed = deaf_closed.unwrap_or_else(|| {
        panic!("a gRPC connection that ignores pings was open after 10 s (keepalive 1s + 1s)")
    });
    assert!(
        silent_closed < Duration::from_secs(6) && deaf_closed < Duration::from_secs(8),
        "silent connection closed after {silent_closed:?}, deaf one after {deaf_closed:?}"
    );
    assert!(
        daemon.metric(r#"loaderd_connections_timed_out_total{listener="grpc"}"#) >= 1.0,
        "the silent connection was not counted"
    );
    // Well-behaved clients answer pings: a status over a fresh connection still works.
    daemon.ctl_ok(&["status"]);
}
