//! Helpers for the end-to-end tests.
//!
//! Every test runs real processes: an S3 server (`scripts/s3_sandbox.py`, moto),
//! a `loaderd` daemon and `loaderctl` clients. Nothing is mocked, so a passing
//! test means the shipped binaries behave as documented.
//!
//! The binaries are not built by these tests: run `cargo build --bins` first,
//! or point `LOADERD_BIN_DIR` at a directory holding `loaderd` and `loaderctl`.
//! All helpers panic with the relevant log on failure; a test has nothing to
//! clean up, since every process and temporary directory is owned by a value
//! whose `Drop` kills or removes it.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub mod cluster;

/// How long a daemon or S3 server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Root of the repository (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Path of a built binary (`loaderd`, `loaderctl`).
///
/// `$LOADERD_BIN_DIR/name` if that variable is set, else the cargo target
/// directory of the running test executable (`target/<profile>/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("LOADERD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current test executable");
            let mut dir = exe
                .parent()
                .expect("test executable has a directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found; build the binaries first: cargo build --bins",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (free when this returns; tests accept the race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts two byte strings are equal, reporting sizes, digests and the first
/// differing offset instead of dumping megabytes.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual.iter().zip(expected).position(|(a, b)| a != b);
    panic!(
        "{what}: content differs: got {} bytes (sha256 {}), expected {} bytes (sha256 {}); first \
         differing offset: {:?}",
        actual.len(),
        sha256(actual),
        expected.len(),
        sha256(expected),
        first_diff
    );
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `random_bytes(len, seed)` to `path` (creating parents) and returns them.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = random_bytes(len, seed);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directory");
    }
    fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Every regular file under `root`, as (relative path with `/`, absolute path), sorted.
pub fn list_files(root: &Path) -> Vec<(String, PathBuf)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>();
                out.push((rel.join("/"), path));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Generates an ImageFolder dataset of real JPEGs with `loaderctl dataset gen`:
/// `dir/class_XXX/img_XXXX.jpg`.
pub fn gen_dataset(dir: &Path, classes: usize, per_class: usize) {
    let out = clean_env(&mut Command::new(bin("loaderctl")))
        .args(["dataset", "gen", "--out"])
        .arg(dir)
        .args([
            "--classes",
            &classes.to_string(),
            "--per-class",
            &per_class.to_string(),
        ])
        .args(["--seed", "1"])
        .output()
        .expect("run loaderctl dataset gen");
    assert!(
        out.status.success(),
        "loaderctl dataset gen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let files = list_files(dir);
    assert_eq!(
        files.len(),
        classes * per_class,
        "dataset gen wrote {} files, expected {classes} x {per_class}",
        files.len()
    );
}

/// A local directory holding a small dataset: generated JPEGs plus a few random
/// binary files sized to span several blocks.
pub struct Dataset {
    _dir: TempDir,
    /// Root of the dataset; its files are uploaded or mounted.
    pub root: PathBuf,
    /// (relative path, absolute path) of every file, sorted.
    pub files: Vec<(String, PathBuf)>,
}

impl Dataset {
    /// `classes` x `per_class` JPEGs plus `blobs/` with random files of the
    /// given sizes (seeded by their index).
    pub fn new(classes: usize, per_class: usize, blob_sizes: &[usize]) -> Dataset {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("dataset");
        if classes * per_class > 0 {
            gen_dataset(&root, classes, per_class);
        }
        for (i, size) in blob_sizes.iter().enumerate() {
            write_random_file(
                &root.join(format!("blobs/blob_{i:02}.bin")),
                *size,
                i as u64 + 1,
            );
        }
        fs::create_dir_all(&root).expect("dataset root");
        let files = list_files(&root);
        Dataset {
            _dir: dir,
            root,
            files,
        }
    }

    /// Only random files (no JPEGs), for tests about caching rather than formats.
    pub fn blobs(sizes: &[usize]) -> Dataset {
        Dataset::new(0, 0, sizes)
    }

    /// Contents of the file at `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Total size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|(_, p)| fs::metadata(p).expect("metadata").len())
            .sum()
    }
}

/// Sends SIGTERM to `child` and waits up to `EXIT_TIMEOUT`; kills it after that.
/// Returns the exit status, or `None` if it had to be killed.
fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

pub(crate) fn open_log(path: &Path) -> (Stdio, Stdio) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file");
    let err = file.try_clone().expect("clone log file");
    (Stdio::from(file), Stdio::from(err))
}

