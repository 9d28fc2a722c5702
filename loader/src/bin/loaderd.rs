//! `loaderd`: the caching data-loader daemon. Flags override the config file; every flag
//! also reads a `LOADERD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use loaderd::config::{DaemonConfig, FuseConfig, ServerConfig};
use loaderd_cache::config::{CacheConfig, ClusterConfig, SsdTierConfig, Watermarks};
use loaderd_cache::{ByteSize, Eviction, MemberConfig, MountSpec, Secs};
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
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    namespace: NamespaceArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    fuse: FuseArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// GPU use: `auto` (when a driver and devices are found), `on` (exit at start without a
    /// usable GPU) or `off`.
    #[arg(long, env = "LOADERD_GPU", help_heading = "GPU")]
    gpu: Option<loaderd::config::GpuMode>,
    #[command(subcommand)]
    command: Option<Sub>,
}

/// Other jobs of the same binary (none given: run the daemon).
#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Serve a FUSE mount from the node's worker (the thin front): no cache of its own, no
    /// cluster membership; requests wait out a worker restart (`[fuse] worker_wait`).
    Fuse(loaderd::front::FrontArgs),
}

/// Listeners, access and logging (`[server]`).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Server")]
struct ServerArgs {
    /// gRPC Unix socket.
    #[arg(long, env = "LOADERD_SOCKET")]
    socket: Option<PathBuf>,
    /// Group allowed to use the socket.
    #[arg(long, env = "LOADERD_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Also serve gRPC on this TCP address (keep it on loopback).
    #[arg(long, env = "LOADERD_TCP_ADDR")]
    tcp_addr: Option<SocketAddr>,
    /// File with the token every TCP request must carry (data access); needed with --tcp-addr.
    #[arg(long, env = "LOADERD_TCP_TOKEN_FILE")]
    tcp_token_file: Option<PathBuf>,
    /// File with the token for admin calls over TCP (mount, free, invalidate).
    #[arg(long, env = "LOADERD_TCP_ADMIN_TOKEN_FILE")]
    tcp_admin_token_file: Option<PathBuf>,
    /// Group (name or gid) whose members may make admin calls on the Unix socket.
    #[arg(long, env = "LOADERD_ADMIN_GROUP")]
    admin_group: Option<String>,
    /// Prometheus metrics address, or `off`.
    #[arg(long, env = "LOADERD_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Log filter, e.g. `info` or `loaderd_cache=debug`; RUST_LOG wins when set.
    #[arg(long, env = "LOADERD_LOG_LEVEL")]
    log_level: Option<String>,
}

/// The namespace: mounts and what runtime mounts may reach (all repeatable).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Namespace")]
struct NamespaceArgs {
    /// Mount a UFS: `/point=s3://bucket/prefix` or `/point=file:///dir` (repeatable).
    #[arg(long = "mount", value_name = "POINT=URI")]
    mounts: Vec<String>,
    /// Option of a mount: `/point:key=value` (endpoint, region, allow_http, ...; repeatable).
    #[arg(long = "mount-option", value_name = "POINT:KEY=VALUE")]
    mount_options: Vec<String>,
    /// A directory runtime `file://` mounts may lie in (repeatable; `[mounts] allowed_roots`).
    #[arg(long = "allowed-root", value_name = "DIR")]
    allowed_roots: Vec<PathBuf>,
    /// An endpoint runtime S3 mounts may use (repeatable; `[mounts] allowed_endpoints`).
    #[arg(long = "allowed-endpoint", value_name = "URL")]
    allowed_endpoints: Vec<String>,
}

