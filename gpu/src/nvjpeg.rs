//! nvJPEG, opened at run time (`LOADERD_NVJPEG_LIB`, then `libnvjpeg.so.13`/`.12` as the
//! driver allows, on the loader's path, in pip wheels, conda and the toolkits: see
//! `libsearch.rs`).
//!
//! [`NvJpeg::load`] resolves every entry point a batched decode needs up front, so a library
//! that is too old fails at start-up with the missing symbol's name, not mid-batch.
//!
//! [`JpegDecoder`] is one worker's decoder: an nvJPEG handle (the hardware backend where
//! `nvjpegCreateEx(HARDWARE)` succeeds — the A100/H100 JPEG engines — the default backend
//! otherwise), a JPEG state and a CUDA stream. A batch is decoded in three steps:
//!
//! 1. [`JpegDecoder::inspect`] reads each header on the CPU ([`crate::jpeg`]) and with
//!    `nvjpegGetImageInfo`, refuses images over `max_pixels` before anything is allocated,
//!    and sends what the fast path does not take (progressive, CMYK, 4:1:1, …) back to the
//!    caller as [`ImageError::NeedsCpu`];
//! 2. the accepted images are packed into one device buffer, RGB interleaved, back to back,
//!    under a byte cap and without a memset, which is also the augment kernel's source
//!    buffer; each slot is a [`DecodeJob`], built only from the [`InspectedJpeg`] of the bytes
//!    it decodes;
//! 3. with the hardware backend, `nvjpegDecodeBatchedSupported` is asked per image; the
//!    images the JPEG engines refuse go to a GPU hybrid handle (made when first needed), and
//!    to the CPU ([`Unsupported::HardwareRefused`](crate::jpeg::Unsupported)) when there is
//!    none ([`route`] decides, a pure function);
//! 4. each backend's images are decoded with one `nvjpegDecodeBatched` call (one
//!    `nvjpegDecode` for a single image on the default backend). nvJPEG fails a whole batch
//!    for one bad bitstream, so when the batched call fails each image is decoded again on its
//!    own: a corrupt JPEG costs its own sample, not the batch's.
//!
//! Every constant below is from `nvjpeg.h` as shipped with CUDA 12.x and 13.0; these values
//! have been stable since they were introduced (`NVJPEG_BACKEND_HARDWARE` in CUDA 11.0, the
//! rest in 10.0), as the enums only ever gained members at the end.

use std::ffi::{c_int, c_uint, c_void};

use libloading::Library;

use crate::GpuError;
use crate::libsearch;

/// Environment variable naming the nvJPEG library file.
pub const NVJPEG_ENV: &str = "LOADERD_NVJPEG_LIB";
const SPEC: libsearch::LibSpec = libsearch::LibSpec {
    library: "nvJPEG",
    env: NVJPEG_ENV,
    stem: "libnvjpeg",
    wheel: "nvjpeg",
};

/// `nvjpegHandle_t`.
pub type Handle = *mut c_void;
/// `nvjpegJpegState_t`.
pub type JpegState = *mut c_void;
/// `nvjpegJpegStream_t`: a parsed bitstream (here: a parsed header).
pub type JpegStream = *mut c_void;
/// `cudaStream_t` (the same object as a driver `CUstream`).
pub type Stream = *mut c_void;

/// `nvjpegBackend_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub enum Backend {
    /// `NVJPEG_BACKEND_DEFAULT`.
    Default = 0,
    /// `NVJPEG_BACKEND_HYBRID`: Huffman on the CPU.
    Hybrid = 1,
    /// `NVJPEG_BACKEND_GPU_HYBRID`: Huffman on the GPU.
    GpuHybrid = 2,
    /// `NVJPEG_BACKEND_HARDWARE`: the A100/H100 JPEG engines.
    Hardware = 3,
}

/// `nvjpegOutputFormat_t`: `NVJPEG_OUTPUT_RGBI` (interleaved RGB in `channel[0]`), the sixth
/// enumerator after UNCHANGED, YUV, Y, RGB, BGR.
pub const OUTPUT_RGBI: c_int = 5;

/// `NVJPEG_MAX_COMPONENT`: the length of `nvjpegGetImageInfo`'s width/height arrays.
pub const MAX_COMPONENT: usize = 4;

