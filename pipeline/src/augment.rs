//! The standard ImageNet transforms, computed from the sample's seeded random stream.
//!
//! - train: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` then a horizontal flip
//!   with p = 0.5, drawn in that order from `sample_rng(seed, epoch, index)`; the crop follows
//!   torchvision's `get_params` step by step (10 tries with a log-uniform aspect ratio, Python's
//!   round-half-to-even, then the centre-crop fallback);
//! - val: resize the shorter side to `resize` then centre-crop `size`, as torchvision's
//!   `Resize(resize)` + `CenterCrop(size)`.
//!
//! Both are expressed as a crop box in source pixels plus a target size, so the decoder decodes
//! only the box's bounding rectangle, DCT-downscaled (see `decode`), and one resize maps the
//! box onto the output. Resizing a box is what Pillow does with `resize(size, box=...)`, and
//! for the val path it samples exactly the pixels that resize-then-crop would.
//!
//! The resize and the normalized layouts are in [`crate::resize`]; output is written straight
//! into the caller's slot (a batch arena).

use loaderd_image::{CropBox, Layout, Normalize, Rect};

use crate::decode::{DecodeError, Decoder};
use crate::resize::{resize_into, write_normalized};
use crate::sampler::SplitMix64;

/// What to do to every sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformSpec {
    /// RandomResizedCrop + flip (true) or resize + centre crop (false).
    pub train: bool,
    /// Output side (square).
    pub size: u32,
    /// Val only: the shorter side before the centre crop.
    pub resize: u32,
    pub layout: Layout,
    /// For the normalized layouts.
    pub norm: Normalize,
    /// RandomResizedCrop's area fraction range.
    pub scale: (f64, f64),
    /// RandomResizedCrop's aspect-ratio range.
    pub ratio: (f64, f64),
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            train: true,
            size: 224,
            resize: 256,
            layout: Layout::NhwcU8,
            norm: Normalize::default(),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

impl TransformSpec {
    /// Bytes one sample takes in a batch slot.
    pub fn sample_bytes(&self) -> usize {
        self.layout.sample_bytes(self.size, self.size)
    }

    /// Checks the parameters once, before any sample.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.size == 0 {
            return Err(DecodeError::BadSpec("size must be positive"));
        }
        if !self.train && self.resize < self.size {
            return Err(DecodeError::BadSpec("resize must be at least size"));
        }
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(DecodeError::BadSpec(
                "scale must satisfy 0 < min <= max <= 1",
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(DecodeError::BadSpec("ratio must satisfy 0 < min <= max"));
        }
        if !self.norm.is_valid() {
            return Err(DecodeError::BadSpec("std must be nonzero"));
        }
        Ok(())
    }
}

/// The random draws RandomResizedCrop makes (a trait so tests can script them).
pub trait CropRandom {
    /// Uniform in `[lo, hi)`, as `torch.empty(1).uniform_(lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    /// Uniform integer in `0..n`, as `torch.randint(0, n)`.
    fn below(&mut self, n: u64) -> u64;
}

impl CropRandom for SplitMix64 {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit_f64()
    }

    fn below(&mut self, n: u64) -> u64 {
        SplitMix64::below(self, n)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: the crop as (left, top, width, height).
pub fn random_resized_crop(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl CropRandom,
) -> Rect {
    let area = f64::from(width) * f64::from(height);
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.below(u64::from(height - h) + 1) as u32;
            let left = rng.below(u64::from(width - w) + 1) as u32;
            return Rect {
                x: left,
                y: top,
                w,
                h,
            };
        }
    }
    // Fallback: the centre crop with the ratio clamped into range.
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < ratio.0 {
        let h = (f64::from(width) / ratio.0).round_ties_even() as u32;
        (width, h.clamp(1, height))
    } else if in_ratio > ratio.1 {
        let w = (f64::from(height) * ratio.1).round_ties_even() as u32;
        (w.clamp(1, width), height)
    } else {
        (width, height)
    };
    Rect {
        x: (width - w) / 2,
        y: (height - h) / 2,
        w,
        h,
    }
}

