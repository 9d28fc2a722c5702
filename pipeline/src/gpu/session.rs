//! A GPU loader's start: what it costs on its device, admission before anything is allocated,
//! the device ring, the batch pipelines, then the workers.
//!
//! Its device memory is the ring (`slot_bytes × depth` rounded up to the allocation
//! granularity) plus each worker's decode buffer cap; both are reserved against
//! `pipeline.max_device_bytes` of the device, and the ring against `max_client_bytes` too,
//! before the dataset is indexed or any memory allocated. A refusal is the request's answer
//! (`RESOURCE_EXHAUSTED`, naming the key); a device that cannot take an admitted loader
//! (allocation or decoder set-up failed) gives the reservation back and the loader is served
//! from the CPU, saying why.

use std::sync::Arc;

use loaderd_cache::Cache;
use loaderd_gpu::{ExportedMemory, GpuBatchPipeline, GpuDevice, GpuError};
use tokio::runtime::Handle;

use super::plan::{batch_config, cpu_decoder, decode_bytes_per_worker};
use super::worker::{GPU_WORKERS, start_workers};
use crate::decode::DecodeLimits;
use crate::limits::Plan;
use crate::registry::{Cost, DeviceCost, LoaderInfo, Pipelines};
use crate::ring::{BatchRing, RingError, ring_len};
use crate::session::{Session, SessionError, admit, opened, recipe, threads_error};
use crate::spec::{LoaderSpec, RingMemory};
use crate::worker::Recipe;

/// What a GPU loader of `plan` takes: host memory for the slot states and batch metadata,
/// [`GPU_WORKERS`] threads, and on device `device` the ring (rounded up to `granularity`)
/// and the workers' decode buffers. Pure, for the budget tests.
pub(crate) fn gpu_cost(plan: &Plan, device: u32, granularity: usize) -> Result<Cost, RingError> {
    let len = ring_len(plan.depth, plan.slot_bytes)?;
    let too_large = RingError::TooLarge {
        depth: plan.depth,
        slot_bytes: plan.slot_bytes,
    };
    let ring_bytes = loaderd_gpu::round_up_to_granularity(len, granularity).ok_or(too_large)?;
    let decode_bytes = (decode_bytes_per_worker(plan.batch) as u64) * GPU_WORKERS as u64;
    Ok(Cost {
        host_bytes: plan.slot_state_bytes,
        workers: GPU_WORKERS,
        device: Some(DeviceCost {
            device,
            ring_bytes: ring_bytes as u64,
            decode_bytes,
        }),
    })
}

/// Starts a GPU loader on `gpu`; `Ok(Err(reason))` when the device cannot take it.
pub(super) fn start(
    cache: &Arc<Cache>,
    pipelines: &Arc<Pipelines>,
    rt: &Handle,
    req: &LoaderSpec,
    plan: &Plan,
    gpu: Arc<GpuDevice>,
) -> Result<Result<Session, String>, SessionError> {
    let ordinal = gpu.info().ordinal;
    let cost = gpu_cost(plan, ordinal, gpu.allocation_granularity())?;
    let reservation = pipelines.reserve_cost(cost)?;
    let limits = DecodeLimits {
        max_pixels: pipelines.config().max_pixels,
    };
    let (memory, engines) = match device_parts(&gpu, plan, limits) {
        Ok(parts) => parts,
        Err(e) => return Ok(Err(format!("CUDA device {ordinal} cannot serve it: {e}"))),
    };
    let ring_bytes = memory.len() as u64;
    let info = LoaderInfo {
        device: format!("cuda:{ordinal}"),
        ..LoaderInfo::default()
    };
    let admitted = admit(cache, rt, req, plan, reservation, info)?;
    let ring = Arc::new(BatchRing::with_memory(memory, plan.depth, plan.slot_bytes)?);
    let shared = admitted.shared(cache, rt, ring.clone());
    // A benchmark of the host handoff; a GPU loader always decodes.
    let recipe = Recipe {
        predecoded: false,
        ..recipe(plan, req, limits, admitted.batches)
    };
    let workers = start_workers(&shared, recipe, engines)
        .map_err(|(started, source)| threads_error(started, GPU_WORKERS, source))?;
    let mut opened = opened(plan, &admitted);
    opened.memory = RingMemory::Cuda { device: ordinal };
    opened.ring_bytes = ring_bytes;
    Ok(Ok(Session::running(
        ring,
        &shared.metas,
        &shared.stop,
        workers,
        opened,
        admitted,
    )))
}

