//! Running the daemon: listeners, metrics, signals, graceful shutdown.
//!
//! `loaderd`'s `main` only parses flags into a [`DaemonConfig`] and calls [`run`], so tests can
//! run the same code. The Unix socket is created owner/group-only ([`crate::socket`]: a stale
//! socket from a crashed daemon is replaced, a live one is an error), TCP listeners default to
//! loopback, and SIGTERM/SIGINT stop accepting, let in-flight calls finish, unmount the FUSE
//! view and remove the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use loaderd_cache::Cache;
use loaderd_cache::cluster::Cluster;
use loaderd_cache::cluster::service::PeerService;
use loaderd_pipeline::{Gpus, Pipelines};
use loaderd_proto::transport::{CONNECTION_WINDOW, MAX_FRAME, MAX_GRPC_MESSAGE, STREAM_WINDOW};
use loaderd_proto::v1 as pb;
use loaderd_proto::v1::loader_server::LoaderServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::auth::Access;
use crate::config::{DaemonConfig, GpuMode, ServerConfig};
use crate::fuse::FuseMount;
use crate::http;
use crate::listen::{self, ConnLimit};
use crate::server::LoaderService;
use crate::shm::clients::{ClientLimits, ShmClients};
use crate::shm::server::ShmServer;
use crate::socket::{bind_socket, prepare_socket_path, restrict_socket};

/// Each gRPC listener may hold at most 1/GRPC_FD_SHARE of the descriptor limit...
const GRPC_FD_SHARE: u64 = 4;
/// ...and the metrics endpoint 1/METRICS_FD_SHARE, leaving the rest to files, UFS and peer
/// connections and the shared-memory socket.
const METRICS_FD_SHARE: u64 = 16;

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    // Installed before the cache opens, so what opening counts (SSD block files dropped at
    // start) reaches the metrics.
    let recorder = match cfg.server.metrics_addr {
        Some(_) => Some(http::install_recorder()?),
        None => None,
    };
    // Caps of every listener are sized from the descriptor limit (see `listen`).
    let nofile = listen::raise_nofile_limit();
    let cache = open_cache(&cfg).await?;
    // Joined before anything serves reads, so no block is cached on a non-owner.
    let cluster = join_cluster(&cfg, &cache).await?;
    // Mounted before the listeners: a daemon that answers `status` serves its FUSE view.
    let fuse = mount_fuse(&cfg, &cache).await?;

    let mut tasks = Tasks::default();
    if let (Some(addr), Some(handle)) = (cfg.server.metrics_addr, recorder) {
        serve_metrics(&cfg.server, addr, handle, nofile, &mut tasks).await?;
    }
    let mode = cfg.gpu.mode;
    let gpus = tokio::task::spawn_blocking(move || open_gpus(mode)).await??;
    let gpu = gpu_status(mode, &gpus);
    let pipelines = Pipelines::with_gpus(cfg.pipeline.clone(), gpus);
    pipelines.configure_prefetch(cfg.prefetch.clone());
    let shm_clients = ShmClients::new(ClientLimits::new(&cfg.server, cfg.cache.memory.capacity.0));
    let grpc = Grpc::new(&cfg, &cache, &pipelines, &shm_clients, gpu, nofile)?;

    let socket = cfg.server.socket.clone();
    let unix = bind_socket(&socket, cfg.server.socket_group.as_deref())?;
    info!(socket = %socket.display(), "gRPC on Unix socket");
    grpc.serve_unix(unix, &mut tasks);
    let shm = start_shm(&cfg.server, &cache, &pipelines, &shm_clients)?;
    if let Some(addr) = cfg.server.tcp_addr {
        grpc.serve_tcp(addr, &mut tasks).await?;
    }
    let cluster = match cluster {
        Some((c, listener)) => {
            grpc.serve_peers(&cache, &c, listener, &mut tasks)?;
            Some(c)
        }
        None => None,
    };

    let signal = wait_for_signal().await?;
    info!(signal, "shutting down");
    if let Some(c) = &cluster {
        c.leave().await;
    }
    tasks.stop().await;
    if let Some(f) = fuse {
        let _ = tokio::task::spawn_blocking(move || f.unmount()).await;
    }
    if let Some(s) = shm {
        s.stop();
    }
    let _ = std::fs::remove_file(&socket);
    info!("stopped");
    Ok(())
}

