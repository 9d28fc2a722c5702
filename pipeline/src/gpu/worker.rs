//! A GPU loader's batch workers.
//!
//! Each worker owns one batch pipeline (its own stream, nvJPEG decoder and decode buffer) and
//! loops like a CPU worker: a free slot first, then the next batch number (so in-order
//! delivery cannot deadlock on a full ring). Per batch it fetches the batch's samples through
//! the cache (up to [`FETCH_CONCURRENCY`] at once), reads each header and draws its crop and
//! flip on the CPU (`plan`), runs the GPU pipeline into the slot, waits for the stream, and
//! only then publishes the slot: a batch the client is told about is complete in device
//! memory. The stream time between two timing events around the run is the batch's GPU time.
//!
//! [`GPU_WORKERS`] is 2: one worker's batch is on the GPU while the other fetches and plans
//! the next, which keeps the device busy without holding more decode buffers than that
//! overlap needs (each worker's buffer counts in `pipeline.max_device_bytes`).

use loaderd_cache::prefetch::tallied;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use loaderd_gpu::{
    BatchReport, DeviceSliceMut, ExportedMemory, GpuBatchPipeline, GpuError, GpuSample,
    SampleOutcome,
};
use tracing::error;

use super::plan::{Planned, plan_sample};
use super::report::{batch_meta, failed_batch};
use crate::config::OnError;
use crate::dataset::{Sample, fetch};
use crate::decode::Decoder;
use crate::registry::Stage;
use crate::ring::SlotWriter;
use crate::worker::{BatchMeta, Recipe, Shared, Workers};

/// Batch workers per GPU loader; see the module doc.
pub const GPU_WORKERS: usize = 2;

/// Samples of a batch fetched through the cache at once.
pub(crate) const FETCH_CONCURRENCY: usize = 16;

/// Starts one worker per pipeline in `engines`.
pub(super) fn start_workers(
    shared: &Arc<Shared<ExportedMemory>>,
    recipe: Recipe,
    engines: Vec<GpuBatchPipeline>,
) -> Result<Workers, (usize, std::io::Error)> {
    let n = engines.len();
    let mut engines = engines.into_iter();
    Workers::spawn(&shared.stop, n, "loaderd-gpu", |_| {
        let w = engines.next().map(|engine| GpuWorker {
            shared: shared.clone(),
            recipe,
            engine,
        });
        move || {
            if let Some(w) = w {
                w.run();
            }
        }
    })
}

struct GpuWorker {
    shared: Arc<Shared<ExportedMemory>>,
    recipe: Recipe,
    engine: GpuBatchPipeline,
}

impl GpuWorker {
    fn run(mut self) {
        let shared = self.shared.clone();
        let r = self.recipe;
        let mut decoder = Decoder::new(r.limits);
        shared.serve(r.batches, r.batch, |slot, start, indices| {
            // The batch's samples are fetched together.
            shared.reading(start..start + indices.len());
            self.batch(&mut decoder, slot, indices)
        });
    }

    /// Fetches, plans and runs one batch into `slot`; returns when the slot is complete.
    fn batch(
        &mut self,
        decoder: &mut Decoder,
        slot: &mut SlotWriter<'_, ExportedMemory>,
        indices: &[u64],
    ) -> BatchMeta {
        let shared = self.shared.clone();
        let (s, r) = (&*shared, self.recipe);
        let samples: Vec<&Sample> = indices
            .iter()
            .map(|&i| &s.dataset.samples[i as usize])
            .collect();
        let fetched = self.fetch_all(&samples);
        let started = Instant::now();
        let cap = self.engine.config().max_decode_bytes;
        let mut early = Vec::with_capacity(samples.len());
        let mut planned: Vec<Planned> = Vec::with_capacity(samples.len());
        for (&index, data) in indices.iter().zip(fetched) {
            let p = data.map_err(|e| e.to_string()).and_then(|data| {
                plan_sample(decoder, data, &r.spec, (r.seed, r.epoch, index), cap)
                    .map_err(|e| e.to_string())
            });
            match p {
                Ok(p) => {
                    planned.push(p);
                    early.push(None);
                }
                Err(e) => early.push(Some(e)),
            }
        }
        s.stats.record(Stage::Decode, started.elapsed());
        let items: Vec<GpuSample<'_>> = planned.iter().map(Planned::gpu_sample).collect();
        match self.run_batch(&items, slot.device()) {
            Ok((report, gpu_time)) => {
                let (meta, tally) = batch_meta(&samples, &early, &report, r.on_error);
                s.stats.gpu_batch(tally.gpu, tally.cpu, gpu_time);
                meta
            }
            // Images too large for the decode buffer alone are refused when planned; should
            // one still reach the GPU, the batch's samples are skipped (or fail) as data.
            Err(e @ GpuError::DecodeBufferCap { .. }) => {
                failed_batch(&samples, &e.to_string(), r.on_error)
            }
            // The GPU itself failed (driver, nvJPEG): not the data's fault, so the loader
            // fails rather than skipping every sample from now on.
            Err(e) => {
                error!(error = %e, samples = samples.len(), "GPU batch failed");
                failed_batch(&samples, &format!("GPU batch failed: {e}"), OnError::Fail)
            }
        }
    }