/// The device ring's memory and one batch pipeline per worker (each with the pipeline's CPU
/// decoder behind nvJPEG).
fn device_parts(
    gpu: &GpuDevice,
    plan: &Plan,
    limits: DecodeLimits,
) -> Result<(ExportedMemory, Vec<GpuBatchPipeline>), GpuError> {
    let len = plan.depth * plan.slot_bytes;
    let memory = ExportedMemory::new(gpu, len)?;
    let config = batch_config(&plan.spec, plan.batch, limits.max_pixels);
    let engines = (0..GPU_WORKERS)
        .map(|_| {
            let mut p = gpu.batch_pipeline(config)?;
            p.set_cpu_decoder(cpu_decoder(limits));
            Ok(p)
        })
        .collect::<Result<Vec<_>, GpuError>>()?;
    Ok((memory, engines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::limits;
    use crate::registry::BudgetError;
    use loaderd_cache::ByteSize;
    use loaderd_image::Layout;

    fn plan(batch: u32, size: u32, depth: u32) -> Plan {
        let req = LoaderSpec {
            dataset: "/ds".into(),
            batch_size: batch,
            size,
            depth,
            layout: Some(Layout::NchwF32),
            cuda_device: Some(0),
            ..LoaderSpec::default()
        };
        limits::plan(&req, &PipelineConfig::default()).unwrap()
    }

    #[test]
    fn a_gpu_loader_costs_its_rounded_ring_and_decode_buffers_on_its_device() {
        const GRAN: usize = 2 << 20;
        let p = plan(256, 224, 4);
        let cost = gpu_cost(&p, 1, GRAN).unwrap();
        let d = cost.device.unwrap();
        let slots: usize = 256 * 3 * 224 * 224 * 4 * 4;
        assert_eq!(d.device, 1);
        assert_eq!(d.ring_bytes as usize, slots.div_ceil(GRAN) * GRAN);
        assert!(d.ring_bytes as usize >= slots);
        assert_eq!(
            d.decode_bytes,
            1 << 30,
            "two workers of 512 MiB for batches of 256"
        );
        assert_eq!(cost.workers, GPU_WORKERS);
        assert_eq!(cost.host_bytes, p.slot_state_bytes);
        assert!(
            cost.host_bytes < p.fixed_bytes,
            "the slots are not in host memory"
        );
    }

    #[test]
    fn the_default_device_budget_admits_imagenet_loaders_and_refuses_by_name() {
        let pipelines = Pipelines::new(PipelineConfig::default());
        let p = plan(256, 224, 4);
        let cost = gpu_cost(&p, 0, 2 << 20).unwrap();
        // 616 MiB of ring and 1 GiB of decode buffers each: two fit in 4 GiB, a third does not.
        let first = pipelines.reserve_cost(cost).unwrap();
        let _second = pipelines.reserve_cost(cost).unwrap();
        let err = pipelines.reserve_cost(cost).unwrap_err();
        assert!(
            matches!(err, BudgetError::Device { device: 0, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("pipeline.max_device_bytes"),
            "{err}"
        );
        // Another GPU has its own budget.
        assert!(
            pipelines
                .reserve_cost(gpu_cost(&p, 1, 2 << 20).unwrap())
                .is_ok()
        );
        drop(first);
        assert!(pipelines.reserve_cost(cost).is_ok());

        // The ring counts against max_client_bytes like a host ring.
        let small = Pipelines::new(PipelineConfig {
            max_client_bytes: ByteSize(64 << 20),
            ..PipelineConfig::default()
        });
        let err = small.reserve_cost(cost).unwrap_err();
        assert!(matches!(err, BudgetError::Client { .. }), "{err}");
        assert!(
            err.to_string().contains("pipeline.max_client_bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_ring_that_cannot_be_rounded_is_refused() {
        let p = plan(4, 32, 2);
        assert!(matches!(
            gpu_cost(&p, 0, 0),
            Err(RingError::TooLarge { .. })
        ));
    }
}
