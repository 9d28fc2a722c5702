//! The GPU mode, the GPUs the daemon opened, or why it uses none.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    let gpu = s.gpu.as_ref().map_or(Value::Null, |g| {
        let devices = g.devices.iter().map(|d| {
            let mut dev = fields!(d; ordinal, name, total_memory, driver_version);
            dev.insert(
                "compute_capability".into(),
                format!("{}.{}", d.compute_major, d.compute_minor).into(),
            );
            Value::Object(dev)
        });
        let mut gpu = fields!(g; mode, available, reason);
        gpu.insert("devices".into(), Value::Array(devices.collect()));
        Value::Object(gpu)
    });
    out.insert("gpu".into(), gpu);
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    let Some(g) = &s.gpu else { return Ok(()) };
    if g.devices.is_empty() {
        writeln!(out, "  gpu {}: none used ({})", g.mode, g.reason)?;
    } else {
        let n = g.devices.len();
        let s = if n == 1 { "" } else { "s" };
        writeln!(out, "  gpu {}: {n} device{s} for CUDA loaders", g.mode)?;
    }
    for d in &g.devices {
        writeln!(
            out,
            "  gpu {}: {} ({}, compute {}.{}, driver {}.{})",
            d.ordinal,
            d.name,
            human(d.total_memory),
            d.compute_major,
            d.compute_minor,
            d.driver_version / 1000,
            d.driver_version % 1000 / 10
        )?;
    }
    Ok(())
}
