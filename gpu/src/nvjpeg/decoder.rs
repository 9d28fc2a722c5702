//! [`JpegDecoder`]: one worker's nvJPEG handle, JPEG state and stream, and the batch decode
//! described in the parent module.

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::driver::DevicePtrMut;
use loaderd_image::CropBox;

use super::engine::Engine;
use super::job::{
    DEFAULT_MAX_DECODE_BYTES, DecodeJob, ImageGeometry, InspectedJpeg, check_slots, pack,
};
use super::route::{Route, route};
use super::{Backend, Image, MAX_COMPONENT, NvJpeg, Stream, status};
use crate::GpuError;
use crate::augment::SampleParams;
use crate::jpeg::{self, Unsupported};
use crate::pinned::{DeviceBuffer, GpuContext, H2dStream};

/// Why one image of a batch was not decoded on the GPU. The other images are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A valid JPEG the fast path does not take: decode it on the CPU and upload it.
    #[error("needs the CPU decoder: {0}")]
    NeedsCpu(Unsupported),
    /// The header claims more pixels than allowed (a decompression bomb, or just too big).
    #[error("{width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Header width.
        width: u32,
        /// Header height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
    /// The header is broken, or nvJPEG and the header reader disagree about it.
    #[error("corrupt JPEG: {0}")]
    Corrupt(String),
    /// nvJPEG failed on this image (decoded alone, so the status is this image's).
    #[error("nvJPEG {call} failed on this image with status {status}")]
    Decode {
        /// The nvJPEG entry point.
        call: &'static str,
        /// `nvjpegStatus_t`.
        status: i32,
    },
}

impl ImageError {
    pub(crate) fn from_status(call: &'static str, status: c_int) -> Self {
        match status {
            status::JPEG_NOT_SUPPORTED | status::IMPLEMENTATION_NOT_SUPPORTED => {
                ImageError::NeedsCpu(Unsupported::Decoder(status))
            }
            _ => ImageError::Decode { call, status },
        }
    }
}

/// Where a decoded image is in its batch's device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedImage {
    /// Byte offset of pixel (0, 0).
    pub offset: usize,
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes per row (RGB interleaved, ≥ 3 × width).
    pub pitch: u32,
}

impl DecodedImage {
    /// The augment kernel's view of this image with a crop box (source pixels) and a flip.
    pub fn sample(&self, crop: CropBox, flip: bool) -> SampleParams {
        SampleParams {
            src_offset: self.offset,
            width: self.width,
            height: self.height,
            stride: self.pitch,
            crop,
            flip,
        }
    }
}

/// A decoded batch: every image that decoded lies in `buffer`; `images[i]` says where image
/// `i` is, or why it is not there.
#[derive(Debug)]
pub struct DecodedBatch {
    /// RGB interleaved images, back to back.
    pub buffer: DeviceBuffer,
    /// One entry per input image, in input order.
    pub images: Vec<Result<DecodedImage, ImageError>>,
}

/// One worker's nvJPEG decoder: an nvJPEG handle and JPEG state on the best backend (an
/// `Engine`), a GPU hybrid one made when the hardware backend refuses an image, and the
/// stream everything is queued on.
pub struct JpegDecoder {
    ctx: GpuContext,
    lib: Arc<NvJpeg>,
    primary: Engine,
    /// For images the hardware backend refuses: `None` until first needed, then the engine,
    /// or `Some(None)` when it could not be made (those images go to the CPU).
    hybrid: Option<Option<Engine>>,
    max_pixels: u64,
    /// Cap on one [`Self::decode_batch`] buffer.
    max_buffer_bytes: usize,
    // Dropped after `Drop::drop` has synchronized it and destroyed the engines.
    stream: H2dStream,
}

// SAFETY: nvJPEG handles may be used from any thread; the JPEG states and parsed streams are
// used only through `&mut self` (one thread at a time), and `inspect` (`&self`) touches only
// the primary handle.
unsafe impl Send for JpegDecoder {}

