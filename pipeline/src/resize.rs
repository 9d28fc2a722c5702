//! Pillow's bilinear resize of a crop box, and the normalized output layouts.
//!
//! The resize is Pillow's `BILINEAR` (what torchvision applies to PIL images): a separable
//! triangle filter whose support widens with the downscale factor, so it antialiases when
//! shrinking and is plain bilinear interpolation with half-pixel centres when enlarging.
//! Weights are f32 and the result is rounded to u8 once, after both passes (Pillow rounds
//! between passes, and runs the horizontal pass first), so values agree with Pillow's within
//! ±1. The flip is free: the horizontal pass reads its taps right to left.
//!
//! Output is written straight into the caller's slot (a batch arena): NHWC u8 (normalize later,
//! on the GPU), or NCHW f32 / f16 normalized as `(v/255 − mean)/std` in native byte order.

use loaderd_image::{CropBox, Layout, Normalize, f16_bits};

use crate::decode::RgbImage;

/// One output pixel's filter taps along one axis.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `ksize` weights per output pixel, normalized to sum 1.
    weights: Vec<f32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter over `[b0, b1)` of an axis
/// of `in_size` pixels, sampled at `out` points.
fn taps(in_size: u32, b0: f64, b1: f64, out: u32) -> Taps {
    let in_size = i64::from(in_size.max(1));
    let scale = (b1 - b0) / f64::from(out);
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(out as usize),
        len: Vec::with_capacity(out as usize),
        weights: vec![0.0; out as usize * ksize],
        ksize,
    };
    for xx in 0..out as usize {
        let center = b0 + (xx as f64 + 0.5) * scale;
        let mut xmin = ((center - support + 0.5) as i64).max(0);
        let mut xmax = ((center + support + 0.5) as i64).min(in_size);
        if xmax <= xmin {
            // A box at or past the edge: use the nearest pixel.
            xmin = (center.floor() as i64).clamp(0, in_size - 1);
            xmax = xmin + 1;
        }
        let n = ((xmax - xmin) as usize).min(ksize);
        let k = &mut t.weights[xx * ksize..xx * ksize + n];
        let mut sum = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            let d = ((x as i64 + xmin) as f64 - center + 0.5) / filterscale;
            let v = (1.0 - d.abs()).max(0.0);
            *w = v as f32;
            sum += v;
        }
        if sum > 0.0 {
            for w in k.iter_mut() {
                *w = (f64::from(*w) / sum) as f32;
            }
        } else {
            k[0] = 1.0;
        }
        t.start.push(xmin as usize);
        t.len.push(n);
    }
    t
}

/// Resizes the part of `src` under `bx` (in `src` pixels) to `out_w × out_h` RGB u8 (HWC),
/// mirrored left-right if `flip`, into `out`.
pub fn resize_into(
    src: &RgbImage,
    bx: CropBox,
    out_w: u32,
    out_h: u32,
    flip: bool,
    out: &mut [u8],
) {
    let (ow, oh) = (out_w as usize, out_h as usize);
    debug_assert_eq!(out.len(), ow * oh * 3);
    let tx = taps(src.width, bx.x0, bx.x1, out_w);
    let ty = taps(src.height, bx.y0, bx.y1, out_h);
    // Only the columns the horizontal taps read.
    let col0 = tx.start.iter().copied().min().unwrap_or(0);
    let col1 = tx
        .start
        .iter()
        .zip(&tx.len)
        .map(|(s, l)| s + l)
        .max()
        .unwrap_or(0)
        .min(src.width as usize);
    let stride = src.width as usize * 3;
    let span = (col1 - col0) * 3;
    // Vertical pass first, one output row at a time: whole source rows times a weight, which
    // vectorizes; then the horizontal pass runs on out_h rows, not on every source row the
    // crop covers. The accumulator has `ksize` pixels of zeros past its end, so every output
    // pixel can take all `ksize` taps (the ones past its own are zero-weighted), a loop of
    // fixed length that the compiler unrolls for the common sizes.
    let mut acc = vec![0f32; span + tx.ksize * 3];
    for yy in 0..oh {
        let (s, n) = (ty.start[yy], ty.len[yy]);
        let k = &ty.weights[yy * ty.ksize..yy * ty.ksize + n];
        let row = &mut acc[..span];
        row.fill(0.0);
        for (i, &w) in k.iter().enumerate() {
            let r = (s + i) * stride + col0 * 3;
            for (a, &v) in row.iter_mut().zip(&src.pixels[r..r + span]) {
                *a += w * f32::from(v);
            }
        }
        let dst = &mut out[yy * ow * 3..(yy + 1) * ow * 3];
        match tx.ksize {
            3 => horizontal::<3>(&acc, &tx, col0, flip, dst),
            5 => horizontal::<5>(&acc, &tx, col0, flip, dst),
            7 => horizontal::<7>(&acc, &tx, col0, flip, dst),
            9 => horizontal::<9>(&acc, &tx, col0, flip, dst),
            _ => horizontal::<0>(&acc, &tx, col0, flip, dst),
        }
    }
}

