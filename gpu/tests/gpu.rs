//! Tests that need NVRTC, nvJPEG or a GPU. Each skips with a printed reason when what it needs
//! is absent, so plain `cargo test` passes on a bare machine; on a GPU machine run them with
//! `LOADERD_REQUIRE_GPU=1 cargo test -p loaderd-gpu --release -- --nocapture` (or the built
//! test binary), under which a missing device or library fails the test instead.

use std::sync::Arc;

use image::ImageEncoder as _;
use loaderd_gpu::augment::{AUGMENT_CU, compile_options};
use loaderd_gpu::batch::RgbImage;
use loaderd_gpu::detect::{REQUIRE_GPU_ENV, require_or_skip};
use loaderd_gpu::reference;
use loaderd_gpu::{
    AugmentKernel, BatchConfig, CropBox, GpuAvailability, GpuBatchPipeline, GpuContext, GpuInfo,
    GpuSample, H2dStream, ImageError, JpegDecoder, Layout, Normalize, NvJpeg, Nvrtc, PageBuffer,
    PinnedRegion, SampleOutcome, SampleParams, SampleSource, detect,
};
use loaderd_image::psnr;

#[path = "../src/testdata.rs"]
mod testdata;
use testdata::noise;

mod support;
use support::{Chroma, tj_decode, tj_encode};

mod child;
use child::run_test;

/// The first device; `None` (skip) or a failure under `LOADERD_REQUIRE_GPU=1` without one.
fn gpu_or_skip() -> Option<GpuInfo> {
    let first = match detect() {
        GpuAvailability::Available(devices) => devices
            .into_iter()
            .next()
            .ok_or_else(|| "no devices".to_string()),
        GpuAvailability::Unavailable { reason } => Err(reason),
    };
    require_or_skip("a CUDA device", first)
}

fn nvrtc_or_skip() -> Option<Nvrtc> {
    require_or_skip("NVRTC", Nvrtc::load())
}

fn nvjpeg_or_skip() -> Option<Arc<NvJpeg>> {
    require_or_skip("nvJPEG", NvJpeg::load().map(Arc::new))
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
    // For a device: a CUBIN (an ELF file) for the real architecture, not PTX to JIT.
    let image = nvrtc
        .compile_for_device(
            AUGMENT_CU,
            "augment.cu",
            (7, 5),
            &compile_options("compute_75"),
        )
        .unwrap();
    match image {
        loaderd_gpu::nvrtc::ModuleImage::Cubin(bytes) => assert!(bytes.starts_with(b"\x7fELF")),
        other => panic!("NVRTC {:?} gave no CUBIN: {other:?}", nvrtc.version()),
    }
    println!("compiled with {} {:?}", nvrtc.path(), nvrtc.version());
}