/// A moto S3 server with one bucket, started by `scripts/s3_sandbox.py`.
pub struct S3Sandbox {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket holding the uploads.
    pub bucket: String,
    /// Always `us-east-1`.
    pub region: String,
    /// Access key the server was set up with (moto accepts any).
    pub access_key_id: String,
    /// Secret key the server was set up with (moto accepts any).
    pub secret_access_key: String,
    /// Number of objects uploaded at start.
    pub objects: usize,
    /// TCP port of the server; kept across `restart`.
    pub port: u16,
    uploads: Vec<(PathBuf, String)>,
    dir: TempDir,
    child: Option<Child>,
}

/// The bucket every sandbox creates.
pub const BUCKET: &str = "datasets";

impl S3Sandbox {
    /// Starts a server on a free port and uploads each `(local_dir, prefix)`
    /// (every file under `local_dir` becomes `prefix/relative/path`).
    pub fn start(upload: &[(&Path, &str)]) -> S3Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = upload
            .iter()
            .map(|(p, prefix)| (p.to_path_buf(), prefix.to_string()))
            .collect();
        let mut sandbox = S3Sandbox {
            endpoint: String::new(),
            bucket: BUCKET.to_string(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            objects: 0,
            port: 0,
            uploads,
            dir,
            child: None,
        };
        sandbox.spawn(0);
        sandbox
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3.log")
    }