/// One output row of the horizontal pass from the vertically filtered row `acc`. `K` is the
/// taps' `ksize` when known at compile time, 0 otherwise. Zero-weighted taps add exactly 0.0
/// to non-negative sums, so the bytes do not depend on `K`.
#[inline(always)]
fn horizontal<const K: usize>(acc: &[f32], tx: &Taps, col0: usize, flip: bool, dst: &mut [u8]) {
    let ksize = if K == 0 { tx.ksize } else { K };
    let ow = dst.len() / 3;
    for (xx, d) in dst.chunks_exact_mut(3).enumerate() {
        let from = if flip { ow - 1 - xx } else { xx };
        let s = (tx.start[from] - col0) * 3;
        let k = &tx.weights[from * tx.ksize..from * tx.ksize + ksize];
        let px = &acc[s..s + ksize * 3];
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        for j in 0..ksize {
            let w = k[j];
            r += w * px[j * 3];
            g += w * px[j * 3 + 1];
            b += w * px[j * 3 + 2];
        }
        d[0] = round_u8(r);
        d[1] = round_u8(g);
        d[2] = round_u8(b);
    }
}

/// Rounds half up and clamps to 0..=255. Truncating `v + 0.5` is floor for non-negative
/// values, and anything that truncates to 0 from below was below 0.5: the same bytes as
/// clamping in float first, with an integer clamp that compiles to two conditional moves.
#[inline(always)]
fn round_u8(v: f32) -> u8 {
    ((v + 0.5) as i32).clamp(0, 255) as u8
}