/// GPU output equals the reference (= the CPU path's arithmetic) for a batch of crops, flips
/// and layouts: bit-exact on u8 and f16 (zero differing bytes, as the design says), f32
/// within 1/255/std; and crop boxes so wide that the tap count passes `i32::MAX` (the
/// reference's `huge_crop_box_uses_64_bit_tap_counts`) bit-exact too.
#[test]
fn gpu_augment_matches_reference() {
    let Some(info) = gpu_or_skip() else { return };
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let kernel = AugmentKernel::new(&ctx, &nvrtc).unwrap();
    let stream = H2dStream::new(&ctx).unwrap();
    // Three images back to back in one source buffer: 500×375, 64×48 and 3×2 (gray rows
    // 10 40 70 / 100 130 160, for the huge crop boxes).
    let (a, b) = (noise(500 * 375 * 3, 1), noise(64 * 48 * 3, 2));
    let c: Vec<u8> = [10u8, 40, 70, 100, 130, 160]
        .iter()
        .flat_map(|&v| [v; 3])
        .collect();
    let all = [&a[..], &b[..], &c[..]].concat();
    let mut host = PageBuffer::zeroed(all.len()).unwrap();
    host.as_mut_slice()[..all.len()].copy_from_slice(&all);
    let host_bytes = all;
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
            crop: CropBox {
                x0: 100.0,
                y0: 10.0,
                x1: 418.0,
                y1: 328.0,
            },
            flip: false,
        },
        SampleParams {
            src_offset: 0,
            width: 500,
            height: 375,
            stride: 1500,
            crop: CropBox {
                x0: 58.0 * 500.0 / 341.0,
                y0: 16.0 * 375.0 / 256.0,
                x1: 282.0 * 500.0 / 341.0,
                y1: 240.0 * 375.0 / 256.0,
            },
            flip: true,
        },
        SampleParams {
            src_offset: 0,
            width: 500,
            height: 375,
            stride: 1500,
            crop: CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 500.0,
                y1: 375.0,
            },
            flip: true,
        },
        SampleParams {
            src_offset: a.len(),
            width: 64,
            height: 48,
            stride: 192,
            crop: CropBox {
                x0: 3.5,
                y0: 2.0,
                x1: 50.25,
                y1: 40.0,
            },
            flip: false,
        },
    ];
    let norm = Normalize::default();
    for layout in [Layout::NhwcU8, Layout::NchwF32, Layout::NchwF16] {
        let (ow, oh) = (224u32, 224u32);
        let per = layout.sample_bytes(ow, oh);
        let mut out = stream.alloc(per * samples.len()).unwrap();
        kernel
            .launch(
                &stream,
                &src,
                &samples,
                ow,
                oh,
                layout,
                &norm,
                out.as_slice_mut(),
            )
            .unwrap();
        let got = stream.to_host(&out).unwrap();
        for (i, s) in samples.iter().enumerate() {
            let mut want = vec![0u8; per];
            reference::augment(&host_bytes, s, ow, oh, layout, &norm, &mut want).unwrap();
            let g = &got[i * per..(i + 1) * per];
            match layout {
                Layout::NhwcU8 | Layout::NchwF16 => {
                    let differ = differing_bytes(g, &want);
                    println!("sample {i} {layout:?}: {differ} of {per} bytes differ");
                    assert_eq!(differ, 0, "sample {i} {layout:?} is not bit-exact");
                }
                Layout::NchwF32 => {
                    for (x, y) in g.chunks_exact(4).zip(want.chunks_exact(4)) {
                        let x = f32::from_ne_bytes(x.try_into().unwrap());
                        let y = f32::from_ne_bytes(y.try_into().unwrap());
                        assert!((x - y).abs() <= 1.0 / 255.0 / 0.224 + 1e-5, "{x} vs {y}");
                    }
                }
            }
        }
    }
    // Boxes 1.4e9 and 1.98e9 pixels wide on the 3×2 image, one output column: 2·⌈support⌉+1
    // passes i32::MAX (an `int` tap count made these black).
    let huge = |bx: [f64; 4], flip| SampleParams {
        src_offset: a.len() + b.len(),
        width: 3,
        height: 2,
        stride: 9,
        crop: CropBox::from(bx),
        flip,
    };
    let wide = [
        huge([-5e8, 0.0, 9e8, 2.0], false),
        huge([-9.9e8, -9.9e8, 9.9e8, 9.9e8], true),
    ];
    let per = Layout::NhwcU8.sample_bytes(1, 2);
    let mut out = stream.alloc(per * wide.len()).unwrap();
    kernel
        .launch(
            &stream,
            &src,
            &wide,
            1,
            2,
            Layout::NhwcU8,
            &norm,
            out.as_slice_mut(),
        )
        .unwrap();
    let got = stream.to_host(&out).unwrap();
    for (i, s) in wide.iter().enumerate() {
        let mut want = vec![0u8; per];
        reference::augment(&host_bytes, s, 1, 2, Layout::NhwcU8, &norm, &mut want).unwrap();
        println!(
            "huge box {i}: GPU {:?}, reference {want:?}",
            &got[i * per..(i + 1) * per]
        );
        assert_eq!(&got[i * per..(i + 1) * per], &want[..], "huge box {i}");
    }
    stream.synchronize().unwrap();
}

