//! Is there a CUDA driver and a GPU? Asked once at start-up; never panics.
//!
//! `cudarc`'s dynamically loaded driver API panics on first use when `libcuda` cannot be
//! opened, and on a call whose symbol the installed driver lacks. So [`detect`] first opens
//! `libcuda.so.1` (the driver's soname, what `cudarc` ends up loading) itself and reports its
//! absence as [`GpuAvailability::Unavailable`]; only then does it call into `cudarc`, inside
//! `catch_unwind` in case a symbol is missing. Every other CUDA entry point in this crate is
//! reached only through a [`crate::GpuContext`], which can only be made after `detect` found a
//! device.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use cudarc::driver::{result, sys};

use crate::GpuError;

/// One CUDA device, as `loaderctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// CUDA device ordinal (as `CUDA_VISIBLE_DEVICES` renumbers them).
    pub ordinal: u32,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (u32, u32),
    /// The driver's CUDA version as `cuDriverGetVersion` encodes it (13000 = 13.0).
    pub driver_version: u32,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuAvailability {
    /// The driver loaded, initialized, and has at least one device.
    Available(Vec<GpuInfo>),
    /// No usable GPU; `reason` is meant for the fallback log line and `loaderctl status`.
    Unavailable {
        /// Why, in a sentence.
        reason: String,
    },
}

impl GpuAvailability {
    /// The devices, empty when unavailable.
    pub fn devices(&self) -> &[GpuInfo] {
        match self {
            GpuAvailability::Available(d) => d,
            GpuAvailability::Unavailable { .. } => &[],
        }
    }

    /// True when at least one device is usable.
    pub fn is_available(&self) -> bool {
        matches!(self, GpuAvailability::Available(_))
    }
}

/// Environment variable: when `1`, a GPU test that finds no device, NVRTC or nvJPEG fails
/// instead of skipping, so a run on a GPU machine cannot be green while testing nothing.
pub const REQUIRE_GPU_ENV: &str = "LOADERD_REQUIRE_GPU";

/// True when [`REQUIRE_GPU_ENV`] is `1`.
pub fn gpu_required() -> bool {
    std::env::var_os(REQUIRE_GPU_ENV).is_some_and(|v| v == "1")
}

/// The skip-or-fail decision of every GPU test, for what it needs (`what`: "a CUDA device",
/// "NVRTC", "nvJPEG"): the value when found; when missing, `None` after printing
/// `skipping: <what> unavailable: <reason>`, or, under `LOADERD_REQUIRE_GPU=1`, a panic that
/// fails the test with the same reason.
pub fn require_or_skip<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) => match missing(gpu_required(), what, &e.to_string()) {
            Ok(skip) => {
                println!("{skip}");
                None
            }
            Err(fail) => panic!("{fail}"),
        },
    }
}

/// What a test does when `what` is missing: `Ok(line to print)` to skip, `Err(message)` to fail.
fn missing(required: bool, what: &str, reason: &str) -> Result<String, String> {
    if required {
        Err(format!(
            "{REQUIRE_GPU_ENV}=1 but {what} is unavailable: {reason}"
        ))
    } else {
        Ok(format!("skipping: {what} unavailable: {reason}"))
    }
}

/// The driver's soname; `libcuda.so` alone is a development symlink (or the toolkit's stub).
const DRIVER_LIB: &str = "libcuda.so.1";

/// Finds the CUDA driver and enumerates devices. Cheap after the first call (the driver is
/// initialized once per process); never panics.
pub fn detect() -> GpuAvailability {
    match detect_devices() {
        Ok(devices) => {
            for d in &devices {
                tracing::info!(
                    ordinal = d.ordinal,
                    name = %d.name,
                    total_memory = d.total_memory,
                    cc = ?d.compute_capability,
                    driver = d.driver_version,
                    "CUDA device"
                );
            }
            GpuAvailability::Available(devices)
        }
        Err(reason) => GpuAvailability::Unavailable { reason },
    }
}