/// torchvision's `Resize(resize)` + `CenterCrop(size)` as a box in source coordinates.
pub fn center_crop_box(width: u32, height: u32, resize: u32, size: u32) -> CropBox {
    let (short, long) = (width.min(height), width.max(height));
    let new_long = (f64::from(resize) * f64::from(long) / f64::from(short)) as u32;
    let (ow, oh) = if width <= height {
        (resize, new_long)
    } else {
        (new_long, resize)
    };
    let top = (f64::from(oh.saturating_sub(size)) / 2.0).round_ties_even();
    let left = (f64::from(ow.saturating_sub(size)) / 2.0).round_ties_even();
    let sx = f64::from(width) / f64::from(ow);
    let sy = f64::from(height) / f64::from(oh);
    let size = f64::from(size);
    CropBox {
        x0: left * sx,
        y0: top * sy,
        x1: (left + size) * sx,
        y1: (top + size) * sy,
    }
}

/// What one sample's transform does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub crop: CropBox,
    pub flip: bool,
}

/// Draws the sample's crop and flip (train) or computes the centre crop (val).
pub fn plan(width: u32, height: u32, spec: &TransformSpec, rng: &mut SplitMix64) -> Plan {
    if spec.train {
        let r = random_resized_crop(width, height, spec.scale, spec.ratio, rng);
        let flip = rng.unit_f64() < 0.5;
        Plan {
            crop: CropBox::from_rect(r),
            flip,
        }
    } else {
        Plan {
            crop: center_crop_box(width, height, spec.resize, spec.size),
            flip: false,
        }
    }
}

/// What happened to a sample, for batch metadata and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleInfo {
    pub width: u32,
    pub height: u32,
    pub crop: CropBox,
    pub flip: bool,
    /// The DCT scale the decoder used (`num/denom`).
    pub scale_num: u32,
    pub scale_denom: u32,
    /// Time spent decoding (header and region) and transforming.
    pub decode_time: std::time::Duration,
    pub augment_time: std::time::Duration,
}