/// How many bytes of `a` and `b` differ.
fn differing_bytes(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
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

/// Smooth gradients plus mild noise: photo-like, so chroma subsampling and the decoders'
/// upsampling differences stay small (a pure-noise image measures the upsampler, not us).
fn photo(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let n = noise(w as usize * h as usize * 3, seed);
    let mut v = Vec::with_capacity(n.len());
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u32 {
                let (xf, yf, cf) = (f64::from(x), f64::from(y), f64::from(c));
                let s = 128.0 + 60.0 * (xf / 37.0 + cf).sin() + 40.0 * (yf / 29.0 - cf).cos();
                let i = v.len();
                v.push((s + f64::from(n[i] % 9) - 4.0).clamp(0.0, 255.0) as u8);
            }
        }
    }
    v
}

fn encode_jpeg(pixels: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(pixels, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// The `image` crate's CPU decode of a JPEG: (RGB, width, height).
fn cpu_decode(data: &[u8]) -> (Vec<u8>, u32, u32) {
    let img = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
        .unwrap()
        .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w, h)
}

/// One GPU-decoded image compared with a CPU decode of the same file.
#[derive(Debug)]
struct Compared {
    /// Images in the batch it was decoded in.
    batch: usize,
    /// Its index in `files`.
    index: usize,
    width: u32,
    height: u32,
    /// PSNR of the GPU decode against the CPU one.
    psnr: f64,
}

/// A CPU decoder for tests: JPEG bytes to (RGB, width, height).
type CpuDecode = fn(&[u8]) -> (Vec<u8>, u32, u32);

/// Decodes the first of `files` alone, then all of them in one batch, and compares every
/// image with `cpu`'s decode of the same file (the sizes must agree).
fn decode_against(dec: &mut JpegDecoder, files: &[Vec<u8>], cpu: CpuDecode) -> Vec<Compared> {
    let mut out = Vec::new();
    for batch in [&files[..1], files] {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let decoded = dec.decode_batch(&refs).unwrap();
        let host = dec.stream().to_host(&decoded.buffer).unwrap();
        for (index, r) in decoded.images.iter().enumerate() {
            let d = r.as_ref().unwrap();
            let (want, width, height) = cpu(refs[index]);
            assert_eq!((d.width, d.height), (width, height));
            let got = &host[d.offset..d.offset + d.pitch as usize * height as usize];
            out.push(Compared {
                batch: batch.len(),
                index,
                width,
                height,
                psnr: psnr(got, &want),
            });
        }
    }
    out
}

/// Batched nvJPEG decode equals a CPU decode of the same files (PSNR ≥ 40 dB), and a corrupt
/// file in the batch fails alone.
#[test]
fn batched_decode_matches_cpu_and_isolates_a_corrupt_jpeg() {
    let Some(info) = gpu_or_skip() else { return };
    let Some(lib) = nvjpeg_or_skip() else { return };
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let mut dec = JpegDecoder::new(&ctx, lib, 64 << 20).unwrap();
    println!("nvJPEG backend: {:?}", dec.backend());
    let sizes = [(500u32, 375u32), (64, 48), (333, 500), (17, 9)];
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| encode_jpeg(&photo(w, h, i as u64 + 1), w, h))
        .collect();
    for d in decode_against(&mut dec, &files, cpu_decode) {
        println!(
            "image {} ({}x{}), batch of {}: PSNR {:.1} dB",
            d.index, d.width, d.height, d.batch, d.psnr
        );
        assert!(d.psnr >= 40.0, "{d:?}");
    }
    // A corrupt bitstream (header intact, entropy data garbled), a truncated file and a
    // non-JPEG, among good ones: the good ones still decode.
    let mut garbled = files[0].clone();
    let n = garbled.len();
    for b in &mut garbled[n / 3..n - 2] {
        *b = 0xFF;
    }
    let truncated = files[2][..files[2].len() / 2].to_vec();
    let batch: Vec<&[u8]> = vec![&files[1], &garbled, &files[3], &truncated, b"not a jpeg"];
    let out = dec.decode_batch(&batch).unwrap();
    let host = dec.stream().to_host(&out.buffer).unwrap();
    for i in [0, 2] {
        let d = out.images[i].as_ref().unwrap();
        let (want, _, h) = cpu_decode(batch[i]);
        let p = psnr(
            &host[d.offset..d.offset + d.pitch as usize * h as usize],
            &want,
        );
        assert!(p >= 40.0, "good image {i} next to corrupt ones: PSNR {p}");
    }
    assert!(matches!(out.images[4], Err(ImageError::Corrupt(_))));
    println!(
        "garbled: {:?}; truncated: {:?}",
        out.images[1], out.images[3]
    );
    // A header over the pixel limit is refused before allocation.
    let small = JpegDecoder::new(&ctx, NvJpeg::load().map(Arc::new).unwrap(), 1000).unwrap();
    assert!(matches!(
        small.inspect(&files[0]),
        Err(ImageError::TooLarge { .. })
    ));
}

