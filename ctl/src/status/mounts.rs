//! The mount table.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    let mounts = s
        .mounts
        .iter()
        .map(|m| Value::Object(fields!(m; path, uri, options)));
    out.insert("mounts".into(), Value::Array(mounts.collect()));
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    for m in &s.mounts {
        writeln!(out, "  mount {} -> {}", m.path, m.uri)?;
    }
    Ok(())
}