/// `nvjpegStatus_t` values.
pub mod status {
    use std::ffi::c_int;
    /// `NVJPEG_STATUS_SUCCESS`.
    pub const SUCCESS: c_int = 0;
    /// `NVJPEG_STATUS_NOT_INITIALIZED`.
    pub const NOT_INITIALIZED: c_int = 1;
    /// `NVJPEG_STATUS_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: c_int = 2;
    /// `NVJPEG_STATUS_BAD_JPEG`.
    pub const BAD_JPEG: c_int = 3;
    /// `NVJPEG_STATUS_JPEG_NOT_SUPPORTED`.
    pub const JPEG_NOT_SUPPORTED: c_int = 4;
    /// `NVJPEG_STATUS_ALLOCATOR_FAILURE`.
    pub const ALLOCATOR_FAILURE: c_int = 5;
    /// `NVJPEG_STATUS_EXECUTION_FAILED`.
    pub const EXECUTION_FAILED: c_int = 6;
    /// `NVJPEG_STATUS_ARCH_MISMATCH`: e.g. the hardware backend on a GPU without JPEG engines.
    pub const ARCH_MISMATCH: c_int = 7;
    /// `NVJPEG_STATUS_INTERNAL_ERROR`.
    pub const INTERNAL_ERROR: c_int = 8;
    /// `NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED`.
    pub const IMPLEMENTATION_NOT_SUPPORTED: c_int = 9;
    /// `NVJPEG_STATUS_INCOMPLETE_BITSTREAM`.
    pub const INCOMPLETE_BITSTREAM: c_int = 10;
}

/// `nvjpegImage_t`: up to four planes with their pitches. In nvjpeg.h (12.x and 13.x) it is
/// `unsigned char *channel[NVJPEG_MAX_COMPONENT]; size_t pitch[NVJPEG_MAX_COMPONENT];`, 64
/// bytes on a 64-bit target: batched decode reads an array of them, so the stride must match.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Image {
    /// Device pointers of the planes (interleaved RGB uses plane 0).
    pub channel: [*mut u8; MAX_COMPONENT],
    /// Bytes per row of each plane (`size_t`).
    pub pitch: [usize; MAX_COMPONENT],
}

/// The raw entry points (signatures from nvjpeg.h).
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct Functions {
    pub create_ex:
        unsafe extern "C" fn(Backend, *mut c_void, *mut c_void, c_uint, *mut Handle) -> c_int,
    pub destroy: unsafe extern "C" fn(Handle) -> c_int,
    pub state_create: unsafe extern "C" fn(Handle, *mut JpegState) -> c_int,
    pub state_destroy: unsafe extern "C" fn(JpegState) -> c_int,
    pub get_image_info: unsafe extern "C" fn(
        Handle,
        *const u8,
        usize,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> c_int,
    pub decode: unsafe extern "C" fn(
        Handle,
        JpegState,
        *const u8,
        usize,
        c_int,
        *mut Image,
        Stream,
    ) -> c_int,
    pub decode_batched_initialize:
        unsafe extern "C" fn(Handle, JpegState, c_int, c_int, c_int) -> c_int,
    pub decode_batched: unsafe extern "C" fn(
        Handle,
        JpegState,
        *const *const u8,
        *const usize,
        *mut Image,
        Stream,
    ) -> c_int,
    pub get_property: unsafe extern "C" fn(c_int, *mut c_int) -> c_int,
    pub jpeg_stream_create: unsafe extern "C" fn(Handle, *mut JpegStream) -> c_int,
    pub jpeg_stream_destroy: unsafe extern "C" fn(JpegStream) -> c_int,
    pub jpeg_stream_parse_header:
        unsafe extern "C" fn(Handle, *const u8, usize, JpegStream) -> c_int,
    pub decode_batched_supported: unsafe extern "C" fn(Handle, JpegStream, *mut c_int) -> c_int,
}

/// An opened nvJPEG library.
#[derive(Debug)]
pub struct NvJpeg {
    path: String,
    version: (i32, i32, i32),
    functions: Functions,
    // Keeps `functions` valid; lives exactly as long as they do.
    _lib: Library,
}

fn symbol<T: Copy>(lib: &Library, path: &str, name: &'static str) -> Result<T, GpuError> {
    // SAFETY: each `T` used with this is the nvjpeg.h signature of `name`; the pointer is
    // copied out and used only while the `Library` is alive (both live in `NvJpeg`).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| GpuError::MissingSymbol {
            library: "nvJPEG",
            path: path.to_string(),
            symbol: name,
            message: libsearch::describe(&e),
        })
}

