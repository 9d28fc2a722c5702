//! Multi-node fixtures: a real etcd server and loaderd nodes joined through it, all as
//! separate processes on loopback ports.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::daemon::Daemon;
use crate::process::{args, spawn_logged, tail};

/// Why etcd-based tests cannot run here, or `None`.
pub fn etcd_unavailable() -> Option<String> {
    match Command::new("etcd").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("etcd --version failed: {}", o.status)),
        Err(e) => Some(format!(
            "etcd not found ({e}); scripts/install-deps.sh installs it"
        )),
    }
}

/// A port free on `ip` right now (probed there: a port free on loopback may be taken on
/// another address, by an outgoing connection's ephemeral port for one).
fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind an ephemeral port on {ip}: {e}"))
        .port()
}

/// A single-member etcd cluster with its data in a temp dir.
pub struct Etcd {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    ip: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd on loopback and waits until it answers `/health`.
    pub fn start() -> Etcd {
        Etcd::start_on("127.0.0.1")
    }

    /// Starts etcd listening on `ip`.
    pub fn start_on(ip: &str) -> Etcd {
        let client_port = free_port_on(ip);
        let mut etcd = Etcd {
            ip: ip.to_string(),
            endpoint: format!("http://{ip}:{client_port}"),
            client_port,
            peer_port: free_port_on(ip),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        etcd.spawn();
        etcd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")]);
        self.child = Some(spawn_logged(&mut cmd, &self.dir.path().join("etcd.log")));
        let addr = format!("{}:{}", self.ip, self.client_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !crate::try_http_get(&addr, "/health").is_ok_and(|b| b.contains("true")) {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy; log:\n{}",
                tail(&self.log(), 4000)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings shared by the nodes of one test cluster.
pub struct ClusterFixture {
    dir: TempDir,
    /// The file holding the cluster token.
    pub token_file: PathBuf,
    /// Short timings so failures show within seconds.
    pub config: PathBuf,
}

/// The token the fixture's nodes share.
pub const TOKEN: &str = "test-cluster-token-0123456789";

impl ClusterFixture {
    /// A token file and a config with a 3 s lease, 2 s peer timeout and 1 MiB blocks.
    pub fn new() -> ClusterFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        fs::write(&token_file, TOKEN).expect("write token");
        let config = dir.path().join("cluster.toml");
        fs::write(
            &config,
            "[cache]\nblock_size = \"1MiB\"\n[cluster]\nlease_ttl = \"3s\"\npeer_timeout = \"2s\"\nsuspect_time = \"3s\"\n",
        )
        .expect("write config");
        ClusterFixture {
            dir,
            token_file,
            config,
        }
    }

    /// A directory for a node's SSD tier that outlives the node's restarts.
    pub fn ssd_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("ssd-{id}"))
    }

    /// Arguments of node `id` with its peer API on `listen` (`host:port`), joined by
    /// `membership` (etcd or static peers), with `mount` and an SSD tier.
    pub fn node_args(
        &self,
        id: &str,
        listen: &str,
        membership: &[String],
        mount: &[String],
    ) -> Vec<String> {
        let mut a = args(&[
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--node-id",
            id,
            "--cluster-listen",
            listen,
            "--cluster-token-file",
            self.token_file.to_str().expect("utf-8 path"),
            "--ssd-dir",
            self.ssd_dir(id).to_str().expect("utf-8 path"),
            "--ssd-capacity",
            "256MiB",
        ]);
        a.extend(membership.iter().cloned());
        a.extend(mount.iter().cloned());
        a
    }
}

impl Default for ClusterFixture {
    fn default() -> Self {
        ClusterFixture::new()
    }
}

/// `--etcd-endpoints E` for nodes joining through `etcd`.
pub fn via_etcd(etcd: &Etcd) -> Vec<String> {
    args(&["--etcd-endpoints", &etcd.endpoint])
}

/// The member ids `d` sees, sorted.
pub fn members(d: &Daemon) -> Vec<String> {
    let s = d.status_json();
    let mut ids: Vec<String> = s["cluster"]["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits until `d` sees exactly `want` as members.
#[track_caller]
pub fn wait_members(d: &Daemon, want: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = members(d);
        if got.iter().map(String::as_str).eq(want.iter().copied()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {got:?}, expected {want:?}; log:\n{}",
            tail(&d.log(), 3000)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes of `path` cached on `d` (its `stat`).
pub fn cached_bytes(d: &Daemon, path: &str) -> u64 {
    d.stat_json(path)["cached_bytes"].as_u64().unwrap_or(0)
}

/// The block owners `d` computes for `path`.
pub fn owners(d: &Daemon, path: &str) -> Vec<String> {
    d.stat_json(path)["owners"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// UFS GETs `d` has made.
pub fn ufs_gets(d: &Daemon) -> f64 {
    d.metric("loaderd_ufs_requests_total{op=\"get\"}")
}

/// A network namespace joined to the host by a veth pair: a node inside it is cut off from
/// the others (and etcd) by taking the link down, as a network partition would.
pub struct Netns {
    name: String,
    host_if: String,
    /// The host side's address (reachable from inside).
    pub host_ip: String,
    /// The address inside the namespace.
    pub inner_ip: String,
}

fn ip(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(cmd)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace, or says why it cannot (not root, no iproute2, no netns).
    pub fn create() -> Result<Netns, String> {
        let id = std::process::id() % 50_000;
        let subnet = format!("10.{}.{}", 100 + id / 250 % 150, id % 250);
        let ns = Netns {
            name: format!("loaderd-test-{id}"),
            host_if: format!("ldh{id}"),
            host_ip: format!("{subnet}.1"),
            inner_ip: format!("{subnet}.2"),
        };
        let inner_if = format!("ldn{id}");
        ip(&["netns", "add", &ns.name])?;
        // From here on, Drop removes what exists.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ])?;
        ip(&["link", "set", &inner_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |cmd: &[&str]| {
            let mut full = vec!["netns", "exec", &ns.name, "ip"];
            full.extend_from_slice(cmd);
            ip(&full)
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/24", ns.inner_ip),
            "dev",
            &inner_if,
        ])?;
        inside(&["link", "set", &inner_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        args(&["ip", "netns", "exec", &self.name])
    }

    /// Cuts the namespace off.
    pub fn partition(&self) {
        ip(&["link", "set", &self.host_if, "down"]).expect("link down");
    }

    /// Joins it again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]).expect("link up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
