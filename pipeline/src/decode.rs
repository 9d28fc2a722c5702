//! Image decode that does only the work the output needs.
//!
//! A training sample is a crop of the image resized to e.g. 224×224, so most of a large JPEG's
//! pixels are never looked at. For JPEG (libjpeg-turbo 3, linked statically) the decoder
//! therefore:
//!
//! 1. reads the header and refuses images over [`DecodeLimits::max_pixels`] *before*
//!    allocating anything for the pixels (decompression bombs);
//! 2. picks the smallest DCT scaling factor `n/8` (n = 1, 2, 3, 4; larger ones cost more than
//!    a full decode) that keeps the crop at least as large as the target in both dimensions,
//!    so the inverse DCT itself does the coarse downscale (an 8×8 block becomes n×n pixels)
//!    and the resize after it never has to upsample what the DCT thinned out;
//! 3. decodes only the crop's region: rows outside it are skipped and columns outside it are
//!    not colour-converted or upsampled (`tj3SetCroppingRegion`). libjpeg-turbo wants the left
//!    edge on an iMCU boundary of the scaled image, so the region is widened to the left and the
//!    extra columns are dropped after decoding.
//!
//! The scaled pixel `i` covers source pixels `[i/s, (i+1)/s)` for scale `s`, so a point `x` of
//! the source maps to `x·s − origin` in the returned region ([`DecodedRegion::to_local`]); the
//! resize in `augment` uses that to sample the exact crop box.
//!
//! Grayscale JPEGs come out as RGB (libjpeg-turbo replicates the channel), CMYK/YCCK JPEGs are
//! decoded to CMYK and converted like Pillow does for Adobe (inverted) files, progressive JPEGs
//! decode with the same API (the region still saves colour conversion, though all scans are
//! read). Truncated data is an error, not a grey bottom half: libjpeg-turbo's warnings stop the
//! decode (`TJPARAM_STOPONWARNING`). PNG goes through the `image` crate, whole, then cropped.
//!
//! A [`Decoder`] keeps its libjpeg-turbo handle between images; give each worker thread its own.
//! This module is the format-independent part (sniffing, limits, regions); `jpeg` holds the
//! libjpeg-turbo handle and the scale and region arithmetic, `png` the `image` crate's path.

#![deny(clippy::undocumented_unsafe_blocks)]

mod jpeg;
mod png;

use loaderd_image::Rect;

use jpeg::JpegDecoder;
pub use jpeg::choose_scale;

/// Pixel limits applied before any pixel memory is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width × height` accepted (default 64 Mi pixels: ~200 MB of RGB).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 64 << 20,
        }
    }
}

/// Why an input could not be decoded. None of these is a bug in the caller: the pipeline
/// counts them and skips (or fails on) the sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("not a supported image format (JPEG or PNG)")]
    Unsupported,
    #[error("unsupported image: {0}")]
    UnsupportedFeature(String),
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error("image is {width}x{height}, more than the limit of {max} pixels")]
    TooLarge { width: u64, height: u64, max: u64 },
    #[error("region {region:?} is not inside the {width}x{height} image")]
    BadRegion {
        region: Rect,
        width: u32,
        height: u32,
    },
    #[error("output slot holds {got} bytes, the sample needs {need}")]
    SlotSize { need: usize, got: usize },
    #[error("invalid transform: {0}")]
    BadSpec(&'static str),
}

/// Container format of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub format: Format,
}

/// Packed RGB, 3 bytes a pixel, rows without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// A decoded region: `image` holds the scaled pixels of the requested rectangle.
#[derive(Debug, Clone)]
pub struct DecodedRegion {
    pub image: RgbImage,
    /// DCT scale `num/denom` (1/1 when the image was decoded at full size).
    pub scale_num: u32,
    pub scale_denom: u32,
    /// Top-left of `image` in scaled-image pixels.
    pub origin_x: u32,
    pub origin_y: u32,
}

impl DecodedRegion {
    /// The scale factor as a number.
    pub fn scale(&self) -> f64 {
        f64::from(self.scale_num) / f64::from(self.scale_denom)
    }

