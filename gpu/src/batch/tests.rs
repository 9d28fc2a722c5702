use super::fallback::{accept_fallback, cpu_decode, late_fallback};
use super::*;
use crate::jpeg::Unsupported;

fn crop(x0: f64) -> CropBox {
    CropBox {
        x0,
        y0: 1.0,
        x1: x0 + 10.0,
        y1: 11.0,
    }
}

#[test]
fn config_validation() {
    let ok = BatchConfig::default();
    assert!(ok.validate().is_ok());
    assert_eq!(ok.sample_bytes(), 224 * 224 * 3 * 4);
    for bad in [
        BatchConfig { max_batch: 0, ..ok },
        BatchConfig {
            max_batch: 65_536,
            ..ok
        },
        BatchConfig { out_width: 0, ..ok },
        BatchConfig {
            out_height: 0,
            ..ok
        },
        BatchConfig {
            max_pixels: 0,
            ..ok
        },
        BatchConfig {
            max_decode_bytes: 0,
            ..ok
        },
        BatchConfig {
            norm: Normalize {
                mean: [0.0; 3],
                std: [1.0, 0.0, 1.0],
            },
            ..ok
        },
        BatchConfig {
            out_width: u32::MAX,
            out_height: u32::MAX,
            max_batch: 65_535,
            ..ok
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn run_arguments_are_checked_before_any_work() {
    let c = BatchConfig {
        max_batch: 4,
        out_width: 8,
        out_height: 8,
        layout: Layout::NhwcU8,
        ..BatchConfig::default()
    };
    assert!(c.check_run(4, 4 * 192).is_ok());
    assert!(c.check_run(0, 0).is_ok());
    assert!(c.check_run(5, 5 * 192).is_err(), "over max_batch");
    assert!(c.check_run(4, 4 * 192 - 1).is_err(), "output too small");
}

#[test]
fn host_images_are_bounds_checked() {
    let px = vec![0u8; 100];
    let img = |width, height, stride| HostImage {
        pixels: &px,
        width,
        height,
        stride,
    };
    // 3 rows of stride 33: the last row needs only 3 × width bytes.
    assert_eq!(img(10, 3, 33).span().unwrap().len(), 2 * 33 + 30);
    assert!(img(11, 3, 33).span().is_ok());
    assert!(img(12, 3, 33).span().is_err(), "stride shorter than a row");
    assert!(img(10, 4, 30).span().is_err(), "past the end");
    assert!(img(0, 1, 0).span().is_err());
    assert!(img(1, 0, 3).span().is_err());
    assert!(img(1, u32::MAX, u32::MAX).span().is_err());
}

#[test]
fn fallback_images_are_checked() {
    let img = |w: u32, h: u32, n: usize| RgbImage {
        pixels: vec![0; n],
        width: w,
        height: h,
    };
    assert!(accept_fallback(img(4, 2, 24), 8).is_ok());
    assert!(matches!(
        accept_fallback(img(4, 2, 24), 7),
        Err(SampleError::BadFallback(_))
    ));
    assert!(accept_fallback(img(4, 2, 23), 100).is_err());
    assert!(accept_fallback(img(0, 2, 0), 100).is_err());
}

/// Failed samples leave no hole: delivered ones get consecutive output slots in input order,
/// and each keeps its own crop, flip and source placement.
#[test]
fn compaction_and_bookkeeping() {
    let data = [0u8; 4];
    let samples: Vec<GpuSample<'_>> = (0..5)
        .map(|i| GpuSample {
            source: SampleSource::Jpeg(&data),
            crop: crop(f64::from(i)),
            flip: i % 2 == 1,
        })
        .collect();
    let ready = |offset, by| Placed::Ready {
        offset,
        width: 20,
        height: 12,
        stride: 60,
        by,
    };
    let corrupt = SampleError::Image(ImageError::Corrupt("x".into()));
    let placed = vec![
        Placed::Failed(corrupt.clone()),
        ready(0, DecodedBy::Gpu),
        ready(
            768,
            DecodedBy::Cpu(CpuReason::Unsupported(Unsupported::Cmyk)),
        ),
        Placed::Failed(SampleError::CpuDecode("y".into())),
        ready(1536, DecodedBy::Cpu(CpuReason::CallerDecoded)),
    ];
    let (params, report) = assemble(&samples, placed);
    assert_eq!(params.len(), 3);
    assert_eq!(report.delivered(), 3);
    assert_eq!(
        report.outcomes,
        [
            SampleOutcome::Failed(corrupt),
            SampleOutcome::Gpu { slot: 0 },
            SampleOutcome::Cpu {
                slot: 1,
                reason: CpuReason::Unsupported(Unsupported::Cmyk)
            },
            SampleOutcome::Failed(SampleError::CpuDecode("y".into())),
            SampleOutcome::Cpu {
                slot: 2,
                reason: CpuReason::CallerDecoded
            },
        ]
    );
    assert_eq!(report.failed().map(|(i, _)| i).collect::<Vec<_>>(), [0, 3]);
    assert_eq!(report.fell_back().collect::<Vec<_>>(), [2, 4]);
    // Slot k carries the k-th delivered sample's crop and flip and its own source offset.
    for (slot, (input, offset)) in [(1, 0), (2, 768), (4, 1536)].into_iter().enumerate() {
        let p = params[slot];
        assert_eq!(p.src_offset, offset);
        assert_eq!(p.crop, crop(f64::from(input)));
        assert_eq!(p.flip, input % 2 == 1);
        assert_eq!((p.width, p.height, p.stride), (20, 12, 60));
        assert!(p.validate(1536 + 11 * 60 + 60).is_ok());
    }
    let (params, report) = assemble(&[], vec![]);
    assert!(params.is_empty() && report.delivered() == 0);
}

#[test]
fn staged_sizes_drive_the_packing() {
    let px = [1u8; 90];
    let jpeg = crate::jpeg::tests::baseline(10, 3, 7);
    let staged = [
        Staged::Gpu(InspectedJpeg::from_header(&jpeg)),
        Staged::Failed(SampleError::CpuDecode("z".into())),
        Staged::Host {
            bytes: Cow::Borrowed(&px[..]),
            width: 10,
            height: 3,
            stride: 30,
            reason: CpuReason::CallerDecoded,
        },
    ];
    let (offsets, total) = pack(staged.iter().map(Staged::bytes), 512).unwrap();
    // A failed sample takes no space.
    assert_eq!(offsets, [0, 256, 256]);
    assert_eq!(total, 512);
}

/// A CPU decoder that answers every call with `answer` and counts its calls.
fn scripted(answer: Result<RgbImage, String>) -> (CpuDecoder, Arc<std::sync::atomic::AtomicUsize>) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let decode: CpuDecoder = Box::new(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        answer.clone()
    });
    (decode, calls)
}

fn rgb(width: u32, height: u32) -> RgbImage {
    RgbImage {
        pixels: vec![7; width as usize * height as usize * 3],
        width,
        height,
    }
}

/// A JPEG nvJPEG refuses goes to the CPU decoder when there is one; without one it fails
/// with `NeedsCpu` carrying nvJPEG's reason; the decoder's failures and bad images are told
/// apart in the report.
#[test]
fn refused_jpegs_fall_back_to_the_cpu_decoder() {
    let why = Unsupported::Cmyk;
    assert_eq!(
        cpu_decode(None, b"jpeg", why, 100),
        Err(SampleError::Image(ImageError::NeedsCpu(why)))
    );
    let (mut ok, calls) = scripted(Ok(rgb(4, 2)));
    assert_eq!(cpu_decode(Some(&mut ok), b"jpeg", why, 100), Ok(rgb(4, 2)));
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    let (mut failing, _) = scripted(Err("truncated".into()));
    assert_eq!(
        cpu_decode(Some(&mut failing), b"jpeg", why, 100),
        Err(SampleError::CpuDecode("truncated".into()))
    );
    // Over the pixel limit: rejected, not uploaded.
    assert!(matches!(
        cpu_decode(Some(&mut ok), b"jpeg", why, 7),
        Err(SampleError::BadFallback(_))
    ));
}

/// At decode time the space is already reserved from the header: a CPU decode of another size
/// is rejected; without a CPU decoder the sample fails with nvJPEG's reason.
#[test]
fn late_fallbacks_must_match_the_header() {
    let why = Unsupported::Decoder(4);
    assert_eq!(
        late_fallback(None, b"jpeg", why, (4, 2), 100),
        Err(SampleError::Image(ImageError::NeedsCpu(why)))
    );
    let (mut ok, _) = scripted(Ok(rgb(4, 2)));
    assert_eq!(
        late_fallback(Some(&mut ok), b"jpeg", why, (4, 2), 100),
        Ok(vec![7; 24])
    );
    assert!(matches!(
        late_fallback(Some(&mut ok), b"jpeg", why, (2, 4), 100),
        Err(SampleError::BadFallback(m)) if m.contains("header says 2x4")
    ));
}