    /// Contents of the server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self, port: u16) {
        let ready = self.dir.path().join("ready.json");
        let _ = fs::remove_file(&ready);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut cmd = Command::new(python);
        cmd.arg(repo_root().join("scripts/s3_sandbox.py"))
            .args([
                "--port",
                &port.to_string(),
                "--bucket",
                &self.bucket,
                "--ready-file",
            ])
            .arg(&ready);
        for (local, prefix) in &self.uploads {
            cmd.arg("--upload")
                .arg(format!("{}:{prefix}", local.display()));
        }
        let (out, err) = open_log(&self.log_path());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn python3");
        let deadline = Instant::now() + READY_TIMEOUT;
        let info: serde_json::Value = loop {
            if let Ok(text) = fs::read_to_string(&ready) {
                break serde_json::from_str(&text).expect("ready file is JSON");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("s3 sandbox exited early ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "s3 sandbox not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let field = |name: &str| {
            info[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready file lacks {name}"))
                .to_string()
        };
        self.endpoint = field("endpoint");
        self.region = field("region");
        self.access_key_id = field("access_key_id");
        self.secret_access_key = field("secret_access_key");
        self.objects = info["objects"].as_u64().expect("objects") as usize;
        self.port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint port");
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM, then kill); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Stops the server if running and starts a fresh one on the same port with
    /// the same uploads: the "UFS went down and came back" case.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        // The port may linger for a moment after the old process exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        self.spawn(port);
    }

    /// `s3://BUCKET/PREFIX` (`s3://BUCKET` for an empty prefix).
    pub fn uri(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// S3 options for a mount of this server, with the given secret key.
    pub fn options_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        vec![
            ("endpoint".into(), self.endpoint.clone()),
            ("region".into(), self.region.clone()),
            ("access_key_id".into(), self.access_key_id.clone()),
            ("secret_access_key".into(), secret.to_string()),
            ("allow_http".into(), "true".into()),
        ]
    }

    /// S3 options for a mount of this server.
    pub fn options(&self) -> Vec<(String, String)> {
        self.options_with_secret(&self.secret_access_key)
    }

    /// `loaderd` arguments mounting `s3://BUCKET/prefix` at `point`.
    pub fn mount_args(&self, point: &str, prefix: &str) -> Vec<String> {
        self.mount_args_with_secret(point, prefix, &self.secret_access_key)
    }

    /// Like `mount_args`, with a chosen secret key (moto accepts any).
    pub fn mount_args_with_secret(&self, point: &str, prefix: &str, secret: &str) -> Vec<String> {
        let mut args = vec![
            "--mount".to_string(),
            format!("{point}={}", self.uri(prefix)),
        ];
        for (key, value) in self.options_with_secret(secret) {
            args.push("--mount-option".into());
            args.push(format!("{point}:{key}={value}"));
        }
        args
    }

    /// Writes (or overwrites) object `key` with `data`, through boto3.
    pub fn put_object(&self, key: &str, data: &[u8]) {
        let src = self.dir.path().join("put_object.bin");
        fs::write(&src, data).expect("write object source");
        self.boto3("put", key, &src);
    }

    /// Deletes object `key`, through boto3.
    pub fn delete_object(&self, key: &str) {
        self.boto3("delete", key, Path::new(""));
    }

    fn boto3(&self, op: &str, key: &str, src: &Path) {
        let script = "import sys, boto3\n\
            endpoint, region, bucket, op, key, src = sys.argv[1:]\n\
            c = boto3.client('s3', endpoint_url=endpoint, region_name=region,\n\
                aws_access_key_id='testing', aws_secret_access_key='testing')\n\
            if op == 'put':\n\
            \x20   c.upload_file(src, bucket, key)\n\
            else:\n\
            \x20   c.delete_object(Bucket=bucket, Key=key)\n";
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let out = Command::new(python)
            .args([
                "-c",
                script,
                &self.endpoint,
                &self.region,
                &self.bucket,
                op,
                key,
            ])
            .arg(src)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{op} object {key} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for S3Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP server on a port that accepts connections and never answers: an
/// object store that hangs.
pub struct BlackHole {
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl BlackHole {
    /// Listens on 127.0.0.1:`port`.
    pub fn bind(port: u16) -> BlackHole {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind black hole on port {port}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    held.push(stream);
                }
            }
        });
        BlackHole {
            stop,
            port,
            thread: Some(thread),
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running `loaderd` with its own socket, metrics port and log file.
pub struct Daemon {
    /// The Unix socket `loaderctl` talks to.
    pub socket: PathBuf,
    /// `127.0.0.1:PORT` serving `/metrics` and `/healthz`.
    pub metrics_addr: String,
    args: Vec<String>,
    /// A command prefix the daemon runs under (`ip netns exec NS`), if any.
    wrapper: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `loaderd --socket <tmp>/loaderd.sock --metrics-addr 127.0.0.1:<free>
    /// ARGS...` and waits until `loaderctl status` succeeds.
    pub fn start(args: &[String]) -> Daemon {
        Daemon::try_start(args)
            .unwrap_or_else(|log| panic!("loaderd exited during start; args {args:?}; log:\n{log}"))
    }

    /// Directory private to this daemon (holds the socket and the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("loaderd.log")
    }

    /// Everything the daemon wrote to stdout and stderr, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Like [`Daemon::start`], but a daemon that exits during start is an `Err` with its
    /// log instead of a panic (for tests that skip when the machine cannot do something).
    pub fn try_start(args: &[String]) -> Result<Daemon, String> {
        Daemon::try_start_wrapped(&[], args)
    }

    /// Like [`Daemon::start`], running the daemon under `wrapper` (for example `ip netns
    /// exec NS`). Its metrics address is then inside the wrapper's network.
    pub fn start_wrapped(wrapper: &[String], args: &[String]) -> Daemon {
        Daemon::try_start_wrapped(wrapper, args)
            .unwrap_or_else(|log| panic!("loaderd exited during start; args {args:?}; log:\n{log}"))
    }

    fn try_start_wrapped(wrapper: &[String], args: &[String]) -> Result<Daemon, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("loaderd.sock");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut daemon = Daemon {
            socket,
            metrics_addr,
            args: args.to_vec(),
            wrapper: wrapper.to_vec(),
            dir,
            child: None,
        };
        daemon.try_spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!(
                "loaderd exited during start; args {:?}; log:\n{log}",
                self.args
            );
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let (out, err) = open_log(&self.log_path());
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("loaderd"));
                c
            }
            None => Command::new(bin("loaderd")),
        };
        let mut child = clean_env(&mut cmd)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics-addr", &self.metrics_addr])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn loaderd");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("({status})\n{}", self.log()));
            }
            if self.socket.exists() && self.ctl(&["status"]).status.success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "loaderd not ready after {READY_TIMEOUT:?}; args {:?}; log:\n{}",
                    self.args,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Runs `loaderctl --socket S ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        loaderctl(&self.socket, args)
    }

    /// Like `ctl`, but for a command that must succeed; returns its stdout.
    #[track_caller]
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ctl_bytes(args)).into_owned()
    }

    /// Like `ctl_ok`, returning raw stdout (for `cat`).
    #[track_caller]
    pub fn ctl_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "loaderctl {args:?} failed ({}):\nstderr: {}\ndaemon log (tail):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 4000)
        );
        out.stdout
    }

    /// Runs a command that must fail; returns its stderr.
    #[track_caller]
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "loaderctl {args:?} succeeded but should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)])
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `loaderctl cat PATH` as bytes.
    #[track_caller]
    pub fn cat(&self, path: &str) -> Vec<u8> {
        self.ctl_bytes(&["cat", path])
    }

    /// `loaderctl status --json`, parsed.
    #[track_caller]
    pub fn status_json(&self) -> serde_json::Value {
        let text = self.ctl_ok(&["status", "--json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text}"))
    }

    /// `loaderctl stat --json PATH`, parsed.
    #[track_caller]
    pub fn stat_json(&self, path: &str) -> serde_json::Value {
        let text = self.ctl_ok(&["stat", "--json", path]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("stat --json is not JSON ({e}): {text}"))
    }

    /// Waits (up to 10 s) until no shared-memory lease is held; whether that happened.
    pub fn leases_released(&self) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.status_json()["shm_leased_bytes"] == 0
        })
    }

    /// Body of `GET /metrics`.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
    }

    /// Sum of every Prometheus series matching `selector`: a metric name with
    /// optional labels, e.g. `loaderd_ufs_requests_total{op="get"}`. A series
    /// matches when its name is the selector's and it carries every label the
    /// selector names (other labels are ignored). Absent series count as 0.
    pub fn metric(&self, selector: &str) -> f64 {
        metric_sum(&self.metrics(), selector)
    }

    /// Sends SIGKILL and waits: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then asserts a clean exit (code 0) within 20 s.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            match terminate(&mut child) {
                Some(status) => assert!(
                    status.code() == Some(0),
                    "loaderd exited with {status} after SIGTERM; log:\n{}",
                    tail(&self.log(), 4000)
                ),
                None => panic!(
                    "loaderd did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log:\n{}",
                    tail(&self.log(), 4000)
                ),
            }
        }
    }

    /// Starts the daemon again (stopping it first if running) with the same
    /// arguments, socket and metrics address.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// OS process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `loaderctl --socket SOCKET ARGS...` (usable from threads without the `Daemon`).
pub fn loaderctl(socket: &Path, args: &[&str]) -> Output {
    clean_env(&mut Command::new(bin("loaderctl")))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loaderctl")
}

/// Why FUSE mounts cannot be tested on this machine, or `None` when they can be tried.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened".into());
    }
    None
}

/// A `loaderd` serving its FUSE view at [`FuseDaemon::mnt`]. Dropping it kills the daemon
/// and detaches the mount, so no stale mount outlives a test.
pub struct FuseDaemon {
    /// The daemon (gRPC and the rest work as usual).
    pub daemon: Daemon,
    /// The FUSE mount point.
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl FuseDaemon {
    /// Starts `loaderd --fuse-mount <tmp>/mnt ARGS...`; `Err` is a reason to skip (no
    /// FUSE device, mounting not permitted).
    pub fn start(args: &[String]) -> Result<FuseDaemon, String> {
        if let Some(reason) = fuse_unavailable() {
            return Err(reason);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("mount point");
        let mut all = vec!["--fuse-mount".to_string(), mnt.display().to_string()];
        all.extend_from_slice(args);
        match Daemon::try_start(&all) {
            Ok(daemon) => {
                let d = FuseDaemon {
                    daemon,
                    mnt,
                    _dir: dir,
                };
                assert!(
                    d.is_mounted(),
                    "loaderd is up but {} is not a FUSE mount; log:\n{}",
                    d.mnt.display(),
                    tail(&d.daemon.log(), 4000)
                );
                Ok(d)
            }
            Err(log) if log.contains("mounting FUSE") => Err(format!(
                "mounting FUSE is not permitted here: {}",
                tail(&log, 600)
            )),
            Err(log) => panic!("loaderd exited during start; args {all:?}; log:\n{log}"),
        }
    }

    /// Whether `/proc/self/mountinfo` lists a FUSE mount at the mount point.
    pub fn is_mounted(&self) -> bool {
        fuse_mounts(&self.mnt) > 0
    }

    /// `mnt` joined with a relative path.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// How many FUSE mounts `/proc/self/mountinfo` lists at exactly `path`.
pub fn fuse_mounts(path: &Path) -> usize {
    let want = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            let fstype = l.split(" - ").nth(1).unwrap_or("");
            point == want && fstype.starts_with("fuse")
        })
        .count()
}

impl std::ops::Deref for FuseDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for FuseDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Drop for FuseDaemon {
    fn drop(&mut self) {
        self.daemon.kill9();
        while fuse_mounts(&self.mnt) > 0 {
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

/// Last `max` bytes of `text` (on a char boundary).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Plain HTTP/1.1 GET; returns the body. Panics on a non-200 answer.
pub fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("{e}"))
}

/// The body of `GET path` on `addr` if it answers 200, else why not.
pub fn try_http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read {addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer: {text}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200") {
        return Err(format!("GET {addr}{path}: {status_line}\n{body}"));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_string()
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Splits `name{a="x",b="y"}` into its name and labels.
fn parse_series(series: &str) -> (&str, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let Some((name, rest)) = series.split_once('{') else {
        return (series, labels);
    };
    let inner = rest.trim_end_matches('}');
    // Label values in our metrics never contain `",` so a split is enough.
    for pair in inner.split("\",") {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    (name, labels)
}

