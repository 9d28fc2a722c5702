//! One batch on the GPU: nvJPEG decode → upload of CPU-decoded fallbacks (through pinned
//! staging, [`UploadStaging`]) → one augment launch → the batch in device memory (or, for the
//! "host pinned ring" mode, copied into a pinned slot).
//!
//! The loader draws each sample's crop box and flip exactly as on the CPU path (from the
//! image size in the header and the sample's seeded stream) and hands them in with the JPEG
//! bytes; this module only applies them, so a GPU batch and a CPU batch of the same epoch hold
//! the same crops. Differences are confined to the decoders (nvJPEG decodes at full size, the
//! CPU path may let the DCT downscale) and NVRTC's math library.
//!
//! Every sample ends in one of three states, reported in [`BatchReport`]:
//! - decoded by nvJPEG ([`SampleOutcome::Gpu`]);
//! - decoded on the CPU and uploaded ([`SampleOutcome::Cpu`]): the caller passed RGB pixels, or
//!   the JPEG is one nvJPEG's fast path does not take (progressive, CMYK, …) and the pipeline's
//!   CPU decoder ([`GpuBatchPipeline::set_cpu_decoder`]) decoded it;
//! - failed ([`SampleOutcome::Failed`]): the caller skips it or fails the batch, as its
//!   `on_error` says. A failed sample costs only itself (see [`crate::nvjpeg`]).
//!
//! The output is compacted like the CPU path's batches: delivered samples are back to back in
//! input order, sample `k` of the output being the `k`-th sample that did not fail.
//!
//! All work is queued on the decoder's stream in order (decode, uploads, kernel, copy out), so
//! no events are needed inside a batch; the decode buffer is reused from batch to batch and is
//! only overwritten by work queued after the previous batch's kernel.

mod fallback;
mod report;

use std::borrow::Cow;
use std::sync::Arc;

use loaderd_image::{CropBox, Layout, Normalize};

use crate::augment::{AugmentKernel, SampleParams, check_output_alignment};
use crate::nvjpeg::{
    DEFAULT_MAX_DECODE_BYTES, DecodeJob, ImageError, InspectedJpeg, JpegDecoder, NvJpeg,
    grown_size, pack,
};
use crate::pinned::{
    CopyEvent, DeviceBuffer, GpuContext, H2dStream, PinnedRegion, Upload, UploadStaging,
};
use crate::{DeviceSliceMut, GpuError, Nvrtc};
use fallback::{cpu_decode, late_fallback};

pub use fallback::{CpuDecoder, RgbImage};
pub use report::{BatchReport, CpuReason, SampleError, SampleOutcome};

/// What a [`GpuBatchPipeline`] produces, and its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Most samples per [`GpuBatchPipeline::run`] (≤ 65 535, the kernel's grid limit).
    pub max_batch: usize,
    /// Output width in pixels.
    pub out_width: u32,
    /// Output height in pixels.
    pub out_height: u32,
    /// Output element type and layout.
    pub layout: Layout,
    /// Normalization for the float layouts.
    pub norm: Normalize,
    /// Largest `width × height` a JPEG header (or fallback image) may claim.
    pub max_pixels: u64,
    /// Cap on the decode buffer (all of a batch's decoded images, back to back): a batch that
    /// needs more fails with [`GpuError::DecodeBufferCap`].
    pub max_decode_bytes: usize,
}

impl Default for BatchConfig {
    /// 256 × 224×224 NCHW f32, ImageNet normalization, the CPU path's 64 Mi pixel limit.
    fn default() -> Self {
        BatchConfig {
            max_batch: 256,
            out_width: 224,
            out_height: 224,
            layout: Layout::NchwF32,
            norm: Normalize::default(),
            max_pixels: 64 << 20,
            max_decode_bytes: DEFAULT_MAX_DECODE_BYTES,
        }
    }
}

