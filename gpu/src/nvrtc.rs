//! NVRTC, opened at run time from whichever `libnvrtc` the machine has.
//!
//! Loaded by us rather than through `cudarc::nvrtc` so that the search is ours (an explicit
//! `LOADERD_NVRTC_LIB`, then `libnvrtc.so.13`/`.12` as the driver allows, on the loader's path,
//! in pip wheels, conda and the toolkits: see `libsearch.rs`) and absence is an error,
//! not a panic. Compiling needs no GPU and no driver, so the kernel source is
//! syntax-checked in tests wherever NVRTC is installed (e.g. the `nvidia-cuda-nvrtc-cu12`
//! wheel's `nvidia/cuda_nvrtc/lib/libnvrtc.so.12`).

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use libloading::Library;

use crate::GpuError;
use crate::libsearch;

/// Environment variable naming the NVRTC library file.
pub const NVRTC_ENV: &str = "LOADERD_NVRTC_LIB";
const SPEC: libsearch::LibSpec = libsearch::LibSpec {
    library: "NVRTC",
    env: NVRTC_ENV,
    stem: "libnvrtc",
    wheel: "cuda_nvrtc",
};

type Program = *mut c_void;
type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type Create = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type GetSize = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetText = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type Destroy = unsafe extern "C" fn(*mut Program) -> c_int;

/// An opened NVRTC library.
#[derive(Debug)]
pub struct Nvrtc {
    path: String,
    version: (i32, i32),
    create: Create,
    compile: Compile,
    log_size: GetSize,
    log: GetText,
    ptx_size: GetSize,
    ptx: GetText,
    /// `nvrtcGetCUBINSize` / `nvrtcGetCUBIN` (NVRTC ≥ 11.1); `None` in older libraries.
    cubin: Option<(GetSize, GetText)>,
    destroy: Destroy,
    /// Programs compiled so far (successfully or not) with this library.
    compilations: AtomicUsize,
    // Keeps the function pointers above valid; never dropped before them (same struct).
    _lib: Library,
}

fn symbol<T: Copy>(lib: &Library, path: &str, name: &'static str) -> Result<T, GpuError> {
    // SAFETY: every `T` used with this is the C signature of `name` from nvrtc.h; the pointer
    // is copied out and used only while the `Library` is alive (both live in `Nvrtc`).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| GpuError::MissingSymbol {
            library: "NVRTC",
            path: path.to_string(),
            symbol: name,
            message: libsearch::describe(&e),
        })
}

fn check(call: &'static str, status: c_int) -> Result<(), GpuError> {
    if status == 0 {
        Ok(())
    } else {
        Err(GpuError::Nvrtc { call, status })
    }
}

impl Nvrtc {
    /// Finds and opens NVRTC (`LOADERD_NVRTC_LIB`, the loader's path, CUDA toolkits).
    pub fn load() -> Result<Self, GpuError> {
        let (lib, path) = libsearch::open(&SPEC, crate::detect::driver_version())?;
        let version_fn: Version = symbol(&lib, &path, "nvrtcVersion")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers, as nvrtcVersion expects.
        check("nvrtcVersion", unsafe {
            version_fn(&mut major, &mut minor)
        })?;
        let nvrtc = Nvrtc {
            create: symbol(&lib, &path, "nvrtcCreateProgram")?,
            compile: symbol(&lib, &path, "nvrtcCompileProgram")?,
            log_size: symbol(&lib, &path, "nvrtcGetProgramLogSize")?,
            log: symbol(&lib, &path, "nvrtcGetProgramLog")?,
            ptx_size: symbol(&lib, &path, "nvrtcGetPTXSize")?,
            ptx: symbol(&lib, &path, "nvrtcGetPTX")?,
            cubin: symbol(&lib, &path, "nvrtcGetCUBINSize")
                .and_then(|size| Ok((size, symbol(&lib, &path, "nvrtcGetCUBIN")?)))
                .ok(),
            destroy: symbol(&lib, &path, "nvrtcDestroyProgram")?,
            compilations: AtomicUsize::new(0),
            version: (major, minor),
            path,
            _lib: lib,
        };
        tracing::info!(path = %nvrtc.path, version = ?nvrtc.version, "NVRTC loaded");
        Ok(nvrtc)
    }

