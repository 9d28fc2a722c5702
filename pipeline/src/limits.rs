//! Bounds on every field of a [`LoaderSpec`], checked before anything is indexed, allocated
//! or started, and what the loader will cost.
//!
//! Each field (the wire's `OpenLoader` carries the same) and what bounds it:
//!
//! | field | bound |
//! |---|---|
//! | `batch_size` | 1 ..= `pipeline.max_batch_size` |
//! | `depth` | 0 (= `pipeline.depth`) or 1 ..= `pipeline.max_depth` |
//! | `workers` | 0 (= `pipeline.workers`, or one per core, capped to `max_workers`) or 1 ..= `pipeline.max_workers`; all loaders together `pipeline.max_total_workers` (at admission) |
//! | `size`, `resize` | 0 (= 224 / 256) or 1 ..= `pipeline.max_image_size` |
//! | `rank`, `world_size` | `rank < world_size` (the sampler); `world_size` 0 means 1 |
//! | `consumed` | at most the dataset's length (the sampler) |
//! | `seed`, `epoch` | any value: they only seed the permutation, they size nothing |
//! | `name` | at most [`MAX_NAME_BYTES`] |
//! | `dataset` | parsed; a bad path is refused |
//! | batch × sample bytes × depth, plus per-slot and index state | `pipeline.max_client_bytes`, `pipeline.max_total_bytes` (at admission) |
//! | `cuda_device`: the device ring (rounded up to the granularity) and the decode buffers | the ring also `pipeline.max_client_bytes`; both `pipeline.max_device_bytes` of the GPU (at admission) |
//!
//! Over-limit values are refused with `INVALID_ARGUMENT` naming the field, the value and the
//! config key; budgets shared with other loaders answer `RESOURCE_EXHAUSTED`.

use loaderd_image::Layout;

use crate::augment::TransformSpec;
use crate::config::{OnError, PipelineConfig};
use crate::ring::BatchRing;
use crate::session::SessionError;
use crate::spec::LoaderSpec;
use crate::worker::batch_meta_bytes;

/// Longest loader `name` (it is shown in status and logs).
pub const MAX_NAME_BYTES: usize = 256;

/// A checked request: the numbers the loader will run with.
#[derive(Debug, Clone)]
pub struct Plan {
    pub batch: usize,
    pub depth: usize,
    pub workers: usize,
    /// What every sample becomes (its `layout` is the request's, or NHWC u8).
    pub spec: TransformSpec,
    pub on_error: OnError,
    pub sample_bytes: usize,
    pub slot_bytes: usize,
    /// Memory the loader takes whatever the dataset: the ring's arena, its per-slot state and
    /// the metadata of the batches it holds.
    pub fixed_bytes: u64,
    /// Of that, the host memory any ring takes: the per-slot state and batch metadata (a
    /// device ring's slots are on its GPU).
    pub slot_state_bytes: u64,
}

fn over(field: &'static str, value: u64, limit: u64, key: &'static str) -> SessionError {
    counter_refused(field);
    SessionError::Limit {
        field,
        value,
        limit,
        key,
    }
}

fn at_most(
    field: &'static str,
    value: u64,
    limit: u64,
    key: &'static str,
) -> Result<(), SessionError> {
    if value > limit {
        Err(over(field, value, limit, key))
    } else {
        Ok(())
    }
}

fn counter_refused(field: &'static str) {
    metrics::counter!("loaderd_pipeline_open_refusals_total", "reason" => field).increment(1);
}