/// Needs no GPU: the libjpeg-turbo test files really are 4:2:0 (and 4:4:4) baseline JPEGs the
/// GPU path takes, and libjpeg-turbo decodes them back close to the original.
#[test]
fn libjpeg_turbo_test_files_have_the_subsampling_asked_for() {
    use loaderd_gpu::jpeg::{Subsampling, parse_header};
    for (w, h, chroma, want) in [
        (333u32, 500u32, Chroma::Half, Subsampling::S420),
        (64, 48, Chroma::Full, Subsampling::S444),
    ] {
        let px = photo(w, h, 3);
        let file = tj_encode(&px, w, h, chroma);
        let header = parse_header(&file).unwrap();
        assert_eq!((header.width, header.height), (w, h));
        assert_eq!(header.subsampling(), want);
        assert!(header.gpu_support().is_ok());
        let (back, bw, bh) = tj_decode(&file);
        assert_eq!((bw, bh), (w, h));
        let p = psnr(&back, &px);
        println!("{chroma:?} {w}x{h}: libjpeg-turbo round trip {p:.1} dB");
        assert!(p >= 30.0, "{p}");
    }
}

/// 4:2:0 JPEGs from libjpeg-turbo (odd sizes too: the chroma planes round up) decode on the
/// GPU close to libjpeg-turbo's own decode, the CPU path's. nvJPEG is asked for interpolated
/// chroma upsampling (libjpeg-turbo's default) where the library has it (12.1+); the PSNR is
/// printed for docs/ARCHITECTURE.md and must clear a 30 dB floor that replication on these
/// smooth images also clears, so a wrong plane or colour conversion fails. 4:4:4 files from the
/// same encoder, in the same batch, must reach the usual 40 dB.
#[test]
fn batched_decode_of_420_against_libjpeg_turbo() {
    let Some(info) = gpu_or_skip() else { return };
    let Some(lib) = nvjpeg_or_skip() else { return };
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let mut dec = JpegDecoder::new(&ctx, lib, 64 << 20).unwrap();
    let interpolated = dec.interpolated_upsampling();
    println!(
        "nvJPEG backend {:?}, interpolated upsampling: {interpolated}",
        dec.backend()
    );
    let cases = [
        (500u32, 375u32, Chroma::Half),
        (333, 500, Chroma::Half),
        (17, 9, Chroma::Half),
        (64, 48, Chroma::Full),
        (224, 224, Chroma::Half),
    ];
    let files: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, &(w, h, c))| tj_encode(&photo(w, h, 40 + i as u64), w, h, c))
        .collect();
    for d in decode_against(&mut dec, &files, tj_decode) {
        let chroma = cases[d.index].2;
        println!(
            "{chroma:?} {}x{}, batch of {}: PSNR {:.1} dB against libjpeg-turbo \
             (interpolated: {interpolated})",
            d.width, d.height, d.batch, d.psnr
        );
        let floor = if chroma == Chroma::Full { 40.0 } else { 30.0 };
        assert!(d.psnr >= floor, "{chroma:?} {d:?}");
    }
}

fn pipeline_or_skip(config: BatchConfig) -> Option<(GpuContext, GpuBatchPipeline)> {
    let info = gpu_or_skip()?;
    let nvrtc = nvrtc_or_skip()?;
    let lib = nvjpeg_or_skip()?;
    let ctx = GpuContext::new(info.ordinal).unwrap();
    let p = GpuBatchPipeline::new(&ctx, &nvrtc, lib, config).unwrap();
    Some((ctx, p))
}

