//! A `loaderd` the epochs bench starts for one configuration, and its metrics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loaderd_proto::transport::default_shm_socket;

/// How long a daemon may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What one bench daemon runs with.
pub(super) struct DaemonConfig<'a> {
    pub dir: &'a Path,
    pub data: &'a Path,
    pub policy: &'a str,
    pub block_size: u64,
    pub memory: u64,
    /// SSD tier capacity; `None`: no SSD tier.
    pub ssd: Option<u64>,
    /// UFS bytes per second; 0: no cap.
    pub ufs_bandwidth: u64,
    /// `prefetch.enabled`.
    pub prefetch: bool,
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct BenchDaemon {
    child: Child,
    socket: PathBuf,
    metrics_addr: String,
    log: PathBuf,
}

impl BenchDaemon {
    /// Writes the config into `cfg.dir` (which must exist) and starts `loaderd` on it.
    pub fn start(loaderd: &Path, cfg: &DaemonConfig<'_>) -> anyhow::Result<BenchDaemon> {
        let socket = cfg.dir.join("loaderd.sock");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let ssd = cfg.ssd.map_or(String::new(), |cap| {
            format!(
                "[cache.ssd]\ndir = {:?}\ncapacity = {cap}\n",
                cfg.dir.join("ssd").display().to_string()
            )
        });
        let toml = format!(
            "[server]\nsocket = {socket:?}\nmetrics_addr = {metrics_addr:?}\nlog_level = \"warn\"\n\
             [cache]\nblock_size = {bs}\neviction = {policy:?}\n\
             [cache.memory]\ncapacity = {mem}\n{ssd}\
             [cache.ufs]\nmax_bandwidth = {bw}\n[prefetch]\nenabled = {prefetch}\n\
             [[mount]]\npath = \"/bench\"\nuri = {uri:?}\n",
            socket = socket.display().to_string(),
            bs = cfg.block_size,
            policy = cfg.policy,
            mem = cfg.memory,
            bw = cfg.ufs_bandwidth,
            prefetch = cfg.prefetch,
            uri = format!("file://{}", cfg.data.display()),
        );
        let config = cfg.dir.join("loaderd.toml");
        std::fs::write(&config, toml)?;
        let log = cfg.dir.join("loaderd.log");
        let child = Command::new(loaderd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", loaderd.display()))?;
        let mut d = BenchDaemon {
            child,
            socket,
            metrics_addr,
            log,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "loaderd exited ({status}) during start:\n{}",
                    self.log_tail()
                );
            }
            if self.shm_socket().exists() && self.metrics().is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "loaderd did not start in {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn shm_socket(&self) -> PathBuf {
        default_shm_socket(&self.socket)
    }

    /// The daemon's Prometheus metrics: series (name with labels) → value.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut conn = TcpStream::connect(&self.metrics_addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("metrics reply without a body")?;
        Ok(Metrics::parse(body))
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus counters of one scrape.
#[derive(Debug, Clone, Default)]
pub(super) struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn parse(body: &str) -> Metrics {
        let series = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics(series)
    }

    /// The sum of every series of `name` whose labels include all of `labels`
    /// (`tier="memory"`).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// `self - before`, series by series.
    pub fn since(&self, before: &Metrics) -> Metrics {
        Metrics(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_by_labels() {
        let m = Metrics::parse(
            "# TYPE loaderd_cache_hits_total counter\n\
             loaderd_cache_hits_total{tier=\"memory\"} 5\n\
             loaderd_cache_hits_total{tier=\"ssd\"} 2\n\
             loaderd_ufs_bytes_total 4096\n",
        );
        assert_eq!(m.sum("loaderd_cache_hits_total", &[]), 7.0);
        assert_eq!(m.sum("loaderd_cache_hits_total", &["tier=\"ssd\""]), 2.0);
        assert_eq!(m.sum("loaderd_ufs_bytes_total", &[]), 4096.0);
        assert_eq!(m.sum("loaderd_ufs", &[]), 0.0);
        let later = Metrics::parse("loaderd_ufs_bytes_total 6144\n");
        assert_eq!(later.since(&m).sum("loaderd_ufs_bytes_total", &[]), 2048.0);
    }
}
