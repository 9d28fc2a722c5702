//! The training loaders: how many are open and the rings they hold, then one line each
//! with its progress, rate, starvation and time per stage; for a GPU loader its device, the
//! share of samples nvJPEG decoded and the CPU fallbacks, and for a loader that asked for a
//! CUDA device but is served from the CPU, why; once it read blocks, the share its node's
//! tiers served (its hit ratio) and what its prefetcher brought in.

use std::fmt::{self, Write};

use loaderd_proto::v1 as pb;
use serde_json::{Map, Value};

use super::fields;
use crate::human;

pub(super) fn json(s: &pb::StatusResponse, out: &mut Map<String, Value>) {
    out.extend(fields!(s; ring_bytes, ring_capacity_bytes));
    let loaders = s.loaders.iter().map(|l| {
        Value::Object(
            fields!(l; name, dataset, rank, world_size, epoch, batches_delivered,
            batches_total, samples, skipped, elapsed_secs, samples_per_sec, starved_percent,
            fetch_secs, decode_secs, augment_secs, ready_batches, depth, ring_bytes, workers,
            device, gpu_samples, cpu_fallback_samples, gpu_secs, gpu_reason, device_bytes,
            block_reads_cached, block_reads_uncached, hit_ratio, prefetched_blocks,
            prefetched_bytes, prefetch_ahead_bytes),
        )
    });
    out.insert("loaders".into(), Value::Array(loaders.collect()));
}

/// How many loaders are open, and the ring bytes they hold of the budget.
pub(super) fn rings_text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "  loaders {} open, rings {} / {}",
        s.loaders.len(),
        human(s.ring_bytes),
        human(s.ring_capacity_bytes)
    )
}

/// One line a loader.
pub(super) fn text(s: &pb::StatusResponse, out: &mut String) -> fmt::Result {
    for l in &s.loaders {
        // Busy seconds per sample, per stage, summed over the loader's decode threads.
        let per = |secs: f64| 1e3 * secs / (l.samples + l.skipped).max(1) as f64;
        write!(
            out,
            "  loader {:?} {} rank {}/{} epoch {}: batch {}/{}, {:.0} img/s, starved {:.1}%, \
             {} skipped, ready {}/{}, {} workers; ms/sample fetch {:.2} decode {:.2} augment {:.2}",
            l.name,
            l.dataset,
            l.rank,
            l.world_size,
            l.epoch,
            l.batches_delivered,
            l.batches_total,
            l.samples_per_sec,
            l.starved_percent,
            l.skipped,
            l.ready_batches,
            l.depth,
            l.workers,
            per(l.fetch_secs),
            per(l.decode_secs),
            per(l.augment_secs)
        )?;
        cache_text(l, out)?;
        device_text(l, out)?;
        writeln!(out)?;
    }
    Ok(())
}

/// A loader's block reads served from this node's tiers, and its prefetch, once it read.
fn cache_text(l: &pb::LoaderStatus, out: &mut String) -> fmt::Result {
    let reads = l.block_reads_cached + l.block_reads_uncached;
    if reads == 0 {
        return Ok(());
    }
    write!(
        out,
        "; hit ratio {:.1}% of {} block reads, prefetched {} ({}), ahead {}",
        100.0 * l.hit_ratio,
        reads,
        l.prefetched_blocks,
        human(l.prefetched_bytes),
        human(l.prefetch_ahead_bytes)
    )
}

/// The end of a loader's line: where it decodes, when that is not simply the CPU.
fn device_text(l: &pb::LoaderStatus, out: &mut String) -> fmt::Result {
    if l.device.starts_with("cuda") {
        let share = 100.0 * l.gpu_samples as f64 / l.samples.max(1) as f64;
        write!(
            out,
            "; {}: GPU share {:.1}% ({} of {} samples by nvJPEG, {} CPU fallbacks), GPU {:.2}s, \
             device memory {}",
            l.device,
            share,
            l.gpu_samples,
            l.samples,
            l.cpu_fallback_samples,
            l.gpu_secs,
            human(l.device_bytes)
        )
    } else if !l.gpu_reason.is_empty() {
        write!(out, "; cpu, not CUDA: {}", l.gpu_reason)
    } else {
        Ok(())
    }
}
