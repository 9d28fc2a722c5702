//! One opened GPU: what the daemon makes once per device at start (`gpu.mode = on | auto`) and
//! shares between loaders.
//!
//! [`GpuDevice::open`] does everything that can fail for reasons of the machine rather than of
//! a batch, so that a daemon learns at start, in one sentence, why a device cannot serve: the
//! context, the VMM + POSIX-descriptor export support the device ring needs, NVRTC and nvJPEG,
//! the augment kernel compiled for the device's `sm_XX` (once: every
//! [`GpuDevice::batch_pipeline`] reuses the loaded module), and an nvJPEG decoder opened once.

use std::sync::Arc;

use cudarc::driver::sys;

use crate::augment::AugmentKernel;
use crate::batch::{BatchConfig, GpuBatchPipeline};
use crate::detect::{GpuAvailability, GpuInfo, detect, detect_devices};
use crate::export::allocation_granularity;
use crate::nvjpeg::{JpegDecoder, NvJpeg};
use crate::pinned::GpuContext;
use crate::{GpuError, Nvrtc};

/// One opened GPU; see the module doc. `Send + Sync`: share it as `Arc<GpuDevice>`.
pub struct GpuDevice {
    info: GpuInfo,
    ctx: GpuContext,
    nvrtc: Arc<Nvrtc>,
    nvjpeg: Arc<NvJpeg>,
    kernel: AugmentKernel,
    granularity: usize,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("info", &self.info)
            .field("nvrtc", &self.nvrtc.path())
            .field("nvjpeg", &self.nvjpeg.path())
            .field("granularity", &self.granularity)
            .finish_non_exhaustive()
    }
}

/// What [`GpuDevice::open`] requires of a device, from its attributes: `Err(reason)` naming
/// the first missing capability. Pure, for the unit tests.
fn check_capabilities(vmm: i32, posix_fd: i32) -> Result<(), String> {
    if vmm == 0 {
        return Err(
            "it does not support virtual memory management (cuMemCreate), which the \
                    device ring needs"
                .into(),
        );
    }
    if posix_fd == 0 {
        return Err(
            "it cannot export memory as POSIX file descriptors, which the device ring \
                    needs to reach the client"
                .into(),
        );
    }
    Ok(())
}

impl GpuDevice {
    /// Opens device `ordinal`: context, NVRTC + nvJPEG libraries, compiles the augment kernel
    /// for its sm_XX once, checks VMM + POSIX-fd export support. Every failure is a GpuError
    /// whose Display is a sentence fit for a start-up error / status reason.
    pub fn open(ordinal: u32) -> Result<Arc<Self>, GpuError> {
        // Quietly: `open_all` (the daemon's call) has logged the devices once already.
        let devices = detect_devices().map_err(GpuError::Unavailable)?;
        let count = devices.len();
        let info = devices
            .into_iter()
            .find(|d| d.ordinal == ordinal)
            .ok_or_else(|| GpuError::DeviceUnusable {
                ordinal,
                reason: format!("the driver lists {count} device(s), not this one"),
            })?;
        let _span = tracing::info_span!("gpu_open", ordinal, name = %info.name).entered();
        let unusable = |e: GpuError| GpuError::DeviceUnusable {
            ordinal,
            reason: e.to_string(),
        };
        let ctx = GpuContext::new(ordinal).map_err(unusable)?;
        let attr = |a| {
            ctx.cuda()
                .attribute(a)
                .map_err(GpuError::driver("cuDeviceGetAttribute"))
                .map_err(unusable)
        };
        use sys::CUdevice_attribute::*;
        check_capabilities(
            // 102, VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED in cuda.h (bindgen kept the older alias).
            attr(CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED)?,
            attr(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)?,
        )
        .map_err(|reason| GpuError::DeviceUnusable { ordinal, reason })?;
        let granularity = allocation_granularity(&ctx, ordinal).map_err(unusable)?;
        let nvrtc = Arc::new(Nvrtc::load().map_err(unusable)?);
        let nvjpeg = Arc::new(NvJpeg::load().map_err(unusable)?);
        let started = std::time::Instant::now();
        let kernel = AugmentKernel::new(&ctx, &nvrtc).map_err(unusable)?;
        let compiled = started.elapsed();
        // One decoder opened and dropped: nvJPEG's handle and backend work on this device.
        let probe = JpegDecoder::new(&ctx, Arc::clone(&nvjpeg), BatchConfig::default().max_pixels)
            .map_err(unusable)?;
        tracing::info!(
            nvrtc = %nvrtc.path(),
            nvjpeg = %nvjpeg.path(),
            backend = ?probe.backend(),
            granularity,
            ?compiled,
            "CUDA device opened"
        );
        drop(probe);
        Ok(Arc::new(GpuDevice {
            info,
            ctx,
            nvrtc,
            nvjpeg,
            kernel,
            granularity,
        }))
    }