impl BatchConfig {
    /// Checks the configuration; every constructor calls this.
    pub fn validate(&self) -> Result<(), GpuError> {
        let bad = |why: &str| Err(GpuError::InvalidArgument(format!("{why}: {self:?}")));
        if self.max_batch == 0 || self.max_batch > 65_535 {
            return bad("max_batch must be in 1..=65535");
        }
        if self.out_width == 0 || self.out_height == 0 {
            return bad("empty output size");
        }
        if !self.norm.is_valid() {
            return bad("std must be nonzero");
        }
        if self.max_pixels == 0 {
            return bad("max_pixels must be positive");
        }
        if self.max_decode_bytes == 0 {
            return bad("max_decode_bytes must be positive");
        }
        // The kernel indexes a sample's plane with 32-bit unsigned ints.
        let plane = u64::from(self.out_width) * u64::from(self.out_height);
        if plane > u64::from(u32::MAX) / 3 {
            return bad("output plane too large");
        }
        if (plane as usize * 3 * self.layout.element_bytes())
            .checked_mul(self.max_batch)
            .is_none()
        {
            return bad("batch size overflows");
        }
        Ok(())
    }

    /// Bytes of one output sample.
    pub fn sample_bytes(&self) -> usize {
        self.layout.sample_bytes(self.out_width, self.out_height)
    }

    /// Checks one `run`'s arguments: `items` samples into an output of `out_len` bytes.
    fn check_run(&self, items: usize, out_len: usize) -> Result<(), GpuError> {
        if items > self.max_batch {
            return Err(GpuError::InvalidArgument(format!(
                "{items} samples, max_batch is {}",
                self.max_batch
            )));
        }
        let need = self.sample_bytes() * items;
        if out_len < need {
            return Err(GpuError::InvalidArgument(format!(
                "output buffer of {out_len} bytes, {items} samples need {need}"
            )));
        }
        Ok(())
    }
}

/// RGB interleaved pixels on the host, `height` rows of `stride` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostImage<'a> {
    /// The pixels (at least `(height − 1) × stride + 3 × width` bytes).
    pub pixels: &'a [u8],
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes per row (≥ 3 × width).
    pub stride: u32,
}

impl<'a> HostImage<'a> {
    /// The bytes from pixel (0, 0) to the last pixel, checked against `pixels`.
    fn span(self) -> Result<&'a [u8], GpuError> {
        let len = (self.height as usize)
            .checked_sub(1)
            .and_then(|h| h.checked_mul(self.stride as usize))
            .and_then(|v| v.checked_add(self.width as usize * 3));
        match len {
            Some(n)
                if self.width > 0
                    && self.stride as usize >= self.width as usize * 3
                    && n <= self.pixels.len() =>
            {
                Ok(&self.pixels[..n])
            }
            _ => Err(GpuError::InvalidArgument(format!(
                "{}x{} image, stride {}, in {} bytes",
                self.width,
                self.height,
                self.stride,
                self.pixels.len()
            ))),
        }
    }
}

/// Where a sample's pixels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleSource<'a> {
    /// A JPEG file, decoded by nvJPEG (or by the CPU decoder when nvJPEG cannot).
    Jpeg(&'a [u8]),
    /// Pixels the caller already decoded on the CPU (PNG, or a JPEG it decoded itself).
    Rgb(HostImage<'a>),
}

/// One sample of a batch: its pixels, crop box and flip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSample<'a> {
    /// The encoded or decoded image.
    pub source: SampleSource<'a>,
    /// The crop box in the image's pixels.
    pub crop: CropBox,
    /// Mirror left-right.
    pub flip: bool,
}

/// Which decoder produced a sample's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodedBy {
    Gpu,
    Cpu(CpuReason),
}

/// A sample after decoding: where its pixels are in the source buffer, or why it is not.
#[derive(Debug, Clone, PartialEq)]
enum Placed {
    Ready {
        offset: usize,
        width: u32,
        height: u32,
        stride: u32,
        by: DecodedBy,
    },
    Failed(SampleError),
}

