//! Prefetch: the blocks brought in ahead of the loaders that read them, the reads they
//! served (hits) and the reads that came before them (late), what is in flight and ahead.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    let p = s.prefetch.unwrap_or_default();
    let fields = fields!(p; enabled, prefetched_blocks, prefetched_bytes, hits, late, failed,
        inflight_bytes, peak_inflight_bytes, ahead_bytes, max_bytes);
    out.insert("prefetch".into(), Value::Object(fields));
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    let Some(p) = &s.prefetch else {
        return Ok(());
    };
    if !p.enabled {
        return writeln!(out, "  prefetch off");
    }
    writeln!(
        out,
        "  prefetch: {} blocks ({}) brought in, {} hits, {} late, {} failed; in flight {} \
         (peak {}), ahead {} / {}",
        p.prefetched_blocks,
        human(p.prefetched_bytes),
        p.hits,
        p.late,
        p.failed,
        human(p.inflight_bytes),
        human(p.peak_inflight_bytes),
        human(p.ahead_bytes),
        human(p.max_bytes)
    )
}