    /// Maps a point of the source image (continuous pixel coordinates: pixel `i` spans
    /// `[i, i+1)`) into `image`'s coordinates.
    pub fn to_local(&self, x: f64, y: f64) -> (f64, f64) {
        let s = self.scale();
        (
            x * s - f64::from(self.origin_x),
            y * s - f64::from(self.origin_y),
        )
    }
}

/// Decodes JPEG and PNG samples; one per worker thread.
pub struct Decoder {
    limits: DecodeLimits,
    jpeg: Option<JpegDecoder>,
}

impl Decoder {
    /// A decoder enforcing `limits`. The libjpeg-turbo handle is created on first use.
    pub fn new(limits: DecodeLimits) -> Self {
        Decoder { limits, jpeg: None }
    }

    /// The limits in force.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Reads only the header: format and dimensions. Refuses images over the pixel limit.
    pub fn header(&mut self, data: &[u8]) -> Result<ImageInfo, DecodeError> {
        let info = match sniff(data)? {
            Format::Jpeg => {
                let h = self.jpeg()?.header(data);
                let h = self.reset_on_error(h)?;
                ImageInfo {
                    width: h.width,
                    height: h.height,
                    format: Format::Jpeg,
                }
            }
            Format::Png => png::header(data)?,
        };
        self.check_limits(info.width, info.height)?;
        Ok(info)
    }

    /// Decodes the pixels of `region`, downscaled by the DCT as far as still leaves at least
    /// `target` (width, height) pixels for the crop.
    pub fn decode_region(
        &mut self,
        data: &[u8],
        region: Rect,
        target: (u32, u32),
    ) -> Result<DecodedRegion, DecodeError> {
        match sniff(data)? {
            Format::Jpeg => {
                let limits = self.limits;
                let jpeg = self.jpeg()?;
                let result = jpeg.header(data).and_then(|header| {
                    check_limits(limits, header.width, header.height)?;
                    check_region(region, header.width, header.height)?;
                    jpeg.decode_region(data, &header, region, target)
                });
                self.reset_on_error(result)
            }
            Format::Png => {
                let info = png::header(data)?;
                self.check_limits(info.width, info.height)?;
                check_region(region, info.width, info.height)?;
                let full = png::decode(data, self.limits)?;
                Ok(DecodedRegion {
                    image: crop(&full, region),
                    scale_num: 1,
                    scale_denom: 1,
                    origin_x: region.x,
                    origin_y: region.y,
                })
            }
        }
    }

    /// Decodes the whole image at full size (the GPU path's CPU decoder: PNGs, and JPEGs
    /// nvJPEG does not take).
    pub fn decode_full(&mut self, data: &[u8]) -> Result<RgbImage, DecodeError> {
        let info = self.header(data)?;
        let (w, h) = (info.width, info.height);
        let region = Rect { x: 0, y: 0, w, h };
        Ok(self.decode_region(data, region, (w, h))?.image)
    }

    fn jpeg(&mut self) -> Result<&mut JpegDecoder, DecodeError> {
        if self.jpeg.is_none() {
            self.jpeg = Some(JpegDecoder::new(self.limits)?);
        }
        // Just filled if it was empty.
        self.jpeg
            .as_mut()
            .ok_or_else(|| DecodeError::Corrupt("libjpeg-turbo unavailable".into()))
    }

    fn check_limits(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        check_limits(self.limits, width, height)
    }

    /// After a failed decode libjpeg-turbo's state can be mid-stream (the next image would
    /// fail with "two SOI markers"), so a failure drops the handle; the next image gets a
    /// fresh one. Failures are rare, so the cost does not matter.
    fn reset_on_error<T>(&mut self, r: Result<T, DecodeError>) -> Result<T, DecodeError> {
        if r.is_err() {
            self.jpeg = None;
        }
        r
    }
}

fn check_limits(limits: DecodeLimits, width: u32, height: u32) -> Result<(), DecodeError> {
    let (w, h) = (u64::from(width), u64::from(height));
    if w == 0 || h == 0 {
        return Err(DecodeError::Corrupt(format!("{width}x{height} image")));
    }
    if w * h > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
            max: limits.max_pixels,
        });
    }
    Ok(())
}

