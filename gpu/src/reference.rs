//! The augment kernel's arithmetic on the CPU, statement for statement as in
//! `kernels/augment.cu`: the oracle for GPU tests, and where the kernel's math is unit-tested
//! on a machine without a GPU.
//!
//! It is also the CPU path's arithmetic (Pillow's antialiased bilinear, vertical taps summed
//! first, one rounding, `(v/255 − mean)/std`), recomputed per output pixel instead of from
//! precomputed tap tables; the known Pillow values the CPU path is tested against are tested
//! here too.

use crate::GpuError;
use loaderd_image::{Layout, Normalize, f16_bits};

use crate::augment::SampleParams;

/// Taps of one output position along one axis (`Axis` in the kernel).
struct Axis {
    center: f64,
    filterscale: f64,
    sum: f64,
    first: i64,
    n: usize,
}

fn axis_taps(in_size: u32, b0: f64, b1: f64, out: u32, xx: u32) -> Axis {
    let in_size = i64::from(in_size.max(1));
    let scale = (b1 - b0) / f64::from(out);
    let filterscale = scale.max(1.0);
    let support = filterscale;
    // 64-bit and saturating (`as` saturates too): a huge crop box must not overflow.
    let ksize = (support.ceil() as i64).saturating_mul(2).saturating_add(1);
    let center = b0 + (f64::from(xx) + 0.5) * scale;
    let mut xmin = ((center - support + 0.5) as i64).max(0);
    let mut xmax = ((center + support + 0.5) as i64).min(in_size);
    if xmax <= xmin {
        xmin = (center.floor() as i64).clamp(0, in_size - 1);
        xmax = xmin + 1;
    }
    let n = (xmax - xmin).min(ksize) as usize;
    let mut sum = 0.0;
    for k in 0..n {
        let d = ((k as i64 + xmin) as f64 - center + 0.5) / filterscale;
        sum += (1.0 - d.abs()).max(0.0);
    }
    Axis {
        center,
        filterscale,
        sum,
        first: xmin,
        n,
    }
}

fn tap_weight(a: &Axis, k: usize) -> f32 {
    // A zero (or NaN) sum: the kernel's `!(a.sum > 0.0)`, the nearest pixel alone.
    if a.sum.is_nan() || a.sum <= 0.0 {
        return if k == 0 { 1.0 } else { 0.0 };
    }
    let d = ((k as i64 + a.first) as f64 - a.center + 0.5) / a.filterscale;
    let w = (1.0 - d.abs()).max(0.0) as f32;
    (f64::from(w) / a.sum) as f32
}

fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Transforms one sample of `src` into `out` (exactly `layout.sample_bytes(out_w, out_h)`
/// bytes, native byte order), as the kernel does for one `blockIdx.y`.
pub fn augment(
    src: &[u8],
    sample: &SampleParams,
    out_w: u32,
    out_h: u32,
    layout: Layout,
    norm: &Normalize,
    out: &mut [u8],
) -> Result<(), GpuError> {
    sample.validate(src.len())?;
    let need = layout.sample_bytes(out_w, out_h);
    if out.len() != need {
        return Err(GpuError::InvalidArgument(format!(
            "output of {} bytes, need {need}",
            out.len()
        )));
    }
    let plane = out_w as usize * out_h as usize;
    let img = &src[sample.src_offset..];
    let stride = sample.stride as usize;
    for oy in 0..out_h {
        let ay = axis_taps(sample.height, sample.crop.y0, sample.crop.y1, out_h, oy);
        let wy: Vec<f32> = (0..ay.n).map(|i| tap_weight(&ay, i)).collect();
        for ox in 0..out_w {
            let from = if sample.flip { out_w - 1 - ox } else { ox };
            let ax = axis_taps(sample.width, sample.crop.x0, sample.crop.x1, out_w, from);
            let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
            for j in 0..ax.n {
                let wx = tap_weight(&ax, j);
                let col = (ax.first as usize + j) * 3;
                let (mut ar, mut ag, mut ab) = (0f32, 0f32, 0f32);
                for (i, &w) in wy.iter().enumerate() {
                    let p = &img[col + (ay.first as usize + i) * stride..][..3];
                    ar += w * f32::from(p[0]);
                    ag += w * f32::from(p[1]);
                    ab += w * f32::from(p[2]);
                }
                r += wx * ar;
                g += wx * ag;
                b += wx * ab;
            }
            let u = [to_u8(r), to_u8(g), to_u8(b)];
            let idx = oy as usize * out_w as usize + ox as usize;
            match layout {
                Layout::NhwcU8 => out[idx * 3..idx * 3 + 3].copy_from_slice(&u),
                Layout::NchwF32 | Layout::NchwF16 => {
                    for (c, &v) in u.iter().enumerate() {
                        let v = norm.apply(c, v);
                        let at = c * plane + idx;
                        if layout == Layout::NchwF32 {
                            out[at * 4..at * 4 + 4].copy_from_slice(&v.to_ne_bytes());
                        } else {
                            out[at * 2..at * 2 + 2].copy_from_slice(&f16_bits(v).to_ne_bytes());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