/// The kernel's sample table and the report: delivered samples get consecutive slots.
fn assemble(samples: &[GpuSample<'_>], placed: Vec<Placed>) -> (Vec<SampleParams>, BatchReport) {
    let mut params = Vec::with_capacity(samples.len());
    let mut outcomes = Vec::with_capacity(samples.len());
    for (s, p) in samples.iter().zip(placed) {
        match p {
            Placed::Ready {
                offset,
                width,
                height,
                stride,
                by,
            } => {
                let slot = params.len();
                params.push(SampleParams {
                    src_offset: offset,
                    width,
                    height,
                    stride,
                    crop: s.crop,
                    flip: s.flip,
                });
                outcomes.push(match by {
                    DecodedBy::Gpu => SampleOutcome::Gpu { slot },
                    DecodedBy::Cpu(reason) => SampleOutcome::Cpu { slot, reason },
                });
            }
            Placed::Failed(e) => outcomes.push(SampleOutcome::Failed(e)),
        }
    }
    (params, BatchReport { outcomes })
}

/// A sample after the header pass.
enum Staged<'a> {
    /// A JPEG for nvJPEG, with the space its pixels take.
    Gpu(InspectedJpeg<'a>),
    /// Host pixels to upload (borrowed from the caller or owned from the CPU decoder).
    Host {
        bytes: Cow<'a, [u8]>,
        width: u32,
        height: u32,
        stride: u32,
        reason: CpuReason,
    },
    Failed(SampleError),
}

impl Staged<'_> {
    fn bytes(&self) -> usize {
        match self {
            Staged::Gpu(image) => image.geometry().bytes(),
            Staged::Host { bytes, .. } => bytes.len(),
            Staged::Failed(_) => 0,
        }
    }
}

/// nvJPEG decode + augment for whole batches, on one stream.
pub struct GpuBatchPipeline {
    config: BatchConfig,
    decoder: JpegDecoder,
    kernel: AugmentKernel,
    cpu: Option<CpuDecoder>,
    /// The decode buffer, reused while large enough.
    arena: Option<DeviceBuffer>,
    /// Pinned staging for the CPU-decoded images' uploads.
    staging: UploadStaging,
    ctx: GpuContext,
}

impl std::fmt::Debug for GpuBatchPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBatchPipeline")
            .field("config", &self.config)
            .field("decoder", &self.decoder)
            .field("cpu_decoder", &self.cpu.is_some())
            .finish_non_exhaustive()
    }
}

impl GpuBatchPipeline {
    /// Compiles the augment kernel and opens an nvJPEG decoder on `ctx`. A daemon uses
    /// [`crate::GpuDevice::batch_pipeline`] instead, which reuses one compiled kernel.
    pub fn new(
        ctx: &GpuContext,
        nvrtc: &Nvrtc,
        nvjpeg: Arc<NvJpeg>,
        config: BatchConfig,
    ) -> Result<Self, GpuError> {
        config.validate()?;
        let kernel = AugmentKernel::new(ctx, nvrtc)?;
        Self::with_kernel(ctx, kernel, nvjpeg, config)
    }

    /// A pipeline around an already compiled `kernel` (loaded in `ctx`): opens an nvJPEG
    /// decoder on its own stream; no NVRTC compile.
    pub fn with_kernel(
        ctx: &GpuContext,
        kernel: AugmentKernel,
        nvjpeg: Arc<NvJpeg>,
        config: BatchConfig,
    ) -> Result<Self, GpuError> {
        config.validate()?;
        let mut decoder = JpegDecoder::new(ctx, nvjpeg, config.max_pixels)?;
        decoder.set_max_buffer_bytes(config.max_decode_bytes);
        Ok(GpuBatchPipeline {
            config,
            decoder,
            kernel,
            cpu: None,
            arena: None,
            staging: UploadStaging::new(),
            ctx: ctx.clone(),
        })
    }

