//! The peer API server: blocks this node owns, served to the other nodes.

use std::convert::Infallible;
use std::sync::Arc;

use loaderd_proto::v1 as pb;
use loaderd_proto::v1::peer_server::{self, Peer, PeerServer};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::peer::MAX_PEER_MESSAGE;
use super::schedules::{Announcement, Refusal};
use super::{Cluster, TOKEN_HEADER, wire};
use crate::block::blocks_for;
use crate::cache::{Cache, FileHandle};
use crate::error::to_status;
use crate::mount::Resolved;
use crate::path::LogicalPath;
use crate::ufs::FileMeta;

/// Serves [`Peer`] over a cache.
#[derive(Clone)]
pub struct PeerService {
    cache: Arc<Cache>,
    cluster: Arc<Cluster>,
}

/// Refuses requests without the cluster token.
#[derive(Clone)]
pub struct TokenCheck(Arc<Cluster>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req.metadata().get(TOKEN_HEADER).map(|v| v.as_bytes());
        if self.0.authorize(presented) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong cluster token (cluster.token_file)",
            ))
        }
    }
}

impl PeerService {
    /// The peer API of `cache`, which must have joined `cluster`.
    pub fn new(cache: Arc<Cache>, cluster: Arc<Cluster>) -> Self {
        PeerService { cache, cluster }
    }

    /// The peer API as a tonic service, refusing requests without the cluster token.
    pub fn into_server(self) -> InterceptedService<PeerApi, TokenCheck> {
        let check = TokenCheck(self.cluster.clone());
        let grpc = PeerServer::new(self.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        InterceptedService::new(PeerApi { grpc, blocks: self }, check)
    }

    /// The reply to one block request.
    async fn serve_block(&self, r: pb::PeerBlockRequest) -> Result<pb::PeerBlock, Status> {
        let (fh, b) = self.resolve(&r)?;
        if !r.discard {
            // A remote loader reads it: its schedule moves on to the block's following read.
            self.cluster.schedules().read(b.id);
        }
        let span = info_span!("peer_block", path = %fh.path, block = b.index);
        let (data, crc, was_cached) = self
            .cache
            .get_block_as_owner(&fh, &b)
            .instrument(span)
            .await
            .map_err(|e| to_status(&e))?;
        self.cluster.served();
        metrics::counter!("loaderd_peer_blocks_served_total").increment(1);
        let (data, crc) = if r.discard {
            (Default::default(), crc32c::crc32c(&[]))
        } else {
            (data, crc)
        };
        Ok(pb::PeerBlock {
            crc32c: crc,
            data,
            was_cached,
        })
    }

    /// The file handle and block a request names, checked against this node's namespace.
    fn resolve(
        &self,
        r: &pb::PeerBlockRequest,
    ) -> Result<(FileHandle, crate::block::BlockRef), Status> {
        let path =
            LogicalPath::parse(&r.path).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mount = match self.cache.mounts().resolve(&path) {
            Ok(Resolved::InMount(mount, _)) => mount,
            Ok(Resolved::Virtual(_)) => {
                return Err(Status::invalid_argument(format!("{path} is not a file")));
            }
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "this node cannot resolve {path}: {e} (mount tables must match across the cluster)"
                )));
            }
        };
        if mount.ufs.uri() != r.ufs_uri {
            return Err(Status::failed_precondition(format!(
                "{path} is mounted from {} here but from {} on the requesting node",
                mount.ufs.uri(),
                r.ufs_uri
            )));
        }
        let block_size = self.cache.config().block_size.0;
        if r.block_size != block_size {
            return Err(Status::failed_precondition(format!(
                "block size {} here, {} on the requesting node (cache.block_size must match)",
                block_size, r.block_size
            )));
        }
        let meta = FileMeta {
            rel: r.rel.clone(),
            size: r.size,
            version: r.version.clone(),
            mtime_ms: r.mtime_ms,
        };
        let start = r.index.saturating_mul(block_size);
        let b = blocks_for(
            mount.ufs.uri(),
            &meta,
            block_size,
            start..start.saturating_add(1),
        )
        .into_iter()
        .next()
        .ok_or_else(|| Status::out_of_range(format!("no block {} in {path}", r.index)))?;
        if b.id.to_hex() != r.block_id {
            return Err(Status::invalid_argument(
                "block id does not match the request",
            ));
        }
        Ok((FileHandle { path, mount, meta }, b))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    /// Reached only by clients that bypass [`PeerApi`]'s routing (none in this crate): the
    /// same reply, encoded by tonic.
    async fn get_block(
        &self,
        req: Request<pb::PeerBlockRequest>,
    ) -> Result<Response<pb::PeerBlock>, Status> {
        self.serve_block(req.into_inner()).await.map(Response::new)
    }

    async fn node_status(
        &self,
        _: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(node_status(&self.cache)))
    }

    async fn announce_schedule(
        &self,
        req: Request<pb::ScheduleAnnouncement>,
    ) -> Result<Response<pb::ScheduleAck>, Status> {
        let schedules = self.cluster.schedules();
        let refused = |r: Refusal| match r {
            Refusal::Invalid(_) => Status::invalid_argument(r.to_string()),
            _ => Status::resource_exhausted(r.to_string()),
        };
        let a = Announcement::from_wire(req.into_inner()).map_err(refused)?;
        let ack = schedules.announce(a).map_err(refused)?;
        Ok(Response::new(ack.to_wire()))
    }

    async fn withdraw_schedule(
        &self,
        req: Request<pb::ScheduleWithdrawal>,
    ) -> Result<Response<pb::ScheduleAck>, Status> {
        let w = req.into_inner();
        let held = self.cluster.schedules().withdraw(&w.node_id, w.loader_id);
        Ok(Response::new(pb::ScheduleAck {
            accepted: held,
            reason: if held { "" } else { "not held here" }.into(),
        }))
    }
}

