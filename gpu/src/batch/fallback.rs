//! The CPU decoder behind nvJPEG: for JPEGs its fast path does not take, and the checks its
//! output must pass before it is uploaded.

use super::report::SampleError;
use crate::jpeg::Unsupported;
use crate::nvjpeg::ImageError;

/// An image the CPU decoder produced: `height` rows of `3 × width` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// The pixels, RGB interleaved, rows unpadded.
    pub pixels: Vec<u8>,
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// Decodes a JPEG the GPU does not take (e.g. libjpeg-turbo); the error is for the report.
pub type CpuDecoder = Box<dyn FnMut(&[u8]) -> Result<RgbImage, String> + Send>;

/// Checks a CPU decoder's output against the size limit and its own claims.
pub(super) fn accept_fallback(img: RgbImage, max_pixels: u64) -> Result<RgbImage, SampleError> {
    let px = u64::from(img.width) * u64::from(img.height);
    if img.width == 0 || img.height == 0 || px > max_pixels {
        return Err(SampleError::BadFallback(format!(
            "{}x{} (limit {max_pixels} pixels)",
            img.width, img.height
        )));
    }
    if img.pixels.len() as u64 != px * 3 {
        return Err(SampleError::BadFallback(format!(
            "{}x{} RGB in {} bytes",
            img.width,
            img.height,
            img.pixels.len()
        )));
    }
    Ok(img)
}

/// Decodes `data`, which nvJPEG refused because of `why`, with `cpu`. Without a CPU decoder
/// the sample fails with [`ImageError::NeedsCpu`] carrying `why`.
pub(super) fn cpu_decode(
    cpu: Option<&mut CpuDecoder>,
    data: &[u8],
    why: Unsupported,
    max_pixels: u64,
) -> Result<RgbImage, SampleError> {
    let Some(decode) = cpu else {
        return Err(ImageError::NeedsCpu(why).into());
    };
    decode(data)
        .map_err(SampleError::CpuDecode)
        .and_then(|img| accept_fallback(img, max_pixels))
}

/// [`cpu_decode`] for a JPEG nvJPEG refused only when decoding, after its space in the decode
/// buffer was reserved from the header: the pixels must have the header's `(width, height)`.
pub(super) fn late_fallback(
    cpu: Option<&mut CpuDecoder>,
    data: &[u8],
    why: Unsupported,
    size: (u32, u32),
    max_pixels: u64,
) -> Result<Vec<u8>, SampleError> {
    let img = cpu_decode(cpu, data, why, max_pixels)?;
    if (img.width, img.height) != size {
        return Err(SampleError::BadFallback(format!(
            "CPU decode is {}x{}, header says {}x{}",
            img.width, img.height, size.0, size.1
        )));
    }
    Ok(img.pixels)
}