/// `Ok(())` once the driver library is loadable and `cuInit` succeeded; the reason otherwise.
/// Memoized: `cuInit` and the probe run once per process.
pub(crate) fn driver_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            // SAFETY: loading the NVIDIA driver library runs its initializers, which have no
            // preconditions; the handle is dropped at once (cudarc keeps its own).
            if let Err(e) = unsafe { libloading::Library::new(DRIVER_LIB) } {
                return Err(format!(
                    "CUDA driver library {DRIVER_LIB} not found ({})",
                    crate::libsearch::describe(&e)
                ));
            }
            guarded("cuInit", || {
                result::init().map_err(|e| format!("cuInit failed: {e}"))
            })
        })
        .clone()
}

/// The driver's CUDA version (`cuDriverGetVersion`, 13000 = 13.0), or `None` without a usable
/// driver. Picks the sonames of NVRTC and nvJPEG.
pub(crate) fn driver_version() -> Option<u32> {
    driver_ready().ok()?;
    guarded("cuDriverGetVersion", query_driver_version).ok()
}

/// `cuDriverGetVersion`; call only inside [`guarded`] after [`driver_ready`].
fn query_driver_version() -> Result<u32, String> {
    let mut version = 0i32;
    // SAFETY: `version` is a valid out-pointer for the duration of the call.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {e}"))?;
    u32::try_from(version).map_err(|e| format!("cuDriverGetVersion: {e}"))
}

/// Runs a closure that calls into `cudarc`'s lazily resolved driver API, turning a panic
/// (missing symbol) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(format!("{what}: CUDA driver unusable: {msg}"))
    })
}

/// [`detect`] without its log lines: the devices, or why there are none.
pub(crate) fn detect_devices() -> Result<Vec<GpuInfo>, String> {
    driver_ready()?;
    guarded("device query", || {
        let version = query_driver_version()?;
        let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
        if count <= 0 {
            return Err("the CUDA driver reports no devices".to_string());
        }
        (0..count)
            .map(|ordinal| device_info(ordinal, version).map_err(|e| e.to_string()))
            .collect()
    })
}

fn device_info(ordinal: i32, driver_version: u32) -> Result<GpuInfo, GpuError> {
    let dev = result::device::get(ordinal).map_err(GpuError::driver("cuDeviceGet"))?;
    let name = result::device::get_name(dev).map_err(GpuError::driver("cuDeviceGetName"))?;
    // SAFETY: `dev` is a device handle the driver just returned.
    let total =
        unsafe { result::device::total_mem(dev) }.map_err(GpuError::driver("cuDeviceTotalMem"))?;
    let attr = |a| {
        // SAFETY: `dev` is a valid device handle and `a` a valid attribute enum value.
        unsafe { result::device::get_attribute(dev, a) }
            .map_err(GpuError::driver("cuDeviceGetAttribute"))
    };
    use sys::CUdevice_attribute::*;
    let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(GpuInfo {
        ordinal: ordinal as u32,
        name,
        total_memory: total as u64,
        compute_capability: (major as u32, minor as u32),
        driver_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_requirement_skips_or_fails() {
        let skip = missing(false, "nvJPEG", "libnvjpeg.so.13 not found").unwrap();
        assert_eq!(
            skip,
            "skipping: nvJPEG unavailable: libnvjpeg.so.13 not found"
        );
        let fail = missing(true, "nvJPEG", "libnvjpeg.so.13 not found").unwrap_err();
        assert!(
            fail.starts_with("LOADERD_REQUIRE_GPU=1 but nvJPEG"),
            "{fail}"
        );
        assert!(fail.contains("libnvjpeg.so.13 not found"), "{fail}");
        assert_eq!(require_or_skip::<_, String>("x", Ok(7)), Some(7));
    }

    #[test]
    fn detect_never_panics_and_is_consistent() {
        let a = detect();
        let b = detect();
        assert_eq!(a.is_available(), b.is_available());
        match &a {
            GpuAvailability::Available(d) => {
                assert!(!d.is_empty());
                assert!(d.iter().all(|g| g.total_memory > 0 && g.driver_version > 0));
            }
            GpuAvailability::Unavailable { reason } => {
                assert!(!reason.is_empty());
                assert!(a.devices().is_empty());
                println!("no GPU here: {reason}");
            }
        }
    }
}
