use super::*;
use crate::testdata::noise;
use loaderd_image::CropBox;

fn sample(w: u32, h: u32, bx: [f64; 4], flip: bool) -> SampleParams {
    SampleParams {
        src_offset: 0,
        width: w,
        height: h,
        stride: w * 3,
        crop: CropBox::from(bx),
        flip,
    }
}

fn run(src: &[u8], s: &SampleParams, ow: u32, oh: u32) -> Vec<u8> {
    let mut out = vec![0; Layout::NhwcU8.sample_bytes(ow, oh)];
    augment(
        src,
        s,
        ow,
        oh,
        Layout::NhwcU8,
        &Normalize::default(),
        &mut out,
    )
    .unwrap();
    out
}

fn gray_row(values: &[u8]) -> Vec<u8> {
    values.iter().flat_map(|&v| [v; 3]).collect()
}

#[test]
fn pillow_bilinear_known_values() {
    // Halving: taps 1/8, 3/8, 3/8, 1/8, renormalized at the edges (Pillow's weights; the same
    // values the CPU path's test holds).
    let src = gray_row(&[0, 0, 80, 160, 0, 0, 0, 0]);
    let out = run(&src, &sample(8, 1, [0.0, 0.0, 8.0, 1.0], false), 4, 1);
    assert_eq!(out, gray_row(&[11, 90, 20, 0]));
    // Doubling: bilinear between pixel centres, edges clamped.
    let src = gray_row(&[0, 100]);
    let out = run(&src, &sample(2, 1, [0.0, 0.0, 2.0, 1.0], false), 4, 1);
    assert_eq!(out, gray_row(&[0, 25, 75, 100]));
    // Same size: identity.
    let px = noise(20 * 10 * 3, 1);
    assert_eq!(
        run(&px, &sample(20, 10, [0.0, 0.0, 20.0, 10.0], false), 20, 10),
        px
    );
}

#[test]
fn constant_image_stays_constant() {
    let color = [10u8, 128, 250];
    let src = color.repeat(97 * 61);
    for (bx, (ow, oh)) in [
        ([0.0, 0.0, 97.0, 61.0], (32, 32)),
        ([3.25, 1.5, 40.75, 60.0], (224, 224)),
        ([90.0, 0.0, 97.0, 5.0], (7, 3)),
    ] {
        let out = run(&src, &sample(97, 61, bx, true), ow, oh);
        assert!(out.chunks(3).all(|p| p == color), "{bx:?}");
    }
}

#[test]
fn gradient_keeps_order_and_ends() {
    // A horizontal ramp 0..=255 over 256 pixels, shrunk and enlarged.
    let row: Vec<u8> = (0..=255u8).collect();
    let src: Vec<u8> = (0..4).flat_map(|_| gray_row(&row)).collect();
    for ow in [17, 64, 100, 256, 700] {
        let out = run(&src, &sample(256, 4, [0.0, 0.0, 256.0, 4.0], false), ow, 2);
        let first: Vec<u8> = out[..ow as usize * 3].iter().step_by(3).copied().collect();
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "{ow}: {first:?}");
        // Ends: within one output pixel's worth of ramp of 0 and 255.
        let step = 256.0 / f64::from(ow);
        assert!(f64::from(first[0]) <= step.max(1.0), "{ow}: {}", first[0]);
        assert!(255.0 - f64::from(first[ow as usize - 1]) <= step.max(1.0));
        // Both output rows equal (the source rows are).
        assert_eq!(out[..ow as usize * 3], out[ow as usize * 3..]);
    }
}

#[test]
fn flip_mirrors_exactly() {
    let src = noise(64 * 48 * 3, 4);
    let bx = [3.5, 2.0, 50.25, 40.0];
    let a = run(&src, &sample(64, 48, bx, false), 32, 24);
    let b = run(&src, &sample(64, 48, bx, true), 32, 24);
    for y in 0..24 {
        for x in 0..32 {
            let (p, q) = ((y * 32 + x) * 3, (y * 32 + 31 - x) * 3);
            assert_eq!(a[p..p + 3], b[q..q + 3]);
        }
    }
}