    /// The library file that was opened.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// NVRTC's (major, minor) version, e.g. (12, 9).
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// How many programs this library has compiled (a [`crate::GpuDevice`] compiles the augment
    /// kernel once, however many batch pipelines it makes).
    pub fn compilations(&self) -> usize {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Compiles CUDA C `source` to PTX text; [`GpuError::Compile`] carries the compiler log.
    pub fn compile(
        &self,
        source: &str,
        name: &str,
        options: &[String],
    ) -> Result<String, GpuError> {
        let prog = self.program(source, name, options)?;
        let ptx = self.bytes(prog.prog, self.ptx_size, self.ptx, "nvrtcGetPTX")?;
        Ok(text(ptx))
    }

    /// Compiles `source` for a device of compute capability `cc` into what the driver loads
    /// without JIT: a CUBIN for `sm_XY` (see [`device_options`], which replaces any
    /// architecture in `options`). PTX would be JIT-compiled by the driver, which refuses PTX
    /// from an NVRTC newer than itself (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`). Only when this
    /// NVRTC cannot give a CUBIN is the result `compute_XY` PTX, and the log says so.
    pub fn compile_for_device(
        &self,
        source: &str,
        name: &str,
        cc: (u32, u32),
        options: &[String],
    ) -> Result<ModuleImage, GpuError> {
        if let Some((size, get)) = self.cubin {
            let prog = self.program(source, name, &device_options(options, cc, true))?;
            let cubin = self.bytes(prog.prog, size, get, "nvrtcGetCUBIN")?;
            if !cubin.is_empty() {
                tracing::debug!(arch = %arch(cc, true), bytes = cubin.len(), "compiled to CUBIN");
                return Ok(ModuleImage::Cubin(cubin));
            }
        }
        tracing::warn!(
            path = %self.path,
            version = ?self.version,
            arch = %arch(cc, false),
            "this NVRTC gives no CUBIN; loading PTX, which the driver JIT-compiles \
             (and refuses if NVRTC is newer than the driver)"
        );
        let options = device_options(options, cc, false);
        Ok(ModuleImage::Ptx(self.compile(source, name, &options)?))
    }

    /// A compiled program; [`GpuError::Compile`] with the log when compilation fails.
    fn program(
        &self,
        source: &str,
        name: &str,
        options: &[String],
    ) -> Result<ProgramGuard, GpuError> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| GpuError::InvalidArgument(format!("NUL in {s:?}")))
        };
        let (src, name) = (cstr(source)?, cstr(name)?);
        let opts = options
            .iter()
            .map(|o| cstr(o))
            .collect::<Result<Vec<_>, _>>()?;
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: `src` and `name` are NUL-terminated and outlive the call; no headers.
        check("nvrtcCreateProgram", unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        let guard = ProgramGuard {
            prog,
            destroy: self.destroy,
        };
        self.compilations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `prog` is a live program; `opt_ptrs` holds `len` NUL-terminated strings
        // (owned by `opts`) for the duration of the call.
        let status =
            unsafe { (self.compile)(guard.prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        if status != 0 {
            let log = self.bytes(guard.prog, self.log_size, self.log, "nvrtcGetProgramLog")?;
            return Err(GpuError::Compile { log: text(log) });
        }
        Ok(guard)
    }

    /// The `n` bytes an NVRTC getter pair (size, contents) reports.
    fn bytes(
        &self,
        prog: Program,
        size: GetSize,
        get: GetText,
        call: &'static str,
    ) -> Result<Vec<u8>, GpuError> {
        let mut n = 0usize;
        // SAFETY: `prog` is live and `n` a valid out-pointer.
        check(call, unsafe { size(prog, &mut n) })?;
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: `buf` holds the `n` bytes (including any NUL) NVRTC said it will write.
        check(call, unsafe { get(prog, buf.as_mut_ptr().cast()) })?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// NVRTC's NUL-terminated text output as a string.
fn text(mut buf: Vec<u8>) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(end);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `sm_XY` (real architecture, for a CUBIN) or `compute_XY` (virtual, for PTX).
fn arch((major, minor): (u32, u32), real: bool) -> String {
    let kind = if real { "sm" } else { "compute" };
    format!("{kind}_{major}{minor}")
}

/// `options` with every architecture option (`--gpu-architecture`, `-arch`, either form)
/// replaced by one for compute capability `cc`: `sm_XY` when `real`, else `compute_XY`.
pub fn device_options(options: &[String], cc: (u32, u32), real: bool) -> Vec<String> {
    let mut out = Vec::with_capacity(options.len() + 1);
    let mut skip_value = false;
    for o in options {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if o == "--gpu-architecture" || o == "-arch" {
            skip_value = true;
        } else if !(o.starts_with("--gpu-architecture=") || o.starts_with("-arch=")) {
            out.push(o.clone());
        }
    }
    out.insert(0, format!("--gpu-architecture={}", arch(cc, real)));
    out
}

/// What [`Nvrtc::compile_for_device`] produced, ready for `cuModuleLoadData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleImage {
    /// Machine code for the device's own architecture.
    Cubin(Vec<u8>),
    /// PTX for the driver to JIT-compile (only when NVRTC gives no CUBIN).
    Ptx(String),
}

impl ModuleImage {
    /// The image as `cudarc` loads it.
    pub fn into_ptx(self) -> cudarc::nvrtc::Ptx {
        match self {
            ModuleImage::Cubin(bytes) => cudarc::nvrtc::Ptx::from_binary(bytes),
            ModuleImage::Ptx(src) => cudarc::nvrtc::Ptx::from_src(src),
        }
    }
}

struct ProgramGuard {
    prog: Program,
    destroy: Destroy,
}

impl Drop for ProgramGuard {
    fn drop(&mut self) {
        // SAFETY: `prog` came from nvrtcCreateProgram and is destroyed exactly once, here.
        unsafe { (self.destroy)(&mut self.prog) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_options_target_the_real_architecture() {
        let given: Vec<String> = [
            "--gpu-architecture=compute_75",
            "--fmad=false",
            "-arch",
            "compute_80",
            "-arch=sm_70",
            "--std=c++17",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            device_options(&given, (9, 0), true),
            ["--gpu-architecture=sm_90", "--fmad=false", "--std=c++17"]
        );
        assert_eq!(
            device_options(&given, (12, 0), false),
            [
                "--gpu-architecture=compute_120",
                "--fmad=false",
                "--std=c++17"
            ]
        );
        assert_eq!(
            device_options(&[], (8, 6), true),
            ["--gpu-architecture=sm_86"]
        );
    }

    #[test]
    fn absence_is_a_clear_error_not_a_panic() {
        // Point the override at a file that does not exist: the error names it and the variable.
        let spec = libsearch::LibSpec {
            library: "NVRTC",
            env: "LOADERD_TEST_NO_SUCH_VAR",
            stem: "libnvrtc-loaderd-missing",
            wheel: "cuda_nvrtc",
        };
        let err = libsearch::open(&spec, Some(13000)).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NVRTC not found"), "{msg}");
        assert!(msg.contains("libnvrtc-loaderd-missing.so.13"), "{msg}");
        assert!(msg.contains("LOADERD_TEST_NO_SUCH_VAR"), "{msg}");
    }
}
