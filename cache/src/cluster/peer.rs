//! Requests to other nodes: one lazily connected gRPC channel per peer address, the cluster
//! token on every request, a deadline on each, and suspicion of peers that fail.
//!
//! A peer that errors or times out is *suspect* for `cluster.suspect_time`: reads skip it
//! (going to the next owner or the UFS) instead of paying its timeout again and again, and
//! the first request after the suspicion expires tries it again.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use loaderd_proto::v1 as pb;
use loaderd_proto::v1::peer_client::PeerClient;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use super::{TOKEN_HEADER, wire};
use crate::error::{Error, Result};
use crate::placement::Member;
use crate::sync::lock;

/// Largest peer message: a block of the largest allowed size plus framing.
pub const MAX_PEER_MESSAGE: usize = (256 << 20) + (1 << 20);

/// HTTP/2 frame size limit for replies (the protocol's maximum): a block arrives in one DATA
/// frame instead of one per 16 KiB, each a separate write on the owner.
const MAX_FRAME: u32 = (16 << 20) - 1;

/// Adds the cluster token to every request.
#[derive(Clone)]
struct AddToken(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AddToken {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(TOKEN_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A channel to one peer that adds the cluster token to every request.
type TokenChannel = InterceptedService<Channel, AddToken>;

/// Connections to the other members.
pub struct PeerPool {
    token: Arc<str>,
    timeout: Duration,
    suspect_time: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    suspects: Mutex<HashMap<String, Instant>>,
    reads: AtomicU64,
    failures: AtomicU64,
}

impl PeerPool {
    /// A pool presenting `token`, with `timeout` per request.
    pub fn new(token: Arc<str>, timeout: Duration, suspect_time: Duration) -> Self {
        PeerPool {
            token,
            timeout,
            suspect_time,
            channels: Mutex::default(),
            suspects: Mutex::default(),
            reads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether `addr` failed recently (and is skipped until its suspicion expires).
    pub fn is_suspect(&self, addr: &str) -> bool {
        let mut s = lock(&self.suspects);
        match s.get(addr) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                s.remove(addr);
                false
            }
            None => false,
        }
    }

    fn suspect(&self, m: &Member, why: &str) {
        warn!(peer = %m.id, addr = %m.addr, reason = why, secs = self.suspect_time.as_secs(), "peer marked suspect");
        metrics::counter!("loaderd_peer_suspected_total").increment(1);
        lock(&self.suspects).insert(m.addr.clone(), Instant::now() + self.suspect_time);
    }

    /// (block reads from peers, failed ones).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// The channel to `m`, with the token added to every request.
    fn channel(&self, m: &Member, timeout: Duration) -> Result<TokenChannel> {
        let channel = {
            let mut channels = lock(&self.channels);
            match channels.get(&m.addr) {
                Some(c) => c.clone(),
                None => {
                    let c = Endpoint::from_shared(format!("http://{}", m.addr))
                        .map_err(|e| Error::Peer {
                            peer: m.id.clone(),
                            reason: format!("bad address {:?}: {e}", m.addr),
                        })?
                        .connect_timeout(timeout)
                        .tcp_nodelay(true)
                        .initial_stream_window_size(16 << 20)
                        .initial_connection_window_size(64 << 20)
                        .max_frame_size(MAX_FRAME)
                        .connect_lazy();
                    channels.insert(m.addr.clone(), c.clone());
                    c
                }
            }
        };
        let token = self.token.parse().map_err(|_| Error::Peer {
            peer: m.id.clone(),
            reason: "the cluster token is not a valid header value".into(),
        })?;
        Ok(InterceptedService::new(channel, AddToken(token)))
    }

    /// Asks `m` for a block. The bytes are checked against the owner's CRC32C; any failure
    /// (error, timeout, bad checksum) marks `m` suspect. The reply is decoded in place
    /// ([`wire`]): the block is a slice of the HTTP/2 frame it arrived in.
    pub async fn get_block(&self, m: &Member, req: pb::PeerBlockRequest) -> Result<pb::PeerBlock> {
        let discard = req.discard;
        let res = async {
            let mut channel = self.channel(m, self.timeout).map_err(|e| e.to_string())?;
            let call = async {
                let request = http::Request::builder()
                    .method(http::Method::POST)
                    .uri(format!("http://{}{}", m.addr, wire::GET_BLOCK_PATH))
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .header("grpc-timeout", format!("{}m", self.timeout.as_millis()))
                    .body(Body::new(Full::new(wire::encode_request(&req)?)))
                    .map_err(|e| Status::internal(format!("building a block request: {e}")))?;
                poll_fn(|cx| channel.poll_ready(cx))
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let resp = channel
                    .call(request)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                wire::read_reply(resp, MAX_PEER_MESSAGE).await
            };
            let block = tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| format!("no answer within {:?}", self.timeout))?
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            if !discard && crc32c::crc32c(&block.data) != block.crc32c {
                metrics::counter!("loaderd_peer_corrupt_blocks_total").increment(1);
                return Err("block failed its checksum".to_string());
            }
            Ok(block)
        }
        .await;
        self.reads.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(b) => {
                metrics::counter!("loaderd_peer_reads_total", "result" => "ok").increment(1);
                metrics::counter!("loaderd_peer_bytes_total").increment(b.data.len() as u64);
                Ok(b)
            }
            Err(reason) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("loaderd_peer_reads_total", "result" => "error").increment(1);
                self.suspect(m, &reason);
                Err(Error::Peer {
                    peer: m.id.clone(),
                    reason,
                })
            }
        }
    }

    /// `m`'s numbers, within `timeout` (status only: failures do not make it suspect).
    pub async fn node_status(
        &self,
        m: &Member,
        timeout: Duration,
    ) -> Result<pb::NodeStatusResponse> {
        self.unary(
            m,
            timeout,
            pb::NodeStatusRequest {},
            |mut c, r| async move { c.node_status(r).await },
        )
        .await
    }

    /// Sends a loader's schedule to `m`, within `timeout` (failures do not make it suspect:
    /// the next refresh tries again).
    pub async fn announce_schedule(
        &self,
        m: &Member,
        timeout: Duration,
        a: pb::ScheduleAnnouncement,
    ) -> Result<pb::ScheduleAck> {
        self.unary(m, timeout, a, |mut c, r| async move {
            c.announce_schedule(r).await
        })
        .await
    }

    /// Withdraws a closed loader's schedule from `m`, within `timeout`.
    pub async fn withdraw_schedule(
        &self,
        m: &Member,
        timeout: Duration,
        w: pb::ScheduleWithdrawal,
    ) -> Result<pb::ScheduleAck> {
        self.unary(m, timeout, w, |mut c, r| async move {
            c.withdraw_schedule(r).await
        })
        .await
    }

    /// One tonic call `call` of `req` to `m` within `timeout`; errors name the peer and the
    /// status.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        m: &Member,
        timeout: Duration,
        req: Req,
        call: F,
    ) -> Result<Resp>
    where
        F: FnOnce(PeerClient<TokenChannel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let peer_err = |reason: String| Error::Peer {
            peer: m.id.clone(),
            reason,
        };
        let client = PeerClient::new(self.channel(m, timeout)?);
        let mut request = tonic::Request::new(req);
        request.set_timeout(timeout);
        tokio::time::timeout(timeout, call(client, request))
            .await
            .map_err(|_| peer_err(format!("no answer within {timeout:?}")))?
            .map(tonic::Response::into_inner)
            .map_err(|s| peer_err(format!("{}: {}", s.code(), s.message())))
    }
}

/// The request for block `b` of `fh` (everything the owner needs to fetch it itself).
pub fn block_request(
    fh: &crate::FileHandle,
    b: &crate::block::BlockRef,
    block_size: u64,
    discard: bool,
) -> pb::PeerBlockRequest {
    pb::PeerBlockRequest {
        path: fh.path.to_string(),
        ufs_uri: fh.mount.ufs.uri().to_string(),
        rel: fh.meta.rel.clone(),
        size: fh.meta.size,
        version: fh.meta.version.clone(),
        mtime_ms: fh.meta.mtime_ms,
        block_size,
        index: b.index,
        block_id: b.id.to_hex(),
        discard,
    }
}