/// Block size, tiers, metadata and UFS requests (`[cache]`).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Cache")]
struct CacheArgs {
    /// Block size, e.g. 4MiB.
    #[arg(long, env = "LOADERD_BLOCK_SIZE")]
    block_size: Option<ByteSize>,
    /// Which block leaves a full tier: clairvoyant (by the loaders' schedules), stable or lru.
    #[arg(long, env = "LOADERD_EVICTION", value_name = "POLICY")]
    eviction: Option<Eviction>,
    /// Memory tier capacity, e.g. 8GiB (0 disables it).
    #[arg(long, env = "LOADERD_MEMORY_CAPACITY")]
    memory_capacity: Option<ByteSize>,
    /// Memory tier high watermark (fraction).
    #[arg(long)]
    memory_high: Option<f64>,
    /// Memory tier low watermark (fraction).
    #[arg(long)]
    memory_low: Option<f64>,
    /// SSD tier directory (enables the tier).
    #[arg(long, env = "LOADERD_SSD_DIR")]
    ssd_dir: Option<PathBuf>,
    /// SSD tier capacity, e.g. 100GiB.
    #[arg(long, env = "LOADERD_SSD_CAPACITY")]
    ssd_capacity: Option<ByteSize>,
    /// SSD tier high watermark (fraction).
    #[arg(long)]
    ssd_high: Option<f64>,
    /// SSD tier low watermark (fraction).
    #[arg(long)]
    ssd_low: Option<f64>,
    /// How long listings and manifests are trusted, e.g. 24h.
    #[arg(long, env = "LOADERD_METADATA_TTL")]
    metadata_ttl: Option<Secs>,
    /// Do not LIST mounts into persisted manifests; HEAD/LIST per path instead.
    #[arg(long)]
    no_manifest: bool,
    /// Deadline of one UFS request, e.g. 30s.
    #[arg(long, env = "LOADERD_UFS_TIMEOUT")]
    ufs_timeout: Option<Secs>,
    /// Retries of a failed UFS request.
    #[arg(long, env = "LOADERD_UFS_RETRIES")]
    ufs_retries: Option<u32>,
    /// Bytes per second all mounts together may read from their UFS, e.g. 500MiB (0: no cap).
    #[arg(long, env = "LOADERD_UFS_MAX_BANDWIDTH")]
    ufs_max_bandwidth: Option<ByteSize>,
}

/// The FUSE view (`[fuse]`).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "FUSE")]
struct FuseArgs {
    /// Mount the read-only FUSE view of the namespace here (`[fuse] mount_point`).
    #[arg(long, env = "LOADERD_FUSE_MOUNT", value_name = "DIR")]
    fuse_mount: Option<PathBuf>,
    /// How long the kernel trusts a FUSE name lookup, e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ENTRY_TIMEOUT")]
    fuse_entry_timeout: Option<Secs>,
    /// How long the kernel trusts FUSE attributes (size, mtime), e.g. 10m.
    #[arg(long, env = "LOADERD_FUSE_ATTR_TIMEOUT")]
    fuse_attr_timeout: Option<Secs>,
    /// Threads serving FUSE requests (about the number of concurrent readers).
    #[arg(long, env = "LOADERD_FUSE_THREADS")]
    fuse_threads: Option<usize>,
}

/// The distributed cache (`[cluster]`).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Cluster")]
struct ClusterArgs {
    /// This node's id in the cluster (default: the host name).
    #[arg(long, env = "LOADERD_NODE_ID")]
    node_id: Option<String>,
    /// Serve the peer API here and join the cluster, e.g. 0.0.0.0:29998.
    #[arg(long, env = "LOADERD_CLUSTER_LISTEN")]
    cluster_listen: Option<std::net::SocketAddr>,
    /// How peers reach this node, host:port.
    #[arg(long, env = "LOADERD_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// etcd endpoints for membership, comma-separated (http://host:2379,...).
    #[arg(long, env = "LOADERD_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// File holding the cluster token every peer request must carry.
    #[arg(long, env = "LOADERD_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// A static member, ID=HOST:PORT (repeatable; without etcd).
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    peers: Vec<String>,
    /// Owners per block.
    #[arg(long, env = "LOADERD_REPLICATION")]
    replication: Option<usize>,
}

/// Sets `slot` to a flag's value when the flag was given (`T` into `Option<T>` too).
fn set<T: Clone, U: From<T>>(slot: &mut U, flag: &Option<T>) {
    if let Some(v) = flag {
        *slot = U::from(v.clone());
    }
}

/// `value` of flag `--flag` split at its first `sep`; the error shows the form `want`.
fn split<'a>(
    flag: &str,
    value: &'a str,
    sep: char,
    want: &str,
) -> anyhow::Result<(&'a str, &'a str)> {
    value
        .split_once(sep)
        .with_context(|| format!("--{flag} {value:?}: expected {want}"))
}

