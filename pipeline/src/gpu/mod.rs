//! GPU loaders: the CPU-side pieces (sample planning, report translation); the device
//! session follows.

mod plan;
mod report;

use std::sync::Arc;

use loaderd_cache::Cache;
use tokio::runtime::Handle;

use crate::limits::Plan;
use crate::registry::Pipelines;
use crate::session::{Session, SessionError};
use crate::spec::LoaderSpec;

/// Serves a loader that asked for CUDA device `device`: `Ok(Err(reason))` when it must be
/// served from the CPU.
pub(crate) fn open(
    _cache: &Arc<Cache>,
    _pipelines: &Arc<Pipelines>,
    _rt: &Handle,
    _req: &LoaderSpec,
    _plan: &Plan,
    device: u32,
) -> Result<Result<Session, String>, SessionError> {
    Ok(Err(format!(
        "CUDA device {device}: this daemon does not run GPU loaders yet"
    )))
}