/// Checks every field of `req` against `config` and works out what the loader costs.
pub fn plan(req: &LoaderSpec, config: &PipelineConfig) -> Result<Plan, SessionError> {
    let invalid = |m: String| SessionError::Invalid(m);
    if req.batch_size == 0 {
        return Err(invalid("batch_size must be positive".into()));
    }
    let batch = req.batch_size as usize;
    at_most(
        "batch_size",
        batch as u64,
        config.max_batch_size as u64,
        "pipeline.max_batch_size",
    )?;
    let depth = match req.depth {
        0 => config.depth,
        d => d as usize,
    };
    at_most(
        "depth",
        depth as u64,
        config.max_depth as u64,
        "pipeline.max_depth",
    )?;
    let workers = match (req.workers, config.workers) {
        (0, 0) => std::thread::available_parallelism()
            .map_or(2, usize::from)
            .min(config.max_workers),
        (0, w) => w.min(config.max_workers),
        (w, _) if w as usize > config.max_workers => {
            return Err(over(
                "workers",
                u64::from(w),
                config.max_workers as u64,
                "pipeline.max_workers",
            ));
        }
        (w, _) => w as usize,
    };
    let image = u64::from(config.max_image_size);
    at_most(
        "size",
        u64::from(req.size),
        image,
        "pipeline.max_image_size",
    )?;
    at_most(
        "resize",
        u64::from(req.resize),
        image,
        "pipeline.max_image_size",
    )?;
    if req.name.len() > MAX_NAME_BYTES {
        counter_refused("name");
        return Err(invalid(format!(
            "name is {} bytes; at most {MAX_NAME_BYTES}",
            req.name.len()
        )));
    }
    let on_error = req.on_error.unwrap_or(config.on_error);
    let spec = TransformSpec {
        train: req.train,
        size: if req.size == 0 { 224 } else { req.size },
        resize: if req.resize == 0 { 256 } else { req.resize },
        layout: req.layout.unwrap_or(Layout::NhwcU8),
        ..TransformSpec::default()
    };
    spec.validate()
        .map_err(|e| SessionError::Invalid(e.to_string()))?;
    let sample_bytes = spec.sample_bytes();
    let slot_bytes = sample_bytes
        .checked_mul(batch)
        .ok_or_else(|| invalid("batch_size x sample size overflows".into()))?;
    let meta_bytes = (depth as u64).saturating_mul(batch_meta_bytes(batch));
    let fixed_bytes = BatchRing::footprint(depth, slot_bytes).saturating_add(meta_bytes);
    let slot_state_bytes = BatchRing::footprint(depth, 0).saturating_add(meta_bytes);
    Ok(Plan {
        batch,
        depth,
        workers,
        spec,
        on_error,
        sample_bytes,
        slot_bytes,
        fixed_bytes,
        slot_state_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut LoaderSpec)) -> LoaderSpec {
        let mut r = LoaderSpec {
            dataset: "/ds".into(),
            batch_size: 4,
            size: 32,
            ..Default::default()
        };
        f(&mut r);
        r
    }

    fn refused_field(r: LoaderSpec) -> &'static str {
        match plan(&r, &PipelineConfig::default()) {
            Err(SessionError::Limit { field, .. }) => field,
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn every_numeric_field_is_bounded() {
        assert_eq!(refused_field(req(|r| r.depth = 1_000_000_000)), "depth");
        assert_eq!(refused_field(req(|r| r.workers = 1000)), "workers");
        assert_eq!(
            refused_field(req(|r| r.batch_size = u32::MAX)),
            "batch_size"
        );
        assert_eq!(refused_field(req(|r| r.size = 100_000)), "size");
        assert_eq!(refused_field(req(|r| r.resize = u32::MAX)), "resize");
        let err = plan(&req(|r| r.depth = 65), &PipelineConfig::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("depth") && text.contains("64") && text.contains("pipeline.max_depth"),
            "{text}"
        );
    }

    #[test]
    fn the_cost_counts_per_slot_state() {
        let p = plan(&req(|r| r.depth = 64), &PipelineConfig::default()).unwrap();
        assert!(p.fixed_bytes > (p.slot_bytes * p.depth) as u64, "{p:?}");
        assert!(p.slot_state_bytes > 0, "{p:?}");
        assert_eq!(
            p.fixed_bytes - p.slot_state_bytes,
            (p.slot_bytes * p.depth).div_ceil(4096) as u64 * 4096,
            "{p:?}"
        );
        let defaults = plan(&req(|_| {}), &PipelineConfig::default()).unwrap();
        assert_eq!(defaults.depth, PipelineConfig::default().depth);
        assert!(defaults.workers >= 1 && defaults.workers <= 64);
    }
}