/// The flags over the config file's values.
fn apply(args: &Args, cfg: &mut DaemonConfig) -> anyhow::Result<()> {
    apply_server(&args.server, &mut cfg.server)?;
    apply_cache(&args.cache, &mut cfg.cache)?;
    apply_fuse(&args.fuse, &mut cfg.fuse)?;
    apply_namespace(&args.namespace, cfg)?;
    apply_cluster(&args.cluster, &mut cfg.cluster)?;
    set(&mut cfg.gpu.mode, &args.gpu);
    Ok(())
}

fn apply_server(args: &ServerArgs, s: &mut ServerConfig) -> anyhow::Result<()> {
    set(&mut s.socket, &args.socket);
    set(&mut s.socket_group, &args.socket_group);
    set(&mut s.tcp_addr, &args.tcp_addr);
    set(&mut s.tcp_token_file, &args.tcp_token_file);
    set(&mut s.tcp_admin_token_file, &args.tcp_admin_token_file);
    set(&mut s.admin_group, &args.admin_group);
    set(&mut s.log_level, &args.log_level);
    if let Some(v) = &args.metrics_addr {
        s.metrics_addr = match v.as_str() {
            "off" | "" => None,
            a => Some(a.parse().with_context(|| format!("--metrics-addr {a:?}"))?),
        };
    }
    Ok(())
}

fn apply_cache(args: &CacheArgs, c: &mut CacheConfig) -> anyhow::Result<()> {
    set(&mut c.block_size, &args.block_size);
    set(&mut c.eviction, &args.eviction);
    set(&mut c.memory.capacity, &args.memory_capacity);
    set(&mut c.memory.watermarks.high, &args.memory_high);
    set(&mut c.memory.watermarks.low, &args.memory_low);
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
        set(&mut ssd.capacity, &args.ssd_capacity);
        set(&mut ssd.watermarks.high, &args.ssd_high);
        set(&mut ssd.watermarks.low, &args.ssd_low);
    }
    set(&mut c.metadata.ttl, &args.metadata_ttl);
    if args.no_manifest {
        c.metadata.manifest = false;
    }
    set(&mut c.ufs.timeout, &args.ufs_timeout);
    set(&mut c.ufs.retries, &args.ufs_retries);
    set(&mut c.ufs.max_bandwidth, &args.ufs_max_bandwidth);
    Ok(())
}

fn apply_fuse(args: &FuseArgs, f: &mut FuseConfig) -> anyhow::Result<()> {
    if let Some(v) = &args.fuse_mount {
        let abs = std::path::absolute(v).with_context(|| format!("--fuse-mount {v:?}"))?;
        f.mount_point = Some(abs);
    }
    set(&mut f.entry_timeout, &args.fuse_entry_timeout);
    set(&mut f.attr_timeout, &args.fuse_attr_timeout);
    set(&mut f.threads, &args.fuse_threads);
    Ok(())
}

/// `--mount`, then `--mount-option` (which names a mount), and the runtime-mount policy.
fn apply_namespace(args: &NamespaceArgs, cfg: &mut DaemonConfig) -> anyhow::Result<()> {
    for m in &args.mounts {
        let (path, uri) = split("mount", m, '=', "POINT=URI")?;
        cfg.mount.push(MountSpec {
            path: path.to_string(),
            uri: uri.to_string(),
            options: Default::default(),
        });
    }
    for o in &args.mount_options {
        let bad = || format!("--mount-option {o:?}: expected POINT:KEY=VALUE");
        let (point, kv) = o.split_once(':').with_context(bad)?;
        let (k, v) = kv.split_once('=').with_context(bad)?;
        let mount = cfg
            .mount
            .iter_mut()
            .find(|m| m.path == point)
            .with_context(|| format!("--mount-option {o:?}: no mount at {point}"))?;
        mount.options.insert(k.to_string(), v.to_string());
    }
    cfg.mounts
        .allowed_roots
        .extend(args.allowed_roots.iter().cloned());
    cfg.mounts
        .allowed_endpoints
        .extend(args.allowed_endpoints.iter().cloned());
    Ok(())
}

