use image::ImageEncoder as _;

use super::*;
use crate::testdata::noise;

/// A baseline JPEG from the `image` crate's encoder.
pub(crate) fn baseline(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            &noise(w as usize * h as usize * 3, seed),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode");
    out
}

fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xFF, marker];
    v.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// SOI, optional Adobe APP14, a frame header, an empty scan header: enough for the reader.
fn synthetic(sof: u8, precision: u8, w: u16, h: u16, comps: &[u8], adobe: Option<u8>) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8];
    if let Some(t) = adobe {
        v.extend(segment(
            0xEE,
            &[b'A', b'd', b'o', b'b', b'e', 0, 100, 0, 0, 0, 0, t],
        ));
    }
    let mut frame = vec![precision];
    frame.extend_from_slice(&h.to_be_bytes());
    frame.extend_from_slice(&w.to_be_bytes());
    frame.push(comps.len() as u8);
    for (i, &hv) in comps.iter().enumerate() {
        frame.extend_from_slice(&[i as u8 + 1, hv, 0]);
    }
    v.extend(segment(sof, &frame));
    v.extend(segment(0xDA, &[1, 1, 0, 0, 63, 0]));
    v
}

#[test]
fn baseline_jpeg_from_an_encoder() {
    let data = baseline(50, 37, 1);
    let h = parse_header(&data).unwrap();
    assert_eq!((h.width, h.height, h.precision), (50, 37, 8));
    assert_eq!(h.coding, Coding::Baseline);
    assert_eq!(h.sampling.len(), 3);
    assert_eq!(h.pixels(), 50 * 37);
    assert_eq!(h.gpu_support(), Ok(()), "{h:?}");
}

#[test]
fn progressive_is_for_the_cpu() {
    // The same file with its SOF0 marker turned into SOF2.
    let mut data = baseline(16, 16, 2);
    let at = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    data[at + 1] = 0xC2;
    let h = parse_header(&data).unwrap();
    assert_eq!(h.coding, Coding::Progressive);
    assert_eq!(
        h.gpu_support(),
        Err(Unsupported::Coding(Coding::Progressive))
    );
}

#[test]
fn subsampling_cases() {
    let cases = [
        (&[0x11, 0x11, 0x11][..], Subsampling::S444, true),
        (&[0x21, 0x11, 0x11], Subsampling::S422, true),
        (&[0x22, 0x11, 0x11], Subsampling::S420, true),
        (&[0x12, 0x11, 0x11], Subsampling::S440, true),
        (&[0x41, 0x11, 0x11], Subsampling::S411, false),
        (&[0x42, 0x11, 0x11], Subsampling::S410, false),
        (&[0x22, 0x21, 0x11], Subsampling::Other, false),
        (&[0x33, 0x22, 0x22], Subsampling::Other, false),
        (&[0x11], Subsampling::Gray, true),
    ];
    for (comps, want, gpu) in cases {
        let h = parse_header(&synthetic(0xC0, 8, 64, 48, comps, None)).unwrap();
        assert_eq!(h.subsampling(), want, "{comps:x?}");
        assert_eq!(h.gpu_support().is_ok(), gpu, "{comps:x?}");
    }
}

#[test]
fn cmyk_rgb_and_odd_formats_are_for_the_cpu() {
    let cmyk = synthetic(0xC0, 8, 8, 8, &[0x11; 4], Some(2));
    let h = parse_header(&cmyk).unwrap();
    assert_eq!(h.adobe_transform, Some(2));
    assert_eq!(h.gpu_support(), Err(Unsupported::Cmyk));
    let rgb = synthetic(0xC0, 8, 8, 8, &[0x11; 3], Some(0));
    assert_eq!(
        parse_header(&rgb).unwrap().gpu_support(),
        Err(Unsupported::RgbCoded)
    );
    let ycc = synthetic(0xC0, 8, 8, 8, &[0x11; 3], Some(1));
    assert_eq!(parse_header(&ycc).unwrap().gpu_support(), Ok(()));
    let twelve = synthetic(0xC1, 12, 8, 8, &[0x11; 3], None);
    assert!(parse_header(&twelve).unwrap().gpu_support().is_err());
    let twelve_base = synthetic(0xC0, 12, 8, 8, &[0x11; 3], None);
    assert_eq!(
        parse_header(&twelve_base).unwrap().gpu_support(),
        Err(Unsupported::Precision(12))
    );
    let arith = synthetic(0xC9, 8, 8, 8, &[0x11; 3], None);
    assert_eq!(
        parse_header(&arith).unwrap().gpu_support(),
        Err(Unsupported::Coding(Coding::Arithmetic))
    );
    let lossless = synthetic(0xC3, 8, 8, 8, &[0x11; 3], None);
    assert_eq!(parse_header(&lossless).unwrap().coding, Coding::Lossless);
    let two = synthetic(0xC0, 8, 8, 8, &[0x11; 2], None);
    assert_eq!(
        parse_header(&two).unwrap().gpu_support(),
        Err(Unsupported::Components(2))
    );
    let dnl = synthetic(0xC0, 8, 8, 0, &[0x11; 3], None);
    assert_eq!(
        parse_header(&dnl).unwrap().gpu_support(),
        Err(Unsupported::DeferredHeight)
    );
}

#[test]
fn broken_headers_are_errors_not_panics() {
    assert_eq!(parse_header(b""), Err(HeaderError::NotJpeg));
    assert_eq!(parse_header(b"\x89PNG\r\n"), Err(HeaderError::NotJpeg));
    let good = baseline(16, 16, 3);
    // Every truncation of the header is an error (never a panic, never a bogus success).
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    for n in 0..sos + 4 {
        assert!(parse_header(&good[..n]).is_err(), "prefix of {n} bytes");
    }
    // Flipping any single header byte never panics.
    for i in 0..sos + 4 {
        let mut bad = good.clone();
        bad[i] ^= 0x5A;
        let _ = parse_header(&bad);
    }
    // A scan before any frame header.
    let no_frame = [0xFF, 0xD8, 0xFF, 0xDA, 0, 2];
    assert_eq!(parse_header(&no_frame), Err(HeaderError::NoFrame));
    let eoi = [0xFF, 0xD8, 0xFF, 0xD9];
    assert_eq!(parse_header(&eoi), Err(HeaderError::NoFrame));
    let zero_len = [0xFF, 0xD8, 0xFF, 0xE0, 0, 1];
    assert!(matches!(
        parse_header(&zero_len),
        Err(HeaderError::Malformed(_))
    ));
    let bad_factor = synthetic(0xC0, 8, 8, 8, &[0x51, 0x11, 0x11], None);
    assert!(matches!(
        parse_header(&bad_factor),
        Err(HeaderError::Malformed(_))
    ));
    let zero_width = synthetic(0xC0, 8, 0, 8, &[0x11; 3], None);
    assert!(matches!(
        parse_header(&zero_width),
        Err(HeaderError::Malformed(_))
    ));
}