/// Sum of the values of series in Prometheus text `text` that match `selector`
/// (see [`Daemon::metric`]).
pub fn metric_sum(text: &str, selector: &str) -> f64 {
    let (want_name, want_labels) = parse_series(selector.trim());
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace if there are labels, else at whitespace.
        let split_at = match line.find('{') {
            Some(_) => line.rfind('}').map(|i| i + 1),
            None => line.find(char::is_whitespace),
        };
        let Some(split_at) = split_at else { continue };
        let (series, rest) = line.split_at(split_at);
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (name, labels) = parse_series(series);
        if name == want_name && want_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            sum += value;
        }
    }
    sum
}

/// Removes `LOADERD_*` variables (they would override the flags the tests
/// pass) from a command's environment, keeping `LOADERD_BIN_DIR`.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("LOADERD_") && name != "LOADERD_BIN_DIR" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs `cmd` with piped output, killing it after `timeout` (then panics):
/// for one-shot invocations of `loaderd` that must not turn into a server.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = clean_env(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// `--mount POINT=file:///DIR`.
pub fn file_mount_args(point: &str, dir: &Path) -> Vec<String> {
    vec!["--mount".into(), format!("{point}={}", file_uri(dir))]
}

/// `file:///abs/dir`.
pub fn file_uri(dir: &Path) -> String {
    let abs = dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.display()));
    format!("file://{}", abs.display())
}