/// The peer API: `GetBlock` answered with the block uncopied ([`wire`]), every other method
/// by the generated tonic server.
#[derive(Clone)]
pub struct PeerApi {
    grpc: PeerServer<PeerService>,
    blocks: PeerService,
}

impl NamedService for PeerApi {
    const NAME: &'static str = peer_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for PeerApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != wire::GET_BLOCK_PATH {
            return self.grpc.call(req);
        }
        let blocks = self.blocks.clone();
        Box::pin(async move {
            let reply = match wire::read_request(req.into_body()).await {
                Ok(r) => blocks.serve_block(r).await,
                Err(e) => Err(e),
            };
            Ok(wire::reply(reply))
        })
    }
}

/// This node's numbers as peers see them.
pub fn node_status(cache: &Cache) -> pb::NodeStatusResponse {
    let s = cache.status();
    let c = s.counters;
    pb::NodeStatusResponse {
        node_id: cache
            .cluster()
            .map(|c| c.me().id.clone())
            .unwrap_or_default(),
        tiers: s.tiers.iter().map(tier_status).collect(),
        hits: c.hits,
        misses: c.misses,
        hit_ratio: c.hit_ratio(),
        peer_blocks_served: cache.cluster().map_or(0, |c| c.blocks_served()),
    }
}

