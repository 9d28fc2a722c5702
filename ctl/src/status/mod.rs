//! `loaderctl status`: the daemon's cache, tiers, prefetch, mounts, loaders, cluster and GPUs.
//!
//! One module a job, each rendering its part of one `StatusResponse` both ways: as fields
//! of the `--json` object and as lines of the text report. [`JSON`] and [`TEXT`] list the
//! parts; the text report prints them in that order.

mod cache;
mod cluster;
mod gpu;
mod loaders;
mod mounts;
mod prefetch;
mod shm;
#[cfg(test)]
mod tests;

use std::fmt;

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::rpc_err;

/// A JSON object of fields of `$src` under their own names: `fields!(t; name, blocks)` is
/// `{"name": t.name, "blocks": t.blocks}`, so a field's name is written once.
macro_rules! fields {
    ($src:expr; $($field:ident),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert(stringify!($field).to_string(), serde_json::json!($src.$field)); )*
        m
    }};
}
pub(crate) use fields;

/// Adds a part's fields to the `--json` object.
type JsonPart = fn(&pb::StatusResponse, &mut Map<String, Value>);
/// Writes a part's lines of the text report.
type TextPart = fn(&pb::StatusResponse, &mut String) -> fmt::Result;

/// The parts of `status --json`.
const JSON: [JsonPart; 7] = [
    cache::json,
    prefetch::json,
    mounts::json,
    gpu::json,
    cluster::json,
    loaders::json,
    shm::json,
];

/// The parts of the text report, in order: the ring budget stands beside the shared-memory
/// leases, above one line per loader.
const TEXT: [TextPart; 8] = [
    cache::text,
    prefetch::text,
    mounts::text,
    gpu::text,
    cluster::text,
    loaders::rings_text,
    shm::text,
    loaders::text,
];

pub(crate) async fn status(c: &mut Client, as_json: bool) -> anyhow::Result<()> {
    let s = c
        .status(pb::StatusRequest {})
        .await
        .map_err(rpc_err)?
        .into_inner();
    if as_json {
        println!("{}", json(&s));
    } else {
        print!("{}", text(&s)?);
    }
    Ok(())
}

/// `status --json`: one object.
fn json(s: &pb::StatusResponse) -> Value {
    let mut out = Map::new();
    for part in JSON {
        part(s, &mut out);
    }
    Value::Object(out)
}

/// The text report.
fn text(s: &pb::StatusResponse) -> Result<String, fmt::Error> {
    let mut out = String::new();
    for part in TEXT {
        part(s, &mut out)?;
    }
    Ok(out)
}
