//! One nvJPEG handle with its JPEG state: the unit a backend decodes with. A
//! [`super::JpegDecoder`] has one for its own backend and, when that is the hardware one, a
//! second (GPU hybrid) for the images the JPEG engines refuse.

use std::ffi::{c_int, c_uint};

use super::{Backend, Functions, Handle, Image, JpegState, OUTPUT_RGBI, Stream, status};
use crate::GpuError;

/// `nvjpegJpegStream_t`.
type JpegStream = *mut std::ffi::c_void;

/// `NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION` (nvjpeg.h, nvJPEG 12.1 and later): chroma
/// upsampling by interpolation, like libjpeg-turbo's default "fancy" upsampling, instead of
/// replicating each chroma sample (what 4:2:0 images get without it).
pub(super) const FLAGS_UPSAMPLING_WITH_INTERPOLATION: c_uint = 1 << 5;

/// The `nvjpegCreateEx` flags to try first for a library of `version`: interpolated
/// upsampling where the library knows the flag (12.1+), none before.
pub(super) fn preferred_flags(version: (i32, i32, i32)) -> c_uint {
    if (version.0, version.1) >= (12, 1) {
        FLAGS_UPSAMPLING_WITH_INTERPOLATION
    } else {
        0
    }
}

fn nvjpeg_ok(call: &'static str, status: c_int) -> Result<(), GpuError> {
    if status == status::SUCCESS {
        Ok(())
    } else {
        Err(GpuError::NvJpeg { call, status })
    }
}

/// A handle and a JPEG state on one backend; destroyed by [`Engine::destroy`] (the owner
/// calls it after draining the stream the engine's work was queued on).
#[derive(Debug)]
pub(super) struct Engine {
    handle: Handle,
    state: JpegState,
    backend: Backend,
    /// Created with [`FLAGS_UPSAMPLING_WITH_INTERPOLATION`].
    interpolated: bool,
    /// The batch size `nvjpegDecodeBatchedInitialize` was last called with.
    batched_size: Option<usize>,
    /// Parsed-header stream for `nvjpegDecodeBatchedSupported`, made on first use.
    parsed: Option<JpegStream>,
}

impl Engine {
    /// A handle on `backend` for a library of `version`, with interpolated chroma upsampling
    /// where the library and backend take it ([`preferred_flags`]), else without (logged).
    pub(super) fn new(
        f: &Functions,
        backend: Backend,
        version: (i32, i32, i32),
    ) -> Result<Self, GpuError> {
        let flags = preferred_flags(version);
        if flags == 0 {
            tracing::info!(
                ?version,
                ?backend,
                "nvJPEG before 12.1: chroma upsampling without interpolation"
            );
            return Self::with_flags(f, backend, 0);
        }
        match Self::with_flags(f, backend, flags) {
            Ok(e) => Ok(e),
            Err(e) => {
                tracing::info!(error = %e, ?backend, "nvJPEG refused interpolated upsampling; creating without");
                Self::with_flags(f, backend, 0)
            }
        }
    }

    /// A handle on `backend` with `flags` (null allocators: cudaMalloc/cudaHostAlloc) and its
    /// state.
    fn with_flags(f: &Functions, backend: Backend, flags: c_uint) -> Result<Self, GpuError> {
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: null allocators select the defaults; `handle` is an out-pointer.
        let st = unsafe {
            (f.create_ex)(
                backend,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags,
                &mut handle,
            )
        };
        nvjpeg_ok("nvjpegCreateEx", st)?;
        let mut state: JpegState = std::ptr::null_mut();
        // SAFETY: `handle` is live; `state` is an out-pointer.
        let st = unsafe { (f.state_create)(handle, &mut state) };
        if let Err(e) = nvjpeg_ok("nvjpegJpegStateCreate", st) {
            // SAFETY: `handle` is live and destroyed exactly once, here.
            unsafe { (f.destroy)(handle) };
            return Err(e);
        }
        Ok(Engine {
            handle,
            state,
            backend,
            interpolated: flags & FLAGS_UPSAMPLING_WITH_INTERPOLATION != 0,
            batched_size: None,
            parsed: None,
        })
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) fn interpolated(&self) -> bool {
        self.interpolated
    }

    pub(super) fn handle(&self) -> Handle {
        self.handle
    }

