//! A GPU batch's samples on the CPU side: the fetched bytes of each sample, the spec and the
//! seed turned into what [`loaderd_gpu::GpuBatchPipeline::run`] takes, and the decoder behind
//! nvJPEG.
//!
//! The crop box and flip come from the same seeded stream as the CPU path's
//! ([`sample_rng`]`(seed, epoch, index)` + [`augment::plan`] on the image size from the
//! header), so a CPU and a GPU batch of the same epoch hold the same crops; only the decoders
//! (nvJPEG at full size, libjpeg-turbo possibly DCT-downscaled) and the resize arithmetic
//! differ. JPEGs go to nvJPEG as they are; PNGs (which nvJPEG does not read) are decoded here,
//! whole, and uploaded; JPEGs nvJPEG refuses (progressive on the hardware engine, CMYK, ...)
//! reach [`cpu_decoder`], the pipeline's libjpeg-turbo decoder with the same pixel limit.

use bytes::Bytes;
use loaderd_gpu::{BatchConfig, CpuDecoder, GpuSample, HostImage, SampleSource};

use crate::augment::{self, TransformSpec};
use crate::decode::{DecodeError, DecodeLimits, Decoder, Format, RgbImage};
use crate::sampler::sample_rng;

/// A sample's pixels as the GPU pipeline takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pixels {
    /// For nvJPEG.
    Jpeg(Bytes),
    /// Decoded on the CPU (a PNG), to upload.
    Rgb(RgbImage),
}

/// One sample ready for the GPU: its pixels and its transform.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    pub pixels: Pixels,
    pub plan: augment::Plan,
}

impl Planned {
    /// The sample as [`loaderd_gpu::GpuBatchPipeline::run`] takes it, borrowing this.
    pub fn gpu_sample(&self) -> GpuSample<'_> {
        let source = match &self.pixels {
            Pixels::Jpeg(data) => SampleSource::Jpeg(data),
            Pixels::Rgb(img) => SampleSource::Rgb(HostImage {
                pixels: &img.pixels,
                width: img.width,
                height: img.height,
                stride: img.width * 3,
            }),
        };
        GpuSample {
            source,
            crop: self.plan.crop,
            flip: self.plan.flip,
        }
    }
}

/// Why a sample cannot go to the GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(
        "a {width}x{height} image needs {need} bytes of decode buffer, more than a GPU worker's \
         {cap} for this batch size"
    )]
    DecodeBuffer {
        width: u32,
        height: u32,
        need: usize,
        cap: usize,
    },
}

