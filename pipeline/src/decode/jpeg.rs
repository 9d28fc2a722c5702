//! JPEG through libjpeg-turbo 3's C API: DCT-scaled decode of a region (see the parent module).

use std::ffi::{CStr, c_int};

use loaderd_image::Rect;
use turbojpeg_sys as tj;

use super::{DecodeError, DecodeLimits, DecodedRegion, RgbImage, crop};

/// DCT scales `n/8` worth using below 8/8. libjpeg-turbo has SIMD inverse DCTs for 1/8, 2/8
/// and 4/8 and a cheap 3×3 one; 5/8–7/8 run slower than a full-size decode (release, 2 cores:
/// decode of a 329² crop of a 500×375 JPEG + resize to 224² took 0.62, 0.69, 0.76, 0.79, 1.03,
/// 1.19, 1.53 and 1.14 ms for n = 1..8), so they are skipped.
pub(super) const SCALES: [u64; 4] = [1, 2, 3, 4];

/// The DCT scale `n/8` that leaves the smallest crop still at least `target` (1/1 when no
/// useful scale does).
pub fn choose_scale(crop_w: u32, crop_h: u32, target: (u32, u32)) -> (u32, u32) {
    let (tw, th) = (u64::from(target.0), u64::from(target.1));
    for n in SCALES {
        if u64::from(crop_w) * n >= tw * 8 && u64::from(crop_h) * n >= th * 8 {
            return reduce(n as u32, 8);
        }
    }
    (1, 1)
}

fn reduce(num: u32, denom: u32) -> (u32, u32) {
    let (mut a, mut b) = (num, denom);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (num / a, denom / a)
}

/// `ceil(v * num / denom)`: libjpeg-turbo's `TJSCALED`.
fn scaled(v: u32, num: u32, denom: u32) -> u32 {
    (u64::from(v) * u64::from(num)).div_ceil(u64::from(denom)) as u32
}

/// The header fields the decode needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct JpegHeader {
    pub(super) width: u32,
    pub(super) height: u32,
    subsamp: i32,
    colorspace: i32,
    lossless: bool,
}

/// A libjpeg-turbo decompression handle.
pub(super) struct JpegDecoder {
    handle: tj::tjhandle,
}

// SAFETY: a TurboJPEG handle has no thread affinity; it is used from one thread at a time
// because every method takes `&mut self`.
unsafe impl Send for JpegDecoder {}