/// A tier's status on the wire.
pub fn tier_status(t: &crate::tier::TierStatus) -> pb::TierStatus {
    pb::TierStatus {
        name: t.name.into(),
        capacity_bytes: t.capacity,
        used_bytes: t.used,
        blocks: t.blocks,
        evictions: t.evictions,
        high_watermark: t.watermarks.high,
        low_watermark: t.watermarks.low,
        location: t.location.clone(),
        fs_free_bytes: t.fs.map_or(0, |f| f.free),
        fs_total_bytes: t.fs.map_or(0, |f| f.total),
        configured_capacity_bytes: t.fs.map_or(t.capacity, |f| f.configured_capacity),
        evictions_by_reason: t
            .evictions_by_reason
            .iter()
            .map(|(r, n)| pb::EvictionCount {
                reason: r.name().into(),
                blocks: *n,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loaderd_proto::v1::peer_client::PeerClient;
    use tokio::net::TcpListener;
    use tonic::transport::Server;
    use tonic::transport::server::{Router, TcpIncoming};

    use super::*;
    use crate::cluster::peer::{PeerPool, block_request};
    use crate::config::{CacheConfig, ClusterConfig};
    use crate::placement::Member;
    use crate::{ByteSize, MountSpec};

    const TOKEN: &str = "peer-api-test-token";

    /// A file of three blocks (the last one short) behind a one-node cluster.
    async fn node(dir: &std::path::Path) -> (Arc<Cache>, Arc<Cluster>, Vec<u8>) {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(dir.join("f.bin"), &bytes).unwrap();
        let cfg = CacheConfig {
            block_size: ByteSize(128 << 10),
            ..CacheConfig::default()
        };
        let spec = MountSpec {
            path: "/ds".into(),
            uri: format!("file://{}", dir.display()),
            options: Default::default(),
        };
        let cache = Cache::open(cfg, vec![spec]).unwrap();
        let cluster = Cluster::start(&ClusterConfig {
            node_id: Some("a".into()),
            listen_addr: Some("127.0.0.1:0".parse().unwrap()),
            token: Some(TOKEN.into()),
            ..ClusterConfig::default()
        })
        .await
        .unwrap();
        cache.join_cluster(cluster.clone()).unwrap();
        (cache, cluster, bytes)
    }

    /// Serves `svc` on a loopback port, as the daemon does (largest HTTP/2 frames).
    async fn serve(router: Router) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        addr
    }

    fn server() -> Server {
        Server::builder().max_frame_size((16 << 20) - 1)
    }

    #[tokio::test]
    async fn get_block_is_plain_grpc_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, cluster, bytes) = node(dir.path()).await;
        let svc = PeerService::new(cache.clone(), cluster.clone());
        // This node's peer API (replies written without copies), and the generated tonic
        // server over the same service (replies encoded by tonic).
        let ours = serve(server().add_service(svc.clone().into_server())).await;
        let stock = serve(server().add_service(InterceptedService::new(
            PeerServer::new(svc),
            TokenCheck(cluster.clone()),
        )))
        .await;

        let fh = cache
            .open_file(&LogicalPath::parse("/ds/f.bin").unwrap())
            .await
            .unwrap();
        let blocks = cache.blocks(&fh, 0..fh.meta.size);
        assert_eq!(blocks.len(), 3);
        let bs = cache.config().block_size.0;

        // A stock gRPC client reads this node's replies.
        let mut client = PeerClient::connect(format!("http://{ours}")).await.unwrap();
        for b in &blocks {
            let mut req = Request::new(block_request(&fh, b, bs, false));
            req.metadata_mut()
                .insert(TOKEN_HEADER, TOKEN.parse().unwrap());
            let reply = client.get_block(req).await.unwrap().into_inner();
            let want = &bytes[b.range.start as usize..b.range.end as usize];
            assert_eq!(&reply.data[..], want, "block {}", b.index);
            assert_eq!(reply.crc32c, crc32c::crc32c(want));
        }
        // Without the token: refused, in a status the stock client understands.
        let err = client
            .get_block(Request::new(block_request(&fh, &blocks[0], bs, false)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        // This node's client reads both servers' replies; errors come back as errors.
        let pool = PeerPool::new(TOKEN.into(), Duration::from_secs(5), Duration::from_secs(5));
        for addr in [&ours, &stock] {
            let m = Member {
                id: "peer".into(),
                addr: addr.clone(),
            };
            for b in &blocks {
                let reply = pool
                    .get_block(&m, block_request(&fh, b, bs, false))
                    .await
                    .unwrap();
                let want = &bytes[b.range.start as usize..b.range.end as usize];
                assert_eq!(&reply.data[..], want, "block {} from {addr}", b.index);
            }
            let mut bad = block_request(&fh, &blocks[0], bs, false);
            bad.block_id = "0".into();
            let err = pool.get_block(&m, bad).await.unwrap_err().to_string();
            assert!(err.contains("block id does not match"), "{err}");
        }
        assert_eq!(pool.counts(), (8, 2));
    }
}
