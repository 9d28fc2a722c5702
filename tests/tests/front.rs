//! The thin FUSE front across restarts of its worker: readers through the front's mount
//! see pauses, not errors, while the worker is killed -9 and started again; a worker that
//! stays away longer than `fuse.worker_wait` is EIO naming the cause, and the mount works
//! again once it is back; an open file whose object changed while the worker was down fails
//! its next read rather than serving other bytes. Every test skips with a printed reason
//! where FUSE cannot be mounted.
//!
//! The front's own restarts: the serving front SIGTERMed (a handover) and killed -9 (the
//! supervisor starts another, which resends what the dead one held) while readers hash
//! every file, stat, list and read through descriptors opened once: no error, no wrong
//! byte; and the same crash without the supervisor is ENOTCONN (what the handover is for).
//!
//! The front runs with `keep_cache = false` and 1 s kernel timeouts, so every open and
//! most lookups reach it (and the worker) instead of the kernel's page and dentry caches.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use loaderd_tests::{
    Dataset, FuseDaemon, args, assert_bytes_eq, config_file_args, file_mount_args, random_bytes,
    sha256, tail, wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const EIO: i32 = 5;
const ESTALE: i32 = 116;
const ENOTCONN: i32 = 107;

/// The worker over `data` and a front with `worker_wait` and no page cache across opens.
fn start(data: &Dataset, dir: &Path, worker_wait: &str) -> Option<FuseDaemon> {
    start_with(data, dir, worker_wait, &[])
}

/// Like [`start`], the front with `extra` flags.
fn start_with(data: &Dataset, dir: &Path, worker_wait: &str, extra: &[&str]) -> Option<FuseDaemon> {
    let mut worker = file_mount_args("/data", &data.root);
    worker.extend(args(&["--block-size", "64KiB"]));
    let mut front = config_file_args(
        dir,
        "[fuse]\nkeep_cache = false\nentry_timeout = \"1s\"\nattr_timeout = \"1s\"\n",
    );
    front.extend(args(&["--worker-wait", worker_wait, "--threads", "8"]));
    front.extend(args(extra));
    match FuseDaemon::start_front(&worker, &front) {
        Ok(d) => Some(d),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// What the reader threads saw.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
    /// The longest single open-read-close, in microseconds.
    longest_us: AtomicU64,
}

/// Reader threads that read every file whole, again and again, comparing digests, until
/// `stop` is set.
fn readers(
    root: PathBuf,
    want: Arc<Vec<(String, String)>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<String>>> {
    (0..3)
        .map(|t| {
            let (root, want, tally, stop) =
                (root.clone(), want.clone(), tally.clone(), stop.clone());
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut i = t * 7;
                while !stop.load(Ordering::Relaxed) {
                    let (rel, hash) = &want[i % want.len()];
                    i += 1;
                    let started = Instant::now();
                    let got = fs::read(root.join(rel));
                    let took = started.elapsed().as_micros() as u64;
                    tally.longest_us.fetch_max(took, Ordering::Relaxed);
                    tally.reads.fetch_add(1, Ordering::Relaxed);
                    match got {
                        Ok(bytes) if &sha256(&bytes) == hash => {}
                        Ok(bytes) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{rel}: wrong bytes ({} read)", bytes.len()));
                        }
                        Err(e) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{rel}: {e}"));
                        }
                    }
                }
                failures
            })
        })
        .collect()
}

/// Every file of `data` with the sha256 of its bytes, as the readers check them.
fn digests(data: &Dataset) -> Arc<Vec<(String, String)>> {
    Arc::new(
        data.files
            .iter()
            .map(|(rel, _)| (rel.clone(), sha256(&data.read(rel))))
            .collect(),
    )
}

