//! The crate's one error type.

use cudarc::driver::DriverError;

/// Everything that can go wrong on the GPU path. Callers treat every variant the same way
/// (log it, use the CPU path); the variants exist so logs and tests say which layer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No usable CUDA driver or device (the same text [`crate::detect()`] reports).
    #[error("CUDA unavailable: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        /// The driver entry point or operation.
        call: &'static str,
        /// The driver's status.
        #[source]
        source: DriverError,
    },
    /// A shared library (NVRTC, nvJPEG) could not be opened under any name we know.
    #[error("{library} not found (tried {tried}); set {env} to its path")]
    LibraryMissing {
        /// Which library.
        library: &'static str,
        /// Every path or name tried, with the loader's reason for each, `; `-separated.
        tried: String,
        /// The environment variable that overrides the search.
        env: &'static str,
    },
    /// The library opened but lacks an entry point we need (too old, or not that library).
    #[error("{library} at {path} has no symbol {symbol}: {message}")]
    MissingSymbol {
        /// Which library.
        library: &'static str,
        /// The file that was opened.
        path: String,
        /// The missing entry point.
        symbol: &'static str,
        /// The loader's message.
        message: String,
    },
    /// An NVRTC call returned an error status.
    #[error("NVRTC {call} failed with status {status}")]
    Nvrtc {
        /// The NVRTC entry point.
        call: &'static str,
        /// `nvrtcResult`.
        status: i32,
    },
    /// NVRTC rejected the kernel source; `log` is its compiler output.
    #[error("NVRTC compilation failed:\n{log}")]
    Compile {
        /// NVRTC's program log.
        log: String,
    },
    /// An nvJPEG call returned an error status.
    #[error("nvJPEG {call} failed with status {status}")]
    NvJpeg {
        /// The nvJPEG entry point.
        call: &'static str,
        /// `nvjpegStatus_t`.
        status: i32,
    },
    /// A batch's decode buffer would exceed its configured cap.
    #[error(
        "decode buffer of {need} bytes needed, over the cap of {cap} bytes (BatchConfig::\
         max_decode_bytes, JpegDecoder::set_max_buffer_bytes); split the batch or raise the cap"
    )]
    DecodeBufferCap {
        /// Bytes the batch's images need.
        need: usize,
        /// The cap.
        cap: usize,
    },
    /// A device the driver lists cannot serve loaders; `reason` says why (no VMM or POSIX-fd
    /// export support, NVRTC or nvJPEG missing, the kernel not compiling, …).
    #[error("CUDA device {ordinal} cannot be used: {reason}")]
    DeviceUnusable {
        /// The device's ordinal.
        ordinal: u32,
        /// Why, in a sentence.
        reason: String,
    },
    /// A caller passed something the API cannot work with (sizes, ranges, parameters).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl GpuError {
    pub(crate) fn driver(call: &'static str) -> impl FnOnce(DriverError) -> GpuError {
        move |source| GpuError::Driver { call, source }
    }
}
