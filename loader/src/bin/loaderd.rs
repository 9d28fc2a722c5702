//! `loaderd`: the caching data-loader daemon. Flags override the config file; every flag
//! also reads a `LOADERD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use loaderd::config::DaemonConfig;
use loaderd_cache::config::{SsdTierConfig, Watermarks};
use loaderd_cache::{ByteSize, MountSpec, Secs};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "loaderd",
    version,
    about = "Caching data loader daemon for deep-learning training"
)]
struct Args {
    /// TOML config file.
    #[arg(long, env = "LOADERD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective config (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,

    /// gRPC Unix socket.
    #[arg(long, env = "LOADERD_SOCKET", help_heading = "Server")]
    socket: Option<PathBuf>,
    /// Group allowed to use the socket.
    #[arg(long, env = "LOADERD_SOCKET_GROUP", help_heading = "Server")]
    socket_group: Option<String>,
    /// Also serve gRPC on this TCP address (keep it on loopback).
    #[arg(long, env = "LOADERD_TCP_ADDR", help_heading = "Server")]
    tcp_addr: Option<SocketAddr>,
    /// File with the token every TCP request must carry (data access); needed with --tcp-addr.
    #[arg(long, env = "LOADERD_TCP_TOKEN_FILE", help_heading = "Server")]
    tcp_token_file: Option<PathBuf>,
    /// File with the token for admin calls over TCP (mount, free, invalidate).
    #[arg(long, env = "LOADERD_TCP_ADMIN_TOKEN_FILE", help_heading = "Server")]
    tcp_admin_token_file: Option<PathBuf>,
    /// Group (name or gid) whose members may make admin calls on the Unix socket.
    #[arg(long, env = "LOADERD_ADMIN_GROUP", help_heading = "Server")]
    admin_group: Option<String>,
    /// Prometheus metrics address, or `off`.
    #[arg(long, env = "LOADERD_METRICS_ADDR", help_heading = "Server")]
    metrics_addr: Option<String>,
    /// Log filter, e.g. `info` or `loaderd_cache=debug`; RUST_LOG wins when set.
    #[arg(long, env = "LOADERD_LOG_LEVEL", help_heading = "Server")]
    log_level: Option<String>,