#[test]
fn crop_reads_only_the_box_and_honours_offset_and_stride() {
    // An image embedded at an offset with padded rows; the box covers whole pixels, so a
    // same-size output is exactly the boxed pixels.
    let (w, h, stride, off) = (10u32, 6u32, 40u32, 7usize);
    let mut buf = vec![0xEEu8; off + stride as usize * h as usize];
    let px = noise((w * h * 3) as usize, 9);
    for y in 0..h as usize {
        let row = &px[y * w as usize * 3..(y + 1) * w as usize * 3];
        buf[off + y * stride as usize..][..row.len()].copy_from_slice(row);
    }
    let s = SampleParams {
        src_offset: off,
        stride,
        ..sample(w, h, [2.0, 1.0, 7.0, 5.0], false)
    };
    let out = run(&buf, &s, 5, 4);
    for y in 0..4 {
        for x in 0..5 {
            let want = &px[((y + 1) * w as usize + x + 2) * 3..][..3];
            assert_eq!(&out[(y * 5 + x) * 3..][..3], want);
        }
    }
}

#[test]
fn normalized_layouts_follow_the_formula() {
    let src = noise(40 * 30 * 3, 2);
    let s = sample(40, 30, [1.0, 2.0, 33.0, 27.0], true);
    let norm = Normalize::default();
    let (ow, oh) = (16u32, 12u32);
    let u8s = run(&src, &s, ow, oh);
    let mut f32s = vec![0; Layout::NchwF32.sample_bytes(ow, oh)];
    augment(&src, &s, ow, oh, Layout::NchwF32, &norm, &mut f32s).unwrap();
    let mut f16s = vec![0; Layout::NchwF16.sample_bytes(ow, oh)];
    augment(&src, &s, ow, oh, Layout::NchwF16, &norm, &mut f16s).unwrap();
    let plane = (ow * oh) as usize;
    for c in 0..3 {
        for i in 0..plane {
            let want = (f32::from(u8s[i * 3 + c]) / 255.0 - norm.mean[c]) / norm.std[c];
            let at = c * plane + i;
            let got = f32::from_ne_bytes(f32s[at * 4..at * 4 + 4].try_into().unwrap());
            assert_eq!(got, want);
            let h = u16::from_ne_bytes(f16s[at * 2..at * 2 + 2].try_into().unwrap());
            assert_eq!(h, f16_bits(want));
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let src = vec![0u8; 8 * 8 * 3];
    let s = sample(8, 8, [0.0, 0.0, 8.0, 8.0], false);
    let mut out = vec![0; 10];
    let norm = Normalize::default();
    assert!(augment(&src, &s, 4, 4, Layout::NhwcU8, &norm, &mut out).is_err());
    let mut out = vec![0; 48];
    assert!(augment(&src[..100], &s, 4, 4, Layout::NhwcU8, &norm, &mut out).is_err());
    let bad = sample(8, 8, [4.0, 0.0, 4.0, 8.0], false);
    assert!(augment(&src, &bad, 4, 4, Layout::NhwcU8, &norm, &mut out).is_err());
}

/// Crop boxes 1.4e9 and 1.98e9 pixels wide (inside `CropBox::is_valid`'s ±1e9 edges) on a
/// 3×2 image, one output column: the support passes 1.07e9, so the tap-count bound
/// 2·⌈support⌉+1 passes `i32::MAX` (the kernel computed it in an `int`, which overflowed to a
/// negative count: no taps, black output). In 64 bits the window covers the whole row, and the
/// output is its average. The GPU test runs the same samples and must match bit for bit.
#[test]
fn huge_crop_box_uses_64_bit_tap_counts() {
    let src: Vec<u8> = [gray_row(&[10, 40, 70]), gray_row(&[100, 130, 160])].concat();
    let wide = sample(3, 2, [-5e8, 0.0, 9e8, 2.0], false);
    assert_eq!(run(&src, &wide, 1, 2), gray_row(&[40, 130]));
    // Both axes huge: the average of all six pixels.
    let both = sample(3, 2, [-9.9e8, -9.9e8, 9.9e8, 9.9e8], true);
    assert_eq!(run(&src, &both, 1, 1), gray_row(&[85]));
}