impl JpegDecoder {
    pub(super) fn new(limits: DecodeLimits) -> Result<Self, DecodeError> {
        // SAFETY: tj3Init has no preconditions; a null return is checked below.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err(DecodeError::Corrupt(
                "cannot create a libjpeg-turbo handle".into(),
            ));
        }
        let dec = JpegDecoder { handle };
        dec.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        let max = i32::try_from(limits.max_pixels).unwrap_or(i32::MAX);
        dec.set(tj::TJPARAM_TJPARAM_MAXPIXELS, max)?;
        Ok(dec)
    }

    fn set(&self, param: tj::TJPARAM, value: i32) -> Result<(), DecodeError> {
        // SAFETY: the handle is live (owned by self); any parameter value is validated by the
        // library.
        let rc = unsafe { tj::tj3Set(self.handle, param as c_int, value) };
        self.check(rc)
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: the handle is live; tj3Get only reads the handle's state.
        unsafe { tj::tj3Get(self.handle, param as c_int) }
    }

    fn check(&self, rc: c_int) -> Result<(), DecodeError> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the handle is live; tj3GetErrorStr returns a NUL-terminated string owned by
        // the handle (or a static one), valid until the next call on it, and copied at once.
        let msg = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle)) }
            .to_string_lossy()
            .into_owned();
        Err(DecodeError::Corrupt(msg))
    }

    pub(super) fn header(&mut self, data: &[u8]) -> Result<JpegHeader, DecodeError> {
        // SAFETY: the handle is live; the pointer and length describe `data`, which outlives
        // the call; libjpeg-turbo only reads it.
        let rc = unsafe {
            tj::tj3DecompressHeader(self.handle, data.as_ptr(), data.len() as tj::size_t)
        };
        self.check(rc)?;
        let width = self.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
        if self.get(tj::TJPARAM_TJPARAM_PRECISION) != 8 {
            return Err(DecodeError::UnsupportedFeature(
                "JPEG sample precision other than 8 bits".into(),
            ));
        }
        let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
            return Err(DecodeError::Corrupt("negative JPEG dimensions".into()));
        };
        Ok(JpegHeader {
            width,
            height,
            subsamp: self.get(tj::TJPARAM_TJPARAM_SUBSAMP),
            colorspace: self.get(tj::TJPARAM_TJPARAM_COLORSPACE),
            lossless: self.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1,
        })
    }

    pub(super) fn decode_region(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        region: Rect,
        target: (u32, u32),
    ) -> Result<DecodedRegion, DecodeError> {
        let cmyk = header.colorspace == tj::TJCS_TJCS_CMYK as i32
            || header.colorspace == tj::TJCS_TJCS_YCCK as i32;
        let mcu_w = usize::try_from(header.subsamp)
            .ok()
            .and_then(|s| TJ_MCU_WIDTH.get(s).copied());
        // Lossless JPEGs and unknown subsampling take no scale or crop: decode whole.
        let (num, denom) = match mcu_w {
            Some(_) if !header.lossless => choose_scale(region.w, region.h, target),
            _ => (1, 1),
        };
        let (sw, sh) = (
            scaled(header.width, num, denom),
            scaled(header.height, num, denom),
        );
        // The region in scaled pixels, widened outward to whole pixels.
        let sx0 = (u64::from(region.x) * u64::from(num) / u64::from(denom)) as u32;
        let sy0 = (u64::from(region.y) * u64::from(num) / u64::from(denom)) as u32;
        let sx1 = scaled(region.x + region.w, num, denom).min(sw);
        let sy1 = scaled(region.y + region.h, num, denom).min(sh);
        let (ax0, crop_region) = match mcu_w {
            Some(mcu) if !header.lossless => {
                let step = scaled(mcu, num, denom).max(1);
                let ax0 = sx0 / step * step;
                let r = tj::tjregion {
                    x: ax0 as c_int,
                    y: sy0 as c_int,
                    w: (sx1 - ax0) as c_int,
                    h: (sy1 - sy0) as c_int,
                };
                (ax0, r)
            }
            _ => (
                0,
                tj::tjregion {
                    x: 0,
                    y: 0,
                    w: 0,
                    h: 0,
                },
            ),
        };
        let factor = tj::tjscalingfactor {
            num: num as c_int,
            denom: denom as c_int,
        };
        // SAFETY: the handle is live and has just read this image's header; the factor is one
        // of the n/8 factors libjpeg-turbo supports.
        let rc = unsafe { tj::tj3SetScalingFactor(self.handle, factor) };
        self.check(rc)?;
        // SAFETY: as above; the region lies inside the scaled image and its left edge is on a
        // scaled iMCU boundary (or it is the all-zero "uncropped" region).
        let rc = unsafe { tj::tj3SetCroppingRegion(self.handle, crop_region) };
        self.check(rc)?;

        let (out_x0, out_y0, out_w, out_h) = if crop_region.w == 0 {
            (0, 0, sw, sh)
        } else {
            (ax0, sy0, sx1 - ax0, sy1 - sy0)
        };
        let (pf, bpp) = if cmyk {
            (tj::TJPF_TJPF_CMYK, 4usize)
        } else {
            (tj::TJPF_TJPF_RGB, 3usize)
        };
        let pitch = out_w as usize * bpp;
        let mut buf = vec![0u8; pitch * out_h as usize];
        // SAFETY: the handle is live; `data` is read-only input that outlives the call; `buf`
        // holds exactly `pitch × out_h` bytes, which is the scaled, cropped image's size at
        // `bpp` bytes a pixel for pixel format `pf`, so libjpeg-turbo writes inside it.
        let rc = unsafe {
            tj::tj3Decompress8(
                self.handle,
                data.as_ptr(),
                data.len() as tj::size_t,
                buf.as_mut_ptr(),
                pitch as c_int,
                pf,
            )
        };
        self.check(rc)?;

        let full = RgbImage {
            width: out_w,
            height: out_h,
            pixels: if cmyk { cmyk_to_rgb(&buf) } else { buf },
        };
        // Drop what libjpeg-turbo decoded beyond the region (iMCU alignment, or a whole image).
        let keep = Rect {
            x: sx0 - out_x0,
            y: sy0 - out_y0,
            w: sx1 - sx0,
            h: sy1 - sy0,
        };
        let image = if keep.x == 0 && keep.y == 0 && keep.w == out_w && keep.h == out_h {
            full
        } else {
            crop(&full, keep)
        };
        Ok(DecodedRegion {
            image,
            scale_num: num,
            scale_denom: denom,
            origin_x: sx0,
            origin_y: sy0,
        })
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init, is destroyed exactly once, here.
        unsafe { tj::tj3Destroy(self.handle) }
    }
}

/// `tjMCUWidth` by subsampling (444, 422, 420, gray, 440, 411, 441), copied from
/// turbojpeg.h so that reading it needs no `unsafe` access to a foreign static.
const TJ_MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];

/// CMYK as stored by Adobe applications (inverted: 255 = no ink) to RGB, like Pillow's
/// `convert("RGB")` of such a file: `R = C·K/255`.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let k = u32::from(px[3]);
        for &c in &px[..3] {
            out.push(((u32::from(c) * k + 127) / 255) as u8);
        }
    }
    out
}
