//! The distributed cache: who is in the cluster, who owns a block, and reading blocks from the
//! nodes that own them.
//!
//! Every node computes a block's owners itself, by rendezvous hashing over the live members
//! ([`crate::placement`]), so no master sits on the read path. Only owners cache a block; a
//! node that misses a block it does not own asks the owners in rendezvous order over the peer
//! API ([`peer`]), skipping peers that recently failed (suspects) and falling back to the UFS
//! when none answers. The owner serves from its tiers or fetches from the UFS once (its
//! single-flight makes that once per cluster), and checksums the bytes it sends. Membership
//! comes from the static list of the config or from etcd leases ([`membership`]); when etcd
//! is unreachable the last known members stay in force and status says so. Loaders'
//! schedules travel to the owners as a few numbers ([`schedules`]), so each owner evicts the
//! blocks it owns by every rank's next reads.

pub mod membership;
pub mod peer;
pub mod schedules;
pub mod service;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loaderd_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::block::BlockId;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::placement::{Member, Placement};
use crate::sync::lock;

pub use membership::MembershipHealth;
pub use peer::PeerPool;
pub use schedules::RemoteSchedules;

/// Metadata key carrying the cluster token on peer requests.
pub const TOKEN_HEADER: &str = "x-loaderd-token";

/// This node's view of the cluster.
pub struct Cluster {
    me: Member,
    replication: usize,
    token: Arc<str>,
    view: watch::Receiver<Arc<Placement>>,
    health: Arc<Mutex<MembershipHealth>>,
    peers: PeerPool,
    refused: AtomicU64,
    served: AtomicU64,
    membership: Option<JoinHandle<()>>,
    leave: Option<membership::Leave>,
    schedules: Arc<RemoteSchedules>,
    reaper: JoinHandle<()>,
}