/// Decode + augment of a batch with a corrupt sample, a progressive-marked (CPU fallback)
/// sample and caller-decoded pixels: output equals the reference on CPU-decoded pixels
/// (PSNR ≥ 40 dB for nvJPEG's decodes, bit-exact for the CPU-decoded samples uploaded through
/// pinned staging), compacted, with the report naming the failed and fallen-back samples.
#[test]
fn decode_and_augment_matches_reference() {
    let config = BatchConfig {
        max_batch: 8,
        layout: Layout::NhwcU8,
        ..BatchConfig::default()
    };
    let Some((ctx, mut pipe)) = pipeline_or_skip(config) else {
        return;
    };
    pipe.set_cpu_decoder(Box::new(|data| {
        let img = image::load_from_memory(data).map_err(|e| e.to_string())?;
        let img = img.to_rgb8();
        let (width, height) = img.dimensions();
        Ok(RgbImage {
            pixels: img.into_raw(),
            width,
            height,
        })
    }));
    let a = encode_jpeg(&photo(500, 375, 7), 500, 375);
    let b = encode_jpeg(&photo(320, 480, 8), 320, 480);
    // The same file relabelled extended sequential (SOF1): bytes any decoder reads, but
    // outside what is sent to nvJPEG, so it takes the CPU decoder.
    let mut c = a.clone();
    let at = c.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    c[at + 1] = 0xC1;
    let mut corrupt = b.clone();
    corrupt.truncate(200);
    let rgb = photo(64, 48, 9);
    let host = loaderd_gpu::HostImage {
        pixels: &rgb,
        width: 64,
        height: 48,
        stride: 192,
    };
    let items = [
        GpuSample {
            source: SampleSource::Jpeg(&a),
            crop: CropBox {
                x0: 100.0,
                y0: 10.0,
                x1: 418.0,
                y1: 328.0,
            },
            flip: false,
        },
        GpuSample {
            source: SampleSource::Jpeg(&corrupt),
            crop: CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 320.0,
                y1: 480.0,
            },
            flip: false,
        },
        GpuSample {
            source: SampleSource::Jpeg(&b),
            crop: CropBox {
                x0: 10.5,
                y0: 20.0,
                x1: 300.0,
                y1: 400.25,
            },
            flip: true,
        },
        GpuSample {
            source: SampleSource::Jpeg(&c),
            crop: CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 500.0,
                y1: 375.0,
            },
            flip: true,
        },
        GpuSample {
            source: SampleSource::Rgb(host),
            crop: CropBox {
                x0: 3.5,
                y0: 2.0,
                x1: 50.25,
                y1: 40.0,
            },
            flip: false,
        },
    ];
    let mut out = pipe.stream().alloc(pipe.output_bytes(items.len())).unwrap();
    let report = pipe.run(&items, out.as_slice_mut()).unwrap();
    println!("{report:?}");
    assert_eq!(report.delivered(), 4);
    assert_eq!(report.failed().map(|(i, _)| i).collect::<Vec<_>>(), [1]);
    assert_eq!(report.fell_back().collect::<Vec<_>>(), [3, 4]);
    let got = pipe.stream().to_host(&out).unwrap();
    let per = pipe.output_bytes(1);
    let norm = Normalize::default();
    let mut slot = 0;
    for (i, item) in items.iter().enumerate() {
        if matches!(report.outcomes[i], SampleOutcome::Failed(_)) {
            continue;
        }
        let (pixels, w, h) = match item.source {
            SampleSource::Jpeg(d) => cpu_decode(d),
            SampleSource::Rgb(img) => (img.pixels.to_vec(), img.width, img.height),
        };
        let s = SampleParams {
            src_offset: 0,
            width: w,
            height: h,
            stride: w * 3,
            crop: item.crop,
            flip: item.flip,
        };
        let mut want = vec![0u8; per];
        reference::augment(&pixels, &s, 224, 224, Layout::NhwcU8, &norm, &mut want).unwrap();
        let g = &got[slot * per..(slot + 1) * per];
        if let SampleOutcome::Cpu { .. } = report.outcomes[i] {
            // Decoded by the same CPU decoder as the reference's pixels and uploaded through
            // the pinned staging: the kernel's output must be bit-exact.
            let differ = differing_bytes(g, &want);
            println!("sample {i} → slot {slot} (CPU-decoded): {differ} bytes differ");
            assert_eq!(differ, 0, "sample {i}: CPU-decoded sample not bit-exact");
        } else {
            let p = psnr(g, &want);
            println!("sample {i} → slot {slot}: PSNR {p:.1} dB");
            assert!(p >= 40.0, "sample {i}: PSNR {p}");
        }
        slot += 1;
    }
    // Host pinned ring mode: the same bytes land in a pinned slot.
    let region = Arc::new(
        PinnedRegion::register(&ctx, Arc::new(PageBuffer::zeroed(per * 4 + 4096).unwrap()))
            .unwrap(),
    );
    let ev = pipe.copy_to_host(&out, 4, &region, 4096).unwrap();
    ev.synchronize().unwrap();
    assert!(pipe.copy_to_host(&out, 5, &region, 4096).is_err());
}