#[test]
fn readers_see_no_error_while_the_worker_is_killed_and_restarted() {
    let data = Dataset::new(3, 6, &[3 * MIB + 17, 700_000, 64 * KIB, 1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut d) = start(&data, dir.path(), "60s") else {
        return;
    };
    let want = digests(&data);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = readers(d.path("data"), want.clone(), tally.clone(), stop.clone());

    let reads_now = || tally.reads.load(Ordering::Relaxed);
    // Readers going, then a crash and a restart, twice, each time waiting until reads went
    // through the restarted worker.
    assert!(
        wait_until(Duration::from_secs(60), || reads_now() >= 20),
        "no reads through the front before the first kill"
    );
    let mut downs = Vec::new();
    for round in 0..2 {
        d.daemon.kill9();
        let down = Instant::now();
        thread::sleep(Duration::from_millis(700));
        d.daemon.restart();
        downs.push(down.elapsed());
        let before = reads_now();
        assert!(
            wait_until(Duration::from_secs(60), || reads_now()
                >= before + 2 * want.len() as u64),
            "round {round}: reads did not resume after the worker restarted; front log:\n{}",
            tail(&d.log(), 3000)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("reader thread"))
        .collect();
    let (reads, errors, wrong) = (
        reads_now(),
        tally.errors.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
    );
    let longest = Duration::from_micros(tally.longest_us.load(Ordering::Relaxed));
    println!(
        "front across 2 worker kill -9 + restarts: {reads} whole-file reads, {errors} errors, \
         {wrong} wrong; longest read {longest:?}; worker down for {downs:?}"
    );
    assert!(
        failures.is_empty(),
        "{errors} errors, {wrong} wrong of {reads} reads: {:?}; front log:\n{}",
        &failures[..failures.len().min(10)],
        tail(&d.log(), 3000)
    );
    let log = d.log();
    assert!(
        log.contains("worker unreachable") && log.contains("worker reachable again"),
        "the front did not notice the restarts: {}",
        tail(&log, 3000)
    );
}

#[test]
fn a_worker_down_past_worker_wait_is_eio_naming_the_cause_then_reads_resume() {
    let data = Dataset::blobs(&[200_000, 300_000]);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut d) = start(&data, dir.path(), "2s") else {
        return;
    };
    let (a, b) = (
        d.path("data/blobs/blob_00.bin"),
        d.path("data/blobs/blob_01.bin"),
    );
    assert_eq!(fs::read(&a).unwrap(), data.read("blobs/blob_00.bin"));

    d.daemon.kill9();
    let started = Instant::now();
    let e = fs::read(&b).expect_err("read while the worker is down");
    let waited = started.elapsed();
    assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
    assert!(
        waited >= Duration::from_millis(1500),
        "failed after {waited:?}, before worker_wait (2 s)"
    );
    let log = d.log();
    let socket = d.daemon.socket.display().to_string();
    // The cause as the system gave it: the killed worker's socket file is left behind.
    assert!(
        log.contains("FUSE request failed")
            && log.contains("unreachable for 2s")
            && log.contains(&socket)
            && (log.contains("Connection refused") || log.contains("No such file")),
        "no warning naming the worker and the cause: {}",
        tail(&log, 3000)
    );

    d.daemon.restart();
    assert_eq!(fs::read(&b).unwrap(), data.read("blobs/blob_01.bin"));
    assert_eq!(fs::read(&a).unwrap(), data.read("blobs/blob_00.bin"));
}

#[test]
fn an_object_changed_while_the_worker_is_down_fails_its_open_handle() {
    let data = Dataset::blobs(&[8 * MIB]);
    let rel = "blobs/blob_00.bin";
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut d) = start(&data, dir.path(), "60s") else {
        return;
    };
    let path = d.path(&format!("data/{rel}"));
    let old = data.read(rel);
    let mut held = fs::File::open(&path).unwrap();
    let mut head = vec![0; 4096];
    held.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..4096]);

    d.daemon.kill9();
    let new = random_bytes(6 * MIB + 5, 99);
    fs::write(data.root.join(rel), &new).unwrap();
    d.daemon.restart();

    // Far past what the kernel read ahead: the read reaches the front, pinned to the old
    // version, which the restarted worker no longer has.
    held.seek(SeekFrom::Start(5 * MIB as u64)).unwrap();
    let mut buf = vec![0; 4096];
    let e = held
        .read_exact(&mut buf)
        .expect_err("a read of the old version");
    assert_eq!(e.raw_os_error(), Some(ESTALE), "{e}");
    drop(held);

    // A fresh open (after the kernel's 1 s attribute timeout) reads the new bytes whole.
    thread::sleep(Duration::from_millis(1200));
    assert_bytes_eq(&fs::read(&path).unwrap(), &new, "the new version");
}

/// Drops the page cache of `f`, so the next read of it reaches the front with its handle.
fn drop_cached_pages(f: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Reader threads that stat and list every directory and hash every file, and one that
/// reads ranges of descriptors opened once at the start, until `stop` is set; each returns
/// its failures.
fn restart_readers(
    root: PathBuf,
    source: PathBuf,
    want: Arc<Vec<(String, String)>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<String>>> {
    let mut threads = readers(root.clone(), want.clone(), tally.clone(), stop.clone());
    {
        let (root, source, want, tally, stop) = (
            root.clone(),
            source.clone(),
            want.clone(),
            tally.clone(),
            stop.clone(),
        );
        threads.push(thread::spawn(move || {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (rel, _) = &want[i % want.len()];
                i += 1;
                let started = Instant::now();
                let path = root.join(rel);
                let dir = path.parent().expect("a directory");
                let src_dir = source
                    .join(rel)
                    .parent()
                    .expect("a directory")
                    .to_path_buf();
                let names = |d: &Path| -> std::io::Result<Vec<String>> {
                    let mut v: Vec<String> = fs::read_dir(d)?
                        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect::<Result<_, _>>()?;
                    v.sort();
                    Ok(v)
                };
                let res = fs::metadata(&path).and_then(|m| {
                    let src = fs::metadata(source.join(rel))?;
                    let listed = names(dir)?;
                    let want_names = names(&src_dir)?;
                    Ok((m.len() == src.len(), listed == want_names))
                });
                tally
                    .longest_us
                    .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match res {
                    Ok((true, true)) => {}
                    Ok(got) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!(
                            "{rel}: stat/readdir differ (size ok, names ok) = {got:?}"
                        ));
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{rel}: stat/readdir: {e}"));
                    }
                }
            }
            failures
        }));
    }
    threads.push(thread::spawn(move || {
        use std::os::unix::fs::FileExt;
        let held: Vec<(String, fs::File, Vec<u8>)> = want
            .iter()
            .filter_map(|(rel, _)| {
                let bytes = fs::read(source.join(rel)).ok()?;
                (bytes.len() > 4096).then(|| (rel.clone(), fs::File::open(root.join(rel)), bytes))
            })
            .take(4)
            .map(|(rel, f, bytes)| (rel, f.expect("open a held descriptor"), bytes))
            .collect();
        assert!(!held.is_empty(), "no file to hold open");
        let mut failures = Vec::new();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            for (rel, f, bytes) in &held {
                n += 1;
                let len = 4096.min(bytes.len());
                let at = (n.wrapping_mul(2_654_435_761) % (bytes.len() - len) as u64) as usize;
                drop_cached_pages(f);
                let mut buf = vec![0; len];
                let started = Instant::now();
                let got = f.read_exact_at(&mut buf, at as u64);
                tally
                    .longest_us
                    .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match got {
                    Ok(()) if buf == bytes[at..at + len] => {}
                    Ok(()) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{rel} (held): wrong bytes at {at}"));
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{rel} (held) at {at}: {e}"));
                    }
                }
            }
        }
        failures
    }));
    threads
}

