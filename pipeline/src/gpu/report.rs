//! A GPU batch's outcome as the loader delivers it: the GPU pipeline's [`BatchReport`] (one
//! outcome per sample it was given) and the samples that failed before it (fetch, header,
//! PNG decode) merged into the batch's metadata, in the batch's order, with `on_error` applied
//! as on the CPU path; and how many samples each decoder took, for status.

use loaderd_gpu::{BatchReport, SampleOutcome};

use crate::config::OnError;
use crate::dataset::Sample;
use crate::worker::BatchMeta;

/// Samples of one batch by decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Decoded by nvJPEG.
    pub gpu: usize,
    /// Decoded on the CPU and uploaded (PNGs, JPEGs nvJPEG refused).
    pub cpu: usize,
}

/// The metadata of a batch of `samples` (in order), where `early[i]` is why sample `i` failed
/// before the GPU (`None`: it went to the GPU pipeline) and `report` has one outcome per sample
/// that went, in order. The GPU output is compacted in that order, so label `k` is output
/// sample `k`.
pub(crate) fn batch_meta(
    samples: &[&Sample],
    early: &[Option<String>],
    report: &BatchReport,
    on_error: OnError,
) -> (BatchMeta, Tally) {
    let mut meta = BatchMeta::default();
    let mut tally = Tally::default();
    let mut outcomes = report.outcomes.iter();
    for (sample, early) in samples.iter().zip(early) {
        let result = match early {
            Some(e) => Err(e.clone()),
            None => match outcomes.next() {
                Some(SampleOutcome::Gpu { slot }) => {
                    debug_assert_eq!(*slot, meta.labels.len());
                    tally.gpu += 1;
                    Ok(())
                }
                Some(SampleOutcome::Cpu { slot, .. }) => {
                    debug_assert_eq!(*slot, meta.labels.len());
                    tally.cpu += 1;
                    Ok(())
                }
                Some(SampleOutcome::Failed(e)) => Err(e.to_string()),
                None => Err("the GPU pipeline reported no outcome for it".to_string()),
            },
        };
        if !meta.record(sample, result, on_error) {
            break;
        }
    }
    (meta, tally)
}

/// The metadata of a batch the GPU could not run at all (`why`): every sample is skipped,
/// or with `on_error = fail` the first one fails the batch.
pub(crate) fn failed_batch(samples: &[&Sample], why: &str, on_error: OnError) -> BatchMeta {
    let mut meta = BatchMeta::default();
    for sample in samples {
        if !meta.record(sample, Err(why), on_error) {
            break;
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Source;
    use loaderd_cache::LogicalPath;
    use loaderd_gpu::jpeg::Unsupported;
    use loaderd_gpu::{CpuReason, ImageError, SampleError};

    fn samples(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                key: format!("k{i}"),
                label: 10 + i as i64,
                source: Source::File {
                    path: LogicalPath::parse("/ds/x").unwrap(),
                    size: 1,
                    version: String::new(),
                },
            })
            .collect()
    }

    fn report() -> BatchReport {
        BatchReport {
            outcomes: vec![
                SampleOutcome::Gpu { slot: 0 },
                SampleOutcome::Failed(SampleError::Image(ImageError::Corrupt("bad".into()))),
                SampleOutcome::Cpu {
                    slot: 1,
                    reason: CpuReason::CallerDecoded,
                },
                SampleOutcome::Cpu {
                    slot: 2,
                    reason: CpuReason::Unsupported(Unsupported::Cmyk),
                },
            ],
        }
    }

    #[test]
    fn outcomes_and_early_failures_merge_in_batch_order() {
        let all = samples(5);
        let refs: Vec<&Sample> = all.iter().collect();
        let early = [None, Some("fetch failed".to_string()), None, None, None];
        let (meta, tally) = batch_meta(&refs, &early, &report(), OnError::Skip);
        assert_eq!(meta.labels, vec![10, 13, 14], "output k is label k");
        assert_eq!(meta.keys, vec!["k0", "k3", "k4"]);
        assert_eq!(meta.skipped, vec!["k1", "k2"]);
        assert_eq!(meta.failed, None);
        assert_eq!(tally, Tally { gpu: 1, cpu: 2 });
    }

    #[test]
    fn on_error_fail_fails_the_batch_at_the_first_bad_sample() {
        let all = samples(5);
        let refs: Vec<&Sample> = all.iter().collect();
        let early = [None, None, None, None, None];
        let (meta, tally) = batch_meta(&refs[..4], &early[..4], &report(), OnError::Fail);
        let failed = meta.failed.expect("failed");
        assert!(
            failed.starts_with("sample k1: ") && failed.contains("bad"),
            "{failed}"
        );
        assert_eq!(meta.skipped, vec!["k1"]);
        assert_eq!(tally, Tally { gpu: 1, cpu: 0 });
        // A report shorter than the samples sent (never expected) fails those samples.
        let (meta, _) = batch_meta(&refs, &early, &report(), OnError::Skip);
        assert_eq!(meta.skipped, vec!["k1", "k4"]);
    }

    #[test]
    fn a_batch_the_gpu_could_not_run_is_skipped_or_fails() {
        let all = samples(3);
        let refs: Vec<&Sample> = all.iter().collect();
        let meta = failed_batch(&refs, "GPU batch failed: x", OnError::Skip);
        assert_eq!((meta.labels.len(), meta.skipped.len()), (0, 3));
        let meta = failed_batch(&refs, "GPU batch failed: x", OnError::Fail);
        assert_eq!(
            meta.failed.as_deref(),
            Some("sample k0: GPU batch failed: x")
        );
    }
}