    /// `nvjpegDecodeBatchedSupported` for `data`: `Ok(true)` when this handle's backend takes
    /// it (the header call answers 0), `Ok(false)` when it refuses; `Err` when the header
    /// cannot be parsed or the query fails.
    pub(super) fn supported(&mut self, f: &Functions, data: &[u8]) -> Result<bool, c_int> {
        let parsed = match self.parsed {
            Some(p) => p,
            None => {
                let mut p: JpegStream = std::ptr::null_mut();
                // SAFETY: live handle; `p` is an out-pointer.
                let st = unsafe { (f.jpeg_stream_create)(self.handle, &mut p) };
                if st != status::SUCCESS {
                    return Err(st);
                }
                self.parsed = Some(p);
                p
            }
        };
        // SAFETY: `data` is readable for its length during the call; `parsed` is live.
        let st =
            unsafe { (f.jpeg_stream_parse_header)(self.handle, data.as_ptr(), data.len(), parsed) };
        if st != status::SUCCESS {
            return Err(st);
        }
        let mut answer: c_int = -1;
        // SAFETY: live handle and a stream holding a parsed header; `answer` is an out-pointer.
        let st = unsafe { (f.decode_batched_supported)(self.handle, parsed, &mut answer) };
        if st != status::SUCCESS {
            return Err(st);
        }
        // nvjpeg.h: 0 means the bitstream can be decoded by this handle's batched decode.
        Ok(answer == 0)
    }

    /// One `nvjpegDecodeBatched` over `data` into `images`; the status when it fails.
    ///
    /// # Safety
    /// `images[i].channel[0]` must point at `pitch[0] × height` writable device bytes, where
    /// `height` is image `i`'s height, for as long as the work queued on `stream` runs.
    pub(super) unsafe fn batched(
        &mut self,
        f: &Functions,
        data: &[&[u8]],
        images: &mut [Image],
        stream: Stream,
    ) -> Result<(), c_int> {
        let n = data.len();
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
        let ptrs: Vec<*const u8> = data.iter().map(|d| d.as_ptr()).collect();
        let lens: Vec<usize> = data.iter().map(|d| d.len()).collect();
        // SAFETY: `ptrs[i]` is readable for `lens[i]` bytes for the whole call (host memory
        // nvJPEG reads before returning); the destinations are valid (this function's
        // contract); the state was initialized for `n`.
        let st = unsafe {
            (f.decode_batched)(
                self.handle,
                self.state,
                ptrs.as_ptr(),
                lens.as_ptr(),
                images.as_mut_ptr(),
                stream,
            )
        };
        if st != status::SUCCESS {
            self.batched_size = None;
            return Err(st);
        }
        Ok(())
    }

    /// One image alone; the failing call and its status. The hardware and GPU hybrid backends
    /// decode through the batched API, so there a single image is a batch of one; the
    /// default backend uses `nvjpegDecode`.
    ///
    /// # Safety
    /// As for [`Engine::batched`], for one image.
    pub(super) unsafe fn single(
        &mut self,
        f: &Functions,
        data: &[u8],
        image: &mut Image,
        stream: Stream,
    ) -> Result<(), (&'static str, c_int)> {
        if matches!(self.backend, Backend::Hardware | Backend::GpuHybrid) {
            // SAFETY: this function's contract is `batched`'s.
            return unsafe {
                self.batched(f, &[data], std::slice::from_mut(image), stream)
                    .map_err(|st| ("nvjpegDecodeBatched", st))
            };
        }
        // SAFETY: as in `batched`, for one image; `nvjpegDecode` needs no initialization.
        let st = unsafe {
            (f.decode)(
                self.handle,
                self.state,
                data.as_ptr(),
                data.len(),
                OUTPUT_RGBI,
                image,
                stream,
            )
        };
        // The state is in single-image mode now.
        self.batched_size = None;
        if st != status::SUCCESS {
            return Err(("nvjpegDecode", st));
        }
        Ok(())
    }

    /// Destroys the parsed stream, the state and the handle. Call once, with no work pending.
    pub(super) fn destroy(&mut self, f: &Functions) {
        // SAFETY: all were created by this engine, are destroyed exactly once (the fields
        // are cleared), and the owner has drained the stream that used them.
        let (a, b, c) = unsafe {
            let a = self
                .parsed
                .take()
                .map_or(status::SUCCESS, |p| (f.jpeg_stream_destroy)(p));
            let b = (f.state_destroy)(std::mem::replace(&mut self.state, std::ptr::null_mut()));
            let c = (f.destroy)(std::mem::replace(&mut self.handle, std::ptr::null_mut()));
            (a, b, c)
        };
        if [a, b, c].iter().any(|&s| s != status::SUCCESS) {
            tracing::error!(
                backend = ?self.backend,
                stream = a,
                state = b,
                handle = c,
                "destroying an nvJPEG handle failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_upsampling_is_asked_for_from_nvjpeg_12_1() {
        assert_eq!(FLAGS_UPSAMPLING_WITH_INTERPOLATION, 32);
        assert_eq!(preferred_flags((12, 0, 3)), 0);
        assert_eq!(preferred_flags((11, 9, 0)), 0);
        for v in [(12, 1, 0), (12, 9, 1), (13, 0, 0)] {
            assert_eq!(
                preferred_flags(v),
                FLAGS_UPSAMPLING_WITH_INTERPOLATION,
                "{v:?}"
            );
        }
    }
}