impl std::fmt::Debug for JpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JpegDecoder")
            .field("backend", &self.primary.backend())
            .field("max_pixels", &self.max_pixels)
            .finish_non_exhaustive()
    }
}

impl JpegDecoder {
    /// A decoder on `ctx`, with the hardware backend if the device has JPEG engines. Images
    /// whose header claims more than `max_pixels` are refused before any allocation.
    pub fn new(ctx: &GpuContext, lib: Arc<NvJpeg>, max_pixels: u64) -> Result<Self, GpuError> {
        if max_pixels == 0 {
            return Err(GpuError::InvalidArgument(
                "max_pixels must be positive".into(),
            ));
        }
        ctx.bind()?;
        let f = *lib.functions();
        let version = lib.version();
        let mut primary = match Engine::new(&f, Backend::Hardware, version) {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(error = %e, "nvJPEG hardware backend unavailable; using the default");
                Engine::new(&f, Backend::Default, version)?
            }
        };
        let stream = match H2dStream::new(ctx) {
            Ok(s) => s,
            Err(e) => {
                primary.destroy(&f);
                return Err(e);
            }
        };
        tracing::debug!(
            backend = ?primary.backend(),
            interpolated = primary.interpolated(),
            "nvJPEG decoder ready"
        );
        Ok(JpegDecoder {
            ctx: ctx.clone(),
            lib,
            primary,
            hybrid: None,
            max_pixels,
            max_buffer_bytes: DEFAULT_MAX_DECODE_BYTES,
            stream,
        })
    }

    /// The backend of the decoder's own handle (images it refuses may take another).
    pub fn backend(&self) -> Backend {
        self.primary.backend()
    }

    /// Whether the decoder's own handle upsamples chroma (4:2:0, 4:2:2) by interpolation, as
    /// libjpeg-turbo does, rather than by replication.
    pub fn interpolated_upsampling(&self) -> bool {
        self.primary.interpolated()
    }

    /// The stream decodes are queued on; queue work that reads the output on it too.
    pub fn stream(&self) -> &H2dStream {
        &self.stream
    }

    /// The largest `width × height` accepted.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Caps the buffer one [`Self::decode_batch`] allocates (default
    /// [`DEFAULT_MAX_DECODE_BYTES`]); a batch needing more fails with
    /// [`GpuError::DecodeBufferCap`].
    pub fn set_max_buffer_bytes(&mut self, cap: usize) {
        self.max_buffer_bytes = cap;
    }

    /// Reads the header and decides whether the GPU decodes this image. Allocates nothing.
    pub fn inspect<'a>(&self, data: &'a [u8]) -> Result<InspectedJpeg<'a>, ImageError> {
        let header = jpeg::parse_header(data).map_err(|e| ImageError::Corrupt(e.to_string()))?;
        if header.pixels() > self.max_pixels {
            return Err(ImageError::TooLarge {
                width: header.width,
                height: header.height,
                max_pixels: self.max_pixels,
            });
        }
        header.gpu_support().map_err(ImageError::NeedsCpu)?;
        let f = self.lib.functions();
        let (mut n, mut css) = (0 as c_int, 0 as c_int);
        let (mut w, mut h) = ([0 as c_int; MAX_COMPONENT], [0 as c_int; MAX_COMPONENT]);
        // SAFETY: `data` is readable for `len` bytes; `w` and `h` hold NVJPEG_MAX_COMPONENT
        // ints as the function writes; `handle` is live.
        let st = unsafe {
            (f.get_image_info)(
                self.primary.handle(),
                data.as_ptr(),
                data.len(),
                &mut n,
                &mut css,
                w.as_mut_ptr(),
                h.as_mut_ptr(),
            )
        };
        if st != status::SUCCESS {
            return Err(ImageError::from_status("nvjpegGetImageInfo", st));
        }
        // nvJPEG writes what it thinks the size is; the buffer is sized from our header. They
        // must agree, or a crafted file could make it write past its slot.
        if i64::from(w[0]) != i64::from(header.width) || i64::from(h[0]) != i64::from(header.height)
        {
            return Err(ImageError::Corrupt(format!(
                "header says {}x{}, nvJPEG says {}x{}",
                header.width, header.height, w[0], h[0]
            )));
        }
        Ok(InspectedJpeg::new(
            data,
            ImageGeometry::new(header.width, header.height),
        ))
    }

    /// Decodes `jobs` into `dst` (RGB interleaved), queued on [`Self::stream`]. The outer
    /// error is a failure of the decoder or a bad argument; the inner ones are per image.
    pub fn decode_into(
        &mut self,
        jobs: &[DecodeJob<'_>],
        dst: &mut DeviceBuffer,
    ) -> Result<Vec<Result<(), ImageError>>, GpuError> {
        check_slots(jobs, dst.len())?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.ctx.bind()?;
        let cu_stream = self.stream.cuda().clone();
        let (base, _record) = dst.slice.device_ptr_mut(&cu_stream);
        let image = |j: &DecodeJob<'_>| Image {
            channel: [
                (base + j.offset() as u64) as *mut u8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ],
            pitch: [j.geometry().pitch() as usize, 0, 0, 0],
        };
        let mut images: Vec<Image> = jobs.iter().map(image).collect();
        let f = *self.lib.functions();
        let stream = self.raw_stream();
        if self.primary.backend() != Backend::Hardware {
            let data: Vec<&[u8]> = jobs.iter().map(DecodeJob::data).collect();
            // SAFETY: each `images[i]` points at `pitch × height` bytes inside `dst` (checked
            // above, sizes from `inspect`, which nvJPEG agreed to), which outlives the work.
            return Ok(unsafe { decode_group(&mut self.primary, &f, &data, &mut images, stream) });
        }
        let routes = self.routes(&f, jobs);
        let mut out: Vec<Result<(), ImageError>> = routes
            .iter()
            .map(|r| match r {
                Route::Cpu => Err(ImageError::NeedsCpu(Unsupported::HardwareRefused)),
                Route::Hardware | Route::GpuHybrid => Ok(()),
            })
            .collect();
        for which in [Route::Hardware, Route::GpuHybrid] {
            let idx: Vec<usize> = (0..jobs.len()).filter(|&i| routes[i] == which).collect();
            if idx.is_empty() {
                continue;
            }
            let engine = match which {
                Route::Hardware => &mut self.primary,
                _ => match self.hybrid.as_mut().and_then(Option::as_mut) {
                    Some(e) => e,
                    None => continue, // not routed here without one (see `routes`)
                },
            };
            let data: Vec<&[u8]> = idx.iter().map(|&i| jobs[i].data()).collect();
            let mut group: Vec<Image> = idx.iter().map(|&i| images[i]).collect();
            // SAFETY: as above, for a subset of the images.
            let results = unsafe { decode_group(engine, &f, &data, &mut group, stream) };
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = r;
            }
        }
        Ok(out)
    }

    /// Asks the hardware backend about each job, makes the GPU hybrid engine the first time
    /// one is refused, and routes the batch ([`route`]).
    fn routes(&mut self, f: &super::Functions, jobs: &[DecodeJob<'_>]) -> Vec<Route> {
        let support: Vec<Option<bool>> = jobs
            .iter()
            .map(|j| match self.primary.supported(f, j.data()) {
                Ok(yes) => Some(yes),
                Err(status) => {
                    tracing::debug!(status, "nvjpegDecodeBatchedSupported could not tell");
                    None
                }
            })
            .collect();
        let refused = support.iter().any(|s| *s != Some(true));
        if refused && self.hybrid.is_none() {
            let made = Engine::new(f, Backend::GpuHybrid, self.lib.version())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no GPU hybrid nvJPEG backend; refused images go to the CPU")
                })
                .ok();
            self.hybrid = Some(made);
        }
        let hybrid = matches!(self.hybrid, Some(Some(_)));
        let routes = route(&support, hybrid);
        if refused {
            tracing::debug!(?routes, "hardware decoder refused some images");
        }
        routes
    }

    fn raw_stream(&self) -> Stream {
        self.stream.cuda().cu_stream().cast()
    }

    /// Inspects and decodes `images` into one new device buffer. An image that cannot be
    /// decoded here is an `Err` in its entry (`NeedsCpu` for the CPU path, the others to skip
    /// or fail); the outer error is the decoder's own failure.
    pub fn decode_batch(&mut self, images: &[&[u8]]) -> Result<DecodedBatch, GpuError> {
        let inspected: Vec<Result<InspectedJpeg<'_>, ImageError>> =
            images.iter().map(|d| self.inspect(d)).collect();
        let (offsets, total) = pack(
            inspected
                .iter()
                .map(|g| g.as_ref().map_or(0, |i| i.geometry().bytes())),
            self.max_buffer_bytes,
        )?;
        // Every byte that is read is written by a decode: no memset.
        let mut buffer = self.stream.alloc_uninit(total.max(1))?;
        let mut jobs = Vec::new();
        let mut which = Vec::new();
        for (i, g) in inspected.iter().enumerate() {
            if let Ok(image) = g {
                jobs.push(DecodeJob::new(*image, offsets[i])?);
                which.push(i);
            }
        }
        let decoded = self.decode_into(&jobs, &mut buffer)?;
        let mut out: Vec<Result<DecodedImage, ImageError>> = inspected
            .into_iter()
            .zip(&offsets)
            .map(|(g, &offset)| {
                g.map(|i| DecodedImage {
                    offset,
                    width: i.geometry().width(),
                    height: i.geometry().height(),
                    pitch: i.geometry().pitch(),
                })
            })
            .collect();
        for (i, r) in which.into_iter().zip(decoded) {
            if let Err(e) = r {
                out[i] = Err(e);
            }
        }
        Ok(DecodedBatch {
            buffer,
            images: out,
        })
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        if let Err(e) = self.stream.synchronize() {
            tracing::error!(error = %e, "draining the decode stream failed");
        }
        // No work that uses the engines is pending (the stream was drained above).
        let f = *self.lib.functions();
        self.primary.destroy(&f);
        if let Some(Some(hybrid)) = self.hybrid.as_mut() {
            hybrid.destroy(&f);
        }
    }
}

/// Decodes `data` into `images` on one engine: one batched call, and when that fails (nvJPEG
/// fails a whole batch for one bad bitstream) each image alone, so a corrupt JPEG costs its
/// own sample only.
///
/// # Safety
/// `images[i].channel[0]` must point at `pitch[0] × height` writable device bytes (`height`
/// being image `i`'s), valid until the work queued on `stream` has run.
unsafe fn decode_group(
    engine: &mut Engine,
    f: &super::Functions,
    data: &[&[u8]],
    images: &mut [Image],
    stream: Stream,
) -> Vec<Result<(), ImageError>> {
    if data.len() > 1 {
        // SAFETY: this function's contract.
        match unsafe { engine.batched(f, data, images, stream) } {
            Ok(()) => return vec![Ok(()); data.len()],
            Err(st) => tracing::debug!(
                status = st,
                n = data.len(),
                backend = ?engine.backend(),
                "batched decode failed; decoding one by one"
            ),
        }
    }
    data.iter()
        .zip(images.iter_mut())
        .map(|(d, img)| {
            // SAFETY: this function's contract, per image.
            unsafe { engine.single(f, d, img, stream) }
                .map_err(|(call, st)| ImageError::from_status(call, st))
        })
        .collect()
}