impl Cluster {
    /// Joins the cluster described by `cfg` (which must have `listen_addr` set): registers in
    /// etcd and starts watching it, or takes the static member list.
    pub async fn start(cfg: &ClusterConfig) -> Result<Arc<Self>> {
        let listen = cfg.listen_addr.ok_or_else(|| {
            Error::config("cluster.listen_addr", "is needed to run as a cluster node")
        })?;
        let id = match &cfg.node_id {
            Some(id) => id.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| Error::Membership(format!("cannot read the host name: {e}")))?
                .to_string_lossy()
                .into_owned(),
        };
        let addr = cfg
            .advertise_addr
            .clone()
            .unwrap_or_else(|| listen.to_string());
        let me = Member { id, addr };
        let token = load_token(cfg)?;
        let health = Arc::new(Mutex::new(MembershipHealth::default()));
        let (view, membership, leave) = if cfg.etcd_endpoints.is_empty() {
            let mut members = membership::static_members(cfg);
            members.push(me.clone());
            lock(&health).source = "static";
            let (_tx, rx) = watch::channel(Arc::new(Placement::new(members)));
            // Nothing ever changes a static view; the sender may go.
            (rx, None, None)
        } else {
            let (rx, task, leave) =
                membership::EtcdMembership::start(cfg, me.clone(), health.clone()).await?;
            (rx, Some(task), Some(leave))
        };
        info!(
            node = %me.id,
            addr = %me.addr,
            members = view.borrow().len(),
            source = lock(&health).source,
            "joined the cluster"
        );
        let schedules = RemoteSchedules::new(
            cfg.schedules.clone(),
            me.id.clone(),
            cfg.replication,
            view.clone(),
        );
        let reaper = schedules.spawn_reaper();
        Ok(Arc::new(Cluster {
            schedules,
            reaper,
            peers: PeerPool::new(token.clone(), cfg.peer_timeout.0, cfg.suspect_time.0),
            me,
            replication: cfg.replication,
            token,
            view,
            health,
            refused: AtomicU64::new(0),
            served: AtomicU64::new(0),
            membership,
            leave,
        }))
    }

    /// This node.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The current member view.
    pub fn placement(&self) -> Arc<Placement> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every membership change.
    pub fn watch(&self) -> watch::Receiver<Arc<Placement>> {
        self.view.clone()
    }

    /// Whether this node is one of `id`'s owners.
    pub fn owns(&self, id: BlockId) -> bool {
        self.placement()
            .owners(id, self.replication)
            .iter()
            .any(|m| m.id == self.me.id)
    }

    /// The first owner of `id` (for display).
    pub fn owner(&self, id: BlockId) -> Option<Member> {
        self.placement().owners(id, 1).first().map(|m| (*m).clone())
    }

    /// Where to look for `id`, in order: its owners, then the member that would own it next
    /// (it takes over when an owner is down). With several owners each node starts at a
    /// different one (by its id), so the readers of a hot block spread over its replicas.
    pub fn candidates(&self, id: BlockId) -> Vec<Member> {
        let mut c: Vec<Member> = self
            .placement()
            .ranked(id)
            .into_iter()
            .take(self.replication + 1)
            .cloned()
            .collect();
        let owners = self.replication.min(c.len());
        if owners > 1 {
            let start = xxhash_rust::xxh3::xxh3_64(self.me.id.as_bytes()) as usize % owners;
            c[..owners].rotate_left(start);
        }
        c
    }

    /// Whether `m` is this node.
    pub fn is_me(&self, m: &Member) -> bool {
        m.id == self.me.id
    }

    /// The peer connections.
    pub fn peers(&self) -> &PeerPool {
        &self.peers
    }

    /// The schedules of other nodes' loaders held here, for the blocks this node owns.
    pub fn schedules(&self) -> &Arc<RemoteSchedules> {
        &self.schedules
    }

    /// Checks the token of an incoming peer request (constant time); refusals are counted.
    pub fn authorize(&self, presented: Option<&[u8]>) -> bool {
        let ok = presented.is_some_and(|p| constant_time_eq(p, self.token.as_bytes()));
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("loaderd_peer_requests_refused_total").increment(1);
        }
        ok
    }

    /// Counts a block served to a peer.
    pub(crate) fn served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks served to peers.
    pub fn blocks_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The cluster section of `Status`: members (asking each peer for its numbers, within a
    /// short deadline) and the membership's health.
    pub async fn status(&self, local: pb::NodeStatusResponse) -> pb::ClusterStatus {
        let placement = self.placement();
        let asks = placement.members().map(|m| {
            let m = m.clone();
            let local = local.clone();
            async move {
                if self.is_me(&m) {
                    return member_status(&m, true, false, Ok(local));
                }
                let suspect = self.peers.is_suspect(&m.addr);
                let res = self.peers.node_status(&m, Duration::from_secs(1)).await;
                member_status(&m, false, suspect, res)
            }
        });
        let members = futures::future::join_all(asks).await;
        let health = lock(&self.health).clone();
        let (reads, failures) = self.peers.counts();
        pb::ClusterStatus {
            enabled: true,
            node_id: self.me.id.clone(),
            membership: health.source.into(),
            membership_healthy: health.error.is_none(),
            membership_error: health.error.unwrap_or_default(),
            replication: self.replication as u32,
            members,
            peer_reads: reads,
            peer_read_failures: failures,
            peer_requests_refused: self.refused.load(Ordering::Relaxed),
            remote_schedules: Some(self.schedules.status()),
        }
    }

    /// Leaves the cluster now (revokes the etcd lease) instead of when the lease expires.
    pub async fn leave(&self) {
        if let Some(leave) = &self.leave {
            leave.run().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = self.membership.take() {
            t.abort();
        }
        self.reaper.abort();
    }
}

fn member_status(
    m: &Member,
    local: bool,
    suspect: bool,
    res: Result<pb::NodeStatusResponse>,
) -> pb::MemberStatus {
    let mut s = pb::MemberStatus {
        id: m.id.clone(),
        addr: m.addr.clone(),
        local,
        suspect,
        ..Default::default()
    };
    match res {
        Ok(n) => {
            s.reachable = true;
            s.used_bytes = n.tiers.iter().map(|t| t.used_bytes).sum();
            s.capacity_bytes = n.tiers.iter().map(|t| t.capacity_bytes).sum();
            s.hit_ratio = n.hit_ratio;
        }
        Err(e) => s.error = e.to_string(),
    }
    s
}

fn load_token(cfg: &ClusterConfig) -> Result<Arc<str>> {
    let token = match (&cfg.token, &cfg.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading cluster.token_file", path, e))?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(Error::config(
                "cluster.token_file",
                "a cluster token (token_file or token) is required: the peer API serves only \
                 nodes that present it",
            ));
        }
    };
    if token.len() < 16 {
        return Err(Error::config(
            "cluster.token",
            "must be at least 16 characters",
        ));
    }
    Ok(token.into())
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_the_exact_bytes() {
        assert!(constant_time_eq(b"secret-secret-16", b"secret-secret-16"));
        assert!(!constant_time_eq(b"secret-secret-16", b"secret-secret-17"));
        assert!(!constant_time_eq(b"secret", b"secret-secret-16"));
    }

    #[tokio::test]
    async fn a_static_cluster_places_blocks_on_its_members() {
        let cfg = ClusterConfig {
            node_id: Some("a".into()),
            listen_addr: Some("127.0.0.1:1".parse().unwrap()),
            members: vec![
                crate::config::MemberConfig {
                    id: "b".into(),
                    addr: "127.0.0.1:2".into(),
                },
                crate::config::MemberConfig {
                    id: "c".into(),
                    addr: "127.0.0.1:3".into(),
                },
            ],
            token: Some("0123456789abcdef".into()),
            ..ClusterConfig::default()
        };
        let c = Cluster::start(&cfg).await.unwrap();
        assert_eq!(c.placement().len(), 3);
        let owned = (0..300u128).filter(|i| c.owns(BlockId(*i))).count();
        assert!((60..=140).contains(&owned), "a owns {owned} of 300");
        let cands = c.candidates(BlockId(7));
        assert_eq!(cands.len(), 2);
        assert_ne!(cands[0].id, cands[1].id);
        assert!(c.authorize(Some(b"0123456789abcdef")));
        assert!(!c.authorize(Some(b"0123456789abcdeX")));
        assert!(!c.authorize(None));
    }

    #[tokio::test]
    async fn replicas_spread_the_readers_of_a_block() {
        let mut firsts = std::collections::BTreeSet::new();
        for me in ["a", "b", "c", "d", "e", "f"] {
            let members = ["a", "b", "c", "d", "e", "f"]
                .iter()
                .filter(|m| **m != me)
                .map(|m| crate::config::MemberConfig {
                    id: (*m).into(),
                    addr: format!("{m}:1"),
                })
                .collect();
            let cfg = ClusterConfig {
                node_id: Some(me.into()),
                listen_addr: Some("127.0.0.1:1".parse().unwrap()),
                members,
                replication: 2,
                token: Some("0123456789abcdef".into()),
                ..ClusterConfig::default()
            };
            let c = Cluster::start(&cfg).await.unwrap();
            let cands = c.candidates(BlockId(42));
            assert_eq!(cands.len(), 3);
            let owners: std::collections::BTreeSet<_> = c
                .placement()
                .owners(BlockId(42), 2)
                .iter()
                .map(|m| m.id.clone())
                .collect();
            assert!(owners.contains(&cands[0].id) && owners.contains(&cands[1].id));
            firsts.insert(cands[0].id.clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "different nodes start at different replicas"
        );
    }

    #[tokio::test]
    async fn a_cluster_without_a_token_is_refused() {
        let cfg = ClusterConfig {
            listen_addr: Some("127.0.0.1:1".parse().unwrap()),
            ..ClusterConfig::default()
        };
        let err = Cluster::start(&cfg).await.err().unwrap();
        assert!(err.to_string().contains("token"), "{err}");
    }
}