/// Throughput of decode + augment for 256 generated 500×375 JPEGs (printed, not asserted).
#[test]
fn batch_throughput() {
    let config = BatchConfig {
        max_batch: 256,
        layout: Layout::NchwF16,
        ..BatchConfig::default()
    };
    let Some((_ctx, mut pipe)) = pipeline_or_skip(config) else {
        return;
    };
    let files: Vec<Vec<u8>> = (0..256)
        .map(|i| encode_jpeg(&photo(500, 375, 100 + i), 500, 375))
        .collect();
    let items: Vec<GpuSample<'_>> = files
        .iter()
        .enumerate()
        .map(|(i, f)| GpuSample {
            source: SampleSource::Jpeg(f),
            crop: CropBox {
                x0: (i % 50) as f64,
                y0: 5.0,
                x1: 450.0,
                y1: 370.0,
            },
            flip: i % 2 == 0,
        })
        .collect();
    let mut out = pipe.stream().alloc(pipe.output_bytes(256)).unwrap();
    pipe.run(&items, out.as_slice_mut()).unwrap(); // warm-up: buffers, nvJPEG state
    pipe.stream().synchronize().unwrap();
    let reps = 5;
    let started = std::time::Instant::now();
    for _ in 0..reps {
        let r = pipe.run(&items, out.as_slice_mut()).unwrap();
        assert_eq!(r.delivered(), 256);
    }
    pipe.stream().synchronize().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "decode + augment ({:?} backend): {:.0} img/s (256 × 500×375 JPEG → 224×224 f16)",
        pipe.decoder().backend(),
        (256 * reps) as f64 / secs
    );
}

/// What each GPU test needs, checked here the way the tests check it.
fn present(need: &str) -> bool {
    match need {
        "device" => detect().is_available(),
        "nvrtc" => Nvrtc::load().is_ok(),
        "nvjpeg" => NvJpeg::load().is_ok(),
        _ => unreachable!("{need}"),
    }
}

/// Runs on any machine: under `LOADERD_REQUIRE_GPU=1` a GPU test passes only where everything
/// it needs is present, and fails naming the variable and what is missing where it is not;
/// without the variable it skips instead.
#[test]
fn require_gpu_turns_a_skip_into_a_failure() {
    let cases: [(&str, &[&str]); 3] = [
        ("kernel_source_compiles_with_nvrtc", &["nvrtc"]),
        ("pinned_registration_and_h2d_bandwidth", &["device"]),
        (
            "batched_decode_matches_cpu_and_isolates_a_corrupt_jpeg",
            &["device", "nvjpeg"],
        ),
    ];
    for (test, needs) in cases {
        let missing = needs.iter().find(|n| !present(n));
        let (ok, text) = run_test(test, true);
        match missing {
            None => assert!(ok, "{test} has what it needs here but failed:\n{text}"),
            Some(need) => {
                assert!(
                    !ok,
                    "{test} passed under {REQUIRE_GPU_ENV}=1 without {need}:\n{text}"
                );
                assert!(
                    text.contains(&format!("{REQUIRE_GPU_ENV}=1 but")),
                    "{test}: no reason given:\n{text}"
                );
                assert!(!text.contains("skipping:"), "{text}");
                let (ok, text) = run_test(test, false);
                assert!(
                    ok && text.contains("skipping:"),
                    "{test} without the variable:\n{text}"
                );
                println!("{test} without {need}: fails under {REQUIRE_GPU_ENV}=1, skips without");
            }
        }
    }
}
