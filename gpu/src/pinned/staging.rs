//! Pinned staging for host bytes that are not in a registered region (the CPU-decoded
//! fallback images): copied into one reused page-locked buffer, then queued as true
//! asynchronous copies. A pageable `cuMemcpyHtoDAsync` may make the host wait for the stream,
//! which would stall a batch's queueing behind its own decode.
//!
//! The buffer is reused while it is large enough and grows to the next power of two (at least
//! [`MIN_STAGING`]) when a batch needs more ([`staging_capacity`], a pure function). Before it
//! is overwritten, the event recorded after the previous batch's copies is waited on; those
//! copies are queued before that batch's kernel, so by the next batch they are long done.

use std::sync::Arc;

use super::{CopyEvent, DeviceBuffer, GpuContext, H2dStream, PageBuffer, PinnedRegion};
use crate::GpuError;

/// Smallest staging buffer: one 224×224 RGB image is 147 KiB, a 1080p one 6 MiB.
pub const MIN_STAGING: usize = 1 << 20;

/// The staging buffer size for `need` bytes when the buffer has `current`: `None` to reuse it
/// (it is large enough), `Some(n)` to replace it with one of `n` bytes (the next power of two
/// ≥ `need`, at least [`MIN_STAGING`]). Never shrinks.
pub fn staging_capacity(current: usize, need: usize) -> Result<Option<usize>, GpuError> {
    if need <= current {
        return Ok(None);
    }
    need.max(MIN_STAGING)
        .checked_next_power_of_two()
        .map(Some)
        .ok_or_else(|| GpuError::InvalidArgument(format!("{need} bytes to stage")))
}

/// Where each upload lies in the staging buffer (back to back), and the bytes they need.
pub fn staging_layout<'a>(
    uploads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<usize>, usize), GpuError> {
    let mut starts = Vec::new();
    let mut end = 0usize;
    for bytes in uploads {
        starts.push(end);
        end = end
            .checked_add(bytes.len())
            .ok_or_else(|| GpuError::InvalidArgument("staged bytes overflow".into()))?;
    }
    Ok((starts, end))
}

/// One host-to-device upload: `bytes` to `offset` in the destination buffer.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// The host bytes (pageable).
    pub bytes: &'a [u8],
    /// Byte offset in the destination device buffer.
    pub offset: usize,
}

/// A reused pinned buffer that uploads go through; see the module doc.
#[derive(Debug, Default)]
pub struct UploadStaging {
    region: Option<Arc<PinnedRegion>>,
    /// The event after the last copies out of `region`; waited on before it is rewritten.
    pending: Option<CopyEvent>,
}

impl UploadStaging {
    /// No buffer yet; the first [`Self::upload_all`] with bytes to copy makes one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the current buffer (0 before the first upload).
    pub fn capacity(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len())
    }

    /// Copies every upload into the pinned buffer and queues its copy to `dst` on `stream`;
    /// returns once queued. The sources may be freed at once.
    pub fn upload_all(
        &mut self,
        ctx: &GpuContext,
        stream: &H2dStream,
        uploads: &[Upload<'_>],
        dst: &mut DeviceBuffer,
    ) -> Result<(), GpuError> {
        // All checked before any copy is queued, so a bad one leaves nothing half-done.
        for u in uploads {
            dst.check(u.offset, u.bytes.len())?;
        }
        let (starts, need) = staging_layout(uploads.iter().map(|u| u.bytes))?;
        if need == 0 {
            return Ok(());
        }
        // The previous batch's copies read the buffer; they must be done before it changes
        // (or is replaced and unregistered).
        if let Some(prev) = self.pending.take() {
            prev.synchronize()?;
        }
        if let Some(size) = staging_capacity(self.capacity(), need)? {
            self.region = None;
            let owner: Arc<dyn super::HostMemory> = Arc::new(PageBuffer::zeroed(size)?);
            self.region = Some(Arc::new(PinnedRegion::register(ctx, owner)?));
            tracing::debug!(size, "pinned upload staging grown");
        }
        let Some(region) = self.region.as_ref() else {
            return Err(GpuError::InvalidArgument("no staging buffer".into()));
        };
        for (u, &start) in uploads.iter().zip(&starts) {
            // SAFETY: `start + len ≤ need ≤ region.len()` (layout and capacity above); the
            // region's memory is a `PageBuffer` only this staging writes (nothing else holds a
            // reference to its bytes), and no copy out of it is in flight (`pending` waited).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    u.bytes.as_ptr(),
                    region.ptr.add(start),
                    u.bytes.len(),
                )
            };
        }
        let queued = uploads.iter().zip(&starts).try_for_each(|(u, &start)| {
            stream.copy_async(region, start..start + u.bytes.len(), dst, u.offset)
        });
        // Whatever was queued reads the buffer: mark it, or drain the stream if we cannot.
        match stream.record() {
            Ok(event) => self.pending = Some(event),
            Err(e) => {
                stream.synchronize()?;
                return Err(e);
            }
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_reused_while_large_enough_and_grows_by_powers_of_two() {
        // First use: at least MIN_STAGING.
        assert_eq!(staging_capacity(0, 1).unwrap(), Some(MIN_STAGING));
        assert_eq!(staging_capacity(0, 0).unwrap(), None);
        // Reused while it fits, whatever the need below it (never shrinks).
        assert_eq!(staging_capacity(MIN_STAGING, MIN_STAGING).unwrap(), None);
        assert_eq!(staging_capacity(8 << 20, 10).unwrap(), None);
        // Grows to the next power of two above the need.
        assert_eq!(
            staging_capacity(MIN_STAGING, MIN_STAGING + 1).unwrap(),
            Some(2 * MIN_STAGING)
        );
        assert_eq!(
            staging_capacity(MIN_STAGING, 5_000_000).unwrap(),
            Some(8 << 20)
        );
        // A need no power of two holds is an error, not a wrapped size.
        assert!(staging_capacity(0, usize::MAX - 1).is_err());
    }

    #[test]
    fn uploads_lie_back_to_back_in_the_staging_buffer() {
        let (a, b, c) = (vec![1u8; 10], vec![], vec![3u8; 7]);
        let (starts, need) = staging_layout([&a[..], &b[..], &c[..]]).unwrap();
        assert_eq!(starts, [0, 10, 10]);
        assert_eq!(need, 17);
        assert_eq!(staging_layout([]).unwrap(), (vec![], 0));
    }
}