    /// Every sample's bytes, in order, `FETCH_CONCURRENCY` reads at a time.
    fn fetch_all(&self, samples: &[&Sample]) -> Vec<Result<Bytes, loaderd_cache::Error>> {
        let s = &*self.shared;
        let reads = futures::stream::iter(samples.iter().map(|sample| async move {
            let started = Instant::now();
            let data = fetch(&s.cache, &sample.source).await;
            s.stats.record(Stage::Fetch, started.elapsed());
            data
        }));
        let tally = s.stats.reads().clone();
        s.rt.block_on(tallied(tally, reads.buffered(FETCH_CONCURRENCY).collect()))
    }

    /// Runs `items` into `out` and waits for the stream: the report and the stream time. On
    /// an error the stream is drained too, so no queued work writes the slot once it is
    /// given back.
    fn run_batch(
        &mut self,
        items: &[GpuSample<'_>],
        out: DeviceSliceMut<'_>,
    ) -> Result<(BatchReport, Duration), GpuError> {
        if items.is_empty() {
            // Every sample failed before the GPU: nothing to queue.
            return Ok((BatchReport::default(), Duration::ZERO));
        }
        let result = timed_run(&mut self.engine, items, out);
        if result.is_err()
            && let Err(e) = self.engine.stream().synchronize()
        {
            error!(error = %e, "draining a failed GPU batch's stream failed");
        }
        result
    }
}

fn timed_run(
    engine: &mut GpuBatchPipeline,
    items: &[GpuSample<'_>],
    out: DeviceSliceMut<'_>,
) -> Result<(BatchReport, Duration), GpuError> {
    let before = engine.stream().record()?;
    let report = run_split(engine, items, out)?;
    let after = engine.stream().record()?;
    after.synchronize()?;
    let ms = before.elapsed_ms(&after)?;
    Ok((
        report,
        Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3),
    ))
}

/// [`GpuBatchPipeline::run`], splitting a batch whose decoded images exceed the decode buffer
/// cap in halves (the cap is checked before any work is queued), the second half's output
/// after the first half's delivered samples.
fn run_split(
    engine: &mut GpuBatchPipeline,
    items: &[GpuSample<'_>],
    mut out: DeviceSliceMut<'_>,
) -> Result<BatchReport, GpuError> {
    match engine.run(items, out.reborrow()) {
        Err(GpuError::DecodeBufferCap { .. }) if items.len() > 1 => {
            let (a, b) = items.split_at(items.len() / 2);
            let first = run_split(engine, a, out.reborrow())?;
            let at = engine.output_bytes(first.delivered());
            let len = out.len();
            let second = run_split(engine, b, out.sub(at..len)?)?;
            Ok(merge(first, second))
        }
        other => other,
    }
}

/// The report of a batch run in two parts, the second's output after the first's.
pub(crate) fn merge(first: BatchReport, second: BatchReport) -> BatchReport {
    let offset = first.delivered();
    let mut outcomes = first.outcomes;
    outcomes.extend(second.outcomes.into_iter().map(|o| match o {
        SampleOutcome::Gpu { slot } => SampleOutcome::Gpu {
            slot: slot + offset,
        },
        SampleOutcome::Cpu { slot, reason } => SampleOutcome::Cpu {
            slot: slot + offset,
            reason,
        },
        failed => failed,
    }));
    BatchReport { outcomes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loaderd_gpu::{CpuReason, ImageError, SampleError};

    #[test]
    fn a_split_batchs_second_half_follows_the_first_halfs_delivered_samples() {
        let failed = || SampleOutcome::Failed(SampleError::Image(ImageError::Corrupt("x".into())));
        let first = BatchReport {
            outcomes: vec![SampleOutcome::Gpu { slot: 0 }, failed()],
        };
        let second = BatchReport {
            outcomes: vec![
                failed(),
                SampleOutcome::Cpu {
                    slot: 0,
                    reason: CpuReason::CallerDecoded,
                },
                SampleOutcome::Gpu { slot: 1 },
            ],
        };
        let merged = merge(first, second);
        assert_eq!(merged.delivered(), 3);
        assert_eq!(
            merged.outcomes,
            vec![
                SampleOutcome::Gpu { slot: 0 },
                failed(),
                failed(),
                SampleOutcome::Cpu {
                    slot: 1,
                    reason: CpuReason::CallerDecoded,
                },
                SampleOutcome::Gpu { slot: 2 },
            ]
        );
    }
}
