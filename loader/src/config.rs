//! The daemon's configuration: a TOML file, overridden by flags and `LOADERD_*` environment
//! variables (see `loaderd --help`), validated in one place, printable without secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use loaderd_cache::mount::RuntimeMountPolicy;
use loaderd_cache::{ByteSize, CacheConfig, ClusterConfig, MountSpec, Secs};
pub use loaderd_pipeline::prefetch::PrefetchConfig;
pub use loaderd_pipeline::{OnError, PipelineConfig};
pub use loaderd_proto::transport::{default_shm_socket, default_socket};
use serde::{Deserialize, Serialize};

/// Everything `loaderd` runs with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    /// The FUSE view of the namespace (`[fuse]`).
    pub fuse: FuseConfig,
    /// Training batches for local clients (`[pipeline]`).
    pub pipeline: PipelineConfig,
    /// Prefetch driven by loaders' schedules (`[prefetch]`).
    pub prefetch: PrefetchConfig,
    /// The distributed cache (`[cluster]`); off unless `cluster.listen_addr` is set.
    pub cluster: ClusterConfig,
    /// GPU use (`[gpu]`).
    pub gpu: GpuConfig,
    /// Mounts of the namespace (`[[mount]]` tables).
    pub mount: Vec<MountSpec>,
    /// What runtime mounts (`loaderctl mount add`) may reach (`[mounts]`).
    pub mounts: RuntimeMountPolicy,
}

/// Listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The gRPC Unix socket (owner/group access only).
    pub socket: PathBuf,
    /// Group given access to the socket (by name); default: the daemon's own group.
    pub socket_group: Option<String>,
    /// Optional gRPC over TCP; keep it on loopback unless the network is trusted.
    pub tcp_addr: Option<SocketAddr>,
    /// Prometheus `/metrics` and `/healthz`; `None` turns the endpoint off.
    pub metrics_addr: Option<SocketAddr>,
    /// Blocks a Read streams ahead of the one being sent.
    pub readahead_blocks: usize,
    /// Files a Load warms concurrently unless the request says otherwise.
    pub load_parallelism: usize,
    /// Log filter (`info`, `loaderd=debug,...`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Serve zero-copy local reads of the memory tier on a second Unix socket.
    pub shm_reads: bool,
    /// That socket; default: next to `socket`, `<name>.shm.sock`.
    pub shm_socket: Option<PathBuf>,
    /// Bytes one shared-memory client *process* may hold leased (unreleased reads) at once,
    /// over all its connections (processes are told apart by their peer credentials).
    pub shm_max_leased: ByteSize,
    /// Open connections the metrics endpoint accepts (more are closed at once and counted in
    /// `loaderd_connections_refused_total`); at most 1/16 of the descriptor limit.
    pub metrics_max_connections: usize,
    /// A metrics request's headers must arrive within this of the connection opening or of
    /// the previous answer (closes idle keep-alive and slowloris connections).
    pub metrics_header_timeout: Secs,
    /// The longest a metrics connection stays open.
    pub metrics_connection_timeout: Secs,
    /// Open connections each gRPC listener (Unix socket, TCP, peer API) accepts; more are
    /// closed at once and counted. At most 1/4 of the descriptor limit.
    pub grpc_max_connections: usize,
    /// A gRPC connection must send its HTTP/2 preface within this, or it is closed.
    pub grpc_handshake_timeout: Secs,
    /// Idle gRPC connections are pinged this often (HTTP/2 keepalive)...
    pub grpc_keepalive_interval: Secs,
    /// ...and closed when a ping is not answered within this.
    pub grpc_keepalive_timeout: Secs,
    /// Group (name or gid) whose members may change daemon state over the Unix socket
    /// (mount add/rm, free, invalidate), besides uid 0 and the daemon's own uid.
    pub admin_group: Option<String>,
    /// Token every TCP request must carry (`authorization: Bearer ...`); required with
    /// `tcp_addr`. It grants data access only.
    pub tcp_token_file: Option<PathBuf>,
    /// Token for admin calls over TCP (it also grants data access); none: TCP has no admin.
    pub tcp_admin_token_file: Option<PathBuf>,
    /// Share of the memory tier all clients together may hold leased; the rest stays
    /// evictable so new misses can still be cached.
    pub shm_max_leased_fraction: f64,
    /// Shared-memory connections open at once, over all clients.
    pub shm_max_connections: usize,
    /// Shared-memory connections one client process may have open at once.
    pub shm_max_connections_per_process: usize,
}

