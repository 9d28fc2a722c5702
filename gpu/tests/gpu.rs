//! Tests that need NVRTC or a GPU. Each skips with a printed reason when what it needs is
//! absent, so plain `cargo test` passes on a bare machine; run them on a GPU machine with
//! `cargo test -p loaderd-gpu --release -- --nocapture` (or the built test binary).

use std::sync::Arc;

use loaderd_gpu::augment::{AUGMENT_CU, compile_options};
use loaderd_gpu::reference;
use loaderd_gpu::{
    AugmentKernel, GpuAvailability, GpuContext, GpuInfo, H2dStream, Normalize, Nvrtc, OutputLayout,
    PageBuffer, PinnedRegion, SampleParams, detect,
};

#[path = "../src/testdata.rs"]
mod testdata;
use testdata::noise;

/// The first device, or `None` after printing why the test is skipped.
fn gpu_or_skip() -> Option<GpuInfo> {
    match detect() {
        GpuAvailability::Available(devices) => devices.into_iter().next(),
        GpuAvailability::Unavailable { reason } => {
            println!("skipping: {reason}");
            None
        }
    }
}

fn nvrtc_or_skip() -> Option<Nvrtc> {
    match Nvrtc::load() {
        Ok(n) => Some(n),
        Err(e) => {
            println!("skipping: {e}");
            None
        }
    }
}

