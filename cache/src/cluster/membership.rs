//! Who is in the cluster: the static list of the config, or etcd.
//!
//! With etcd each node puts `<prefix>members/<id>` = `{"id", "addr"}` under a lease of
//! `cluster.lease_ttl` and keeps the lease alive; a node that stops renewing (killed,
//! partitioned) has its key expire and leaves every other node's view. Each node watches the
//! prefix and rebuilds its placement on every change. When etcd cannot be reached the last
//! known view stays in force (reads keep working; status reports the error), and the node
//! registers again as soon as etcd answers, so a restarted or healed node rejoins by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::placement::{Member, Placement};
use crate::sync::lock;

/// How membership is doing, for status.
#[derive(Debug, Clone, Default)]
pub struct MembershipHealth {
    /// `static` or `etcd`.
    pub source: &'static str,
    /// The last failure talking to etcd; `None` while healthy.
    pub error: Option<String>,
}

/// The configured static members.
pub fn static_members(cfg: &ClusterConfig) -> Vec<Member> {
    cfg.members
        .iter()
        .map(|m| Member {
            id: m.id.clone(),
            addr: m.addr.clone(),
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    addr: String,
}

/// Revokes this node's lease on shutdown, so peers see it leave at once.
pub struct Leave {
    endpoints: Vec<String>,
    lease: Arc<Mutex<Option<i64>>>,
}

impl Leave {
    /// Revokes the current lease (best effort, bounded).
    pub async fn run(&self) {
        let Some(id) = *lock(&self.lease) else {
            return;
        };
        let revoke = async {
            let mut c = connect(&self.endpoints, Duration::from_secs(2)).await?;
            c.lease_revoke(id).await.map_err(etcd_err)?;
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(3), revoke).await {
            Ok(Ok(())) => info!("left the cluster (lease revoked)"),
            Ok(Err(e)) => warn!(error = %e, "could not revoke the membership lease"),
            Err(_) => warn!("revoking the membership lease timed out"),
        }
    }
}

/// etcd-backed membership.
pub struct EtcdMembership {
    endpoints: Vec<String>,
    prefix: String,
    ttl: Duration,
    me: Member,
    health: Arc<Mutex<MembershipHealth>>,
    tx: watch::Sender<Arc<Placement>>,
    lease: Arc<Mutex<Option<i64>>>,
}

fn etcd_err(e: etcd_client::Error) -> Error {
    Error::Membership(format!("etcd: {e}"))
}

async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(5), timeout);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(etcd_err)
}

impl EtcdMembership {
    /// Registers this node and reads the members once (so the first view is complete), then
    /// keeps both up to date in a background task.
    pub async fn start(
        cfg: &ClusterConfig,
        me: Member,
        health: Arc<Mutex<MembershipHealth>>,
    ) -> Result<(watch::Receiver<Arc<Placement>>, JoinHandle<()>, Leave)> {
        lock(&health).source = "etcd";
        let (tx, rx) = watch::channel(Arc::new(Placement::new([me.clone()])));
        let lease = Arc::new(Mutex::new(None));
        let m = EtcdMembership {
            endpoints: cfg.etcd_endpoints.clone(),
            prefix: format!("{}members/", cfg.etcd_prefix),
            ttl: cfg.lease_ttl.0,
            me,
            health,
            tx,
            lease: lease.clone(),
        };
        // The first registration must succeed: a node that cannot reach etcd at start has no
        // members to place blocks over.
        let session = m.register().await.map_err(|e| {
            Error::Membership(format!(
                "cannot join through etcd at {}: {e}",
                cfg.etcd_endpoints.join(",")
            ))
        })?;
        let leave = Leave {
            endpoints: cfg.etcd_endpoints.clone(),
            lease,
        };
        let task = tokio::spawn(m.run(session));
        Ok((rx, task, leave))
    }