/// Opens the cache (on a blocking thread: it scans the SSD tier) and logs its mounts.
async fn open_cache(cfg: &DaemonConfig) -> anyhow::Result<Arc<Cache>> {
    let cache = {
        let (cache_cfg, mounts) = (cfg.cache.clone(), cfg.mount.clone());
        tokio::task::spawn_blocking(move || Cache::open(cache_cfg, mounts)).await??
    };
    for m in cache.mounts().list() {
        info!(path = %m.point, uri = %m.spec.uri, "mounted");
    }
    Ok(cache)
}

/// Binds the peer API and joins the cluster, when `cluster.listen_addr` is set. The listener
/// is bound before joining, so port 0 works: the cluster is told the port the kernel chose.
async fn join_cluster(
    cfg: &DaemonConfig,
    cache: &Arc<Cache>,
) -> anyhow::Result<Option<(Arc<Cluster>, TcpListener)>> {
    let Some(addr) = cfg.cluster.listen_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the peer API on {addr} (cluster.listen_addr)"))?;
    let bound = listener.local_addr()?;
    let mut ccfg = cfg.cluster.clone();
    ccfg.listen_addr = Some(bound);
    if addr.port() == 0
        && let Some(adv) = &ccfg.advertise_addr
        && adv.ends_with(":0")
    {
        ccfg.advertise_addr = Some(format!("{}:{}", &adv[..adv.len() - 2], bound.port()));
    }
    let c = Cluster::start(&ccfg).await?;
    cache.join_cluster(c.clone())?;
    // Other nodes' loaders' schedules are indexed here by the pipeline (it lists datasets).
    c.schedules()
        .set_builder(loaderd_pipeline::remote::Builder::new(cache.clone()));
    Ok(Some((c, listener)))
}

/// Mounts the FUSE view when `fuse.mount_point` is set (on a blocking thread: mounting
/// waits for the kernel).
async fn mount_fuse(cfg: &DaemonConfig, cache: &Arc<Cache>) -> anyhow::Result<Option<FuseMount>> {
    let Some(path) = cfg.fuse.mount_point.clone() else {
        return Ok(None);
    };
    let (fuse_cfg, cache, rt) = (cfg.fuse.clone(), cache.clone(), Handle::current());
    let mount =
        tokio::task::spawn_blocking(move || crate::fuse::mount(&path, &fuse_cfg, cache, rt))
            .await??;
    Ok(Some(mount))
}

/// The listener tasks and the signal that stops them.
struct Tasks {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    running: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Default for Tasks {
    fn default() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Tasks {
            stop_tx,
            stop_rx,
            running: Vec::new(),
        }
    }
}

impl Tasks {
    /// A future that completes once [`Tasks::stop`] is called.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.stop_rx.clone())
    }

    fn spawn(&mut self, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.running.push(tokio::spawn(task));
    }

    /// Stops accepting and lets in-flight calls finish, for at most 10 s.
    async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let drain = async {
            for t in self.running {
                match t.await {
                    Ok(Err(e)) => warn!(error = %e, "listener ended with an error"),
                    Err(e) => warn!(error = %e, "listener task failed"),
                    Ok(Ok(())) => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            warn!("in-flight requests did not finish within 10s; exiting anyway");
        }
    }
}

/// Serves `/metrics` and `/healthz` on `addr`.
async fn serve_metrics(
    s: &ServerConfig,
    addr: SocketAddr,
    handle: PrometheusHandle,
    nofile: u64,
    tasks: &mut Tasks,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics address {addr} (server.metrics_addr)"))?;
    warn_if_exposed("server.metrics_addr", listener.local_addr()?);
    let limit = ConnLimit::sized(
        "metrics",
        s.metrics_max_connections,
        nofile,
        METRICS_FD_SHARE,
    );
    info!(addr = %listener.local_addr()?, max_connections = limit.max(), nofile, "metrics on /metrics, health on /healthz");
    let timeouts = http::HttpTimeouts {
        header: s.metrics_header_timeout.0,
        connection: s.metrics_connection_timeout.0,
    };
    tasks.spawn(http::serve(
        listener,
        handle,
        limit,
        timeouts,
        tasks.stopped(),
    ));
    Ok(())
}