fn check_region(region: Rect, width: u32, height: u32) -> Result<(), DecodeError> {
    let inside = region.w > 0
        && region.h > 0
        && u64::from(region.x) + u64::from(region.w) <= u64::from(width)
        && u64::from(region.y) + u64::from(region.h) <= u64::from(height);
    if inside {
        Ok(())
    } else {
        Err(DecodeError::BadRegion {
            region,
            width,
            height,
        })
    }
}

/// The format from the magic bytes.
pub fn sniff(data: &[u8]) -> Result<Format, DecodeError> {
    if data.is_empty() {
        Err(DecodeError::Empty)
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Ok(Format::Jpeg)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(Format::Png)
    } else {
        Err(DecodeError::Unsupported)
    }
}

/// Copies `region` out of `img` (the region must be inside).
fn crop(img: &RgbImage, region: Rect) -> RgbImage {
    let stride = img.width as usize * 3;
    let row = region.w as usize * 3;
    let mut pixels = Vec::with_capacity(row * region.h as usize);
    for y in region.y..region.y + region.h {
        let start = y as usize * stride + region.x as usize * 3;
        pixels.extend_from_slice(&img.pixels[start..start + row]);
    }
    RgbImage {
        width: region.w,
        height: region.h,
        pixels,
    }
}

/// Test images: generated, never checked in.
#[cfg(test)]
pub(crate) mod test_images {
    use std::ffi::c_int;

    use image::ImageEncoder as _;
    use turbojpeg_sys as tj;

    /// Smooth structure plus per-pixel noise, so both the DCT and the resize have work to do.
    pub fn noisy_rgb(w: u32, h: u32, seed: u64) -> Vec<u8> {
        let mut rng = crate::sampler::SplitMix64::new(seed);
        let mut v = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3u32 {
                    let (xf, yf, cf) = (f64::from(x), f64::from(y), f64::from(c));
                    let s = 128.0 + 60.0 * (xf / 17.0 + cf).sin() + 40.0 * (yf / 23.0 - cf).cos();
                    let noise = rng.below(33) as f64 - 16.0;
                    v.push((s + noise).clamp(0.0, 255.0) as u8);
                }
            }
        }
        v
    }

    /// JPEG from the `image` crate's baseline encoder.
    pub fn jpeg(pixels: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(pixels, w, h, image::ExtendedColorType::Rgb8)
            .expect("encode test JPEG");
        out
    }

    /// PNG from the `image` crate.
    pub fn png(pixels: &[u8], w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, w, h, image::ExtendedColorType::Rgb8)
            .expect("encode test PNG");
        out
    }

    /// JPEG from libjpeg-turbo itself: any pixel format (RGB, gray, CMYK), subsampling, and
    /// progressive coding, which the `image` encoder cannot produce.
    pub fn tj_jpeg(
        pixels: &[u8],
        w: u32,
        h: u32,
        pf: tj::TJPF,
        subsamp: tj::TJSAMP,
        progressive: bool,
    ) -> Vec<u8> {
        let bpp = pixels.len() / (w as usize * h as usize);
        // SAFETY: the handle is checked non-null and destroyed at the end; `pixels` holds
        // `h` rows of `w × bpp` bytes in format `pf`; the output buffer libjpeg-turbo
        // allocates is copied and then freed with tj3Free.
        unsafe {
            let handle = tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int);
            assert!(!handle.is_null());
            assert_eq!(
                tj::tj3Set(handle, tj::TJPARAM_TJPARAM_QUALITY as c_int, 90),
                0
            );
            assert_eq!(
                tj::tj3Set(handle, tj::TJPARAM_TJPARAM_SUBSAMP as c_int, subsamp),
                0
            );
            let prog = c_int::from(progressive);
            assert_eq!(
                tj::tj3Set(handle, tj::TJPARAM_TJPARAM_PROGRESSIVE as c_int, prog),
                0
            );
            let mut buf: *mut u8 = std::ptr::null_mut();
            let mut size: tj::size_t = 0;
            let rc = tj::tj3Compress8(
                handle,
                pixels.as_ptr(),
                w as c_int,
                (w as usize * bpp) as c_int,
                h as c_int,
                pf,
                &mut buf,
                &mut size,
            );
            assert_eq!(rc, 0, "tj3Compress8 failed");
            let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
            tj::tj3Free(buf.cast());
            tj::tj3Destroy(handle);
            out
        }
    }

    pub use loaderd_image::psnr;
}

