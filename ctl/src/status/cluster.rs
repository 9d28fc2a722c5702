//! The cluster: this node, membership, replication, peer reads, and each member.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    let cluster = s.cluster.as_ref().map_or(Value::Null, |k| {
        let members = k.members.iter().map(|m| {
            Value::Object(fields!(m; id, addr, local, suspect, reachable, used_bytes,
                capacity_bytes, hit_ratio, error))
        });
        let mut cluster = fields!(k; node_id, membership, membership_healthy, membership_error,
            replication, peer_reads, peer_read_failures, peer_requests_refused);
        cluster.insert("members".into(), Value::Array(members.collect()));
        let r = k.remote_schedules.clone().unwrap_or_default();
        let mut remote = fields!(r; held, bytes, refused, ignored, expired);
        let by_peer = r.by_peer.iter().map(|(p, n)| (p.clone(), Value::from(*n)));
        remote.insert("by_peer".into(), Value::Object(by_peer.collect()));
        cluster.insert("remote_schedules".into(), Value::Object(remote));
        Value::Object(cluster)
    });
    out.insert("cluster".into(), cluster);
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    let Some(k) = &s.cluster else { return Ok(()) };
    let health = if k.membership_healthy {
        String::new()
    } else {
        format!(
            ", UNHEALTHY: {}; serving with the last known members",
            k.membership_error
        )
    };
    writeln!(
        out,
        "  cluster: node {:?}, {} members ({} membership{health}), replication {}; peer reads {} ({} failed), refused requests {}",
        k.node_id,
        k.members.len(),
        k.membership,
        k.replication,
        k.peer_reads,
        k.peer_read_failures,
        k.peer_requests_refused
    )?;
    if let Some(r) = k
        .remote_schedules
        .as_ref()
        .filter(|r| r.held + r.refused + r.ignored + r.expired > 0)
    {
        let mut peers: Vec<_> = r.by_peer.iter().collect();
        peers.sort();
        let peers: Vec<String> = peers.iter().map(|(p, n)| format!("{p}: {n}")).collect();
        writeln!(
            out,
            "    remote schedules: {} held ({}), {}; refused {}, ignored {}, expired {}",
            r.held,
            peers.join(", "),
            human(r.bytes),
            r.refused,
            r.ignored,
            r.expired
        )?;
    }
    for m in &k.members {
        writeln!(
            out,
            "    member {:<16} {:<22} {:>10} / {:>10}, hit ratio {:5.1}%  {}",
            m.id,
            m.addr,
            human(m.used_bytes),
            human(m.capacity_bytes),
            100.0 * m.hit_ratio,
            member_state(m)
        )?;
    }
    Ok(())
}

/// "this node", "up", "up, suspect" or why the member is unreachable.
fn member_state(m: &pb::MemberStatus) -> String {
    match (m.local, m.reachable, m.suspect) {
        (true, _, _) => "this node".to_string(),
        (false, true, false) => "up".to_string(),
        (false, true, true) => "up, suspect".to_string(),
        (false, false, _) => format!("unreachable: {}", m.error),
    }
}
