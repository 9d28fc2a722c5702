//! Shared-memory reads: memory-tier bytes leased to clients, of the most that may be, and
//! the open connections.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    out.extend(fields!(s; shm_leased_bytes, shm_leased_capacity_bytes, shm_connections));
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "  shared memory: {} leased / {} (not evictable while leased), {} connections",
        human(s.shm_leased_bytes),
        human(s.shm_leased_capacity_bytes),
        s.shm_connections
    )
}