/// Bytes a decoded `width × height` image takes in a GPU decode buffer (RGB, each image's
/// start 256-aligned: `loaderd_gpu::nvjpeg::SLOT_ALIGN`).
pub(crate) fn decoded_bytes(width: u32, height: u32) -> usize {
    (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(3)
        .next_multiple_of(loaderd_gpu::nvjpeg::SLOT_ALIGN)
}

/// Reads `data`'s header (refusing images over the decoder's pixel limit, and images that
/// alone do not fit a decode buffer of `max_decode_bytes`), draws sample `index`'s crop and
/// flip as the CPU path does, and decodes it here if nvJPEG cannot (PNG).
pub(crate) fn plan_sample(
    decoder: &mut Decoder,
    data: Bytes,
    spec: &TransformSpec,
    (seed, epoch, index): (u64, u64, u64),
    max_decode_bytes: usize,
) -> Result<Planned, PlanError> {
    let info = decoder.header(&data)?;
    let need = decoded_bytes(info.width, info.height);
    if need > max_decode_bytes {
        return Err(PlanError::DecodeBuffer {
            width: info.width,
            height: info.height,
            need,
            cap: max_decode_bytes,
        });
    }
    let mut rng = sample_rng(seed, epoch, index);
    let plan = augment::plan(info.width, info.height, spec, &mut rng);
    let pixels = match info.format {
        Format::Jpeg => Pixels::Jpeg(data),
        Format::Png => Pixels::Rgb(decoder.decode_full(&data)?),
    };
    Ok(Planned { pixels, plan })
}

/// The CPU decoder a GPU pipeline falls back to for JPEGs nvJPEG does not take: the
/// pipeline's own libjpeg-turbo decoder, whole image, same pixel limit.
pub(crate) fn cpu_decoder(limits: DecodeLimits) -> CpuDecoder {
    let mut decoder = Decoder::new(limits);
    Box::new(move |data: &[u8]| {
        decoder
            .decode_full(data)
            .map(|img| loaderd_gpu::RgbImage {
                pixels: img.pixels,
                width: img.width,
                height: img.height,
            })
            .map_err(|e| e.to_string())
    })
}

/// Decode buffer per sample of a batch a GPU worker may take (the batch's decoded images
/// back to back): 2 MiB, about 700 kpixel of RGB per image on average, some five times an
/// average ImageNet image; a batch that needs more is split in halves (see the worker).
pub(crate) const DECODE_BYTES_PER_SAMPLE: usize = 2 << 20;

/// The cap on one GPU worker's decode buffer for batches of `batch` samples: at least 64 MiB
/// (one large image), at most nvJPEG's default cap.
pub(crate) fn decode_bytes_per_worker(batch: usize) -> usize {
    batch
        .saturating_mul(DECODE_BYTES_PER_SAMPLE)
        .clamp(64 << 20, loaderd_gpu::nvjpeg::DEFAULT_MAX_DECODE_BYTES)
}

/// What each GPU worker's batch pipeline makes: the loader's output, batch and pixel limit.
pub(crate) fn batch_config(spec: &TransformSpec, batch: usize, max_pixels: u64) -> BatchConfig {
    BatchConfig {
        max_batch: batch,
        out_width: spec.size,
        out_height: spec.size,
        layout: spec.layout,
        norm: spec.norm,
        max_pixels,
        max_decode_bytes: decode_bytes_per_worker(batch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::process;
    use crate::decode::test_images::{jpeg, noisy_rgb, png};
    use loaderd_image::Layout;

    const CAP: usize = 64 << 20;

    fn spec(train: bool) -> TransformSpec {
        TransformSpec {
            train,
            size: 32,
            resize: 40,
            ..TransformSpec::default()
        }
    }

    #[test]
    fn gpu_samples_get_the_cpu_paths_crop_and_flip() {
        let (w, h) = (97, 61);
        let pixels = noisy_rgb(w, h, 3);
        let files = [jpeg(&pixels, w, h, 90), png(&pixels, w, h)];
        let mut flips = [0usize; 2];
        for train in [true, false] {
            let spec = spec(train);
            for (k, data) in files.iter().enumerate() {
                for index in 0..24u64 {
                    let mut decoder = Decoder::new(DecodeLimits::default());
                    let planned = plan_sample(
                        &mut decoder,
                        Bytes::from(data.clone()),
                        &spec,
                        (11, 2, index),
                        CAP,
                    )
                    .unwrap();
                    let mut out = vec![0u8; spec.sample_bytes()];
                    let mut rng = sample_rng(11, 2, index);
                    let cpu = process(&mut decoder, data, &mut rng, &spec, &mut out).unwrap();
                    assert_eq!(planned.plan.crop, cpu.crop, "sample {index} file {k}");
                    assert_eq!(planned.plan.flip, cpu.flip, "sample {index} file {k}");
                    flips[usize::from(planned.plan.flip)] += 1;
                    let sample = planned.gpu_sample();
                    assert_eq!((sample.crop, sample.flip), (cpu.crop, cpu.flip));
                }
            }
        }
        assert!(flips[0] > 0 && flips[1] > 0, "both flips drawn: {flips:?}");
    }

    #[test]
    fn jpegs_go_to_nvjpeg_as_they_are_and_pngs_are_decoded_here() {
        let (w, h) = (40, 30);
        let pixels = noisy_rgb(w, h, 5);
        let mut decoder = Decoder::new(DecodeLimits::default());
        let j = jpeg(&pixels, w, h, 90);
        let planned = plan_sample(
            &mut decoder,
            Bytes::from(j.clone()),
            &spec(true),
            (1, 0, 0),
            CAP,
        );
        let planned = planned.unwrap();
        assert_eq!(planned.pixels, Pixels::Jpeg(Bytes::from(j.clone())));
        assert_eq!(planned.gpu_sample().source, SampleSource::Jpeg(&j));

        let p = png(&pixels, w, h);
        let planned =
            plan_sample(&mut decoder, Bytes::from(p), &spec(true), (1, 0, 0), CAP).unwrap();
        match planned.gpu_sample().source {
            SampleSource::Rgb(img) => {
                assert_eq!((img.width, img.height, img.stride), (w, h, 3 * w));
                assert_eq!(img.pixels, &pixels[..], "PNG is lossless");
            }
            other => panic!("PNG as {other:?}"),
        }
    }

    #[test]
    fn bad_and_oversized_images_fail_before_the_gpu() {
        let mut decoder = Decoder::new(DecodeLimits { max_pixels: 100 });
        let big = jpeg(&noisy_rgb(20, 10, 1), 20, 10, 90);
        let big = Bytes::from(big);
        let err = plan_sample(&mut decoder, big.clone(), &spec(true), (0, 0, 0), CAP).unwrap_err();
        assert!(
            matches!(err, PlanError::Decode(DecodeError::TooLarge { .. })),
            "{err}"
        );
        let junk = Bytes::from_static(b"\xff\xd8\xff\xe0 not really a jpeg");
        assert!(plan_sample(&mut decoder, junk, &spec(true), (0, 0, 0), CAP).is_err());
        let text = Bytes::from_static(b"hello");
        let err = plan_sample(&mut decoder, text, &spec(true), (0, 0, 0), CAP).unwrap_err();
        assert_eq!(err, PlanError::Decode(DecodeError::Unsupported));
        // 20x10 RGB is 600 bytes, 768 in the buffer: alone over a cap of 700.
        let mut decoder = Decoder::new(DecodeLimits::default());
        let err = plan_sample(&mut decoder, big.clone(), &spec(true), (0, 0, 0), 700);
        assert_eq!(
            err.unwrap_err(),
            PlanError::DecodeBuffer {
                width: 20,
                height: 10,
                need: 768,
                cap: 700
            }
        );
        assert!(plan_sample(&mut decoder, big, &spec(true), (0, 0, 0), 768).is_ok());
    }

    #[test]
    fn the_cpu_fallback_decodes_whole_images_within_the_limit() {
        let (w, h) = (33, 17);
        let pixels = noisy_rgb(w, h, 9);
        let mut fallback = cpu_decoder(DecodeLimits::default());
        let img = fallback(&jpeg(&pixels, w, h, 95)).unwrap();
        assert_eq!(
            (img.width, img.height, img.pixels.len()),
            (w, h, (w * h * 3) as usize)
        );
        let mut small = cpu_decoder(DecodeLimits { max_pixels: 100 });
        let err = small(&jpeg(&pixels, w, h, 95)).unwrap_err();
        assert!(err.contains("limit"), "{err}");
        assert!(fallback(b"junk").is_err());
    }

    #[test]
    fn the_batch_config_is_the_loaders_output() {
        let spec = TransformSpec {
            layout: Layout::NchwF16,
            ..spec(true)
        };
        let c = batch_config(&spec, 8, 1 << 20);
        c.validate().unwrap();
        assert_eq!(
            (c.out_width, c.out_height, c.layout),
            (32, 32, Layout::NchwF16)
        );
        assert_eq!(c.sample_bytes(), spec.sample_bytes());
        assert_eq!((c.max_batch, c.max_pixels), (8, 1 << 20));
        assert_eq!(c.max_decode_bytes, 64 << 20, "the floor: one large image");
        assert_eq!(decode_bytes_per_worker(256), 512 << 20);
        assert_eq!(
            decode_bytes_per_worker(4096),
            loaderd_gpu::nvjpeg::DEFAULT_MAX_DECODE_BYTES
        );
    }
}