    /// Mount a UFS: `/point=s3://bucket/prefix` or `/point=file:///dir` (repeatable).
    #[arg(long = "mount", value_name = "POINT=URI", help_heading = "Namespace")]
    mounts: Vec<String>,
    /// Option of a mount: `/point:key=value` (endpoint, region, allow_http, ...; repeatable).
    #[arg(
        long = "mount-option",
        value_name = "POINT:KEY=VALUE",
        help_heading = "Namespace"
    )]
    mount_options: Vec<String>,
    /// A directory runtime `file://` mounts may lie in (repeatable; `[mounts] allowed_roots`).
    #[arg(long = "allowed-root", value_name = "DIR", help_heading = "Namespace")]
    allowed_roots: Vec<PathBuf>,
    /// An endpoint runtime S3 mounts may use (repeatable; `[mounts] allowed_endpoints`).
    #[arg(
        long = "allowed-endpoint",
        value_name = "URL",
        help_heading = "Namespace"
    )]
    allowed_endpoints: Vec<String>,

    /// Block size, e.g. 4MiB.
    #[arg(long, env = "LOADERD_BLOCK_SIZE", help_heading = "Cache")]
    block_size: Option<ByteSize>,
    /// Memory tier capacity, e.g. 8GiB (0 disables it).
    #[arg(long, env = "LOADERD_MEMORY_CAPACITY", help_heading = "Cache")]
    memory_capacity: Option<ByteSize>,
    /// Memory tier high watermark (fraction).
    #[arg(long, help_heading = "Cache")]
    memory_high: Option<f64>,
    /// Memory tier low watermark (fraction).
    #[arg(long, help_heading = "Cache")]
    memory_low: Option<f64>,
    /// SSD tier directory (enables the tier).
    #[arg(long, env = "LOADERD_SSD_DIR", help_heading = "Cache")]
    ssd_dir: Option<PathBuf>,
    /// SSD tier capacity, e.g. 100GiB.
    #[arg(long, env = "LOADERD_SSD_CAPACITY", help_heading = "Cache")]
    ssd_capacity: Option<ByteSize>,
    /// SSD tier high watermark (fraction).
    #[arg(long, help_heading = "Cache")]
    ssd_high: Option<f64>,
    /// SSD tier low watermark (fraction).
    #[arg(long, help_heading = "Cache")]
    ssd_low: Option<f64>,
    /// How long listings and manifests are trusted, e.g. 24h.
    #[arg(long, env = "LOADERD_METADATA_TTL", help_heading = "Cache")]
    metadata_ttl: Option<Secs>,
    /// Do not LIST mounts into persisted manifests; HEAD/LIST per path instead.
    #[arg(long, help_heading = "Cache")]
    no_manifest: bool,
    /// Mount the read-only FUSE view of the namespace here (`[fuse] mount_point`).
    #[arg(
        long,
        env = "LOADERD_FUSE_MOUNT",
        value_name = "DIR",
        help_heading = "FUSE"
    )]
    fuse_mount: Option<PathBuf>,
    /// How long the kernel trusts a FUSE name lookup, e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ENTRY_TIMEOUT", help_heading = "FUSE")]
    fuse_entry_timeout: Option<Secs>,
    /// How long the kernel trusts FUSE attributes (size, mtime), e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ATTR_TIMEOUT", help_heading = "FUSE")]
    fuse_attr_timeout: Option<Secs>,
    /// Threads serving FUSE requests (about the number of concurrent readers).
    #[arg(long, env = "LOADERD_FUSE_THREADS", help_heading = "FUSE")]
    fuse_threads: Option<usize>,

    /// Deadline of one UFS request, e.g. 30s.
    #[arg(long, env = "LOADERD_UFS_TIMEOUT", help_heading = "Cache")]
    ufs_timeout: Option<Secs>,
    /// Retries of a failed UFS request.
    #[arg(long, env = "LOADERD_UFS_RETRIES", help_heading = "Cache")]
    ufs_retries: Option<u32>,

    /// This node's id in the cluster (default: the host name).
    #[arg(long, env = "LOADERD_NODE_ID", help_heading = "Cluster")]
    node_id: Option<String>,
    /// Serve the peer API here and join the cluster, e.g. 0.0.0.0:29998.
    #[arg(long, env = "LOADERD_CLUSTER_LISTEN", help_heading = "Cluster")]
    cluster_listen: Option<std::net::SocketAddr>,
    /// How peers reach this node, host:port.
    #[arg(long, env = "LOADERD_ADVERTISE_ADDR", help_heading = "Cluster")]
    advertise_addr: Option<String>,
    /// etcd endpoints for membership, comma-separated (http://host:2379,...).
    #[arg(
        long,
        env = "LOADERD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    etcd_endpoints: Vec<String>,
    /// File holding the cluster token every peer request must carry.
    #[arg(long, env = "LOADERD_CLUSTER_TOKEN_FILE", help_heading = "Cluster")]
    cluster_token_file: Option<PathBuf>,
    /// A static member, ID=HOST:PORT (repeatable; without etcd).
    #[arg(long = "peer", value_name = "ID=HOST:PORT", help_heading = "Cluster")]
    peers: Vec<String>,
    /// Owners per block.
    #[arg(long, env = "LOADERD_REPLICATION", help_heading = "Cluster")]
    replication: Option<usize>,

    /// GPU use: `auto` (when a driver and devices are found) or `off`.
    #[arg(long, env = "LOADERD_GPU", help_heading = "GPU")]
    gpu: Option<loaderd::config::GpuMode>,
}