impl NvJpeg {
    /// Finds and opens nvJPEG and resolves the batched-decode entry points. Needs no GPU.
    pub fn load() -> Result<Self, GpuError> {
        let (lib, path) = libsearch::open(&SPEC, crate::detect::driver_version())?;
        let functions = Functions {
            create_ex: symbol(&lib, &path, "nvjpegCreateEx")?,
            destroy: symbol(&lib, &path, "nvjpegDestroy")?,
            state_create: symbol(&lib, &path, "nvjpegJpegStateCreate")?,
            state_destroy: symbol(&lib, &path, "nvjpegJpegStateDestroy")?,
            get_image_info: symbol(&lib, &path, "nvjpegGetImageInfo")?,
            decode: symbol(&lib, &path, "nvjpegDecode")?,
            decode_batched_initialize: symbol(&lib, &path, "nvjpegDecodeBatchedInitialize")?,
            decode_batched: symbol(&lib, &path, "nvjpegDecodeBatched")?,
            get_property: symbol(&lib, &path, "nvjpegGetProperty")?,
            jpeg_stream_create: symbol(&lib, &path, "nvjpegJpegStreamCreate")?,
            jpeg_stream_destroy: symbol(&lib, &path, "nvjpegJpegStreamDestroy")?,
            jpeg_stream_parse_header: symbol(&lib, &path, "nvjpegJpegStreamParseHeader")?,
            decode_batched_supported: symbol(&lib, &path, "nvjpegDecodeBatchedSupported")?,
        };
        let prop = |which: c_int| {
            let mut v = 0;
            // SAFETY: `which` is a libraryPropertyType (0..=2) and `v` a valid out-pointer.
            let status = unsafe { (functions.get_property)(which, &mut v) };
            if status == 0 {
                Ok(v)
            } else {
                Err(GpuError::NvJpeg {
                    call: "nvjpegGetProperty",
                    status,
                })
            }
        };
        let version = (prop(0)?, prop(1)?, prop(2)?);
        tracing::info!(%path, ?version, "nvJPEG loaded");
        Ok(NvJpeg {
            path,
            version,
            functions,
            _lib: lib,
        })
    }

    /// The library file that was opened.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// (major, minor, patch).
    pub fn version(&self) -> (i32, i32, i32) {
        self.version
    }

    /// The raw entry points, for the decode path; valid while `self` lives.
    pub fn functions(&self) -> &Functions {
        &self.functions
    }
}

mod decoder;
mod engine;
mod job;
mod route;
pub use decoder::{DecodedBatch, DecodedImage, ImageError, JpegDecoder};
pub use job::{DEFAULT_MAX_DECODE_BYTES, DecodeJob, ImageGeometry, InspectedJpeg, SLOT_ALIGN};
pub(crate) use job::{grown_size, pack};
pub use route::{Route, route};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::Unsupported;

    /// `nvjpegImage_t` as nvjpeg.h lays it out on a 64-bit target: four pointers at 0..32,
    /// four `size_t` pitches at 32..64. `nvjpegDecodeBatched` indexes an array of these.
    #[test]
    fn image_struct_matches_the_header() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(
            size_of::<usize>(),
            8,
            "the layout below is for 64-bit targets"
        );
        assert_eq!(size_of::<Image>(), 64);
        assert_eq!(align_of::<Image>(), 8);
        assert_eq!(offset_of!(Image, channel), 0);
        assert_eq!(offset_of!(Image, pitch), 32);
        // Image i of a batch starts at i × 64: its pitch[0] lies at i × 64 + 32.
        let images = [Image {
            channel: [std::ptr::null_mut(); MAX_COMPONENT],
            pitch: [0; MAX_COMPONENT],
        }; 3];
        let base = images.as_ptr() as usize;
        assert_eq!((&raw const images[2].pitch) as usize - base, 2 * 64 + 32);
        // The enums passed by value are C ints.
        assert_eq!(size_of::<Backend>(), size_of::<c_int>());
    }

    #[test]
    fn status_mapping() {
        assert_eq!(
            ImageError::from_status("x", status::JPEG_NOT_SUPPORTED),
            ImageError::NeedsCpu(Unsupported::Decoder(4))
        );
        assert_eq!(
            ImageError::from_status("x", status::BAD_JPEG),
            ImageError::Decode {
                call: "x",
                status: 3
            }
        );
    }

    #[test]
    fn absence_is_a_clear_error_not_a_panic() {
        match NvJpeg::load() {
            Ok(n) => println!("nvJPEG present here: {} {:?}", n.path(), n.version()),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("nvJPEG not found"), "{msg}");
                assert!(msg.contains(NVJPEG_ENV), "{msg}");
                // .so.12 is tried whatever the driver (.so.13 only without one or with a 13.x one).
                assert!(msg.contains("libnvjpeg.so.12"), "{msg}");
                println!("as expected without nvJPEG: {msg}");
            }
        }
    }
}