/// Needs only NVRTC (no driver, no GPU): the kernel source compiles.
#[test]
fn kernel_source_compiles_with_nvrtc() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let ptx = nvrtc
        .compile(AUGMENT_CU, "augment.cu", &compile_options("compute_75"))
        .unwrap_or_else(|e| panic!("{} ({:?}): {e}", nvrtc.path(), nvrtc.version()));
    assert!(ptx.contains(".entry loaderd_augment"), "{ptx}");
    assert!(ptx.contains("cvt.rn.f16.f32"));
    // --fmad=false: no contracted multiply-adds, so rounding matches the CPU path's.
    assert!(
        !ptx.contains("fma.rn"),
        "the kernel must not use fused multiply-add"
    );
    // A broken source reports NVRTC's log.
    let err = nvrtc
        .compile(
            "__global__ void k() { nope; }",
            "bad.cu",
            &compile_options("compute_75"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    println!("compiled with {} {:?}", nvrtc.path(), nvrtc.version());
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// GPU output equals the reference (= the CPU path's arithmetic) for a batch of crops, flips
/// and layouts: PSNR ≥ 40 dB on u8, and normalized values within 1/255/std.
#[test]
fn gpu_augment_matches_reference() {
    let Some(info) = gpu_or_skip() else { return };
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let kernel = AugmentKernel::new(&ctx, &nvrtc).unwrap();
    let stream = H2dStream::new(&ctx).unwrap();
    // Two images back to back in one source buffer: 500×375 and 64×48.
    let (a, b) = (noise(500 * 375 * 3, 1), noise(64 * 48 * 3, 2));
    let mut host = PageBuffer::zeroed(a.len() + b.len()).unwrap();
    host.as_mut_slice()[..a.len()].copy_from_slice(&a);
    host.as_mut_slice()[a.len()..a.len() + b.len()].copy_from_slice(&b);
    let host_bytes = host.as_slice()[..a.len() + b.len()].to_vec();
    let region = Arc::new(PinnedRegion::register(&ctx, Arc::new(host)).unwrap());
    let mut src = stream.alloc(host_bytes.len()).unwrap();
    stream
        .copy_async(&region, 0..host_bytes.len(), &mut src, 0)
        .unwrap();
    let samples = [
        SampleParams {
            src_offset: 0,
            width: 500,
            height: 375,
            stride: 1500,
            x0: 100.0,
            y0: 10.0,
            x1: 418.0,
            y1: 328.0,
            flip: false,
        },
        SampleParams {
            src_offset: 0,
            width: 500,
            height: 375,
            stride: 1500,
            x0: 58.0 * 500.0 / 341.0,
            y0: 16.0 * 375.0 / 256.0,
            x1: 282.0 * 500.0 / 341.0,
            y1: 240.0 * 375.0 / 256.0,
            flip: true,
        },
        SampleParams {
            src_offset: 0,
            width: 500,
            height: 375,
            stride: 1500,
            x0: 0.0,
            y0: 0.0,
            x1: 500.0,
            y1: 375.0,
            flip: true,
        },
        SampleParams {
            src_offset: a.len(),
            width: 64,
            height: 48,
            stride: 192,
            x0: 3.5,
            y0: 2.0,
            x1: 50.25,
            y1: 40.0,
            flip: false,
        },
    ];
    let norm = Normalize::default();
    for layout in [
        OutputLayout::NhwcU8,
        OutputLayout::NchwF32,
        OutputLayout::NchwF16,
    ] {
        let (ow, oh) = (224u32, 224u32);
        let per = layout.sample_bytes(ow, oh);
        let mut out = stream.alloc(per * samples.len()).unwrap();
        kernel
            .launch(&stream, &src, &samples, ow, oh, layout, &norm, &mut out)
            .unwrap();
        let got = stream.to_host(&out).unwrap();
        for (i, s) in samples.iter().enumerate() {
            let mut want = vec![0u8; per];
            reference::augment(&host_bytes, s, ow, oh, layout, &norm, &mut want).unwrap();
            let g = &got[i * per..(i + 1) * per];
            match layout {
                OutputLayout::NhwcU8 => {
                    let p = psnr(g, &want);
                    let differ = g.iter().zip(&want).filter(|(x, y)| x != y).count();
                    println!("sample {i}: PSNR {p:.1} dB, {differ} of {per} bytes differ");
                    assert!(p >= 40.0, "sample {i}: PSNR {p}");
                }
                OutputLayout::NchwF32 => {
                    for (x, y) in g.chunks_exact(4).zip(want.chunks_exact(4)) {
                        let x = f32::from_ne_bytes(x.try_into().unwrap());
                        let y = f32::from_ne_bytes(y.try_into().unwrap());
                        assert!((x - y).abs() <= 1.0 / 255.0 / 0.224 + 1e-5, "{x} vs {y}");
                    }
                }
                OutputLayout::NchwF16 => {
                    let same = g == want.as_slice();
                    println!("sample {i} f16 bit-identical: {same}");
                }
            }
        }
    }
    stream.synchronize().unwrap();
}

/// Registration round trip and pinned H2D bandwidth.
#[test]
fn pinned_registration_and_h2d_bandwidth() {
    let Some(info) = gpu_or_skip() else { return };
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let stream = H2dStream::new(&ctx).unwrap();
    let len = 256 << 20;
    let mut host = PageBuffer::zeroed(len).unwrap();
    let pattern = noise(len, 3);
    host.as_mut_slice().copy_from_slice(&pattern);
    let owner: Arc<PageBuffer> = Arc::new(host);
    let started = std::time::Instant::now();
    let region = Arc::new(PinnedRegion::register(&ctx, owner.clone()).unwrap());
    println!("registered {} MiB in {:?}", len >> 20, started.elapsed());
    let mut dev = stream.alloc(len).unwrap();
    stream.copy_async(&region, 0..len, &mut dev, 0).unwrap(); // warm-up
    let start = stream.record().unwrap();
    let reps = 10;
    for _ in 0..reps {
        stream.copy_async(&region, 0..len, &mut dev, 0).unwrap();
    }
    let end = stream.record().unwrap();
    end.synchronize().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    let gbs = (len * reps) as f64 / (f64::from(ms) / 1000.0) / 1e9;
    println!("pinned H2D: {gbs:.1} GB/s");
    assert!(gbs > 5.0, "{gbs} GB/s");
    assert_eq!(stream.to_host(&dev).unwrap(), pattern);
    // A copy past the region is refused, and dropping the region unregisters it so the same
    // memory can be registered again.
    assert!(stream.copy_async(&region, 0..len + 1, &mut dev, 0).is_err());
    drop((start, end));
    stream.synchronize().unwrap();
    drop(region);
    let again = PinnedRegion::register(&ctx, owner).unwrap();
    assert_eq!(again.len(), len);
}