    /// The device as [`detect`] listed it.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Its (primary) context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The NVRTC library the kernel was compiled with.
    pub fn nvrtc(&self) -> &Arc<Nvrtc> {
        &self.nvrtc
    }

    /// The nvJPEG library the batch pipelines decode with.
    pub fn nvjpeg(&self) -> &Arc<NvJpeg> {
        &self.nvjpeg
    }

    /// The minimum allocation granularity of exportable memory (an
    /// [`crate::ExportedMemory`]'s length is a multiple of it).
    pub fn allocation_granularity(&self) -> usize {
        self.granularity
    }

    /// A batch pipeline (own stream, nvJPEG decoder, decode buffer) using the cached kernel:
    /// no NVRTC compile per loader.
    pub fn batch_pipeline(&self, config: BatchConfig) -> Result<GpuBatchPipeline, GpuError> {
        GpuBatchPipeline::with_kernel(
            &self.ctx,
            self.kernel.clone(),
            Arc::clone(&self.nvjpeg),
            config,
        )
    }
}

/// Opens every device the driver lists (or says why none); used by the daemon at start.
/// Devices that fail to open are logged and left out; the error, when none opens, names each
/// device's reason.
pub fn open_all() -> Result<Vec<Arc<GpuDevice>>, GpuError> {
    let infos = match detect() {
        GpuAvailability::Available(devices) => devices,
        GpuAvailability::Unavailable { reason } => return Err(GpuError::Unavailable(reason)),
    };
    let (opened, failed) = partition(infos.iter().map(|d| GpuDevice::open(d.ordinal)));
    for e in &failed {
        tracing::warn!(error = %e, "CUDA device left out");
    }
    none_opened(opened, &failed)
}

/// Splits results into successes and failures, in order.
fn partition<T, E>(results: impl Iterator<Item = Result<T, E>>) -> (Vec<T>, Vec<E>) {
    let (mut ok, mut err) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => err.push(e),
        }
    }
    (ok, err)
}

/// `opened` when any opened; otherwise one error naming every failure.
fn none_opened<T>(opened: Vec<T>, failed: &[GpuError]) -> Result<Vec<T>, GpuError> {
    if !opened.is_empty() {
        return Ok(opened);
    }
    let reasons: Vec<String> = failed.iter().map(ToString::to_string).collect();
    Err(GpuError::Unavailable(if reasons.is_empty() {
        "the CUDA driver reports no devices".into()
    } else {
        format!("no CUDA device can be used: {}", reasons.join("; "))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon shares devices between loaders and moves pipelines and ring memory into
    /// worker threads.
    #[test]
    fn shared_types_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<GpuDevice>();
        send_sync::<crate::ExportedMemory>();
        send_sync::<crate::ImportedMemory>();
        send::<GpuBatchPipeline>();
        send::<crate::DeviceSliceMut<'static>>();
    }

    #[test]
    fn capabilities_name_what_is_missing() {
        assert!(check_capabilities(1, 1).is_ok());
        let e = check_capabilities(0, 1).unwrap_err();
        assert!(e.contains("virtual memory management"), "{e}");
        let e = check_capabilities(1, 0).unwrap_err();
        assert!(e.contains("POSIX file descriptors"), "{e}");
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = GpuError::DeviceUnusable {
            ordinal: 1,
            reason: check_capabilities(1, 0).unwrap_err(),
        };
        assert_eq!(
            e.to_string(),
            "CUDA device 1 cannot be used: it cannot export memory as POSIX file descriptors, \
             which the device ring needs to reach the client"
        );
        let failed = [
            GpuError::DeviceUnusable {
                ordinal: 0,
                reason: "a".into(),
            },
            GpuError::DeviceUnusable {
                ordinal: 1,
                reason: "b".into(),
            },
        ];
        let e = none_opened(Vec::<()>::new(), &failed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CUDA unavailable: no CUDA device can be used: CUDA device 0 cannot be used: a; \
             CUDA device 1 cannot be used: b"
        );
        assert_eq!(none_opened(vec![7], &failed).unwrap(), [7]);
        let (ok, err) = partition([Ok(1), Err("x"), Ok(2)].into_iter());
        assert_eq!((ok, err), (vec![1, 2], vec!["x"]));
    }

    /// Without a GPU (this machine, CI) both entry points fail with the detector's reason,
    /// never panic; with one, device 0 opens and its granularity is a power of two.
    #[test]
    fn open_without_a_gpu_says_why() {
        match detect() {
            GpuAvailability::Unavailable { reason } => {
                let e = GpuDevice::open(0).unwrap_err();
                assert_eq!(e.to_string(), format!("CUDA unavailable: {reason}"));
                let e = open_all().unwrap_err();
                assert_eq!(e.to_string(), format!("CUDA unavailable: {reason}"));
                println!("no GPU: {e}");
            }
            GpuAvailability::Available(devices) => {
                let n = devices.len() as u32;
                let e = GpuDevice::open(n).unwrap_err();
                assert!(e.to_string().contains("not this one"), "{e}");
            }
        }
    }
}