/// Starts the shared-memory socket when `server.shm_reads` is on and the memory tier exists.
fn start_shm(
    s: &ServerConfig,
    cache: &Arc<Cache>,
    pipelines: &Arc<Pipelines>,
    clients: &Arc<ShmClients>,
) -> anyhow::Result<Option<ShmServer>> {
    if !s.shm_reads {
        return Ok(None);
    }
    let path = s.shm_socket_path();
    let group = s.socket_group.as_deref();
    prepare_socket_path(&path, group)?;
    let server = ShmServer::start(
        &path,
        cache.clone(),
        pipelines.clone(),
        Handle::current(),
        clients.clone(),
    )
    .with_context(|| {
        format!(
            "binding shared-memory socket {} (server.shm_socket)",
            path.display()
        )
    })?;
    if server.is_some() {
        restrict_socket(&path, group)?;
        info!(socket = %path.display(), "zero-copy local reads on Unix socket");
    }
    Ok(server)
}

/// The gRPC service and how every gRPC listener serves it.
struct Grpc {
    service: LoaderService,
    access: Access,
    keepalive: (Duration, Duration),
    handshake: Duration,
    max_connections: usize,
    nofile: u64,
}

impl Grpc {
    fn new(
        cfg: &DaemonConfig,
        cache: &Arc<Cache>,
        pipelines: &Arc<Pipelines>,
        shm_clients: &Arc<ShmClients>,
        gpu: pb::GpuStatus,
        nofile: u64,
    ) -> anyhow::Result<Self> {
        let s = &cfg.server;
        let access = Access::from_config(s)?;
        let service = LoaderService::new(
            cache.clone(),
            pipelines.clone(),
            gpu,
            s.readahead_blocks,
            s.load_parallelism,
        )
        .with_access(access.clone(), cfg.mounts.clone())
        .with_shm_clients(shm_clients.clone());
        Ok(Grpc {
            service,
            access,
            keepalive: (s.grpc_keepalive_interval.0, s.grpc_keepalive_timeout.0),
            handshake: s.grpc_handshake_timeout.0,
            max_connections: s.grpc_max_connections,
            nofile,
        })
    }

    fn server(&self) -> LoaderServer<LoaderService> {
        LoaderServer::new(self.service.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }

    fn builder(&self) -> Server {
        Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(self.keepalive.0))
            .http2_keepalive_timeout(Some(self.keepalive.1))
    }

    /// Accepted connections of `listener`, capped at `server.grpc_max_connections` (and a
    /// share of the descriptor limit), each given `server.grpc_handshake_timeout`.
    fn incoming<L: listen::Listener>(
        &self,
        listener: L,
        name: &'static str,
    ) -> impl futures::Stream<Item = std::io::Result<listen::Guarded<L::Io>>> + use<L> {
        let limit = ConnLimit::sized(name, self.max_connections, self.nofile, GRPC_FD_SHARE);
        listen::grpc_incoming(listener, limit, self.handshake)
    }

    fn serve_unix(&self, unix: UnixListener, tasks: &mut Tasks) {
        let router = self.builder().add_service(self.server());
        let (incoming, stop) = (self.incoming(unix, "grpc"), tasks.stopped());
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .context("gRPC server on the Unix socket")
        });
    }

    /// gRPC on TCP: every call must carry the token.
    async fn serve_tcp(&self, addr: SocketAddr, tasks: &mut Tasks) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC address {addr} (server.tcp_addr)"))?;
        warn_if_exposed("server.tcp_addr", listener.local_addr()?);
        info!(addr = %listener.local_addr()?, "gRPC on TCP (token required)");
        let router = self.builder().add_service(InterceptedService::new(
            self.server(),
            self.access.tcp_check(),
        ));
        serve_tcp(
            router,
            self.incoming(listener, "grpc_tcp"),
            tasks,
            "gRPC server on TCP",
        );
        Ok(())
    }

    /// The peer API of the cluster, on the listener bound before joining.
    fn serve_peers(
        &self,
        cache: &Arc<Cache>,
        cluster: &Arc<Cluster>,
        listener: TcpListener,
        tasks: &mut Tasks,
    ) -> anyhow::Result<()> {
        info!(addr = %listener.local_addr()?, node = %cluster.me().id, "peer API on TCP");
        let router = self
            .builder()
            .add_service(PeerService::new(cache.clone(), cluster.clone()).into_server());
        serve_tcp(
            router,
            self.incoming(listener, "peer"),
            tasks,
            "peer API server",
        );
        Ok(())
    }
}

