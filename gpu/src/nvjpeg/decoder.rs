//! [`JpegDecoder`]: one worker's nvJPEG handle, JPEG state and stream, and the batch decode
//! described in the parent module.

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::driver::DevicePtrMut;

use super::{
    Backend, Handle, Image, JpegState, MAX_COMPONENT, NvJpeg, OUTPUT_RGBI, Stream, status,
};
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

/// The size of an image the GPU will decode; only [`JpegDecoder::inspect`] makes one, so the
/// buffer space reserved for an image is always what nvJPEG will write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    width: u32,
    height: u32,
}

impl ImageGeometry {
    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per RGB row (no padding).
    pub fn pitch(&self) -> u32 {
        self.width * 3
    }

    /// Bytes of the decoded RGB image.
    pub fn bytes(&self) -> usize {
        self.pitch() as usize * self.height as usize
    }

    #[cfg(test)]
    pub(crate) fn for_test(width: u32, height: u32) -> Self {
        ImageGeometry { width, height }
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
    pub fn sample(&self, x0: f64, y0: f64, x1: f64, y1: f64, flip: bool) -> SampleParams {
        SampleParams {
            src_offset: self.offset,
            width: self.width,
            height: self.height,
            stride: self.pitch,
            x0,
            y0,
            x1,
            y1,
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

/// One image to decode into a buffer at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct DecodeJob<'a> {
    /// The JPEG file.
    pub data: &'a [u8],
    /// Its geometry, from [`JpegDecoder::inspect`] on the same `data`.
    pub geometry: ImageGeometry,
    /// Byte offset of its pixel (0, 0) in the destination buffer.
    pub offset: usize,
}

/// Start of each image in a packed buffer: 256-byte aligned (the alignment `cudaMalloc`
/// gives, so each image starts as a separately allocated one would); and the total size.
pub(crate) fn pack(
    sizes: impl IntoIterator<Item = usize>,
) -> Result<(Vec<usize>, usize), GpuError> {
    let mut offsets = Vec::new();
    let mut end = 0usize;
    for n in sizes {
        offsets.push(end);
        end = end
            .checked_add(n)
            .and_then(|e| e.checked_next_multiple_of(256))
            .ok_or_else(|| GpuError::InvalidArgument("batch size overflows".into()))?;
    }
    Ok((offsets, end))
}

/// One worker's nvJPEG decoder: handle, JPEG state, and the stream everything is queued on.
pub struct JpegDecoder {
    ctx: GpuContext,
    lib: Arc<NvJpeg>,
    handle: Handle,
    state: JpegState,
    backend: Backend,
    /// The batch size `nvjpegDecodeBatchedInitialize` was last called with.
    batched_size: Option<usize>,
    max_pixels: u64,
    // Dropped after `Drop::drop` has synchronized it and destroyed the state and handle.
    stream: H2dStream,
}

// SAFETY: the nvJPEG handle may be used from any thread; the JPEG state is used only through
// `&mut self` (one thread at a time), and `inspect` (`&self`) touches only the handle.
unsafe impl Send for JpegDecoder {}

impl std::fmt::Debug for JpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JpegDecoder")
            .field("backend", &self.backend)
            .field("max_pixels", &self.max_pixels)
            .finish_non_exhaustive()
    }
}

fn nvjpeg_ok(call: &'static str, status: c_int) -> Result<(), GpuError> {
    if status == status::SUCCESS {
        Ok(())
    } else {
        Err(GpuError::NvJpeg { call, status })
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
        let mut handle: Handle = std::ptr::null_mut();
        let mut backend = Backend::Hardware;
        // SAFETY: null allocators select cudaMalloc/cudaHostAlloc; `handle` is an out-pointer.
        let hw = unsafe {
            (f.create_ex)(
                backend,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                &mut handle,
            )
        };
        if hw != status::SUCCESS {
            tracing::info!(
                status = hw,
                "nvJPEG hardware backend unavailable; using the default"
            );
            backend = Backend::Default;
            // SAFETY: as above.
            let st = unsafe {
                (f.create_ex)(
                    backend,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    &mut handle,
                )
            };
            nvjpeg_ok("nvjpegCreateEx", st)?;
        }
        let mut state: JpegState = std::ptr::null_mut();
        // SAFETY: `handle` is live; `state` is an out-pointer.
        let st = unsafe { (f.state_create)(handle, &mut state) };
        if let Err(e) = nvjpeg_ok("nvjpegJpegStateCreate", st) {
            // SAFETY: `handle` is live and destroyed exactly once, here.
            unsafe { (f.destroy)(handle) };
            return Err(e);
        }
        let stream = match H2dStream::new(ctx) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: both are live and destroyed exactly once, here.
                unsafe {
                    (f.state_destroy)(state);
                    (f.destroy)(handle);
                }
                return Err(e);
            }
        };
        tracing::debug!(?backend, "nvJPEG decoder ready");
        Ok(JpegDecoder {
            ctx: ctx.clone(),
            lib,
            handle,
            state,
            backend,
            batched_size: None,
            max_pixels,
            stream,
        })
    }

    /// The backend the handle was created with.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The stream decodes are queued on; queue work that reads the output on it too.
    pub fn stream(&self) -> &H2dStream {
        &self.stream
    }

    /// The largest `width × height` accepted.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Reads the header and decides whether the GPU decodes this image. Allocates nothing.
    pub fn inspect(&self, data: &[u8]) -> Result<ImageGeometry, ImageError> {
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
                self.handle,
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
        Ok(ImageGeometry {
            width: header.width,
            height: header.height,
        })
    }

    /// Decodes `jobs` into `dst` (RGB interleaved), queued on [`Self::stream`]. The outer
    /// error is a failure of the decoder or a bad argument; the inner ones are per image.
    pub fn decode_into(
        &mut self,
        jobs: &[DecodeJob<'_>],
        dst: &mut DeviceBuffer,
    ) -> Result<Vec<Result<(), ImageError>>, GpuError> {
        for j in jobs {
            if j.offset
                .checked_add(j.geometry.bytes())
                .is_none_or(|end| end > dst.len())
            {
                return Err(GpuError::InvalidArgument(format!(
                    "{}x{} image at offset {} overflows a buffer of {} bytes",
                    j.geometry.width,
                    j.geometry.height,
                    j.offset,
                    dst.len()
                )));
            }
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.ctx.bind()?;
        let cu_stream = self.stream.cuda().clone();
        let (base, _record) = dst.slice.device_ptr_mut(&cu_stream);
        let image = |j: &DecodeJob<'_>| Image {
            channel: [
                (base + j.offset as u64) as *mut u8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ],
            pitch: [j.geometry.pitch() as usize, 0, 0, 0],
        };
        let mut images: Vec<Image> = jobs.iter().map(image).collect();
        if jobs.len() > 1 {
            match self.batched(jobs, &mut images) {
                Ok(()) => return Ok(vec![Ok(()); jobs.len()]),
                Err(st) => tracing::debug!(
                    status = st,
                    n = jobs.len(),
                    "batched decode failed; decoding one by one"
                ),
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for (j, img) in jobs.iter().zip(images.iter_mut()) {
            out.push(self.single(j, img));
        }
        Ok(out)
    }

    /// One `nvjpegDecodeBatched` over `jobs`; the status when it fails.
    fn batched(&mut self, jobs: &[DecodeJob<'_>], images: &mut [Image]) -> Result<(), c_int> {
        let f = *self.lib.functions();
        let n = jobs.len();
        if self.batched_size != Some(n) {
            // SAFETY: live handle and state; a batch size, one CPU thread, RGBI.
            let st = unsafe {
                (f.decode_batched_initialize)(self.handle, self.state, n as c_int, 1, OUTPUT_RGBI)
            };
            if st != status::SUCCESS {
                self.batched_size = None;
                return Err(st);
            }
            self.batched_size = Some(n);
        }
        let ptrs: Vec<*const u8> = jobs.iter().map(|j| j.data.as_ptr()).collect();
        let lens: Vec<usize> = jobs.iter().map(|j| j.data.len()).collect();
        // SAFETY: `ptrs[i]` is readable for `lens[i]` bytes for the whole call (the inputs are
        // host memory nvJPEG reads before returning); `images[i].channel[0]` points at
        // `pitch × height` bytes inside the destination buffer (checked in `decode_into`,
        // sizes from `inspect`, which nvJPEG agreed to); the state was initialized for `n`.
        let st = unsafe {
            (f.decode_batched)(
                self.handle,
                self.state,
                ptrs.as_ptr(),
                lens.as_ptr(),
                images.as_mut_ptr(),
                self.raw_stream(),
            )
        };
        if st != status::SUCCESS {
            self.batched_size = None;
            return Err(st);
        }
        Ok(())
    }

    /// One image alone. The hardware backend decodes through the batched API only, so there
    /// a single image is a batch of one.
    fn single(&mut self, job: &DecodeJob<'_>, image: &mut Image) -> Result<(), ImageError> {
        if self.backend == Backend::Hardware {
            return self
                .batched(std::slice::from_ref(job), std::slice::from_mut(image))
                .map_err(|st| ImageError::from_status("nvjpegDecodeBatched", st));
        }
        let f = *self.lib.functions();
        // SAFETY: as in `batched`, for one image; `nvjpegDecode` needs no initialization.
        let st = unsafe {
            (f.decode)(
                self.handle,
                self.state,
                job.data.as_ptr(),
                job.data.len(),
                OUTPUT_RGBI,
                image,
                self.raw_stream(),
            )
        };
        // The state is in single-image mode now.
        self.batched_size = None;
        if st != status::SUCCESS {
            return Err(ImageError::from_status("nvjpegDecode", st));
        }
        Ok(())
    }

    fn raw_stream(&self) -> Stream {
        self.stream.cuda().cu_stream().cast()
    }

    /// Inspects and decodes `images` into one new device buffer. An image that cannot be
    /// decoded here is an `Err` in its entry (`NeedsCpu` for the CPU path, the others to skip
    /// or fail); the outer error is the decoder's own failure.
    pub fn decode_batch(&mut self, images: &[&[u8]]) -> Result<DecodedBatch, GpuError> {
        let geoms: Vec<Result<ImageGeometry, ImageError>> =
            images.iter().map(|d| self.inspect(d)).collect();
        let (offsets, total) = pack(
            geoms
                .iter()
                .map(|g| g.as_ref().map_or(0, ImageGeometry::bytes)),
        )?;
        let mut buffer = self.stream.alloc(total.max(1))?;
        let (jobs, which): (Vec<DecodeJob<'_>>, Vec<usize>) = geoms
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let geometry = *g.as_ref().ok()?;
                Some((
                    DecodeJob {
                        data: images[i],
                        geometry,
                        offset: offsets[i],
                    },
                    i,
                ))
            })
            .unzip();
        let decoded = self.decode_into(&jobs, &mut buffer)?;
        let mut out: Vec<Result<DecodedImage, ImageError>> = geoms
            .into_iter()
            .zip(&offsets)
            .map(|(g, &offset)| {
                g.map(|g| DecodedImage {
                    offset,
                    width: g.width,
                    height: g.height,
                    pitch: g.pitch(),
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
        let f = self.lib.functions();
        // SAFETY: both were created in `new`, are destroyed exactly once, here, and no work
        // that uses them is pending (the stream was drained above).
        let (a, b) = unsafe { ((f.state_destroy)(self.state), (f.destroy)(self.handle)) };
        if a != status::SUCCESS || b != status::SUCCESS {
            tracing::error!(
                state = a,
                handle = b,
                "destroying the nvJPEG decoder failed"
            );
        }
    }
}