/// Writes an HWC u8 image in `layout` into `out`: a copy for NHWC u8, normalized NCHW f32 or
/// f16 (native byte order) otherwise.
pub fn write_normalized(hwc: &[u8], layout: Layout, norm: &Normalize, out: &mut [u8]) {
    let plane = hwc.len() / 3;
    for c in 0..3 {
        let lut: [f32; 256] = std::array::from_fn(|v| norm.apply(c, v as u8));
        match layout {
            Layout::NchwF32 => {
                let dst = &mut out[c * plane * 4..(c + 1) * plane * 4];
                for (d, px) in dst.chunks_exact_mut(4).zip(hwc.chunks_exact(3)) {
                    d.copy_from_slice(&lut[px[c] as usize].to_ne_bytes());
                }
            }
            Layout::NchwF16 => {
                let half: [u16; 256] = std::array::from_fn(|v| f16_bits(lut[v]));
                let dst = &mut out[c * plane * 2..(c + 1) * plane * 2];
                for (d, px) in dst.chunks_exact_mut(2).zip(hwc.chunks_exact(3)) {
                    d.copy_from_slice(&half[px[c] as usize].to_ne_bytes());
                }
            }
            Layout::NhwcU8 => {
                out[..hwc.len()].copy_from_slice(hwc);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_images::noisy_rgb;
    use loaderd_image::Rect;

    fn image(w: u32, h: u32, pixels: Vec<u8>) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            pixels,
        }
    }

    #[test]
    fn resize_is_pillow_bilinear() {
        // Same size: identity.
        let px = noisy_rgb(20, 10, 1);
        let src = image(20, 10, px.clone());
        let mut out = vec![0; px.len()];
        resize_into(
            &src,
            CropBox::from_rect(Rect {
                x: 0,
                y: 0,
                w: 20,
                h: 10,
            }),
            20,
            10,
            false,
            &mut out,
        );
        assert_eq!(out, px);

        // Halving: taps 1/8, 3/8, 3/8, 1/8, renormalized at the edges (Pillow's weights).
        let row: Vec<u8> = [0, 0, 80, 160, 0, 0, 0, 0]
            .iter()
            .flat_map(|&v| [v; 3])
            .collect();
        let src = image(8, 1, row);
        let mut out = vec![0; 4 * 3];
        resize_into(
            &src,
            CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 8.0,
                y1: 1.0,
            },
            4,
            1,
            false,
            &mut out,
        );
        let expect: Vec<u8> = [11, 90, 20, 0].iter().flat_map(|&v| [v; 3]).collect();
        assert_eq!(out, expect);

        // Doubling: bilinear between pixel centres, edges clamped.
        let src = image(2, 1, [0, 0, 0, 100, 100, 100].to_vec());
        let mut out = vec![0; 4 * 3];
        resize_into(
            &src,
            CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 2.0,
                y1: 1.0,
            },
            4,
            1,
            false,
            &mut out,
        );
        assert_eq!(
            out.iter().step_by(3).copied().collect::<Vec<_>>(),
            [0, 25, 75, 100]
        );
    }

    #[test]
    fn flip_mirrors_the_output() {
        let src = image(64, 48, noisy_rgb(64, 48, 4));
        let bx = CropBox {
            x0: 3.5,
            y0: 2.0,
            x1: 50.25,
            y1: 40.0,
        };
        let (mut a, mut b) = (vec![0; 32 * 24 * 3], vec![0; 32 * 24 * 3]);
        resize_into(&src, bx, 32, 24, false, &mut a);
        resize_into(&src, bx, 32, 24, true, &mut b);
        for y in 0..24 {
            for x in 0..32 {
                let (p, q) = ((y * 32 + x) * 3, (y * 32 + 31 - x) * 3);
                assert_eq!(a[p..p + 3], b[q..q + 3]);
            }
        }
    }

    /// The GPU kernel's arithmetic (`loaderd_gpu::reference`, the oracle its GPU test checks
    /// the kernel against) gives the CPU path's bytes for the same crop, flip and layout.
    #[test]
    fn gpu_kernel_math_matches_the_cpu_path() {
        let (w, h) = (97u32, 61u32);
        let pixels = noisy_rgb(w, h, 9);
        let img = RgbImage {
            width: w,
            height: h,
            pixels: pixels.clone(),
        };
        let crops = [
            CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 97.0,
                y1: 61.0,
            },
            CropBox {
                x0: 10.5,
                y0: 3.25,
                x1: 80.0,
                y1: 50.75,
            },
            CropBox {
                x0: 40.0,
                y0: 20.0,
                x1: 52.0,
                y1: 30.0,
            },
        ];
        for (i, bx) in crops.iter().enumerate() {
            for flip in [false, true] {
                for layout in [Layout::NhwcU8, Layout::NchwF32, Layout::NchwF16] {
                    let size = 24;
                    let mut cpu = vec![0u8; layout.sample_bytes(size, size)];
                    let mut hwc = vec![0u8; (size * size * 3) as usize];
                    resize_into(&img, *bx, size, size, flip, &mut hwc);
                    match layout {
                        Layout::NhwcU8 => cpu.copy_from_slice(&hwc),
                        _ => write_normalized(&hwc, layout, &Normalize::default(), &mut cpu),
                    }
                    let params = loaderd_gpu::SampleParams {
                        src_offset: 0,
                        width: w,
                        height: h,
                        stride: w * 3,
                        crop: *bx,
                        flip,
                    };
                    let mut gpu = vec![0u8; cpu.len()];
                    loaderd_gpu::reference::augment(
                        &pixels,
                        &params,
                        size,
                        size,
                        layout,
                        &Normalize::default(),
                        &mut gpu,
                    )
                    .unwrap();
                    let differ = cpu.iter().zip(&gpu).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differ, 0,
                        "crop {i} flip {flip} {layout:?}: {differ} bytes differ"
                    );
                }
            }
        }
    }
}