fn apply(args: &Args, cfg: &mut DaemonConfig) -> anyhow::Result<()> {
    let s = &mut cfg.server;
    if let Some(v) = &args.socket {
        s.socket = v.clone();
    }
    if let Some(v) = &args.socket_group {
        s.socket_group = Some(v.clone());
    }
    if let Some(v) = args.tcp_addr {
        s.tcp_addr = Some(v);
    }
    if let Some(v) = &args.tcp_token_file {
        s.tcp_token_file = Some(v.clone());
    }
    if let Some(v) = &args.tcp_admin_token_file {
        s.tcp_admin_token_file = Some(v.clone());
    }
    if let Some(v) = &args.admin_group {
        s.admin_group = Some(v.clone());
    }
    if let Some(v) = &args.metrics_addr {
        s.metrics_addr = match v.as_str() {
            "off" | "" => None,
            a => Some(a.parse().with_context(|| format!("--metrics-addr {a:?}"))?),
        };
    }
    if let Some(v) = &args.log_level {
        s.log_level = v.clone();
    }
    let c = &mut cfg.cache;
    if let Some(v) = args.block_size {
        c.block_size = v;
    }
    if let Some(v) = args.memory_capacity {
        c.memory.capacity = v;
    }
    if let Some(v) = args.memory_high {
        c.memory.watermarks.high = v;
    }
    if let Some(v) = args.memory_low {
        c.memory.watermarks.low = v;
    }
    if let Some(dir) = &args.ssd_dir {
        let ssd = c.ssd.get_or_insert_with(|| SsdTierConfig {
            dir: dir.clone(),
            capacity: ByteSize(16 << 30),
            watermarks: Watermarks::default(),
        });
        ssd.dir = dir.clone();
    }
    if args.ssd_capacity.is_some() || args.ssd_high.is_some() || args.ssd_low.is_some() {
        let Some(ssd) = c.ssd.as_mut() else {
            bail!(
                "--ssd-capacity/--ssd-high/--ssd-low need --ssd-dir or [cache.ssd] in the config"
            );
        };
        if let Some(v) = args.ssd_capacity {
            ssd.capacity = v;
        }
        if let Some(v) = args.ssd_high {
            ssd.watermarks.high = v;
        }
        if let Some(v) = args.ssd_low {
            ssd.watermarks.low = v;
        }
    }
    if let Some(v) = args.metadata_ttl {
        c.metadata.ttl = v;
    }
    if args.no_manifest {
        c.metadata.manifest = false;
    }
    if let Some(v) = args.ufs_timeout {
        c.ufs.timeout = v;
    }
    if let Some(v) = args.ufs_retries {
        c.ufs.retries = v;
    }
    let f = &mut cfg.fuse;
    if let Some(v) = &args.fuse_mount {
        let abs = std::path::absolute(v).with_context(|| format!("--fuse-mount {v:?}"))?;
        f.mount_point = Some(abs);
    }
    if let Some(v) = args.fuse_entry_timeout {
        f.entry_timeout = v;
    }
    if let Some(v) = args.fuse_attr_timeout {
        f.attr_timeout = v;
    }
    if let Some(v) = args.fuse_threads {
        f.threads = v;
    }
    for m in &args.mounts {
        let (path, uri) = m
            .split_once('=')
            .with_context(|| format!("--mount {m:?}: expected POINT=URI"))?;
        cfg.mount.push(MountSpec {
            path: path.to_string(),
            uri: uri.to_string(),
            options: Default::default(),
        });
    }
    cfg.mounts
        .allowed_roots
        .extend(args.allowed_roots.iter().cloned());
    cfg.mounts
        .allowed_endpoints
        .extend(args.allowed_endpoints.iter().cloned());
    let k = &mut cfg.cluster;
    if let Some(v) = &args.node_id {
        k.node_id = Some(v.clone());
    }
    if let Some(v) = args.cluster_listen {
        k.listen_addr = Some(v);
    }
    if let Some(v) = &args.advertise_addr {
        k.advertise_addr = Some(v.clone());
    }
    if !args.etcd_endpoints.is_empty() {
        k.etcd_endpoints = args.etcd_endpoints.clone();
    }
    if let Some(v) = &args.cluster_token_file {
        k.token_file = Some(v.clone());
        k.token = None;
    }
    for p in &args.peers {
        let (id, addr) = p
            .split_once('=')
            .with_context(|| format!("--peer {p:?}: expected ID=HOST:PORT"))?;
        k.members.push(loaderd_cache::MemberConfig {
            id: id.to_string(),
            addr: addr.to_string(),
        });
    }
    if let Some(v) = args.replication {
        k.replication = v;
    }
    if let Some(v) = args.gpu {
        cfg.gpu.mode = v;
    }
    for o in &args.mount_options {
        let (point, kv) = o
            .split_once(':')
            .with_context(|| format!("--mount-option {o:?}: expected POINT:KEY=VALUE"))?;
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--mount-option {o:?}: expected POINT:KEY=VALUE"))?;
        let mount = cfg
            .mount
            .iter_mut()
            .find(|m| m.path == point)
            .with_context(|| format!("--mount-option {o:?}: no mount at {point}"))?;
        mount.options.insert(k.to_string(), v.to_string());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(path) => DaemonConfig::from_file(path)?,
        None => DaemonConfig::default(),
    };
    apply(&args, &mut cfg)?;
    cfg.validate()?;
    if args.print_config {
        print!("{}", cfg.to_redacted_toml());
        return Ok(());
    }
    loaderd::daemon::tune_allocator();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.server.log_level))
        .context("invalid log filter (server.log_level)")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loaderd")
        .build()?
        .block_on(loaderd::daemon::run(cfg))
}