#[cfg(test)]
mod tests {
    use super::jpeg::SCALES;
    use super::test_images::*;
    use super::*;
    use crate::resize::resize_into;
    use loaderd_image::CropBox;
    use turbojpeg_sys as tj;

    fn decoder() -> Decoder {
        Decoder::new(DecodeLimits::default())
    }

    /// Full decode by an independent decoder (the `image` crate's), for reference.
    fn reference_decode(data: &[u8]) -> RgbImage {
        let img = image::load_from_memory(data)
            .expect("reference decode")
            .to_rgb8();
        RgbImage {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        }
    }

    /// The crop `rect` resized to `target`, from a region decode and from a full decode.
    fn roi_vs_full(data: &[u8], rect: Rect, target: (u32, u32)) -> (f64, DecodedRegion) {
        let region = decoder()
            .decode_region(data, rect, target)
            .expect("ROI decode");
        let bx = CropBox::from_rect(rect);
        let (x0, y0) = region.to_local(bx.x0, bx.y0);
        let (x1, y1) = region.to_local(bx.x1, bx.y1);
        let mut roi = vec![0u8; target.0 as usize * target.1 as usize * 3];
        let local = CropBox { x0, y0, x1, y1 };
        resize_into(&region.image, local, target.0, target.1, false, &mut roi);
        let full = reference_decode(data);
        let mut reference = vec![0u8; roi.len()];
        resize_into(&full, bx, target.0, target.1, false, &mut reference);
        (psnr(&roi, &reference), region)
    }