fn apply_cluster(args: &ClusterArgs, k: &mut ClusterConfig) -> anyhow::Result<()> {
    set(&mut k.node_id, &args.node_id);
    set(&mut k.listen_addr, &args.cluster_listen);
    set(&mut k.advertise_addr, &args.advertise_addr);
    if !args.etcd_endpoints.is_empty() {
        k.etcd_endpoints = args.etcd_endpoints.clone();
    }
    if let Some(v) = &args.cluster_token_file {
        k.token_file = Some(v.clone());
        k.token = None;
    }
    for p in &args.peers {
        let (id, addr) = split("peer", p, '=', "ID=HOST:PORT")?;
        k.members.push(MemberConfig {
            id: id.to_string(),
            addr: addr.to_string(),
        });
    }
    set(&mut k.replication, &args.replication);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Sub::Fuse(front)) = &args.command {
        let (cfg, role, log_level) = loaderd::front::config(front)?;
        init_logging(&log_level)?;
        return loaderd::front::run(cfg, role);
    }
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
    init_logging(&cfg.server.log_level)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loaderd")
        .build()?
        .block_on(loaderd::daemon::run(cfg))
}

/// Logs to stderr, filtered by `RUST_LOG` or else `level` (`server.log_level`).
fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .context("invalid log filter (server.log_level)")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loaderd::config::GpuMode;

    use super::*;

    fn applied(flags: &[&str]) -> anyhow::Result<DaemonConfig> {
        let args = Args::try_parse_from(std::iter::once("loaderd").chain(flags.iter().copied()))?;
        let mut cfg = DaemonConfig::default();
        apply(&args, &mut cfg)?;
        Ok(cfg)
    }

    #[test]
    fn every_flag_reaches_its_key() {
        let cfg = applied(&[
            "--socket=/run/l/s.sock",
            "--socket-group=train",
            "--tcp-addr=127.0.0.1:7000",
            "--tcp-token-file=/t",
            "--tcp-admin-token-file=/a",
            "--admin-group=ops",
            "--metrics-addr=127.0.0.1:9100",
            "--log-level=debug",
            "--mount=/d=file:///data",
            "--mount=/s=s3://b/p",
            "--mount-option=/s:region=eu-west-1",
            "--allowed-root=/srv",
            "--allowed-endpoint=http://127.0.0.1:9000",
            "--block-size=1MiB",
            "--eviction=lru",
            "--memory-capacity=2GiB",
            "--memory-high=0.9",
            "--memory-low=0.5",
            "--ssd-dir=/ssd",
            "--ssd-capacity=10GiB",
            "--ssd-high=0.8",
            "--ssd-low=0.6",
            "--metadata-ttl=1h",
            "--no-manifest",
            "--ufs-timeout=5s",
            "--ufs-retries=2",
            "--fuse-mount=/mnt/l",
            "--fuse-entry-timeout=1m",
            "--fuse-attr-timeout=2m",
            "--fuse-threads=3",
            "--node-id=n1",
            "--cluster-listen=127.0.0.1:7001",
            "--advertise-addr=n1:7001",
            "--etcd-endpoints=http://e1:2379,http://e2:2379",
            "--cluster-token-file=/c",
            "--peer=n2=h2:7001",
            "--replication=2",
            "--gpu=off",
        ])
        .expect("flags");
        let s = &cfg.server;
        assert_eq!(s.socket, PathBuf::from("/run/l/s.sock"));
        assert_eq!(s.socket_group.as_deref(), Some("train"));
        assert_eq!(s.tcp_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(s.tcp_token_file, Some(PathBuf::from("/t")));
        assert_eq!(s.tcp_admin_token_file, Some(PathBuf::from("/a")));
        assert_eq!(s.admin_group.as_deref(), Some("ops"));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(s.log_level, "debug");

        let points: Vec<(&str, &str)> = cfg
            .mount
            .iter()
            .map(|m| (m.path.as_str(), m.uri.as_str()))
            .collect();
        assert_eq!(points, [("/d", "file:///data"), ("/s", "s3://b/p")]);
        assert!(cfg.mount[0].options.is_empty());
        assert_eq!(
            cfg.mount[1].options.get("region").map(String::as_str),
            Some("eu-west-1")
        );
        assert_eq!(cfg.mounts.allowed_roots, [PathBuf::from("/srv")]);
        assert_eq!(cfg.mounts.allowed_endpoints, ["http://127.0.0.1:9000"]);

        let c = &cfg.cache;
        assert_eq!(c.block_size, ByteSize(1 << 20));
        assert_eq!(c.eviction, Eviction::Lru);
        assert_eq!(c.memory.capacity, ByteSize(2 << 30));
        assert_eq!(
            (c.memory.watermarks.high, c.memory.watermarks.low),
            (0.9, 0.5)
        );
        let ssd = c.ssd.as_ref().expect("ssd tier");
        assert_eq!(ssd.dir, PathBuf::from("/ssd"));
        assert_eq!(ssd.capacity, ByteSize(10 << 30));
        assert_eq!((ssd.watermarks.high, ssd.watermarks.low), (0.8, 0.6));
        assert_eq!(c.metadata.ttl.0, Duration::from_secs(3600));
        assert!(!c.metadata.manifest);
        assert_eq!(c.ufs.timeout.0, Duration::from_secs(5));
        assert_eq!(c.ufs.retries, 2);

        let f = &cfg.fuse;
        assert_eq!(f.mount_point, Some(PathBuf::from("/mnt/l")));
        assert_eq!(f.entry_timeout.0, Duration::from_secs(60));
        assert_eq!(f.attr_timeout.0, Duration::from_secs(120));
        assert_eq!(f.threads, 3);

        let k = &cfg.cluster;
        assert_eq!(k.node_id.as_deref(), Some("n1"));
        assert_eq!(k.listen_addr, Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(k.advertise_addr.as_deref(), Some("n1:7001"));
        assert_eq!(k.etcd_endpoints, ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(k.token_file, Some(PathBuf::from("/c")));
        assert_eq!(
            k.members,
            [MemberConfig {
                id: "n2".into(),
                addr: "h2:7001".into()
            }]
        );
        assert_eq!(k.replication, 2);
        assert_eq!(cfg.gpu.mode, GpuMode::Off);
    }

    #[test]
    fn no_flags_leave_the_defaults() {
        let cfg = applied(&[]).expect("no flags");
        let want = DaemonConfig::default();
        assert_eq!(cfg.to_redacted_toml(), want.to_redacted_toml());
    }

    #[test]
    fn flags_over_a_config_file_keep_what_they_do_not_name() {
        let args = Args::try_parse_from(["loaderd", "--ssd-capacity=1GiB", "--metrics-addr=off"])
            .expect("flags");
        let mut cfg = DaemonConfig::default();
        cfg.cache.ssd = Some(SsdTierConfig {
            dir: "/from-file".into(),
            capacity: ByteSize(5 << 30),
            watermarks: Watermarks::default(),
        });
        cfg.server.metrics_addr = Some("127.0.0.1:1".parse().unwrap());
        apply(&args, &mut cfg).expect("apply");
        let ssd = cfg.cache.ssd.expect("ssd tier");
        assert_eq!(
            (ssd.dir, ssd.capacity),
            ("/from-file".into(), ByteSize(1 << 30))
        );
        assert_eq!(cfg.server.metrics_addr, None);
    }

    #[test]
    fn malformed_flags_are_refused_by_name() {
        for (flags, want) in [
            (&["--mount=/d"][..], "--mount \"/d\": expected POINT=URI"),
            (
                &["--mount=/d=file:///x", "--mount-option=/d-region"],
                "--mount-option \"/d-region\": expected POINT:KEY=VALUE",
            ),
            (
                &["--mount=/d=file:///x", "--mount-option=/d:region"],
                "--mount-option \"/d:region\": expected POINT:KEY=VALUE",
            ),
            (
                &["--mount-option=/e:region=x"],
                "--mount-option \"/e:region=x\": no mount at /e",
            ),
            (&["--peer=n2"], "--peer \"n2\": expected ID=HOST:PORT"),
            (&["--ssd-low=0.5"], "need --ssd-dir or [cache.ssd]"),
            (&["--metrics-addr=nowhere"], "--metrics-addr \"nowhere\""),
        ] {
            let err = applied(flags).expect_err(&format!("{flags:?}"));
            assert!(format!("{err:#}").contains(want), "{flags:?}: {err:#}");
        }
        let err = applied(&["--gpu=sometimes"]).expect_err("--gpu=sometimes");
        let want = "gpu mode must be \"auto\", \"on\" or \"off\", not \"sometimes\"";
        assert!(err.to_string().contains(want), "{err}");
    }
}
