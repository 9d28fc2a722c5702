//! The daemon side of local zero-copy reads: one thread per client connection.
//!
//! Clients are few (training ranks and tools on this node) and each connection is a strict
//! request/response loop, so a blocking thread per connection gives the lowest latency; cache
//! work runs on the daemon's tokio runtime through its handle. Connections are capped in total
//! and per client process, and refused ones are answered at once by the accept thread (a
//! hello carrying the error) without a thread of their own. Leases are bounded per client
//! process and in total (see [`super::clients`]) so clients that never release cannot pin the
//! memory tier. Loader opens of one process are admitted one at a time, and a second
//! `OpenLoader` on a connection is refused before any work.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use loaderd_cache::tier::Lease;
use loaderd_cache::{Cache, LogicalPath};
use loaderd_proto::v1 as pb;
use metrics::{counter, gauge, histogram};
use prost::Message;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use loaderd_pipeline::{Pipelines, Session};
use loaderd_proto::transport::{
    MAX_SHM_MESSAGE, SHM_PROTOCOL_VERSION, accept_on, listen_at, recv_msg, send_msg,
};

use super::clients::{ClientConnection, ConnectionRefused, ShmClients, peer_pid};
use super::loader;
use crate::server::{status_at, to_status};

/// A running shared-memory read server.
pub struct ShmServer {
    listener: Arc<OwnedFd>,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ShmServer {
    /// Listens on `path` (already cleared of stale sockets by the caller). `None` when the
    /// memory tier has no arena to share.
    pub fn start(
        path: &Path,
        cache: Arc<Cache>,
        pipelines: Arc<Pipelines>,
        rt: Handle,
        clients: Arc<ShmClients>,
    ) -> std::io::Result<Option<Self>> {
        if cache.memory().arena().is_none() {
            info!("memory tier disabled: no shared-memory reads");
            return Ok(None);
        }
        let listener = Arc::new(listen_at(path)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            cache,
            pipelines,
            rt,
            clients,
        });
        let accept = {
            let (listener, stopping) = (listener.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("loaderd-shm-accept".into())
                .spawn(move || accept_loop(&listener, &stopping, &shared))?
        };
        Ok(Some(ShmServer {
            listener,
            path: path.to_path_buf(),
            stopping,
            accept: Some(accept),
        }))
    }

    /// Stops accepting and removes the socket; open connections end with the process.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What every connection thread uses.
pub(super) struct Shared {
    pub cache: Arc<Cache>,
    pub pipelines: Arc<Pipelines>,
    pub rt: Handle,
    /// Connections and leases of every client process.
    clients: Arc<ShmClients>,
}

fn accept_loop(listener: &OwnedFd, stopping: &AtomicBool, shared: &Arc<Shared>) {
    let mut next = 0u64;
    while !stopping.load(Ordering::SeqCst) {
        match accept_on(listener.as_fd()) {
            Ok(conn) => {
                let client = match peer_pid(&conn) {
                    Ok(pid) => shared.clients.connect(pid),
                    Err(e) => {
                        warn!(error = %e, "no peer credentials on a shared-memory connection");
                        continue;
                    }
                };
                let client = match client {
                    Ok(c) => c,
                    Err(refused) => {
                        refuse(&conn, &refused);
                        continue;
                    }
                };
                next += 1;
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("loaderd-shm-{next}"))
                    .spawn(move || {
                        gauge!("loaderd_shm_clients").increment(1.0);
                        if let Err(e) = serve(&conn, &shared, client) {
                            debug!(error = %e, "shared-memory client ended with an error");
                        }
                        gauge!("loaderd_shm_clients").decrement(1.0);
                    });
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start a shared-memory client thread");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(e) => {
                warn!(error = %e, "accept on the shared-memory socket failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Answers a refused connection with a hello naming the limit (no arena), then closes it.
fn refuse(conn: &OwnedFd, why: &ConnectionRefused) {
    debug!(error = %why, "shared-memory connection refused");
    let hello = pb::ShmHello {
        version: SHM_PROTOCOL_VERSION,
        arena_len: 0,
        code: tonic::Code::ResourceExhausted as i32,
        error: why.to_string(),
    };
    // A fresh connection's send buffer is empty, so this does not block the accept thread.
    let _ = send_msg(conn.as_fd(), &hello.encode_to_vec(), None);
}

/// One client: hello with the arena, then requests until EOF.
fn serve(conn: &OwnedFd, shared: &Shared, client: ClientConnection) -> std::io::Result<()> {
    let arena = shared
        .cache
        .memory()
        .arena()
        .ok_or_else(|| std::io::Error::other("no arena"))?;
    let ro = arena.read_only_fd().map_err(std::io::Error::other)?;
    let hello = pb::ShmHello {
        version: SHM_PROTOCOL_VERSION,
        arena_len: arena.len() as u64,
        ..Default::default()
    };
    send_msg(conn.as_fd(), &hello.encode_to_vec(), Some(ro.as_fd()))?;
    drop(ro);
    let mut state = Connection {
        leases: Leases::new(),
        session: None,
        client,
    };
    let mut buf = vec![0u8; MAX_SHM_MESSAGE];
    loop {
        let (n, _) = recv_msg(conn.as_fd(), &mut buf)?;
        if n == 0 {
            // Client gone (exit or kill): its leases and loader drop here.
            return Ok(());
        }
        let req = pb::ShmRequest::decode(&buf[..n])
            .map_err(|e| std::io::Error::other(format!("bad request: {e}")))?;
        match req.kind {
            Some(pb::shm_request::Kind::Release(r)) => state.release(&r.ids),
            Some(pb::shm_request::Kind::Read(r)) => {
                let reply = state.read(shared, &r);
                send_msg(conn.as_fd(), &reply.encode_to_vec(), None)?;
            }
            Some(pb::shm_request::Kind::OpenLoader(r)) => state.open_loader(conn, shared, &r)?,
            Some(pb::shm_request::Kind::NextBatch(n)) => {
                let reply = loader::next(state.session.as_mut(), n.release_slot);
                send_msg(conn.as_fd(), &reply.encode_to_vec(), None)?;
            }
            None => return Err(std::io::Error::other("empty request")),
        }
    }
}

/// What one connection holds.
struct Connection {
    /// Dropped before `client` (which gives the bytes back) when the connection ends.
    leases: Leases,
    /// This connection's training pipeline, once opened; dropped (workers stopped, ring
    /// unmapped) when the client goes away.
    session: Option<Session>,
    client: ClientConnection,
}

impl Connection {
    fn release(&mut self, ids: &[u64]) {
        release(&mut self.leases, &mut self.client, ids);
    }

    fn read(&mut self, shared: &Shared, r: &pb::ShmRead) -> pb::ShmReadReply {
        self.release(&r.release);
        // A read id still leased is replaced: its old lease goes first, so reusing an id
        // never counts the same client twice.
        self.release(&[r.id]);
        let started = std::time::Instant::now();
        let res = shared.rt.block_on(read(&shared.cache, r, &mut self.client));
        histogram!("loaderd_read_latency_seconds", "api" => "shm")
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok((reply, held, bytes)) => {
                if !held.is_empty() {
                    self.leases.insert(r.id, (held, bytes));
                }
                counter!("loaderd_shm_reads_total").increment(1);
                reply
            }
            Err(status) => error_reply(r.id, status.code(), status.message().into()),
        }
    }

    /// Opens the loader and answers with its ring's descriptor, or why not.
    fn open_loader(
        &mut self,
        conn: &OwnedFd,
        shared: &Shared,
        r: &pb::OpenLoader,
    ) -> std::io::Result<()> {
        let (reply, fd) = match loader::open(&self.session, &self.client, shared, r) {
            Ok(s) => {
                let fd = s.descriptor().map_err(std::io::Error::other)?;
                let reply = loader::opened(s.opened());
                self.session = Some(s);
                (reply, Some(fd))
            }
            Err(e) => (loader::refused(&e), None),
        };
        send_msg(
            conn.as_fd(),
            &reply.encode_to_vec(),
            fd.as_ref().map(|f| f.as_fd()),
        )
    }
}

type Leases = HashMap<u64, (Vec<Lease>, u64)>;

fn release(leases: &mut Leases, client: &mut ClientConnection, ids: &[u64]) {
    for id in ids {
        if let Some((held, bytes)) = leases.remove(id) {
            drop(held);
            client.give_back(bytes);
        }
    }
}

fn error_reply(id: u64, code: tonic::Code, error: String) -> pb::ShmReadReply {
    pb::ShmReadReply {
        id,
        code: code as i32,
        error,
        ..Default::default()
    }
}

/// Serves one read: its reply, the leases it holds and the bytes counted for them.
///
/// Each block's size is counted against the caps *before* it is leased, so a read never
/// leases past a cap: when not even its first block fits, the read is refused with the cap
/// named (the client reads it over gRPC); when a later block does not fit, it and the rest
/// are answered as fallback extents, read over gRPC like blocks the tier cannot hold.
async fn read(
    cache: &Cache,
    r: &pb::ShmRead,
    client: &mut ClientConnection,
) -> Result<(pb::ShmReadReply, Vec<Lease>, u64), tonic::Status> {
    let path = LogicalPath::parse(&r.path).map_err(|e| to_status(&e))?;
    let fh = cache
        .open_file_at(&path, &r.version)
        .await
        .map_err(|e| status_at(&path, &e))?;
    let size = fh.meta.size;
    let span = fh
        .span(r.offset, r.length)
        .map_err(|e| status_at(&path, &e))?;
    let mut extents = Vec::new();
    let mut held = Vec::new();
    // Bytes reserved for the leases in `held`.
    let mut reserved = 0u64;
    let mut capped = false;
    for (i, b) in cache.blocks(&fh, span.clone()).iter().enumerate() {
        let part = b.part(&span);
        let block_len = b.len();
        let lease = if capped {
            None
        } else if let Err(e) = client.reserve(block_len) {
            if i == 0 {
                return Err(tonic::Status::resource_exhausted(e.to_string()));
            }
            debug!(error = %e, "lease cap reached mid-read: the rest falls back");
            capped = true;
            None
        } else {
            match cache.lease_block(&fh, b).await {
                Ok(Some(lease)) => {
                    reserved += block_len;
                    Some(lease)
                }
                Ok(None) => {
                    client.give_back(block_len);
                    None
                }
                Err(e) => {
                    client.give_back(block_len + reserved);
                    return Err(status_at(&path, &e));
                }
            }
        };
        if lease.is_none() {
            counter!("loaderd_shm_fallback_bytes_total").increment(part.end - part.start);
        }
        extents.push(pb::ShmExtent {
            file_offset: b.range.start + part.start,
            length: part.end - part.start,
            arena_offset: lease.as_ref().map_or(0, |l| l.offset() + part.start),
            in_arena: lease.is_some(),
        });
        held.extend(lease);
    }
    Ok((
        pb::ShmReadReply {
            id: r.id,
            code: 0,
            error: String::new(),
            file_size: size,
            extents,
            version: fh.meta.version.clone(),
        },
        held,
        reserved,
    ))
}
