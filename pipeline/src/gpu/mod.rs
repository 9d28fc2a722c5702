//! GPU loaders: a loader whose [`LoaderSpec::cuda_device`] names a GPU the daemon opened is
//! decoded by nvJPEG and the fused augment kernel straight into a device ring on that GPU,
//! which the client maps through the POSIX descriptor of its CUDA allocation.
//!
//! - [`Gpus`]: the devices the daemon opened at start (`gpu.mode = on | auto`), or why it has
//!   none; a request for a device that is not there is served from the CPU into a host ring,
//!   and the reason goes to the client ([`crate::Opened::gpu_reason`]) and to status;
//! - `plan`: a sample's fetched bytes, the spec and the seed turned into the GPU pipeline's
//!   input, with the CPU path's crop and flip;
//! - `ring`: the device ring's memory, an [`ExportedMemory`] under the same slot states as a
//!   host ring ([`crate::ring::BatchRing`]);
//! - `session`: admission (device memory budgeted before anything is allocated) and start;
//! - `worker`: the batch workers, [`GPU_WORKERS`] of them per loader;
//! - `report`: a batch's outcome merged into the metadata the client gets.
//!
//! [`ExportedMemory`]: loaderd_gpu::ExportedMemory

mod plan;
mod report;
mod ring;
mod session;
mod worker;

use std::sync::Arc;

use loaderd_cache::Cache;
use loaderd_gpu::GpuDevice;
use tokio::runtime::Handle;

use crate::limits::Plan;
use crate::registry::Pipelines;
use crate::session::{Session, SessionError};
use crate::spec::LoaderSpec;

pub use worker::GPU_WORKERS;

/// The GPUs a daemon serves loaders on: those it opened at start, or why there are none.
#[derive(Debug, Clone)]
pub struct Gpus {
    devices: Vec<Arc<GpuDevice>>,
    /// Why no device is open (empty `devices` only).
    reason: String,
}

impl Gpus {
    /// No GPU, because of `reason` (a sentence: "gpu.mode is off", the driver's error, ...).
    pub fn none(reason: impl Into<String>) -> Self {
        Gpus {
            devices: Vec::new(),
            reason: reason.into(),
        }
    }

    /// The devices opened at start (at least one).
    pub fn opened(devices: Vec<Arc<GpuDevice>>) -> Self {
        let reason = if devices.is_empty() {
            "no CUDA device was opened".into()
        } else {
            String::new()
        };
        Gpus { devices, reason }
    }

    /// The open devices.
    pub fn devices(&self) -> &[Arc<GpuDevice>] {
        &self.devices
    }

    /// Why no device is open; `None` when some are.
    pub fn reason(&self) -> Option<&str> {
        self.devices.is_empty().then_some(self.reason.as_str())
    }

    /// Device `ordinal`, or why a loader asking for it is served from the CPU.
    pub fn device(&self, ordinal: u32) -> Result<&Arc<GpuDevice>, String> {
        let ordinals: Vec<u32> = self.devices.iter().map(|d| d.info().ordinal).collect();
        pick(&ordinals, ordinal, &self.reason).map(|i| &self.devices[i])
    }
}

/// Which of the open devices (by ordinal) is `ordinal`, or why none is: `none_reason` when
/// there are none at all.
fn pick(ordinals: &[u32], ordinal: u32, none_reason: &str) -> Result<usize, String> {
    if ordinals.is_empty() {
        return Err(format!(
            "CUDA device {ordinal} is not used by this daemon: {none_reason}"
        ));
    }
    ordinals.iter().position(|&o| o == ordinal).ok_or_else(|| {
        let open: Vec<String> = ordinals.iter().map(u32::to_string).collect();
        format!(
            "CUDA device {ordinal} is not open in this daemon (open: {})",
            open.join(", ")
        )
    })
}

/// Serves a loader that asked for CUDA device `device`: a GPU session, or `Ok(Err(reason))`
/// when it must be served from the CPU (no such device, or the device could not take it:
/// allocation or decoder set-up failed). Budget and request errors are errors, as on the CPU.
pub(crate) fn open(
    cache: &Arc<Cache>,
    pipelines: &Arc<Pipelines>,
    rt: &Handle,
    req: &LoaderSpec,
    plan: &Plan,
    device: u32,
) -> Result<Result<Session, String>, SessionError> {
    let gpu = match pipelines.gpus().device(device) {
        Ok(d) => d.clone(),
        Err(reason) => return Ok(Err(reason)),
    };
    session::start(cache, pipelines, rt, req, plan, gpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_a_missing_device_says_why() {
        let off = Gpus::none("gpu.mode is off");
        assert_eq!(off.reason(), Some("gpu.mode is off"));
        let err = off.device(0).unwrap_err();
        assert_eq!(
            err,
            "CUDA device 0 is not used by this daemon: gpu.mode is off"
        );
        assert_eq!(pick(&[0, 2], 2, ""), Ok(1));
        assert_eq!(
            pick(&[0, 2], 1, ""),
            Err("CUDA device 1 is not open in this daemon (open: 0, 2)".into())
        );
        assert!(Gpus::opened(Vec::new()).reason().is_some());
    }
}