#[test]
fn readers_see_no_error_while_the_front_is_handed_over_and_killed() {
    let data = Dataset::new(3, 6, &[3 * MIB + 17, 700_000, 64 * KIB, 1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut d) = start(&data, dir.path(), "60s") else {
        return;
    };
    let want = digests(&data);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = restart_readers(
        d.path("data"),
        data.root.clone(),
        want.clone(),
        tally.clone(),
        stop.clone(),
    );
    let reads_now = || tally.reads.load(Ordering::Relaxed);
    let resumed = |what: &str, d: &FuseDaemon| {
        let before = reads_now();
        assert!(
            wait_until(Duration::from_secs(90), || reads_now()
                >= before + 2 * want.len() as u64),
            "reads did not resume after {what}; front log:\n{}",
            tail(&d.log(), 4000)
        );
    };
    assert!(
        wait_until(Duration::from_secs(60), || reads_now() >= 20),
        "no reads through the front before the first restart"
    );
    let mut events = Vec::new();
    for (what, signal) in [
        ("SIGTERM (handover)", "TERM"),
        ("SIGTERM (handover)", "TERM"),
        ("kill -9", "KILL"),
        ("worker kill -9", ""),
        ("kill -9", "KILL"),
    ] {
        let front = d.front.as_ref().expect("a front");
        if signal.is_empty() {
            d.daemon.kill9();
            thread::sleep(Duration::from_millis(500));
            d.daemon.restart();
        } else {
            let pid = front.signal_serving(signal);
            events.push(format!("{what} -> serving front {pid}"));
        }
        resumed(what, &d);
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("reader thread"))
        .collect();
    let (reads, errors, wrong) = (
        reads_now(),
        tally.errors.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
    );
    let longest = Duration::from_micros(tally.longest_us.load(Ordering::Relaxed));
    println!(
        "front across 2 handovers, 2 kill -9 and a worker kill -9: {reads} whole-file reads, \
         {errors} errors, {wrong} wrong; longest pause (one read, stat+readdir or held read) \
         {longest:?}; {events:?}"
    );
    assert!(
        failures.is_empty(),
        "{errors} errors, {wrong} wrong of {reads} reads: {:?}; front log:\n{}",
        &failures[..failures.len().min(10)],
        tail(&d.log(), 4000)
    );
    let log = d.log();
    assert_eq!(
        (
            log.matches("granted the mount").count(),
            log.matches("then handing over").count()
        ),
        (5, 2),
        "five serving fronts, two of them handing over: {}",
        tail(&log, 4000)
    );
    // SIGTERM to the supervisor: everything stops, the mount goes.
    d.front.as_mut().expect("a front").stop();
    assert!(!d.is_mounted(), "the supervisor left the mount behind");
}

#[test]
fn without_the_supervisor_a_crashed_front_is_enotconn() {
    let data = Dataset::blobs(&[200_000]);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut d) = start_with(&data, dir.path(), "60s", &["--no-supervisor"]) else {
        return;
    };
    let path = d.path("data/blobs/blob_00.bin");
    assert_eq!(fs::read(&path).unwrap(), data.read("blobs/blob_00.bin"));
    assert!(
        !d.log().contains("supervisor"),
        "--no-supervisor still ran a supervisor: {}",
        tail(&d.log(), 2000)
    );
    d.kill9();
    let e = fs::read(&path).expect_err("a read through a dead front");
    assert_eq!(e.raw_os_error(), Some(ENOTCONN), "{e}");
}
