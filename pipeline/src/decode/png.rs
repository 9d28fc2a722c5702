//! PNG through the `image` crate: decoded whole (PNG has no cheap region decode), then cropped.

use std::io::Cursor;

use super::{DecodeError, DecodeLimits, Format, ImageInfo, RgbImage, check_limits};

/// Width and height from the IHDR chunk, which the PNG format puts first.
pub(super) fn header(data: &[u8]) -> Result<ImageInfo, DecodeError> {
    let ihdr = data
        .get(8..24)
        .filter(|c| &c[4..8] == b"IHDR")
        .ok_or_else(|| DecodeError::Corrupt("PNG without an IHDR chunk".into()))?;
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok(ImageInfo {
        width: be(&ihdr[8..12]),
        height: be(&ihdr[12..16]),
        format: Format::Png,
    })
}

pub(super) fn decode(data: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    use image::ImageDecoder as _;
    let mut decoder = image::codecs::png::PngDecoder::new(Cursor::new(data))
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let mut image_limits = image::Limits::default();
    // 16-bit RGBA plus the RGB copy.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(11));
    decoder
        .set_limits(image_limits)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    check_limits(limits, width, height)?;
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width,
        height,
        pixels: rgb.into_raw(),
    })
}
