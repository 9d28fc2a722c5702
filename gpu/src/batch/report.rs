//! What happened to each sample of a batch.

use crate::jpeg::Unsupported;
use crate::nvjpeg::ImageError;

/// Why a sample is missing from the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The GPU decoder refused or failed on it (with no CPU decoder, `NeedsCpu` ends here).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The CPU decoder failed on it.
    #[error("CPU fallback decode failed: {0}")]
    CpuDecode(String),
    /// The CPU decoder returned something unusable (size, pixel count).
    #[error("CPU fallback image rejected: {0}")]
    BadFallback(String),
}

/// Why a delivered sample's pixels come from the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuReason {
    /// The caller passed decoded pixels ([`crate::SampleSource::Rgb`]).
    CallerDecoded,
    /// nvJPEG does not take this JPEG (said by its header, or by nvJPEG when decoding), so
    /// the pipeline's CPU decoder decoded it.
    Unsupported(Unsupported),
}

/// What happened to one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleOutcome {
    /// nvJPEG decoded it; it is output sample `slot`.
    Gpu {
        /// Index in the compacted output.
        slot: usize,
    },
    /// Decoded on the CPU and uploaded; it is output sample `slot`.
    Cpu {
        /// Index in the compacted output.
        slot: usize,
        /// Why the GPU did not decode it.
        reason: CpuReason,
    },
    /// Not in the output.
    Failed(SampleError),
}

/// One batch's bookkeeping, one outcome per input sample, in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Per input sample.
    pub outcomes: Vec<SampleOutcome>,
}

impl BatchReport {
    /// Samples in the output.
    pub fn delivered(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| !matches!(o, SampleOutcome::Failed(_)))
            .count()
    }

    /// (input index, error) of every failed sample.
    pub fn failed(&self) -> impl Iterator<Item = (usize, &SampleError)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                SampleOutcome::Failed(e) => Some((i, e)),
                _ => None,
            })
    }

    /// Input indices of the samples decoded on the CPU.
    pub fn fell_back(&self) -> impl Iterator<Item = usize> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| matches!(o, SampleOutcome::Cpu { .. }).then_some(i))
    }
}