    /// Grants a lease, puts this node's record under it and loads the member set.
    async fn register(&self) -> Result<Session> {
        let timeout = (self.ttl / 2).max(Duration::from_secs(1));
        let mut client = connect(&self.endpoints, timeout).await?;
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(2);
        let lease = client.lease_grant(ttl, None).await.map_err(etcd_err)?.id();
        let record = serde_json::to_string(&Record {
            id: self.me.id.clone(),
            addr: self.me.addr.clone(),
        })
        .map_err(|e| Error::Membership(e.to_string()))?;
        client
            .put(
                format!("{}{}", self.prefix, self.me.id),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd_err)?;
        let resp = client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err)?;
        let mut members = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(m) = parse(kv.value()) {
                members.insert(kv.key().to_vec(), m);
            }
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        *lock(&self.lease) = Some(lease);
        self.publish(&members);
        lock(&self.health).error = None;
        Ok(Session {
            client,
            lease,
            members,
            revision,
        })
    }

    fn publish(&self, members: &BTreeMap<Vec<u8>, Member>) {
        let mut all: Vec<Member> = members.values().cloned().collect();
        // This node is a member for itself even between losing and renewing its lease.
        all.push(self.me.clone());
        let next = Placement::new(all);
        let changed = {
            let cur = self.tx.borrow();
            cur.members().ne(next.members())
        };
        if changed {
            info!(
                members = ?next.members().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                "cluster membership changed"
            );
            metrics::counter!("loaderd_cluster_membership_changes_total").increment(1);
            metrics::gauge!("loaderd_cluster_members").set(next.len() as f64);
            self.tx.send_replace(Arc::new(next));
        }
    }

    /// Keeps the lease alive and the view current; re-registers after any failure.
    async fn run(self, mut session: Session) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let err = self.serve(&mut session).await;
            warn!(error = %err, "etcd membership interrupted; keeping the last known members");
            lock(&self.health).error = Some(err.to_string());
            loop {
                tokio::time::sleep(backoff).await;
                match self.register().await {
                    Ok(s) => {
                        info!("re-registered in etcd");
                        session = s;
                        backoff = Duration::from_millis(200);
                        break;
                    }
                    Err(e) => {
                        lock(&self.health).error = Some(e.to_string());
                        backoff = (backoff * 2)
                            .min(self.ttl / 2)
                            .max(Duration::from_millis(200));
                    }
                }
            }
        }
    }

    /// Renews the lease every ttl/3 and applies watch events until something fails.
    async fn serve(&self, s: &mut Session) -> Error {
        let (mut keeper, mut acks) = match s.client.lease_keep_alive(s.lease).await {
            Ok(k) => k,
            Err(e) => return etcd_err(e),
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(s.revision + 1);
        let mut events = match s.client.watch(self.prefix.as_str(), Some(opts)).await {
            Ok(w) => w,
            Err(e) => return etcd_err(e),
        };
        let mut tick = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(500)));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let renewed = async {
                        keeper.keep_alive().await.map_err(etcd_err)?;
                        match acks.message().await.map_err(etcd_err)? {
                            Some(ack) if ack.ttl() > 0 => Ok(()),
                            Some(_) => Err(Error::Membership("the membership lease expired".into())),
                            None => Err(Error::Membership("etcd closed the keep-alive stream".into())),
                        }
                    };
                    match tokio::time::timeout(self.ttl / 2, renewed).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return e,
                        Err(_) => return Error::Membership("etcd did not renew the lease in time".into()),
                    }
                }
                msg = events.message() => match msg {
                    Ok(Some(resp)) => {
                        if let Err(e) = self.apply(s, &resp) {
                            return e;
                        }
                    }
                    Ok(None) => return Error::Membership("etcd closed the watch".into()),
                    Err(e) => return etcd_err(e),
                },
            }
        }
    }

    fn apply(&self, s: &mut Session, resp: &WatchResponse) -> Result<()> {
        if resp.canceled() {
            return Err(Error::Membership(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            s.revision = s.revision.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Put => {
                    if let Some(m) = parse(kv.value()) {
                        s.members.insert(kv.key().to_vec(), m);
                    }
                }
                EventType::Delete => {
                    s.members.remove(kv.key());
                    if kv.key() == format!("{}{}", self.prefix, self.me.id).as_bytes() {
                        self.publish(&s.members);
                        return Err(Error::Membership(
                            "this node's membership record expired".into(),
                        ));
                    }
                }
            }
        }
        self.publish(&s.members);
        Ok(())
    }
}

/// One registration: the client, the lease and the member set it watches.
struct Session {
    client: Client,
    lease: i64,
    members: BTreeMap<Vec<u8>, Member>,
    revision: i64,
}

fn parse(value: &[u8]) -> Option<Member> {
    let r: Record = serde_json::from_slice(value).ok()?;
    (!r.id.is_empty() && !r.addr.is_empty()).then_some(Member {
        id: r.id,
        addr: r.addr,
    })
}
