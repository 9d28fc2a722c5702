//! Attacks on the daemon's request bounds and shared-memory budgets (issue 18, sections 2, 3
//! and the shared-memory socket of 5), each against a real daemon over its real socket:
//! OpenLoader fields far over any sane value, a loader start that fails midway, OpenLoader
//! repeated on one connection while a well-behaved client in another process trains, leases
//! spread over many connections of one process, a read larger than the cap, a reused read
//! id, and more shared-memory connections than the caps allow.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loaderctl::client::shm::{BatchClient, Piece, ShmClient, ShmConnection, ShmError};
use loaderd_proto::v1 as pb;
use loaderd_tests::{
    Daemon, args, assert_bytes_eq, file_mount_args, gen_dataset, loaderctl, small_epoch,
    wait_until, write_random_file,
};
use prost::Message;

const MIB: u64 = 1 << 20;

/// A daemon serving `dir` at `/ds`, with `config` as its config file and `extra` flags.
fn daemon(dir: &Path, config: &str, extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let conf = tempfile::tempdir().expect("tempdir");
    let path = conf.path().join("loaderd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut a = file_mount_args("/ds", dir);
    a.extend(args(&["--config", path.to_str().expect("utf-8 path")]));
    a.extend(args(extra));
    (Daemon::start(&a), conf)
}

fn loader(batch_size: u32, size: u32, depth: u32, workers: u32) -> pb::OpenLoader {
    pb::OpenLoader {
        dataset: "/ds".into(),
        batch_size,
        size,
        depth,
        workers,
        train: true,
        name: "limits test".into(),
        ..Default::default()
    }
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmSize`).
fn proc_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// The daemon's threads whose name starts with `prefix`.
fn threads(pid: u32, prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn open_err(d: &Daemon, req: pb::OpenLoader) -> ShmError {
    match BatchClient::open(&d.shm_socket(), req) {
        Ok(_) => panic!("the daemon accepted a loader it must refuse"),
        Err(e) => e,
    }
}

fn code_of(e: &ShmError) -> Option<tonic::Code> {
    match e {
        ShmError::Status { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn every_open_loader_field_is_bounded_before_anything_is_allocated() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 4);
    let (d, _conf) = daemon(data.path(), "", &[]);
    let pid = d.pid().expect("pid");
    let rss_before = proc_bytes(pid, "VmRSS");

    // The attacks: depth 80M with 1-pixel samples took 1.26 GB of RSS while 240 MB
    // was counted; 1000 workers started hundreds of threads.
    let cases: [(&str, &str, pb::OpenLoader); 6] = [
        ("depth", "pipeline.max_depth", loader(1, 1, 80_000_000, 1)),
        (
            "depth",
            "pipeline.max_depth",
            loader(1, 1, 1_000_000_000, 1),
        ),
        ("workers", "pipeline.max_workers", loader(1, 32, 2, 1000)),
        (
            "batch_size",
            "pipeline.max_batch_size",
            loader(1_000_000, 1, 1, 1),
        ),
        ("size", "pipeline.max_image_size", loader(1, 100_000, 1, 1)),
        (
            "resize",
            "pipeline.max_image_size",
            pb::OpenLoader {
                train: false,
                resize: u32::MAX,
                ..loader(1, 32, 1, 1)
            },
        ),
    ];
    for (field, key, req) in cases {
        let started = Instant::now();
        let err = open_err(&d, req);
        let text = err.to_string();
        assert_eq!(code_of(&err), Some(tonic::Code::InvalidArgument), "{text}");
        assert!(
            text.contains(field) && text.contains(key),
            "the error names the field and the limit: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refused at once"
        );
    }
    assert_eq!(threads(pid, "loaderd-decode"), 0, "no worker was started");
    let grown = proc_bytes(pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        grown < 64 * MIB,
        "refused requests allocated nothing big: RSS grew {grown} bytes"
    );
    assert!(d.metric("loaderd_pipeline_open_refusals_total") >= 6.0);
    // The daemon keeps serving, and a sane loader opens.
    let mut ok = BatchClient::open(&d.shm_socket(), loader(2, 32, 2, 1)).expect("a sane loader");
    assert!(ok.next_batch().expect("batch").is_some());
}

#[test]
fn a_loaders_memory_counts_its_per_slot_state() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 4);
    // Depth may be large here, so the ring is a million tiny slots: 3 MB of slot bytes, but
    // each slot's state and batch metadata are real memory too.
    let (d, _conf) = daemon(
        data.path(),
        "[pipeline]\nmax_depth = 2000000\nmax_client_bytes = \"1GiB\"\n",
        &[],
    );
    let pid = d.pid().expect("pid");
    let rss_before = proc_bytes(pid, "VmRSS");
    let mut c =
        BatchClient::open(&d.shm_socket(), loader(1, 1, 1_000_000, 1)).expect("loader opens");
    assert!(c.next_batch().expect("batch").is_some());
    let grown = proc_bytes(pid, "VmRSS").saturating_sub(rss_before);
    let status = d.status_json();
    let counted = status["loaders"][0]["ring_bytes"]
        .as_u64()
        .expect("ring_bytes");
    assert_eq!(status["ring_bytes"], counted, "{status}");
    assert!(
        counted > 3_000_000,
        "more than the slot bytes are counted: {counted}"
    );
    // What the open made the daemon hold is within what the budget counted (4 MiB of slack
    // for allocator noise); before, 3 MB was counted for 16 MB of slot states.
    assert!(
        grown <= counted + 4 * MIB,
        "RSS grew {grown} bytes but the budget counted {counted}"
    );
    drop(c);
    assert!(
        wait_until(Duration::from_secs(20), || d.status_json()["ring_bytes"]
            == 0),
        "a closed loader gives its budget back"
    );
}

/// `prlimit --pid PID --as=LIMIT:` (soft limit only; `unlimited` lifts it).
fn set_address_space_limit(pid: u32, limit: &str) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--as={limit}:")])
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "prlimit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_loader_start_that_fails_midway_stops_every_worker_and_gives_the_budget_back() {
    // A real failure midway: the daemon's address-space limit (RLIMIT_AS, which binds root
    // too, unlike RLIMIT_NPROC) lowered so that only a few 2 MiB thread stacks still fit,
    // then a loader asking for 40 workers. Thread creation fails for real after a few.
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 4);
    let (d, _conf) = daemon(data.path(), "", &["--memory-capacity", "16MiB"]);
    let pid = d.pid().expect("pid");
    // Warm up: the runtime's blocking threads exist, so indexing needs no new thread.
    let mut warm = BatchClient::open(&d.shm_socket(), loader(2, 32, 2, 2)).expect("warm-up");
    while warm.next_batch().expect("batch").is_some() {}
    drop(warm);
    assert!(wait_until(Duration::from_secs(10), || threads(
        pid,
        "loaderd-decode"
    ) == 0));

    // Connected first: the connection's own thread exists before the limit.
    let conn = ShmConnection::connect(&d.shm_socket()).expect("connect");
    let headroom = 12 * MIB;
    set_address_space_limit(pid, &(proc_bytes(pid, "VmSize") + headroom).to_string());
    let res = BatchClient::open_on(conn, loader(2, 32, 2, 40));
    set_address_space_limit(pid, "unlimited");
    let err = match res {
        Ok(_) => panic!("40 workers cannot start within {headroom} bytes of address space"),
        Err(e) => e,
    };
    // Every started worker was stopped, and nothing stays counted.
    assert!(
        wait_until(Duration::from_secs(10), || threads(pid, "loaderd-decode")
            == 0),
        "{} decode threads still run after the failed start ({err})",
        threads(pid, "loaderd-decode")
    );
    let text = err.to_string();
    assert_eq!(
        code_of(&err),
        Some(tonic::Code::ResourceExhausted),
        "{text}"
    );
    assert!(text.contains("decode thread"), "{text}");
    let status = d.status_json();
    assert_eq!(status["ring_bytes"], 0, "{status}");
    assert_eq!(status["loaders"].as_array().map(Vec::len), Some(0));
    // Later opens work.
    let mut later =
        BatchClient::open(&d.shm_socket(), loader(2, 32, 2, 2)).expect("a later open works");
    assert!(later.next_batch().expect("batch").is_some());
}

fn open_loader_msg(req: pb::OpenLoader) -> pb::ShmRequest {
    pb::ShmRequest {
        kind: Some(pb::shm_request::Kind::OpenLoader(req)),
    }
}

#[test]
fn repeated_opens_are_refused_at_once_and_do_not_starve_another_client() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 8);
    // Room for exactly two loaders: the attacker's and the good client's.
    let (d, _conf) = daemon(
        data.path(),
        "[pipeline]\nmax_clients = 2\nmax_client_bytes = \"64MiB\"\nmax_total_bytes = \"128MiB\"\n",
        &[],
    );
    let sock = d.shm_socket();

    // The attacker: a loader of its own, then OpenLoader again and again on the same
    // connection, and over-budget opens on fresh connections, until the good client is done.
    let mut attacker = ShmConnection::connect(&sock).expect("connect");
    let (reply, _fd) = attacker
        .request(&open_loader_msg(loader(4, 32, 2, 1)))
        .expect("open");
    let opened = pb::LoaderOpened::decode(&reply[..]).expect("LoaderOpened");
    assert_eq!(opened.code, 0, "{}", opened.error);
    let stop = Arc::new(AtomicBool::new(false));
    let repeats = Arc::new(AtomicU64::new(0));
    let repeat_thread = {
        let (stop, repeats) = (stop.clone(), repeats.clone());
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let (reply, fd) = attacker
                    .request(&open_loader_msg(loader(4, 32, 2, 1)))
                    .expect("a refusal, not a dropped connection");
                slowest = slowest.max(asked.elapsed());
                let r = pb::LoaderOpened::decode(&reply[..]).expect("LoaderOpened");
                assert_eq!(
                    r.code,
                    tonic::Code::FailedPrecondition as i32,
                    "{}",
                    r.error
                );
                assert!(r.error.contains("already has a loader"), "{}", r.error);
                assert!(fd.is_none());
                repeats.fetch_add(1, Ordering::SeqCst);
            }
            slowest
        })
    };
    let refused = Arc::new(AtomicU64::new(0));
    let hammer_thread = {
        let (stop, sock, refused) = (stop.clone(), sock.clone(), refused.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // 64 x 224x224 RGB x 64 slots: far over the 64 MiB a client may have.
                if let Err(e) = BatchClient::open(&sock, loader(64, 224, 64, 1)) {
                    assert_eq!(code_of(&e), Some(tonic::Code::ResourceExhausted), "{e}");
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // Both attacks are running before the good client starts (however loaded the machine).
    let attacking = |what: &str, n: &AtomicU64, at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while n.load(Ordering::SeqCst) < at_least {
            assert!(
                Instant::now() < deadline,
                "{what}: {} answers in 60 s",
                n.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    attacking("repeated opens", &repeats, 20);
    attacking("over-budget opens", &refused, 2);
    let repeats_before = repeats.load(Ordering::SeqCst);

    // Only the attacker's first loader stays open: each good client's loader closes once the
    // daemon sees that process's connection gone, which may be a moment after it exits.
    let one_open = || d.status_json()["loaders"].as_array().map(Vec::len) == Some(1);
    // The good client: another process, a whole epoch each time, five times; each round
    // starts once the last one's loader is gone (max_clients = 2 has room for one of them).
    for round in 0..5 {
        assert!(
            wait_until(Duration::from_secs(10), one_open),
            "round {round}: {}",
            d.status_json()
        );
        let out = loaderctl(&d.socket, &small_epoch(&["--depth", "2", "--json"]));
        assert!(
            out.status.success(),
            "round {round}: the good client was refused while the attacker hammered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench json");
        assert_eq!(report["samples"], 16, "{report}");
    }
    let repeats_during = repeats.load(Ordering::SeqCst) - repeats_before;
    stop.store(true, Ordering::SeqCst);
    let slowest = repeat_thread.join().expect("repeat thread");
    hammer_thread.join().expect("hammer thread");
    assert!(
        repeats_during > 0,
        "the attacker's repeats went on while the good client ran"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a repeated OpenLoader is refused before any work (slowest {slowest:?})"
    );
    // The attacker's connection went with its thread: its loader goes too, once the daemon
    // sees the connection closed, and nothing else is left open.
    let none_open = || d.status_json()["loaders"].as_array().map(Vec::len) == Some(0);
    assert!(
        wait_until(Duration::from_secs(10), none_open),
        "{}",
        d.status_json()
    );
}

/// A daemon with a 16 MiB memory tier of 1 MiB blocks: 3 MiB leased per process and
/// 3/16 of the tier (3 MiB) in total; and files of 1, 2 and 5 MiB.
fn lease_daemon(dir: &Path) -> (Daemon, tempfile::TempDir, Vec<Vec<u8>>) {
    let sizes = [MIB, MIB, MIB, MIB, MIB, 2 * MIB, 5 * MIB];
    let files = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| write_random_file(&dir.join(format!("f{i}.bin")), len as usize, i as u64))
        .collect();
    let (d, conf) = daemon(
        dir,
        "[server]\nshm_max_leased = \"3MiB\"\nshm_max_leased_fraction = 0.1875\n",
        &["--memory-capacity", "16MiB", "--block-size", "1MiB"],
    );
    for i in 0..sizes.len() {
        d.cat(&format!("/ds/f{i}.bin"));
    }
    (d, conf, files)
}

fn shm_read(c: &mut ShmClient, path: &str) -> Result<Vec<u8>, ShmError> {
    let mut out = Vec::new();
    c.read(path, 0, 0, |_, piece| {
        match piece {
            Piece::Mapped(b) => out.extend_from_slice(b),
            Piece::Fallback { .. } => {
                return Err(std::io::Error::other("block not in the memory tier"));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn leases_are_capped_per_client_process_not_per_connection() {
    let data = tempfile::tempdir().expect("tempdir");
    let (d, _conf, files) = lease_daemon(data.path());
    let sock = d.shm_socket();

    // Nine connections of this one process, each holding a 1 MiB read: three fit its cap.
    let mut conns: Vec<ShmClient> = (0..9)
        .map(|_| ShmClient::connect(&sock).expect("connect"))
        .collect();
    let mut held = 0;
    for (i, c) in conns.iter_mut().enumerate().take(5) {
        match shm_read(c, &format!("/ds/f{i}.bin")) {
            Ok(bytes) => {
                assert_bytes_eq(&bytes, &files[i], "leased read");
                held += 1;
            }
            Err(e) => {
                assert_eq!(code_of(&e), Some(tonic::Code::ResourceExhausted), "{e}");
                assert!(e.to_string().contains("server.shm_max_leased"), "{e}");
            }
        }
    }
    assert_eq!(held, 3, "one process's connections share one 3 MiB cap");
    let status = d.status_json();
    assert_eq!(status["shm_leased_bytes"], 3 * MIB, "{status}");
    assert_eq!(status["shm_leased_capacity_bytes"], 3 * MIB, "{status}");
    assert_eq!(d.metric("loaderd_shm_leased_bytes"), (3 * MIB) as f64);
    assert!(d.metric("loaderd_shm_lease_refusals_total") >= 2.0);
    let text = d.ctl_ok(&["status"]);
    assert!(text.contains("3.0 MiB leased / 3.0 MiB"), "{text}");

    // Another process's read finds the 3 MiB total taken: refused before leasing, and
    // loaderctl reads it over gRPC instead, byte-exact.
    let out = loaderctl(&d.socket, &["cat", "/ds/f5.bin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_bytes_eq(&out.stdout, &files[5], "cat over the total cap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shm_max_leased_fraction") && stderr.contains("gRPC"),
        "{stderr}"
    );

    // Closing the connections gives every lease back.
    conns.clear();
    assert!(d.leases_released(), "{}", d.status_json());
}

#[test]
fn a_single_read_cannot_pass_the_cap_and_a_reused_read_id_counts_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let (d, _conf, files) = lease_daemon(data.path());
    let sock = d.shm_socket();

    // 5 MiB in one read, nothing leased yet: each block is counted before it is leased, so
    // 3 MiB are leased and the rest is answered as fallback, read over gRPC.
    let mut c = ShmClient::connect(&sock).expect("connect");
    let (mut mapped, mut fallback) = (0u64, 0u64);
    c.read("/ds/f6.bin", 0, 0, |_, piece| {
        match piece {
            Piece::Mapped(b) => mapped += b.len() as u64,
            Piece::Fallback { len, .. } => fallback += len,
        }
        Ok(())
    })
    .expect("a read over the cap is served");
    assert_eq!((mapped, fallback), (3 * MIB, 2 * MIB), "leased, fallback");
    let status = d.status_json();
    assert_eq!(status["shm_leased_bytes"], 3 * MIB, "{status}");
    // With the cap held, another read of this process is refused, naming the cap.
    let mut other = ShmClient::connect(&sock).expect("connect");
    let err = match shm_read(&mut other, "/ds/f0.bin") {
        Ok(_) => panic!("a read past a full cap was leased"),
        Err(e) => e,
    };
    assert_eq!(code_of(&err), Some(tonic::Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("server.shm_max_leased"), "{err}");
    drop((c, other));
    assert!(d.leases_released(), "{}", d.status_json());
    // loaderctl returns the right bytes of the whole file.
    assert_bytes_eq(
        &d.cat("/ds/f6.bin"),
        &files[6],
        "cat of a read over the cap",
    );
    // loaderctl has exited; its connection's leases go once the daemon sees it close.
    assert!(d.leases_released(), "{}", d.status_json());

    // The same read id ten times without a release: the id's old lease is replaced, so the
    // count stays at one read and later reads are not refused.
    let mut raw = ShmConnection::connect(&sock).expect("connect");
    for round in 0..10 {
        let req = pb::ShmRequest {
            kind: Some(pb::shm_request::Kind::Read(pb::ShmRead {
                id: 7,
                path: "/ds/f0.bin".into(),
                ..Default::default()
            })),
        };
        let (reply, _) = raw.request(&req).expect("reply");
        let reply = pb::ShmReadReply::decode(&reply[..]).expect("ShmReadReply");
        assert_eq!(reply.code, 0, "round {round}: {}", reply.error);
        assert!(reply.extents.iter().all(|e| e.in_arena), "round {round}");
    }
    let status = d.status_json();
    assert_eq!(status["shm_leased_bytes"], MIB, "{status}");
    drop(raw);
    assert!(d.leases_released(), "{}", d.status_json());
}

/// Another process holding `n` shared-memory connections until dropped.
struct Holder(Child);

impl Holder {
    fn start(sock: &Path, n: usize) -> Holder {
        let script = "import socket, sys\n\
             conns = []\n\
             for _ in range(int(sys.argv[2])):\n\
             \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
             \x20   s.connect(sys.argv[1])\n\
             \x20   s.recvmsg(4096, 64)\n\
             \x20   conns.append(s)\n\
             print('held', flush=True)\n\
             sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args([
                "-c",
                script,
                sock.to_str().expect("utf-8 path"),
                &n.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "held");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shared_memory_connections_are_capped_per_process_and_in_total() {
    let data = tempfile::tempdir().expect("tempdir");
    let file = write_random_file(&data.path().join("f.bin"), 100_000, 1);
    let (d, _conf) = daemon(
        data.path(),
        "[server]\nshm_max_connections = 6\nshm_max_connections_per_process = 4\n",
        &[],
    );
    let pid = d.pid().expect("pid");
    let sock = d.shm_socket();
    let _mine: Vec<ShmConnection> = (0..4)
        .map(|_| ShmConnection::connect(&sock).expect("connect"))
        .collect();
    // The fifth of this process and many more: each refused at once, with the limit named,
    // and none gets a thread.
    for _ in 0..50 {
        let started = Instant::now();
        let err = match ShmConnection::connect(&sock) {
            Ok(_) => panic!("a fifth connection of one process is refused"),
            Err(e) => e,
        };
        assert_eq!(code_of(&err), Some(tonic::Code::ResourceExhausted), "{err}");
        assert!(
            err.to_string()
                .contains("server.shm_max_connections_per_process"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(
        d.metric("loaderd_shm_connections_refused_total{reason=\"process\"}"),
        50.0
    );
    // Connection threads are named loaderd-shm-N (the accept thread loaderd-shm-acc...).
    let conn_threads = threads(pid, "loaderd-shm-") - threads(pid, "loaderd-shm-acc");
    assert_eq!(conn_threads, 4, "refused connections get no thread");

    // Another process still gets one.
    let out = loaderctl(&d.socket, &["cat", "/ds/f.bin"]);
    assert!(out.status.success());
    assert_bytes_eq(&out.stdout, &file, "cat beside a capped process");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the total reached (4 here, 2 in another process), loaderctl is told why and
    // reads over gRPC.
    let _other = Holder::start(&sock, 2);
    assert_eq!(d.status_json()["shm_connections"], 6);
    let out = loaderctl(&d.socket, &["cat", "/ds/f.bin"]);
    assert!(out.status.success());
    assert_bytes_eq(&out.stdout, &file, "cat over gRPC");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.shm_max_connections") && stderr.contains("using gRPC"),
        "{stderr}"
    );
    assert!(d.metric("loaderd_shm_connections_refused_total{reason=\"total\"}") >= 1.0);
}