    #[test]
    fn a_decoder_can_move_to_a_worker_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Decoder>();
        let data = jpeg(&noisy_rgb(40, 30, 1), 40, 30, 90);
        let mut d = decoder();
        d.header(&data).unwrap();
        let info = std::thread::spawn(move || d.header(&data)).join().unwrap();
        assert_eq!(info.unwrap().width, 40);
    }

    #[test]
    fn header_reports_format_and_size() {
        let px = noisy_rgb(123, 77, 1);
        let mut d = decoder();
        let info = d.header(&jpeg(&px, 123, 77, 90)).unwrap();
        assert_eq!(
            (info.width, info.height, info.format),
            (123, 77, Format::Jpeg)
        );
        let info = d.header(&png(&px, 123, 77)).unwrap();
        assert_eq!(
            (info.width, info.height, info.format),
            (123, 77, Format::Png)
        );
    }

    /// Decoding only the region, DCT-downscaled, then resizing gives what a full decode (by
    /// another decoder) plus the same resize gives, up to the decoders' differences. The
    /// bound, 40 dB, is an RMS difference of 2.5 levels (measured: 44.5–64 dB, printed). The two
    /// paths differ by design: libjpeg-turbo's scaled IDCT is a (sharper) box-like filter where
    /// the reference applies the wider triangle filter to all pixels, and the two decoders'
    /// chroma upsampling differs; neither is wrong.
    #[test]
    fn region_decode_matches_full_decode_and_resize() {
        let (w, h) = (640, 480);
        let px = noisy_rgb(w, h, 7);
        let inputs = [
            ("image q90", jpeg(&px, w, h, 90)),
            (
                "tj 4:2:0",
                tj_jpeg(&px, w, h, tj::TJPF_TJPF_RGB, tj::TJSAMP_TJSAMP_420, false),
            ),
            (
                "tj 4:4:4",
                tj_jpeg(&px, w, h, tj::TJPF_TJPF_RGB, tj::TJSAMP_TJSAMP_444, false),
            ),
            (
                "tj 4:2:2 progressive",
                tj_jpeg(&px, w, h, tj::TJPF_TJPF_RGB, tj::TJSAMP_TJSAMP_422, true),
            ),
        ];
        let cases = [
            (
                Rect {
                    x: 0,
                    y: 0,
                    w: 640,
                    h: 480,
                },
                (224, 224),
            ),
            (
                Rect {
                    x: 101,
                    y: 37,
                    w: 400,
                    h: 300,
                },
                (100, 75),
            ),
            (
                Rect {
                    x: 333,
                    y: 211,
                    w: 250,
                    h: 260,
                },
                (224, 224),
            ),
            (
                Rect {
                    x: 17,
                    y: 5,
                    w: 611,
                    h: 402,
                },
                (64, 64),
            ),
            (
                Rect {
                    x: 250,
                    y: 100,
                    w: 60,
                    h: 90,
                },
                (224, 224),
            ),
        ];
        let mut scaled_down = 0;
        for (name, data) in &inputs {
            for (rect, target) in cases {
                let (db, region) = roi_vs_full(data, rect, target);
                eprintln!(
                    "{name}: {rect:?} -> {target:?} at scale {}/{}: {db:.1} dB",
                    region.scale_num, region.scale_denom
                );
                assert!(db >= 40.0, "{name} {rect:?}: {db:.1} dB");
                // The DCT never leaves fewer pixels than the target.
                let s = region.scale();
                assert!(f64::from(rect.w) * s >= f64::from(target.0.min(rect.w)) - 1e-9);
                assert!(f64::from(rect.h) * s >= f64::from(target.1.min(rect.h)) - 1e-9);
                scaled_down += usize::from(region.scale_num < region.scale_denom);
            }
        }
        assert!(scaled_down >= 8, "the DCT scaling path was exercised");
    }

    #[test]
    fn region_at_full_scale_equals_crop_of_full_decode() {
        let (w, h) = (300, 200);
        let px = noisy_rgb(w, h, 3);
        for subsamp in [tj::TJSAMP_TJSAMP_420, tj::TJSAMP_TJSAMP_444] {
            let data = tj_jpeg(&px, w, h, tj::TJPF_TJPF_RGB, subsamp, false);
            let mut d = decoder();
            let full = d
                .decode_region(&data, Rect { x: 0, y: 0, w, h }, (w, h))
                .unwrap();
            assert_eq!((full.scale_num, full.scale_denom), (1, 1));
            let rect = Rect {
                x: 37,
                y: 21,
                w: 150,
                h: 99,
            };
            let part = d.decode_region(&data, rect, (150, 99)).unwrap();
            assert_eq!((part.image.width, part.image.height), (150, 99));
            assert_eq!((part.origin_x, part.origin_y), (37, 21));
            let expect = crop(&full.image, rect);
            let max_diff = part
                .image
                .pixels
                .iter()
                .zip(&expect.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(max_diff <= 1, "subsamp {subsamp}: max diff {max_diff}");
        }
    }

    #[test]
    fn scale_choice_never_undersamples_and_is_the_smallest() {
        for cw in (1..700).step_by(7) {
            for ch in (1..500).step_by(11) {
                for target in [(224, 224), (64, 32), (1, 1), (500, 10)] {
                    let (num, denom) = choose_scale(cw, ch, target);
                    let ok = |n: u32, d: u32| {
                        u64::from(cw) * u64::from(n) >= u64::from(target.0) * u64::from(d)
                            && u64::from(ch) * u64::from(n) >= u64::from(target.1) * u64::from(d)
                    };
                    if (num, denom) != (1, 1) {
                        assert!(ok(num, denom), "{cw}x{ch} -> {target:?}: {num}/{denom}");
                    }
                    // No smaller useful n/8 would do.
                    let n8 = num * 8 / denom;
                    for smaller in SCALES.into_iter().filter(|&n| n < u64::from(n8)) {
                        let fits = ok(smaller as u32, 8);
                        assert!(!fits, "{cw}x{ch} -> {target:?}: {smaller}/8 fits");
                    }
                }
            }
        }
        assert_eq!(choose_scale(1000, 1000, (224, 224)), (1, 4));
        assert_eq!(choose_scale(1000, 800, (224, 224)), (3, 8));
        assert_eq!(choose_scale(2000, 2000, (224, 224)), (1, 8));
        assert_eq!(choose_scale(100, 100, (224, 224)), (1, 1));
        // 5/8..7/8 would fit but cost more than decoding at full size.
        assert_eq!(choose_scale(300, 300, (224, 224)), (1, 1));
    }

    #[test]
    fn grayscale_jpeg_decodes_to_rgb() {
        let (w, h) = (96, 64);
        let gray: Vec<u8> = noisy_rgb(w, h, 5).chunks(3).map(|p| p[0]).collect();
        let data = tj_jpeg(
            &gray,
            w,
            h,
            tj::TJPF_TJPF_GRAY,
            tj::TJSAMP_TJSAMP_GRAY,
            false,
        );
        let r = decoder()
            .decode_region(&data, Rect { x: 0, y: 0, w, h }, (w, h))
            .unwrap();
        assert_eq!(r.image.pixels.len(), gray.len() * 3);
        let mut as_rgb = Vec::new();
        for (p, g) in r.image.pixels.chunks(3).zip(&gray) {
            assert!(p[0] == p[1] && p[1] == p[2]);
            as_rgb.extend_from_slice(&[*g; 3]);
        }
        assert!(psnr(&r.image.pixels, &as_rgb) > 30.0);
    }

    #[test]
    fn cmyk_jpeg_decodes_like_pillow() {
        let (w, h) = (32, 24);
        let (c, m, y, k) = (200u8, 100u8, 50u8, 220u8);
        let px: Vec<u8> = [c, m, y, k].repeat(w as usize * h as usize);
        let data = tj_jpeg(&px, w, h, tj::TJPF_TJPF_CMYK, tj::TJSAMP_TJSAMP_444, false);
        let r = decoder()
            .decode_region(
                &data,
                Rect {
                    x: 4,
                    y: 4,
                    w: 16,
                    h: 16,
                },
                (8, 8),
            )
            .unwrap();
        let expect = [c, m, y].map(|v| (u32::from(v) * u32::from(k) + 127) / 255);
        for p in r.image.pixels.chunks(3) {
            for (got, want) in p.iter().zip(expect) {
                assert!(u32::from(*got).abs_diff(want) <= 2, "{p:?} vs {expect:?}");
            }
        }
    }

    #[test]
    fn png_region_is_exact() {
        let (w, h) = (50, 40);
        let px = noisy_rgb(w, h, 9);
        let rect = Rect {
            x: 7,
            y: 3,
            w: 20,
            h: 30,
        };
        let r = decoder()
            .decode_region(&png(&px, w, h), rect, (10, 10))
            .unwrap();
        let full = RgbImage {
            width: w,
            height: h,
            pixels: px,
        };
        assert_eq!(r.image, crop(&full, rect));
        assert_eq!(
            (r.scale_num, r.scale_denom, r.origin_x, r.origin_y),
            (1, 1, 7, 3)
        );
    }

    fn all_rect(w: u32, h: u32) -> Rect {
        Rect { x: 0, y: 0, w, h }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let px = noisy_rgb(64, 48, 2);
        let good_jpeg = jpeg(&px, 64, 48, 90);
        let good_png = png(&px, 64, 48);
        let mut d = decoder();
        let r = all_rect(64, 48);
        assert_eq!(d.header(b""), Err(DecodeError::Empty));
        assert_eq!(
            d.decode_region(b"", r, (8, 8)).unwrap_err(),
            DecodeError::Empty
        );
        assert_eq!(
            d.header(b"GIF89a....").unwrap_err(),
            DecodeError::Unsupported
        );
        assert_eq!(
            d.decode_region(b"just some text", r, (8, 8)).unwrap_err(),
            DecodeError::Unsupported
        );
        // Magic bytes only, truncated files, and a mangled frame header.
        assert!(matches!(
            d.header(&[0xff, 0xd8, 0xff]),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            d.header(b"\x89PNG\r\n\x1a\n"),
            Err(DecodeError::Corrupt(_))
        ));
        for cut in [good_jpeg.len() / 2, good_jpeg.len() - 10, 200] {
            let e = d.decode_region(&good_jpeg[..cut], r, (64, 48)).unwrap_err();
            assert!(matches!(e, DecodeError::Corrupt(_)), "cut at {cut}: {e:?}");
        }
        for cut in [good_png.len() / 2, good_png.len() - 20, 40] {
            let e = d.decode_region(&good_png[..cut], r, (64, 48)).unwrap_err();
            assert!(matches!(e, DecodeError::Corrupt(_)), "cut at {cut}: {e:?}");
        }
        let mut mangled = good_jpeg.clone();
        let sof = find_sof(&mangled);
        mangled[sof + 9] = 7; // component count
        assert!(d.decode_region(&mangled, r, (8, 8)).is_err());
        // Garbage in the entropy-coded data: an error or some pixels, never a panic.
        for step in 1..40 {
            let mut bad = good_jpeg.clone();
            for i in (sof + 200..bad.len() - 2).step_by(step * 13) {
                bad[i] ^= 0x5a;
            }
            let _ = d.decode_region(&bad, r, (16, 16));
        }
        // The decoder still works afterwards.
        d.decode_region(&good_jpeg, r, (64, 48)).unwrap();
    }

    #[test]
    fn regions_outside_the_image_are_refused() {
        let px = noisy_rgb(64, 48, 2);
        let mut d = decoder();
        for data in [jpeg(&px, 64, 48, 90), png(&px, 64, 48)] {
            for rect in [
                Rect {
                    x: 60,
                    y: 0,
                    w: 8,
                    h: 8,
                },
                Rect {
                    x: 0,
                    y: 0,
                    w: 0,
                    h: 8,
                },
                Rect {
                    x: 0,
                    y: 47,
                    w: 8,
                    h: 2,
                },
            ] {
                let e = d.decode_region(&data, rect, (8, 8)).unwrap_err();
                assert!(matches!(e, DecodeError::BadRegion { .. }), "{e:?}");
            }
        }
    }

    fn find_sof(jpeg: &[u8]) -> usize {
        jpeg.windows(2)
            .position(|w| w[0] == 0xff && (w[1] == 0xc0 || w[1] == 0xc2))
            .expect("SOF marker")
    }

    /// CRC-32 (IEEE), for rewriting a PNG chunk.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// `bomb` claims `side × side` pixels: its header and its decode are refused naming that
    /// size and the default limit.
    fn refused_as_too_large(d: &mut Decoder, bomb: &[u8], side: u64) {
        let too_large = DecodeError::TooLarge {
            width: side,
            height: side,
            max: 64 << 20,
        };
        assert_eq!(d.header(bomb), Err(too_large.clone()));
        assert_eq!(
            d.decode_region(bomb, all_rect(16, 16), (8, 8)).unwrap_err(),
            too_large
        );
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        let px = noisy_rgb(16, 16, 4);
        let mut d = decoder();
        // JPEG's frame header holds 16-bit sizes: claim 65000 × 65000 (4.2 G pixels).
        let mut bomb = jpeg(&px, 16, 16, 90);
        let sof = find_sof(&bomb);
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xfd, 0xe8, 0xfd, 0xe8]);
        refused_as_too_large(&mut d, &bomb, 65000);

        // PNG: a valid IHDR (CRC fixed) claiming 100000 × 100000.
        let mut bomb = png(&px, 16, 16);
        bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        refused_as_too_large(&mut d, &bomb, 100_000);

        // A custom limit applies to ordinary images too.
        let mut small = Decoder::new(DecodeLimits { max_pixels: 100 });
        let e = small.header(&jpeg(&px, 16, 16, 90)).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::TooLarge {
                width: 16,
                height: 16,
                max: 100
            }
        ));
    }
}
