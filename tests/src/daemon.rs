//! A real `loaderd` process, `loaderctl` run against it, and the arguments and
//! `status --json` pieces the tests start and read daemons with.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::metrics::metric_sum;
use crate::net::{free_port, http_get};
use crate::process::{self, bin, clean_env, spawn_logged, tail, wait_ready, wait_until};

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
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("loaderd"));
                c
            }
            None => Command::new(bin("loaderd")),
        };
        clean_env(&mut cmd)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics-addr", &self.metrics_addr])
            .args(&self.args);
        let mut child = spawn_logged(&mut cmd, &self.log_path());
        let ready = wait_ready(
            &mut child,
            || (self.socket.exists() && self.ctl(&["status"]).status.success()).then_some(()),
            "loaderd",
            || format!("args {:?}; log:\n{}", self.args, self.log()),
        );
        if let Err(status) = ready {
            return Err(format!("({status})\n{}", self.log()));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The daemon's shared-memory socket, beside its gRPC socket.
    pub fn shm_socket(&self) -> PathBuf {
        loaderd_proto::transport::default_shm_socket(&self.socket)
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
        process::kill9(&mut self.child);
    }

    /// SIGTERM, then asserts a clean exit (code 0) within 20 s.
    #[track_caller]
    pub fn stop(&mut self) {
        process::stop(self.child.take(), "loaderd", || self.log());
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