    /// Decodes JPEGs that nvJPEG does not take with `decoder`; without one they fail with
    /// [`ImageError::NeedsCpu`].
    pub fn set_cpu_decoder(&mut self, decoder: CpuDecoder) {
        self.cpu = Some(decoder);
    }

    /// The configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// The decoder (its backend, for logs).
    pub fn decoder(&self) -> &JpegDecoder {
        &self.decoder
    }

    /// The stream all of a batch's work is queued on; synchronize it (or record an event on
    /// it) before reading `out` elsewhere.
    pub fn stream(&self) -> &H2dStream {
        self.decoder.stream()
    }

    /// Output bytes for `samples` samples.
    pub fn output_bytes(&self, samples: usize) -> usize {
        self.config.sample_bytes() * samples
    }

    /// Decodes and augments `items` into `out` (device memory, at least
    /// [`Self::output_bytes`]`(items.len())` bytes: a [`DeviceBuffer::as_slice_mut`], or a slot
    /// of an [`crate::ExportedMemory`]), compacted: output sample `k` is the `k`-th delivered
    /// one. Returns when the work is queued on [`Self::stream`]; the report is final. Before
    /// `out` is read elsewhere (another stream, another process), synchronize the stream or
    /// wait on an event recorded on it after `run` ([`H2dStream::record`], whose
    /// [`CopyEvent::elapsed_ms`] against one recorded before gives the batch's GPU time).
    pub fn run(
        &mut self,
        items: &[GpuSample<'_>],
        out: DeviceSliceMut<'_>,
    ) -> Result<BatchReport, GpuError> {
        self.config.check_run(items.len(), out.len())?;
        check_output_alignment(out.device_ptr(), self.config.layout)?;
        let staged = items
            .iter()
            .map(|s| self.stage(s))
            .collect::<Result<Vec<_>, _>>()?;
        let cap = self.config.max_decode_bytes;
        let (offsets, total) = pack(staged.iter().map(Staged::bytes), cap)?;
        let mut arena = match self.arena.take() {
            Some(a) if a.len() >= total.max(1) => a,
            old => {
                drop(old); // freed before the larger one is allocated
                // Every byte the kernel reads is written first (decoded or uploaded): no memset.
                self.decoder.stream().alloc_uninit(grown_size(total, cap))?
            }
        };
        let result = self.fill(items, staged, &offsets, &mut arena, out);
        self.arena = Some(arena);
        result
    }

    fn stage<'a>(&mut self, s: &GpuSample<'a>) -> Result<Staged<'a>, GpuError> {
        Ok(match s.source {
            SampleSource::Rgb(img) => {
                let span = img.span()?;
                if u64::from(img.width) * u64::from(img.height) > self.config.max_pixels {
                    return Ok(Staged::Failed(SampleError::Image(ImageError::TooLarge {
                        width: img.width,
                        height: img.height,
                        max_pixels: self.config.max_pixels,
                    })));
                }
                Staged::Host {
                    bytes: span.into(),
                    width: img.width,
                    height: img.height,
                    stride: img.stride,
                    reason: CpuReason::CallerDecoded,
                }
            }
            SampleSource::Jpeg(data) => match self.decoder.inspect(data) {
                Ok(image) => Staged::Gpu(image),
                Err(ImageError::NeedsCpu(why)) => {
                    match cpu_decode(self.cpu.as_mut(), data, why, self.config.max_pixels) {
                        Ok(img) => Staged::Host {
                            stride: img.width * 3,
                            width: img.width,
                            height: img.height,
                            bytes: img.pixels.into(),
                            reason: CpuReason::Unsupported(why),
                        },
                        Err(e) => Staged::Failed(e),
                    }
                }
                Err(e) => Staged::Failed(e.into()),
            },
        })
    }

    fn fill(
        &mut self,
        items: &[GpuSample<'_>],
        staged: Vec<Staged<'_>>,
        offsets: &[usize],
        arena: &mut DeviceBuffer,
        out: DeviceSliceMut<'_>,
    ) -> Result<BatchReport, GpuError> {
        let mut jobs = Vec::new();
        let mut job_of = Vec::new();
        for (i, s) in staged.iter().enumerate() {
            if let Staged::Gpu(image) = s {
                jobs.push(DecodeJob::new(*image, offsets[i])?);
                job_of.push(i);
            }
        }
        let mut decoded = vec![None; items.len()];
        for (i, r) in job_of
            .into_iter()
            .zip(self.decoder.decode_into(&jobs, arena)?)
        {
            decoded[i] = Some(r);
        }
        let mut placed = Vec::with_capacity(items.len());
        // CPU-decoded pixels and where they go; uploaded together through pinned staging.
        let mut host: Vec<(Cow<'_, [u8]>, usize)> = Vec::new();
        for (i, s) in staged.into_iter().enumerate() {
            placed.push(match s {
                Staged::Gpu(image) => match (image.geometry(), decoded[i].take()) {
                    (g, Some(Ok(()))) => Placed::Ready {
                        offset: offsets[i],
                        width: g.width(),
                        height: g.height(),
                        stride: g.pitch(),
                        by: DecodedBy::Gpu,
                    },
                    // nvJPEG refused it only when decoding: the CPU decoder may still,
                    // into the same reserved space (same size, or it is not this image).
                    (g, Some(Err(ImageError::NeedsCpu(why)))) => {
                        let size = (g.width(), g.height());
                        let max = self.config.max_pixels;
                        match late_fallback(self.cpu.as_mut(), image.data(), why, size, max) {
                            Ok(pixels) => {
                                host.push((pixels.into(), offsets[i]));
                                Placed::Ready {
                                    offset: offsets[i],
                                    width: g.width(),
                                    height: g.height(),
                                    stride: g.pitch(),
                                    by: DecodedBy::Cpu(CpuReason::Unsupported(why)),
                                }
                            }
                            Err(e) => Placed::Failed(e),
                        }
                    }
                    (_, Some(Err(e))) => Placed::Failed(e.into()),
                    (_, None) => Placed::Failed(SampleError::Image(ImageError::Corrupt(
                        "not decoded".into(),
                    ))),
                },
                Staged::Host {
                    bytes,
                    width,
                    height,
                    stride,
                    reason,
                } => {
                    host.push((bytes, offsets[i]));
                    Placed::Ready {
                        offset: offsets[i],
                        width,
                        height,
                        stride,
                        by: DecodedBy::Cpu(reason),
                    }
                }
                Staged::Failed(e) => Placed::Failed(e),
            });
        }
        let uploads: Vec<Upload<'_>> = host
            .iter()
            .map(|(bytes, offset)| Upload {
                bytes,
                offset: *offset,
            })
            .collect();
        self.staging
            .upload_all(&self.ctx, self.decoder.stream(), &uploads, arena)?;
        let (params, report) = assemble(items, placed);
        let c = &self.config;
        self.kernel.launch(
            self.decoder.stream(),
            arena,
            &params,
            c.out_width,
            c.out_height,
            c.layout,
            &c.norm,
            out,
        )?;
        Ok(report)
    }

    /// Queues a copy of the first `samples` output samples of `out` into the pinned `slot`
    /// at `slot_offset` (the "host pinned ring" mode) and returns the event after it: the
    /// slot may be published once the event completes.
    pub fn copy_to_host(
        &self,
        out: &DeviceBuffer,
        samples: usize,
        slot: &Arc<PinnedRegion>,
        slot_offset: usize,
    ) -> Result<CopyEvent, GpuError> {
        let n = self.output_bytes(samples);
        let stream = self.decoder.stream();
        stream.copy_to_host_async(out, 0..n, slot, slot_offset)?;
        stream.record()
    }
}

#[cfg(test)]
mod tests;