impl ServerConfig {
    /// The shared-memory socket in force.
    pub fn shm_socket_path(&self) -> PathBuf {
        self.shm_socket
            .clone()
            .unwrap_or_else(|| default_shm_socket(&self.socket))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: default_socket(),
            socket_group: None,
            tcp_addr: None,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            readahead_blocks: 4,
            load_parallelism: 32,
            log_level: "info".into(),
            shm_reads: true,
            shm_socket: None,
            shm_max_leased: ByteSize(1 << 30),
            metrics_max_connections: 64,
            metrics_header_timeout: Secs(std::time::Duration::from_secs(5)),
            metrics_connection_timeout: Secs(std::time::Duration::from_secs(60)),
            grpc_max_connections: 1024,
            grpc_handshake_timeout: Secs(std::time::Duration::from_secs(10)),
            grpc_keepalive_interval: Secs(std::time::Duration::from_secs(60)),
            grpc_keepalive_timeout: Secs(std::time::Duration::from_secs(20)),
            admin_group: None,
            tcp_token_file: None,
            tcp_admin_token_file: None,
            shm_max_leased_fraction: 0.5,
            shm_max_connections: 256,
            shm_max_connections_per_process: 32,
        }
    }
}

/// The read-only POSIX view of the namespace, mounted by the daemon itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FuseConfig {
    /// Where to mount; `None` (the default) mounts nothing.
    pub mount_point: Option<PathBuf>,
    /// How long the kernel trusts a name lookup (datasets are immutable by convention).
    pub entry_timeout: Secs,
    /// How long the kernel trusts attributes (size, mtime).
    pub attr_timeout: Secs,
    /// Threads serving kernel requests; each blocks on one cache read at a time, so size it
    /// to the number of concurrent readers (DataLoader workers).
    pub threads: usize,
    /// Largest read the kernel sends (and its readahead window).
    pub max_read: ByteSize,
    /// Let users other than the daemon's read the mount (training jobs run as themselves).
    pub allow_other: bool,
    /// Let the kernel check permissions from the file modes (0444 files, 0555 directories).
    pub default_permissions: bool,
    /// Keep a file's pages cached across opens (datasets are immutable).
    pub keep_cache: bool,
    /// Mode of object-store files (owner: the daemon's uid); their directories get the
    /// same bits plus x where r is set. `file://` mounts show the source's bits and owner.
    pub object_mode: u32,
    /// The thin front (`loaderd fuse`): how long a request waits for an unreachable worker
    /// (restarting, upgrading) before it fails with EIO.
    pub worker_wait: Secs,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            mount_point: None,
            entry_timeout: Secs(std::time::Duration::from_secs(600)),
            attr_timeout: Secs(std::time::Duration::from_secs(600)),
            threads: 16,
            max_read: ByteSize(1 << 20),
            allow_other: true,
            default_permissions: true,
            keep_cache: true,
            object_mode: 0o444,
            worker_wait: Secs(std::time::Duration::from_secs(60)),
        }
    }
}

/// Whether the daemon uses GPUs for the loaders that ask for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Open every GPU at start when a driver and devices are found; else (logged, and in
    /// status) serve every loader from the CPU.
    #[default]
    Auto,
    /// Like `auto`, but a daemon that cannot open a GPU exits at start, naming the reason.
    On,
    /// Never touch CUDA.
    Off,
}

impl GpuMode {
    /// The mode as the config file and status spell it.
    pub fn name(self) -> &'static str {
        match self {
            GpuMode::Auto => "auto",
            GpuMode::On => "on",
            GpuMode::Off => "off",
        }
    }
}

/// A `--gpu` value other than `auto`, `on` or `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gpu mode must be \"auto\", \"on\" or \"off\", not {0:?}")]
pub struct UnknownGpuMode(pub String);

impl std::str::FromStr for GpuMode {
    type Err = UnknownGpuMode;
    fn from_str(s: &str) -> Result<Self, UnknownGpuMode> {
        match s {
            "auto" => Ok(GpuMode::Auto),
            "on" => Ok(GpuMode::On),
            "off" => Ok(GpuMode::Off),
            other => Err(UnknownGpuMode(other.into())),
        }
    }
}

/// GPU settings (`[gpu]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// `auto` (the default), `on` or `off`.
    pub mode: GpuMode,
}

/// A configuration problem, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid config `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error(transparent)]
    Cache(#[from] loaderd_cache::Error),
}

