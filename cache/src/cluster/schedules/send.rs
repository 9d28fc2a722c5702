//! The announcing side: a loader's schedule sent to every other member, and withdrawn.

use std::time::Duration;

use loaderd_proto::v1 as pb;

use super::{Ack, Announcement};
use crate::cluster::Cluster;
use crate::error::Result;
use crate::placement::Member;

/// Deadline of one withdrawal (a lost one expires at the owner).
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

impl Ack {
    fn from_wire(a: pb::ScheduleAck) -> Self {
        if a.accepted {
            Ack::Accepted
        } else {
            Ack::Ignored(a.reason)
        }
    }
}

impl Cluster {
    /// The other members now.
    fn others(&self) -> Vec<Member> {
        self.placement()
            .members()
            .filter(|m| !self.is_me(m))
            .cloned()
            .collect()
    }

    /// Sends `a` to every other member at once, each within one refresh period; their
    /// answers (a refusal over an owner's caps is an error naming the cap).
    pub async fn announce(&self, a: &Announcement) -> Vec<(Member, Result<Ack>)> {
        let timeout = self.schedules().config().refresh.0;
        let wire = a.to_wire();
        let sends = self.others().into_iter().map(|m| {
            let wire = wire.clone();
            async move {
                let res = self.peers().announce_schedule(&m, timeout, wire).await;
                (m, res.map(Ack::from_wire))
            }
        });
        futures::future::join_all(sends).await
    }

    /// Withdraws loader `loader`'s schedule from every other member.
    pub async fn withdraw(&self, loader: u64) {
        let w = pb::ScheduleWithdrawal {
            node_id: self.me().id.clone(),
            loader_id: loader,
        };
        let sends = self.others().into_iter().map(|m| {
            let w = w.clone();
            async move {
                if let Err(e) = self.peers().withdraw_schedule(&m, WITHDRAW_TIMEOUT, w).await {
                    tracing::debug!(peer = %m.id, error = %e, "schedule withdrawal failed (it expires there)");
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}