/// Keeps block-sized buffers in the process heap. glibc serves allocations above its mmap
/// threshold (128 KiB, adapting up to 32 MiB) with fresh mappings, so every 4 MiB block
/// buffer of a read or a peer reply paid page faults and kernel zeroing on first touch (a
/// sixth of the peer path's time in a profile). With the thresholds at 256 MiB, freed buffers
/// are reused; memory above what the daemon holds at its peak is not returned to the kernel,
/// which is bounded by the in-flight budget (`cache.ufs.max_inflight_bytes`) and the read-
/// ahead of concurrent streams. Call before any threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LIMIT: libc::c_int = 256 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is called before the daemon
        // starts any thread, so nothing allocates concurrently.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT) == 1
        };
        if !ok {
            eprintln!("loaderd: could not tune the allocator (mallopt); continuing");
        }
    }
}

/// Opens every GPU unless `mode` is off. Without one, `auto` serves every loader from the
/// CPU (logged, and the reason is in status and in the reply to a loader asking for CUDA);
/// `on` refuses to start, naming the reason.
fn open_gpus(mode: GpuMode) -> anyhow::Result<Gpus> {
    if mode == GpuMode::Off {
        info!("GPU off (gpu.mode = off): decoding on the CPU");
        return Ok(Gpus::none("gpu.mode is off"));
    }
    match loaderd_gpu::open_all() {
        Ok(devices) => {
            for d in &devices {
                let i = d.info();
                info!(ordinal = i.ordinal, name = %i.name, memory = i.total_memory, "GPU open for CUDA loaders");
            }
            Ok(Gpus::opened(devices))
        }
        Err(e) if mode == GpuMode::On => {
            anyhow::bail!("gpu.mode = on, but no GPU can be used: {e}")
        }
        Err(e) => {
            info!(reason = %e, "no GPU: decoding on the CPU");
            Ok(Gpus::none(e.to_string()))
        }
    }
}

/// The GPU part of status: the mode, the open devices, or why there are none.
fn gpu_status(mode: GpuMode, gpus: &Gpus) -> pb::GpuStatus {
    pb::GpuStatus {
        mode: mode.name().into(),
        available: !gpus.devices().is_empty(),
        reason: gpus.reason().unwrap_or_default().into(),
        devices: gpus
            .devices()
            .iter()
            .map(|d| {
                let d = d.info();
                pb::GpuDevice {
                    ordinal: d.ordinal,
                    name: d.name.clone(),
                    total_memory: d.total_memory,
                    compute_major: d.compute_capability.0,
                    compute_minor: d.compute_capability.1,
                    driver_version: d.driver_version,
                }
            })
            .collect(),
    }
}

/// Serves `router` on the bounded connections of a TCP listener until the tasks stop.
/// Accepted connections get `TCP_NODELAY` (see [`listen`]): a reply's last frame must not wait
/// for the peer's delayed ACK (Nagle), which otherwise stalls every small-file read by
/// milliseconds.
fn serve_tcp(
    router: tonic::transport::server::Router,
    incoming: impl futures::Stream<Item = std::io::Result<listen::Guarded<tokio::net::TcpStream>>>
    + Send
    + 'static,
    tasks: &mut Tasks,
    what: &'static str,
) {
    let stop = tasks.stopped();
    tasks.spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .context(what)
    });
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The first SIGTERM or SIGINT, by name.
pub async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn warn_if_exposed(key: &str, addr: std::net::SocketAddr) {
    if !addr.ip().is_loopback() {
        warn!(%addr, key, "listening beyond loopback: anyone who reaches this port can use it");
    }
}
