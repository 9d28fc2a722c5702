//! The FUSE handover end to end: a real mount of `loaderd-fuse-testfs` (a pass-through of a
//! generated tree) held by its supervisor, read by reader threads — sha256 of every file
//! again and again, stat and readdir, and file descriptors opened once and read throughout —
//! while its server is replaced by SIGTERM handover and killed -9. Nothing may fail, no byte
//! may differ, and the longest pause is printed. Skipped, with the reason printed, where
//! `/dev/fuse` cannot be opened or mounting is not permitted.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use loaderd_fuse::handover::unmount;
use loaderd_proto::transport::{connect_to, recv_msg, send_msg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_loaderd-fuse-testfs");
/// Bounded waits, generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

/// Polls `ready` every 10 ms until it gives a value; panics with `what()` after [`WAIT`].
fn wait_for<T>(what: impl Fn() -> String, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fuse_unavailable() -> Option<String> {
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse cannot be opened: {e}")),
    }
}

/// Deterministic bytes (xorshift), different per file.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The generated tree: files by relative path, and the listing of each directory.
struct Tree {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeMap<String, Vec<String>>,
}

fn generate(root: &Path) -> Tree {
    let sizes = [0, 1, 4095, 4096, 65_537, 131_072, 300_000, 1 << 20];
    let mut files = BTreeMap::new();
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    dirs.insert(String::new(), Vec::new());
    for d in 0..3 {
        let dir = format!("d{d}");
        fs::create_dir_all(root.join(&dir)).expect("mkdir");
        dirs.get_mut("").expect("root").push(dir.clone());
        for (i, &len) in sizes.iter().enumerate() {
            let name = format!("f{i}.bin");
            let rel = format!("{dir}/{name}");
            let bytes = content((d * 100 + i) as u64, len);
            fs::write(root.join(&rel), &bytes).expect("write");
            dirs.entry(dir.clone()).or_default().push(name);
            files.insert(rel, bytes);
        }
    }
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    dirs.get_mut("").expect("root").push("empty".into());
    dirs.insert("empty".into(), Vec::new());
    for names in dirs.values_mut() {
        names.sort();
    }
    Tree { files, dirs }
}

/// The test server's arguments: serve `dir/src`, write `dir/server.pid`; without `resend`,
/// no FUSE_NOTIFY_RESEND after taking over (so only a clean drain keeps readers going).
fn server_args(dir: &Path, resend: bool) -> Vec<String> {
    let mut args = vec![
        "serve".into(),
        "--source".into(),
        dir.join("src").display().to_string(),
        "--pid-file".into(),
        dir.join("server.pid").display().to_string(),
        // A little latency per read, so a kill -9 lands with requests in flight.
        "--read-delay-ms".into(),
        "2".into(),
    ];
    if !resend {
        args.push("--no-resend".into());
    }
    args
}

/// The shared log of the supervisor and every server (appended to).
fn log_file(dir: &Path) -> Stdio {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("log")
        .into()
}

/// Reads the log without borrowing the whole [`Mounted`] (whose supervisor is polled).
fn dir_log(m: &Mounted) -> impl Fn() -> String + use<> {
    let path = m.dir.path().join("log");
    move || fs::read_to_string(&path).unwrap_or_default()
}

/// A supervisor holding the mount; dropping it stops everything and detaches the mount.
struct Mounted {
    dir: TempDir,
    resend: bool,
    supervisor: Child,
    tree: Arc<Tree>,
}

impl Mounted {
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("server.pid")
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("handover.sock")
    }
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `Err` is a reason to skip.
    /// `state_region`: bytes per region of the state log (small: compactions all the time).
    fn start(resend: bool, state_region: usize) -> Result<Mounted, String> {
        Self::start_crashing(resend, state_region, None)
    }

    /// As [`Mounted::start`]; `crash_flag` makes the first server kill itself at that point
    /// of its INIT handshake (`--crash-once-in-init`, `--crash-once-after-announce`).
    fn start_crashing(
        resend: bool,
        state_region: usize,
        crash_flag: Option<&str>,
    ) -> Result<Mounted, String> {
        if let Some(reason) = fuse_unavailable() {
            return Err(reason);
        }
        let dir = TempDir::new().expect("tempdir");
        let tree = Arc::new(generate(&dir.path().join("src")));
        fs::create_dir_all(dir.path().join("mnt")).expect("mnt");
        let mnt = dir.path().join("mnt");
        let supervisor = Command::new(BIN)
            .arg("supervise")
            .arg("--state-region")
            .arg(state_region.to_string())
            .arg("--mount")
            .arg(&mnt)
            .arg("--socket")
            .arg(dir.path().join("handover.sock"))
            .arg("--")
            .arg(BIN)
            .args(server_args(dir.path(), resend))
            .args(
                crash_flag
                    .map(|f| {
                        [
                            f.to_string(),
                            dir.path().join("crashed").display().to_string(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdout(log_file(dir.path()))
            .stderr(log_file(dir.path()))
            .spawn()
            .expect("start the supervisor");
        let mut m = Mounted {
            dir,
            resend,
            supervisor,
            tree,
        };
        let log = dir_log(&m);
        let exited = wait_for(
            || format!("the mount never came up: {}", log()),
            || match m.supervisor.try_wait() {
                Ok(Some(status)) => Some(Some(status)),
                _ if m.pid_file().exists()
                    && fs::read_dir(m.mnt()).is_ok_and(|d| d.count() == 4) =>
                {
                    Some(None)
                }
                _ => None,
            },
        );
        match exited {
            None => Ok(m),
            Some(_) if m.log().contains("mounting FUSE") => Err(format!(
                "mounting is not permitted here: {}",
                m.log().trim()
            )),
            Some(status) => panic!("the supervisor exited ({status}): {}", m.log()),
        }
    }

    fn server_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn signal_server(&self, sig: Signal) -> i32 {
        let pid = self.server_pid().expect("a server pid");
        kill(Pid::from_raw(pid), sig).expect("signal the server");
        pid
    }

    /// Waits until a server other than `old` serves and the readers made progress on it.
    fn wait_replaced(&self, old: i32, progress: &AtomicU64) -> i32 {
        let pid = wait_for(
            || format!("no new server after {old}: {}", self.log()),
            || self.server_pid().filter(|&pid| pid != old),
        );
        let seen = progress.load(Ordering::Relaxed);
        wait_for(
            || format!("no reads after the replacement: {}", self.log()),
            || (progress.load(Ordering::Relaxed) >= seen + 20).then_some(()),
        );
        pid
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SIGTERM: the supervisor stops the server and unmounts. A wedged one is killed and
        // the mount detached, so no stale mount outlives the test.
        let _ = kill(Pid::from_raw(self.supervisor.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while matches!(self.supervisor.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        if let Some(pid) = self.server_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = unmount(&self.mnt());
    }
}

#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    errors: Mutex<Vec<String>>,
    wrong: AtomicU64,
    longest: Mutex<Duration>,
}

impl Stats {
    fn op(&self, started: Instant) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        let mut longest = self.longest.lock().expect("longest");
        *longest = (*longest).max(took);
    }
    fn error(&self, what: String) {
        self.errors.lock().expect("errors").push(what);
    }
}

/// Readers over the mount until `stop`: whole files by path, stat, readdir, and reads of
/// descriptors opened once before any replacement.
fn readers(m: &Mounted, stop: &Arc<AtomicBool>, stats: &Arc<Stats>) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for r in 0..3 {
        let (tree, mnt, stop, stats) = (m.tree.clone(), m.mnt(), stop.clone(), stats.clone());
        threads.push(std::thread::spawn(move || {
            let want: BTreeMap<&String, [u8; 32]> =
                tree.files.iter().map(|(p, b)| (p, sha(b))).collect();
            while !stop.load(Ordering::Relaxed) {
                for (rel, bytes) in tree.files.iter().skip(r) {
                    let t = Instant::now();
                    let mut got = Vec::new();
                    match File::open(mnt.join(rel)).and_then(|mut f| f.read_to_end(&mut got)) {
                        Ok(_) if sha(&got) == want[rel] => {}
                        Ok(_) => {
                            stats.wrong.fetch_add(1, Ordering::Relaxed);
                            stats.error(format!(
                                "{rel}: {} bytes, want {}",
                                got.len(),
                                bytes.len()
                            ));
                        }
                        Err(e) => stats.error(format!("read {rel}: {e}")),
                    }
                    stats.op(t);
                    let t = Instant::now();
                    match fs::metadata(mnt.join(rel)) {
                        Ok(md) if md.len() == bytes.len() as u64 => {}
                        Ok(md) => stats.error(format!("stat {rel}: size {}", md.len())),
                        Err(e) => stats.error(format!("stat {rel}: {e}")),
                    }
                    stats.op(t);
                }
                for (dir, names) in &tree.dirs {
                    let t = Instant::now();
                    match fs::read_dir(mnt.join(dir)).and_then(|d| {
                        let mut got = d
                            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                            .collect::<Result<Vec<_>, _>>()?;
                        got.sort();
                        Ok(got)
                    }) {
                        Ok(got) if &got == names => {}
                        Ok(got) => stats.error(format!("readdir {dir:?}: {got:?}")),
                        Err(e) => stats.error(format!("readdir {dir:?}: {e}")),
                    }
                    stats.op(t);
                }
            }
        }));
    }
    // Descriptors opened now stay open across every replacement.
    let held: Vec<(String, File)> = m
        .tree
        .files
        .keys()
        .filter(|p| m.tree.files[*p].len() > 4096)
        .map(|p| (p.clone(), File::open(m.mnt().join(p)).expect("open held")))
        .collect();
    let (tree, stop, stats) = (m.tree.clone(), stop.clone(), stats.clone());
    threads.push(std::thread::spawn(move || {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (rel, file) in &held {
                let bytes = &tree.files[rel];
                let off = (round.wrapping_mul(7919) as usize) % (bytes.len() - 4096);
                let mut got = vec![0u8; 4096];
                let t = Instant::now();
                match file.read_exact_at(&mut got, off as u64) {
                    Ok(()) if got == bytes[off..off + 4096] => {}
                    Ok(()) => {
                        stats.wrong.fetch_add(1, Ordering::Relaxed);
                        stats.error(format!("held {rel} at {off}: wrong bytes"));
                    }
                    Err(e) => stats.error(format!("held {rel} at {off}: {e}")),
                }
                stats.op(t);
                round += 1;
            }
        }
    }));
    threads
}

/// Runs readers while `replace` is done `times` times; asserts nothing failed.
fn under_replacement(
    m: &Mounted,
    what: &str,
    times: usize,
    mut replace: impl FnMut(&Mounted, &AtomicU64),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let threads = readers(m, &stop, &stats);
    wait_for(
        || format!("readers make no progress: {}", m.log()),
        || (stats.ops.load(Ordering::Relaxed) >= 200).then_some(()),
    );
    for _ in 0..times {
        replace(m, &stats.ops);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    wait_for(
        || format!("a reader hangs: a request was never answered\n{}", m.log()),
        || threads.iter().all(|t| t.is_finished()).then_some(()),
    );
    for t in threads {
        t.join().expect("reader panicked");
    }
    let errors = stats.errors.lock().expect("errors");
    let longest = *stats.longest.lock().expect("longest");
    println!(
        "{what} x{times}: {} reads/stats/listings, {} errors, {} wrong, longest pause {:.0} ms",
        stats.ops.load(Ordering::Relaxed),
        errors.len(),
        stats.wrong.load(Ordering::Relaxed),
        longest.as_secs_f64() * 1e3
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        m.log()
    );
    assert_eq!(stats.wrong.load(Ordering::Relaxed), 0);
}

/// The SIGTERM path alone: servers never ask the kernel to resend, so a reader would hang on
/// any request a server read and did not answer before exiting.
#[test]
fn sigterm_hands_the_mount_over_without_errors() {
    let m = match Mounted::start(false, 64 << 20) {
        Ok(m) => m,
        Err(reason) => return eprintln!("skipped: {reason}"),
    };
    let mut successor: Option<Child> = None;
    under_replacement(&m, "SIGTERM handover", 4, |m, progress| {
        let waiting = successor.is_none();
        if waiting {
            // Once: a successor started by hand waits on the socket and takes over at once.
            successor = Some(
                Command::new(BIN)
                    .args(server_args(m.dir.path(), m.resend))
                    .arg("--socket")
                    .arg(m.socket())
                    .stdout(log_file(m.dir.path()))
                    .stderr(log_file(m.dir.path()))
                    .spawn()
                    .expect("start a successor"),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let old = m.signal_server(Signal::SIGTERM);
        let new = m.wait_replaced(old, progress);
        if waiting {
            let id = successor.as_ref().map(|c| c.id() as i32);
            assert_eq!(Some(new), id, "the waiting successor took over");
        }
    });
    let log = m.log();
    assert_eq!(
        log.matches("released the mount served_s").count(),
        4,
        "{log}"
    );
    assert!(
        !log.contains("the server died"),
        "a server died instead of handing over:\n{log}"
    );
    drop(m);
    if let Some(mut c) = successor {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_server_killed_9_is_restarted_and_the_kernel_resends_its_requests() {
    // 8 KiB regions: the state log is compacted again and again, across the kills too.
    let m = match Mounted::start(true, 8 << 10) {
        Ok(m) => m,
        Err(reason) => return eprintln!("skipped: {reason}"),
    };
    under_replacement(&m, "kill -9 and restart", 4, |m, progress| {
        let old = m.signal_server(Signal::SIGKILL);
        m.wait_replaced(old, progress);
    });
    let log = m.log();
    assert_eq!(log.matches("the server died").count(), 4, "{log}");
    assert!(
        log.contains("compacted the state log"),
        "8 KiB regions never filled:\n{log}"
    );
    let resent = log.matches("serving a request the kernel resent").count();
    let compactions = log.matches("compacted the state log").count();
    println!(
        "requests the kernel resent after the kills: {resent}; state log compactions: {compactions}"
    );
    assert!(
        resent > 0,
        "no request was in flight at any of the kills, or none came back:\n{log}"
    );
}

#[test]
fn an_unmount_from_outside_ends_the_supervisor_instead_of_a_restart_loop() {
    let mut m = match Mounted::start(true, 64 << 20) {
        Ok(m) => m,
        Err(reason) => return eprintln!("skipped: {reason}"),
    };
    unmount(&m.mnt()).expect("umount");
    let log = dir_log(&m);
    let status = wait_for(
        || format!("the supervisor outlived its mount:\n{}", log()),
        || m.supervisor.try_wait().ok().flatten(),
    );
    let log = m.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("unmounted from outside"), "{log}");
    assert!(
        log.matches("started the server").count() <= 2,
        "restart loop:\n{log}"
    );
}

#[test]
fn a_server_of_another_protocol_is_refused_and_serving_goes_on() {
    let m = match Mounted::start(true, 64 << 20) {
        Ok(m) => m,
        Err(reason) => return eprintln!("skipped: {reason}"),
    };
    let serving = m.server_pid();
    // A hello of protocol 2: magic, version, kind 1 (hello), pid.
    let mut hello = b"LDFH".to_vec();
    hello.extend_from_slice(&2u32.to_le_bytes());
    hello.push(1);
    hello.extend_from_slice(&7u32.to_le_bytes());
    let sock = connect_to(&m.socket()).expect("connect");
    send_msg(sock.as_fd(), &hello, None).expect("send");
    let mut buf = [0u8; 256];
    let (len, fds) = recv_msg(sock.as_fd(), &mut buf).expect("answer");
    assert!(fds.is_none(), "descriptors passed to a foreign server");
    assert_eq!(&buf[..4], b"LDFH");
    assert_eq!(buf[8], 5, "a refusal: {:?}", &buf[..len]);
    assert!(String::from_utf8_lossy(&buf[13..len]).contains("protocol 1"));
    // Garbage is closed without an answer.
    let junk = connect_to(&m.socket()).expect("connect");
    send_msg(junk.as_fd(), b"GET / HTTP/1.1", None).expect("send");
    let (len, fds) = recv_msg(junk.as_fd(), &mut buf).expect("closed");
    assert_eq!((len, fds.is_none()), (0, true));
    // The mount is still served by the same server.
    let (rel, bytes) = m.tree.files.iter().next_back().expect("a file");
    assert_eq!(&fs::read(m.mnt().join(rel)).expect("read"), bytes);
    assert_eq!(m.server_pid(), serving);
}

/// The most fragile moment: a server dies inside the INIT handshake, before the INIT outcome
/// is settled (the next server answers the INIT the kernel resends) or after the supervisor
/// learnt it and before the reply (the next server resumes and answers the resent INIT with
/// the saved reply). Either way the mount comes up.
#[test]
fn a_server_dying_in_the_init_handshake_is_replaced_and_the_mount_comes_up() {
    for flag in ["--crash-once-in-init", "--crash-once-after-announce"] {
        let m = match Mounted::start_crashing(true, 64 << 20, Some(flag)) {
            Ok(m) => m,
            Err(reason) => return eprintln!("skipped: {reason}"),
        };
        for (rel, bytes) in &m.tree.files {
            assert_eq!(
                &fs::read(m.mnt().join(rel)).expect("read"),
                bytes,
                "{flag}: {rel}"
            );
        }
        let log = m.log();
        assert!(log.contains("crashing here on purpose"), "{flag}:\n{log}");
        assert_eq!(log.matches("the server died").count(), 1, "{flag}:\n{log}");
        let resumed = log.contains("resumed=true");
        assert_eq!(
            resumed,
            flag == "--crash-once-after-announce",
            "{flag}:\n{log}"
        );
    }
}
