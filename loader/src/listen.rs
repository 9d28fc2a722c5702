//! Bounded connections on every listener of the daemon.
//!
//! Each listener (the metrics HTTP endpoint, the gRPC Unix socket, gRPC over TCP, the peer
//! API) has a cap on open connections. A connection over the cap is closed as soon as it is
//! accepted and counted in `loaderd_connections_refused_total{listener}`, so idle connections
//! cannot pile up until the daemon runs out of descriptors. Caps are sized from the
//! descriptor limit too: [`raise_nofile_limit`] lifts the soft `RLIMIT_NOFILE` to the hard
//! one at start, and [`ConnLimit::sized`] keeps each cap to a fraction of what is left.
//!
//! When the process is out of descriptors anyway (`EMFILE`), accepting backs off briefly
//! instead of spinning on the error; the pending connection waits in the kernel's backlog.
//!
//! gRPC connections must send the HTTP/2 preface within a handshake timeout
//! ([`grpc_incoming`]): without it, a connection that never says anything held a slot (and a
//! descriptor) forever. After the handshake, HTTP/2 keepalive pings (set on the server
//! builder) close connections whose peer stopped answering.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::Stream;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// The HTTP/2 client preface every gRPC connection starts with.
const H2_PREFACE_LEN: usize = 24;
/// Pause after an accept failed for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per listener and cause in this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The cap on open connections of one listener.
#[derive(Clone)]
pub struct ConnLimit {
    listener: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    warned: Arc<RateLimit>,
}

impl ConnLimit {
    /// At most `max` open connections on `listener` (its metric label).
    pub fn new(listener: &'static str, max: usize) -> Self {
        let max = max.max(1);
        ConnLimit {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            warned: Arc::new(RateLimit::default()),
        }
    }

    /// Like [`ConnLimit::new`], with the cap lowered to `nofile / share` (at least 4), so one
    /// listener cannot take more than its share of the descriptor limit.
    pub fn sized(listener: &'static str, configured: usize, nofile: u64, share: u64) -> Self {
        let from_limit = (nofile / share.max(1)).max(4);
        let max = (configured as u64).min(from_limit) as usize;
        if max < configured {
            warn!(
                listener,
                configured,
                max,
                nofile,
                "connection cap lowered to fit the descriptor limit (RLIMIT_NOFILE)"
            );
        }
        ConnLimit::new(listener, max)
    }

    /// The cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    fn refuse(&self) {
        counter!("loaderd_connections_refused_total", "listener" => self.listener).increment(1);
        if self.warned.due(0) {
            warn!(
                listener = self.listener,
                max = self.max,
                "connection refused: the listener's connection cap is reached"
            );
        }
    }

    /// Counts a connection closed because it did not speak in time.
    pub fn timed_out(&self) {
        counter!("loaderd_connections_timed_out_total", "listener" => self.listener).increment(1);
    }
}

/// One open connection's place under its listener's cap; given back on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, listener: &'static str) -> Self {
        gauge!("loaderd_connections_open", "listener" => listener).increment(1.0);
        Slot {
            _permit: permit,
            listener,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        gauge!("loaderd_connections_open", "listener" => self.listener).decrement(1.0);
    }
}

/// A listening socket.
pub trait Listener: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        // A reply's last frame must not wait for the peer's delayed ACK (Nagle).
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// The next connection with a slot under `limit`; connections over the cap are closed and
/// counted, and accept errors never end the loop.
pub async fn accept<L: Listener>(listener: &L, limit: &ConnLimit) -> (L::Io, Slot) {
    loop {
        match listener.accept_one().await {
            Ok(io) => match limit.slots.clone().try_acquire_owned() {
                Ok(permit) => return (io, Slot::new(permit, limit.listener)),
                Err(_) => {
                    limit.refuse();
                    drop(io);
                }
            },
            Err(e) if is_out_of_resources(&e) => {
                counter!("loaderd_accept_errors_total", "listener" => limit.listener).increment(1);
                if limit.warned.due(1) {
                    warn!(listener = limit.listener, error = %e, "cannot accept connections: out of descriptors or memory; retrying");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            // Per-connection failures (the peer reset before accept): the next one may work.
            Err(e) => debug!(listener = limit.listener, error = %e, "accept failed"),
        }
    }
}

fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Connections of `listener` for a tonic server: capped by `limit`, each handed over only
/// once it sent the HTTP/2 preface, within `handshake` (else closed and counted). Accepting
/// stops (and the listener closes) when the server drops the stream.
pub fn grpc_incoming<L: Listener>(
    listener: L,
    limit: ConnLimit,
    handshake: Duration,
) -> impl Stream<Item = io::Result<Guarded<L::Io>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (io, slot) = tokio::select! {
                conn = accept(&listener, &limit) => conn,
                _ = tx.closed() => return,
            };
            let (tx, limit) = (tx.clone(), limit.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, read_preface(io)).await {
                    Ok(Ok((io, preface))) => {
                        let _ = tx
                            .send(Ok(Guarded {
                                io,
                                replay: preface,
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        debug!(listener = limit.listener, error = %e, "connection closed before its handshake")
                    }
                    Err(_) => {
                        limit.timed_out();
                        debug!(
                            listener = limit.listener,
                            "connection closed: no HTTP/2 preface within the handshake timeout"
                        );
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn read_preface<S: AsyncRead + Unpin>(mut io: S) -> io::Result<(S, Bytes)> {
    let mut buf = vec![0u8; H2_PREFACE_LEN];
    io.read_exact(&mut buf).await?;
    Ok((io, Bytes::from(buf)))
}

/// A connection holding its slot, replaying the bytes read before it was handed over.
pub struct Guarded<S> {
    io: S,
    replay: Bytes,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Peer information (addresses, Unix peer credentials) is the wrapped socket's.
impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => warn!(soft, hard, error = %e, "could not raise the descriptor limit"),
        }
    }
    soft
}

/// Lets through one event per interval for each of a few causes.
#[derive(Default)]
struct RateLimit {
    last_ms: [AtomicU64; 2],
    epoch: std::sync::OnceLock<Instant>,
}

impl RateLimit {
    fn due(&self, cause: usize) -> bool {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = &self.last_ms[cause];
        let prev = last.load(Ordering::Relaxed);
        (prev == 0 || now.saturating_sub(prev) >= WARN_EVERY.as_millis() as u64)
            && last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn over_the_cap_is_closed_and_a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = ConnLimit::new("test", 1);
        let mut incoming = Box::pin(grpc_incoming(
            listener,
            limit.clone(),
            Duration::from_millis(300),
        ));
        // A silent connection takes the only slot until the handshake timeout.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), over.read(&mut b))
            .await
            .expect("a connection over the cap must be closed at once");
        assert!(matches!(n, Ok(0) | Err(_)));
        // After the silent one timed out, a speaking client gets through, preface intact.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nhello")
            .await
            .unwrap();
        let mut got = futures::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; 29];
        got.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nhello");
    }
}
