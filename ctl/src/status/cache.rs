//! The daemon and its cache: version, block size, each tier, hits and misses, metadata,
//! fetches in flight, corrupt blocks and UFS errors.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    out.extend(
        fields!(s; version, uptime_secs, block_size, hits, misses, hit_ratio,
        bytes_from_ufs, bytes_from_cache, metadata_entries, metadata_bytes, inflight_bytes,
        inflight_capacity_bytes, corrupt_blocks, ufs_errors),
    );
    let tiers = s.tiers.iter().map(|t| {
        let mut fields = fields!(t; name, capacity_bytes, used_bytes, blocks, evictions,
            high_watermark, low_watermark, location, fs_free_bytes, fs_total_bytes,
            configured_capacity_bytes);
        let reasons = t
            .evictions_by_reason
            .iter()
            .map(|e| (e.reason.clone(), Value::from(e.blocks)));
        fields.insert(
            "evictions_by_reason".into(),
            Value::Object(reasons.collect()),
        );
        Value::Object(fields)
    });
    out.insert("tiers".into(), Value::Array(tiers.collect()));
}

pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "loaderd {} up {}s, block size {}",
        s.version,
        s.uptime_secs,
        human(s.block_size)
    )?;
    for t in &s.tiers {
        tier_text(t, out)?;
    }
    writeln!(
        out,
        "  hits {} misses {} (hit ratio {:.1}%), from cache {}, from UFS {}",
        s.hits,
        s.misses,
        100.0 * s.hit_ratio,
        human(s.bytes_from_cache),
        human(s.bytes_from_ufs)
    )?;
    writeln!(
        out,
        "  metadata {} entries ({}), in flight {} / {}, corrupt blocks {}, UFS errors {}",
        s.metadata_entries,
        human(s.metadata_bytes),
        human(s.inflight_bytes),
        human(s.inflight_capacity_bytes),
        s.corrupt_blocks,
        s.ufs_errors
    )
}

/// The reasons a tier's evictions had, those that happened: ` (farthest 3, unneeded 1)`.
fn reasons_text(t: &pb::TierStatus) -> String {
    let by: Vec<String> = t
        .evictions_by_reason
        .iter()
        .filter(|e| e.blocks > 0)
        .map(|e| format!("{} {}", e.reason, e.blocks))
        .collect();
    if by.is_empty() {
        String::new()
    } else {
        format!(" ({})", by.join(", "))
    }
}

/// A tier's line, and for a tier on a file system, that file system's.
fn tier_text(t: &pb::TierStatus, out: &mut String) -> fmt::Result {
    let pct = if t.capacity_bytes == 0 {
        0.0
    } else {
        100.0 * t.used_bytes as f64 / t.capacity_bytes as f64
    };
    writeln!(
        out,
        "  tier {:<6} {:>10} / {:>10} ({pct:5.1}%), {} blocks, {} evictions{}, watermarks {:.2}/{:.2}, {}",
        t.name,
        human(t.used_bytes),
        human(t.capacity_bytes),
        t.blocks,
        t.evictions,
        reasons_text(t),
        t.high_watermark,
        t.low_watermark,
        t.location
    )?;
    if t.fs_total_bytes == 0 {
        return Ok(());
    }
    let lowered = if t.capacity_bytes < t.configured_capacity_bytes {
        format!(
            "; capacity lowered from the configured {} to fit",
            human(t.configured_capacity_bytes)
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "         file system {} free of {}{lowered}",
        human(t.fs_free_bytes),
        human(t.fs_total_bytes)
    )
}