impl DaemonConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks what types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cache.validate()?;
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        };
        if self.server.socket.as_os_str().is_empty() {
            return Err(invalid("server.socket", "must not be empty"));
        }
        if self.server.readahead_blocks == 0 {
            return Err(invalid("server.readahead_blocks", "must be at least 1"));
        }
        if self.server.load_parallelism == 0 {
            return Err(invalid("server.load_parallelism", "must be at least 1"));
        }
        for (key, n) in [
            (
                "server.metrics_max_connections",
                self.server.metrics_max_connections,
            ),
            (
                "server.grpc_max_connections",
                self.server.grpc_max_connections,
            ),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, t) in [
            (
                "server.metrics_header_timeout",
                self.server.metrics_header_timeout,
            ),
            (
                "server.metrics_connection_timeout",
                self.server.metrics_connection_timeout,
            ),
            (
                "server.grpc_handshake_timeout",
                self.server.grpc_handshake_timeout,
            ),
            (
                "server.grpc_keepalive_interval",
                self.server.grpc_keepalive_interval,
            ),
            (
                "server.grpc_keepalive_timeout",
                self.server.grpc_keepalive_timeout,
            ),
        ] {
            if t.0.is_zero() {
                return Err(invalid(key, "must be positive"));
            }
        }
        if self.fuse.threads == 0 {
            return Err(invalid("fuse.threads", "must be at least 1"));
        }
        if self.fuse.max_read.0 < 4096 || self.fuse.max_read.0 > 16 << 20 {
            return Err(invalid("fuse.max_read", "must be between 4KiB and 16MiB"));
        }
        if self
            .fuse
            .mount_point
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(invalid("fuse.mount_point", "must be an absolute path"));
        }
        if self.fuse.allow_other && !self.fuse.default_permissions {
            return Err(invalid(
                "fuse.default_permissions",
                "must be on with fuse.allow_other: without it every local user reads every file",
            ));
        }
        if self.fuse.object_mode & !0o777 != 0 || self.fuse.object_mode & 0o222 != 0 {
            return Err(invalid(
                "fuse.object_mode",
                "must be read/execute permission bits only (at most 0o555)",
            ));
        }
        if self.server.tcp_addr.is_some() && self.server.tcp_token_file.is_none() {
            return Err(invalid(
                "server.tcp_token_file",
                "server.tcp_addr needs a token file: the TCP API serves only clients that \
                 present its token",
            ));
        }
        self.cluster.validate()?;
        if self.prefetch.concurrency == 0 {
            return Err(invalid("prefetch.concurrency", "must be at least 1"));
        }
        if self.prefetch.max_bytes_per_loader > self.prefetch.max_bytes {
            return Err(invalid(
                "prefetch.max_bytes_per_loader",
                "must not exceed prefetch.max_bytes",
            ));
        }
        if self.pipeline.depth == 0 {
            return Err(invalid("pipeline.depth", "must be at least 1"));
        }
        if self.pipeline.max_clients == 0 {
            return Err(invalid("pipeline.max_clients", "must be at least 1"));
        }
        if self.pipeline.max_client_bytes > self.pipeline.max_total_bytes {
            return Err(invalid(
                "pipeline.max_client_bytes",
                "must not exceed pipeline.max_total_bytes",
            ));
        }
        if self.pipeline.max_pixels == 0 {
            return Err(invalid("pipeline.max_pixels", "must be positive"));
        }
        self.validate_limits()?;
        for (i, m) in self.mount.iter().enumerate() {
            if m.path.is_empty() || m.uri.is_empty() {
                return Err(invalid(&format!("mount[{i}]"), "needs `path` and `uri`"));
            }
        }
        Ok(())
    }

    /// The request and connection limits (issue-18 bounds): every one must let something in.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        };
        let (p, s) = (&self.pipeline, &self.server);
        for (key, value) in [
            ("pipeline.max_depth", p.max_depth),
            ("pipeline.max_batch_size", p.max_batch_size),
            ("pipeline.max_workers", p.max_workers),
            ("pipeline.max_total_workers", p.max_total_workers),
            ("pipeline.max_image_size", p.max_image_size as usize),
            ("server.shm_max_connections", s.shm_max_connections),
            (
                "server.shm_max_connections_per_process",
                s.shm_max_connections_per_process,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if p.depth > p.max_depth {
            return Err(invalid(
                "pipeline.depth",
                "must not exceed pipeline.max_depth",
            ));
        }
        if p.max_workers > p.max_total_workers {
            return Err(invalid(
                "pipeline.max_workers",
                "must not exceed pipeline.max_total_workers",
            ));
        }
        if !(s.shm_max_leased_fraction > 0.0 && s.shm_max_leased_fraction <= 1.0) {
            return Err(invalid(
                "server.shm_max_leased_fraction",
                "must be in (0, 1]",
            ));
        }
        Ok(())
    }

    /// TOML with secret option values replaced, safe to print.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for m in &mut shown.mount {
            m.options = m.redacted_options();
        }
        if shown.cluster.token.is_some() {
            shown.cluster.token = Some("<redacted>".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_durations_and_mounts() {
        let cfg: DaemonConfig = toml::from_str(
            r#"
            [server]
            socket = "/tmp/x.sock"
            [cache]
            block_size = "1MiB"
            eviction = "stable"
            memory = { capacity = "64MiB", watermarks = { high = 0.9, low = 0.6 } }
            ssd = { dir = "/tmp/ssd", capacity = "10GiB" }
            metadata = { ttl = "10m" }
            [[mount]]
            path = "/imagenet"
            uri = "s3://bucket/imagenet"
            options = { endpoint = "http://127.0.0.1:9000", secret_access_key = "hunter2" }
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.cache.block_size.0, 1 << 20);
        assert_eq!(cfg.cache.eviction, loaderd_cache::Eviction::Stable);
        assert_eq!(cfg.cache.memory.watermarks.low, 0.6);
        assert_eq!(cfg.cache.ssd.as_ref().unwrap().watermarks.high, 0.95);
        let shown = cfg.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("endpoint"));
        let back: DaemonConfig = toml::from_str(&shown).unwrap();
        assert_eq!(back.cache.block_size, cfg.cache.block_size);
    }

    #[test]
    fn example_config_is_valid_and_complete() {
        let text = include_str!("../../docs/loaderd.example.toml");
        let cfg: DaemonConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.mount.len(), 2);
        // Every key the daemon has appears in the example.
        let full = DaemonConfig {
            cache: CacheConfig {
                ssd: Some(loaderd_cache::config::SsdTierConfig {
                    dir: "/x".into(),
                    capacity: loaderd_cache::ByteSize(1),
                    watermarks: Default::default(),
                }),
                ..CacheConfig::default()
            },
            ..DaemonConfig::default()
        };
        let rendered: toml::Table = toml::from_str(&full.to_redacted_toml()).unwrap();
        let example: toml::Table = toml::from_str(text).unwrap();
        fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = format!("{prefix}{k}");
                if let toml::Value::Table(inner) = v {
                    keys(&format!("{key}."), inner, out);
                } else {
                    out.push(key);
                }
            }
        }
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys("", &rendered, &mut want);
        keys("", &example, &mut have);
        let commented = text.replace("# ", "");
        for k in want {
            let leaf = k.rsplit('.').next().unwrap();
            assert!(
                have.contains(&k) || commented.contains(&format!("{leaf} =")),
                "docs/loaderd.example.toml lacks `{k}`"
            );
        }
    }

    #[test]
    fn prefetch_caps_are_checked() {
        let parse = |t: &str| toml::from_str::<DaemonConfig>(t).unwrap().validate();
        assert!(
            parse("[prefetch]\nmax_bytes = \"64MiB\"\nmax_bytes_per_loader = \"8MiB\"").is_ok()
        );
        let err = parse("[prefetch]\nconcurrency = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch.concurrency"), "{err}");
        let err = parse("[prefetch]\nmax_bytes = \"1MiB\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch.max_bytes_per_loader"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<DaemonConfig>("[cache]\nblok_size = 4").unwrap_err();
        assert!(err.to_string().contains("blok_size"), "{err}");
        let err = toml::from_str::<DaemonConfig>("[cache.memory]\ncapacityy = 4").unwrap_err();
        assert!(err.to_string().contains("capacityy"), "{err}");
        let err =
            toml::from_str::<DaemonConfig>("[cache.ssd]\ndir = \"/x\"\ncapacity = 1\nhigh = 0.5")
                .unwrap_err();
        assert!(err.to_string().contains("high"), "{err}");
        let err = toml::from_str::<DaemonConfig>("[cache]\neviction = \"mru\"").unwrap_err();
        assert!(err.to_string().contains("mru"), "{err}");
    }
}