/// Writes `toml` as `loaderd.toml` in `dir`; returns `["--config", PATH]` for the daemon.
pub fn config_file_args(dir: &Path, toml: &str) -> Vec<String> {
    let path = dir.join("loaderd.toml");
    fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    vec!["--config".into(), path.to_string_lossy().into_owned()]
}

/// `["--flag", "value", ...]` from string pairs; saves `.to_string()` noise.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Tier `name` from a `status --json` document.
#[track_caller]
pub fn tier<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tiers"]
        .as_array()
        .and_then(|tiers| tiers.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("status has no tier {name:?}: {status}"))
}

/// Sum of `field` over every tier in a `status --json` document.
pub fn tiers_sum(status: &serde_json::Value, field: &str) -> u64 {
    status["tiers"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t[field].as_u64()).sum())
        .unwrap_or(0)
}

/// A shared-memory read of all of `path` through `c`: the bytes of its mapped pieces, and how
/// many bytes the daemon answered as fallback extents (to be read over gRPC) instead.
pub fn shm_read_mapped(c: &mut loaderctl::client::shm::ShmClient, path: &str) -> (Vec<u8>, u64) {
    use loaderctl::client::shm::Piece;
    let (mut mapped, mut fallback) = (Vec::new(), 0);
    c.read(path, 0, 0, |_, piece| {
        match piece {
            Piece::Mapped(b) => mapped.extend_from_slice(b),
            Piece::Fallback { len, .. } => fallback += len,
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("shared-memory read of {path}: {e}"));
    (mapped, fallback)
}

/// Every `.blk` file of an SSD tier directory, sorted.
pub fn ssd_block_files(ssd_dir: &Path) -> Vec<PathBuf> {
    let blocks = ssd_dir.join("blocks");
    if !blocks.is_dir() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = list_files(&blocks)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .collect();
    out.sort();
    out
}

/// Flips every bit of the byte at `offset` in `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open block file");
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read byte");
    byte[0] ^= 0xFF;
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&byte).expect("write byte");
    file.sync_all().expect("sync");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_matches_name_and_label_subset() {
        let text = "# HELP x\n# TYPE loaderd_ufs_requests_total counter\n\
            loaderd_ufs_requests_total{op=\"get\"} 3\n\
            loaderd_ufs_requests_total{mount=\"/data\",op=\"get\"} 2\n\
            loaderd_ufs_requests_total{op=\"list\"} 5\n\
            loaderd_cache_misses_total 7\n\
            loaderd_cache_misses_total_extra 100\n";
        assert_eq!(
            metric_sum(text, "loaderd_ufs_requests_total{op=\"get\"}"),
            5.0
        );
        assert_eq!(metric_sum(text, "loaderd_ufs_requests_total"), 10.0);
        assert_eq!(metric_sum(text, "loaderd_cache_misses_total"), 7.0);
        assert_eq!(metric_sum(text, "loaderd_cache_hits_total"), 0.0);
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn random_bytes_are_deterministic() {
        assert_eq!(random_bytes(100, 7), random_bytes(100, 7));
        assert_ne!(random_bytes(100, 7), random_bytes(100, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
    }
}