/// Decodes `data`, transforms it as `spec` says with draws from `rng` (the sample's stream)
/// and writes it into `out`, which must be exactly [`TransformSpec::sample_bytes`] long.
pub fn process(
    decoder: &mut Decoder,
    data: &[u8],
    rng: &mut SplitMix64,
    spec: &TransformSpec,
    out: &mut [u8],
) -> Result<SampleInfo, DecodeError> {
    spec.validate()?;
    let started = std::time::Instant::now();
    let need = spec.sample_bytes();
    if out.len() != need {
        return Err(DecodeError::SlotSize {
            need,
            got: out.len(),
        });
    }
    let info = decoder.header(data)?;
    let plan = plan(info.width, info.height, spec, rng);
    let rect = plan.crop.bounding_rect(info.width, info.height);
    // Ask the decoder for enough pixels over the whole rectangle that the (possibly smaller,
    // fractional) box still gets at least `size` of them.
    let need_px = |rect_len: u32, box_len: f64| {
        let v = f64::from(spec.size) * f64::from(rect_len) / box_len.max(1e-9);
        v.ceil().min(f64::from(u32::MAX)) as u32
    };
    let target = (
        need_px(rect.w, plan.crop.width()),
        need_px(rect.h, plan.crop.height()),
    );
    let region = decoder.decode_region(data, rect, target)?;
    let decoded = std::time::Instant::now();
    let (x0, y0) = region.to_local(plan.crop.x0, plan.crop.y0);
    let (x1, y1) = region.to_local(plan.crop.x1, plan.crop.y1);
    let local = CropBox { x0, y0, x1, y1 };
    let size = spec.size;
    match spec.layout {
        Layout::NhwcU8 => resize_into(&region.image, local, size, size, plan.flip, out),
        Layout::NchwF32 | Layout::NchwF16 => {
            let mut hwc = vec![0u8; size as usize * size as usize * 3];
            resize_into(&region.image, local, size, size, plan.flip, &mut hwc);
            write_normalized(&hwc, spec.layout, &spec.norm, out);
        }
    }
    Ok(SampleInfo {
        width: info.width,
        height: info.height,
        crop: plan.crop,
        flip: plan.flip,
        scale_num: region.scale_num,
        scale_denom: region.scale_denom,
        decode_time: decoded - started,
        augment_time: decoded.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeLimits;
    use crate::decode::test_images::{jpeg, noisy_rgb, png};
    use crate::sampler::sample_rng;
    use loaderd_image::{IMAGENET_MEAN, IMAGENET_STD, f16_bits};
    use std::time::Duration;

    /// Scripted draws: uniforms as fractions of their range, and `below` answers; records the
    /// `n` of every `below` call.
    struct Script {
        units: Vec<f64>,
        belows: Vec<u64>,
        asked: Vec<u64>,
    }

    impl CropRandom for Script {
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            let u = if self.units.len() > 1 {
                self.units.remove(0)
            } else {
                self.units[0]
            };
            lo + (hi - lo) * u
        }

        fn below(&mut self, n: u64) -> u64 {
            self.asked.push(n);
            self.belows.remove(0)
        }
    }

    fn script(units: &[f64], belows: &[u64]) -> Script {
        Script {
            units: units.to_vec(),
            belows: belows.to_vec(),
            asked: Vec::new(),
        }
    }

    const SCALE: (f64, f64) = (0.08, 1.0);
    const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

    /// Cases worked by hand from torchvision's `RandomResizedCrop.get_params`.
    #[test]
    fn random_resized_crop_matches_torchvision_by_hand() {
        // area 187500 × (0.08 + 0.92 × 0.5) = 101250, log-ratio midpoint → ratio 1,
        // w = h = round(318.2) = 318; top from randint(0, 58), left from randint(0, 183).
        let mut s = script(&[0.5, 0.5], &[10, 100]);
        let r = random_resized_crop(500, 375, SCALE, RATIO, &mut s);
        assert_eq!(
            r,
            Rect {
                x: 100,
                y: 10,
                w: 318,
                h: 318
            }
        );
        assert_eq!(s.asked, [58, 183]);

        // Python's round() is half-to-even: 33×33 × 0.25 = 272.25, sqrt = 16.5 → 16.
        let mut s = script(&[0.0], &[0, 17]);
        let r = random_resized_crop(33, 33, (0.25, 0.25), (1.0, 1.0), &mut s);
        assert_eq!(
            r,
            Rect {
                x: 17,
                y: 0,
                w: 16,
                h: 16
            }
        );
        assert_eq!(s.asked, [18, 18]);

        // Ten misses (a ~36 × 27 crop never fits a 100 × 10 image) → fallback: ratio clamped
        // to 4/3: h = 10, w = round(13.33) = 13, centred: left = 87 // 2 = 43.
        let mut s = script(&[0.99], &[]);
        let r = random_resized_crop(100, 10, SCALE, RATIO, &mut s);
        assert_eq!(
            r,
            Rect {
                x: 43,
                y: 0,
                w: 13,
                h: 10
            }
        );
        assert!(s.asked.is_empty());
        // And the tall one: w = 10, h = round(10 / 0.75) = 13, top = 43.
        let r = random_resized_crop(10, 100, SCALE, RATIO, &mut script(&[0.99], &[]));
        assert_eq!(
            r,
            Rect {
                x: 0,
                y: 43,
                w: 10,
                h: 13
            }
        );
    }

    #[test]
    fn random_resized_crop_stays_in_bounds_and_is_deterministic() {
        let sizes = [
            (500, 375),
            (375, 500),
            (1, 1),
            (3, 1000),
            (4000, 3000),
            (224, 224),
        ];
        for (w, h) in sizes {
            for index in 0..300 {
                let r = random_resized_crop(w, h, SCALE, RATIO, &mut sample_rng(1, 2, index));
                assert!(
                    r.w > 0 && r.h > 0 && r.x + r.w <= w && r.y + r.h <= h,
                    "{r:?}"
                );
                let again = random_resized_crop(w, h, SCALE, RATIO, &mut sample_rng(1, 2, index));
                assert_eq!(r, again);
                let area = f64::from(r.w) * f64::from(r.h) / (f64::from(w) * f64::from(h));
                if w >= 100 && h >= 100 && w * 3 <= h * 4 && h * 3 <= w * 4 {
                    // Rounding moves the area a little past the scale range on small crops.
                    assert!((0.07..=1.0).contains(&area), "{w}x{h}: {r:?}");
                }
            }
        }
        // Different epochs draw different crops.
        let a = random_resized_crop(500, 375, SCALE, RATIO, &mut sample_rng(1, 2, 3));
        let b = random_resized_crop(500, 375, SCALE, RATIO, &mut sample_rng(1, 3, 3));
        assert_ne!(a, b);
    }

    #[test]
    fn flip_is_a_fair_coin_from_the_same_stream() {
        let spec = TransformSpec::default();
        let flips = (0..4000)
            .filter(|&i| plan(500, 375, &spec, &mut sample_rng(9, 0, i)).flip)
            .count();
        assert!((1800..2200).contains(&flips), "{flips} flips of 4000");
        let p = plan(500, 375, &spec, &mut sample_rng(9, 0, 7));
        assert_eq!(p, plan(500, 375, &spec, &mut sample_rng(9, 0, 7)));
    }

    #[test]
    fn val_crop_is_resize_then_center_crop() {
        // 500×375 → Resize(256) → 341×256; CenterCrop(224): top 16, left round(58.5) = 58.
        let b = center_crop_box(500, 375, 256, 224);
        let (sx, sy) = (500.0 / 341.0, 375.0 / 256.0);
        let expect = [58.0 * sx, 16.0 * sy, 282.0 * sx, 240.0 * sy];
        for (got, want) in [b.x0, b.y0, b.x1, b.y1].into_iter().zip(expect) {
            assert!((got - want).abs() < 1e-9, "{b:?}");
        }
        let b = center_crop_box(375, 500, 256, 224);
        assert!((b.x0 - 16.0 * 375.0 / 256.0).abs() < 1e-9);
        assert!((b.y0 - 58.0 * 500.0 / 341.0).abs() < 1e-9);
        assert_eq!(
            center_crop_box(256, 256, 256, 224),
            CropBox {
                x0: 16.0,
                y0: 16.0,
                x1: 240.0,
                y1: 240.0
            }
        );
        let spec = TransformSpec {
            train: false,
            ..TransformSpec::default()
        };
        let p = plan(500, 375, &spec, &mut sample_rng(0, 0, 0));
        assert!(!p.flip);
        assert_eq!(
            p.crop.bounding_rect(500, 375),
            Rect {
                x: 85,
                y: 23,
                w: 329,
                h: 329
            }
        );
    }

    fn run(data: &[u8], spec: &TransformSpec, index: u64) -> (Vec<u8>, SampleInfo) {
        let mut out = vec![0u8; spec.sample_bytes()];
        let mut d = Decoder::new(DecodeLimits::default());
        let info = process(&mut d, data, &mut sample_rng(5, 1, index), spec, &mut out).unwrap();
        (out, info)
    }

    /// A constant image stays constant through every layout, normalized as torchvision's
    /// `ToTensor()` + `Normalize(mean, std)`: `(v/255 − mean)/std`.
    #[test]
    fn layouts_hold_the_right_values_for_a_constant_image() {
        let color = [10u8, 128, 250];
        let px = color.repeat(300 * 200);
        for (data, tol) in [(png(&px, 300, 200), 0u8), (jpeg(&px, 300, 200, 95), 2)] {
            for train in [true, false] {
                let base = TransformSpec {
                    train,
                    size: 32,
                    resize: 40,
                    ..Default::default()
                };
                let (out, _) = run(&data, &base, 3);
                assert_eq!(out.len(), 32 * 32 * 3);
                for p in out.chunks(3) {
                    for c in 0..3 {
                        assert!(p[c].abs_diff(color[c]) <= tol, "{p:?}");
                    }
                }
                let f32_spec = TransformSpec {
                    layout: Layout::NchwF32,
                    ..base
                };
                let (out32, _) = run(&data, &f32_spec, 3);
                let f16_spec = TransformSpec {
                    layout: Layout::NchwF16,
                    ..base
                };
                let (out16, _) = run(&data, &f16_spec, 3);
                let plane = 32 * 32;
                for c in 0..3 {
                    let expect = (f32::from(color[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    let slack = f32::from(tol) / 255.0 / IMAGENET_STD[c] + 1e-6;
                    for i in 0..plane {
                        let at = (c * plane + i) * 4;
                        let v = f32::from_ne_bytes(out32[at..at + 4].try_into().unwrap());
                        assert!((v - expect).abs() <= slack, "c{c}: {v} vs {expect}");
                        let at = (c * plane + i) * 2;
                        let h = u16::from_ne_bytes(out16[at..at + 2].try_into().unwrap());
                        assert_eq!(h, f16_bits(v), "c{c}");
                    }
                }
            }
        }
    }

    #[test]
    fn process_is_reproducible_and_decodes_only_what_it_needs() {
        let data = jpeg(&noisy_rgb(800, 600, 11), 800, 600, 90);
        let spec = TransformSpec::default();
        let (a, info) = run(&data, &spec, 42);
        let (b, again) = run(&data, &spec, 42);
        assert_eq!(a, b);
        // The same sample, the same draws and decode (only the timings differ).
        let untimed = |i: SampleInfo| SampleInfo {
            decode_time: Duration::ZERO,
            augment_time: Duration::ZERO,
            ..i
        };
        assert_eq!(untimed(info), untimed(again));
        assert_eq!((info.width, info.height), (800, 600));
        let (c, _) = run(&data, &spec, 43);
        assert_ne!(a, c);
        // Val on a large image: the DCT scales it down (800×600 → 256 short side → 1/2).
        let val = TransformSpec {
            train: false,
            ..spec
        };
        let (_, info) = run(&data, &val, 0);
        assert_eq!((info.scale_num, info.scale_denom), (1, 2));
        assert!(!info.flip);
    }

    #[test]
    fn bad_slots_specs_and_inputs_are_errors() {
        let data = png(&[0; 8 * 8 * 3], 8, 8);
        let spec = TransformSpec::default();
        let mut d = Decoder::new(DecodeLimits::default());
        let mut rng = sample_rng(0, 0, 0);
        let mut small = vec![0u8; 10];
        let e = process(&mut d, &data, &mut rng, &spec, &mut small).unwrap_err();
        assert_eq!(
            e,
            DecodeError::SlotSize {
                need: 224 * 224 * 3,
                got: 10
            }
        );
        let mut out = vec![0u8; spec.sample_bytes()];
        let bad = TransformSpec {
            train: false,
            resize: 100,
            ..spec
        };
        assert!(matches!(
            process(&mut d, &data, &mut rng, &bad, &mut out),
            Err(DecodeError::BadSpec(_))
        ));
        let bad = TransformSpec {
            scale: (0.0, 1.0),
            ..spec
        };
        assert!(matches!(
            process(&mut d, &data, &mut rng, &bad, &mut out),
            Err(DecodeError::BadSpec(_))
        ));
        let e = process(&mut d, b"", &mut rng, &spec, &mut out).unwrap_err();
        assert_eq!(e, DecodeError::Empty);
        // Tiny images are upscaled, not refused.
        process(&mut d, &data, &mut rng, &spec, &mut out).unwrap();
    }
}
