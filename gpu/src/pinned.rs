//! Pinned staging and host-to-device copies.
//!
//! The batch arena is registered with `cuMemHostRegister(PORTABLE)` once, when it is created:
//! registration costs ~1–2 GB/s of mapping work, and registered pages copy at pinned speed
//! (~41 GB/s measured on an H100 versus ~7 GB/s unregistered). [`PinnedRegion`] owns the
//! registration and holds the memory's owner (an `Arc<dyn HostMemory>`), so the range cannot be
//! unmapped while registered: the arena's own `Drop` (munmap) runs only after the last region
//! (and every in-flight copy, which holds the region) is gone, and the region unregisters first.
//!
//! [`H2dStream`] is one client's dedicated copy stream. Copies are ordered on it; events mark
//! points other streams (the augment kernel's) wait on. Each copy keeps its source region alive
//! until the stream has passed it: the region rides in the next [`CopyEvent`] (whose drop waits
//! for the event) or in the stream itself (whose drop synchronizes).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, sys};

use crate::GpuError;
use crate::detect::{driver_ready, guarded};

mod staging;
pub use staging::{MIN_STAGING, Upload, UploadStaging, staging_capacity, staging_layout};

/// A CUDA context on one device (the device's primary context).
#[derive(Debug, Clone)]
pub struct GpuContext {
    ctx: Arc<CudaContext>,
}

impl GpuContext {
    /// Opens device `ordinal`; [`GpuError::Unavailable`] when there is no driver or device.
    pub fn new(ordinal: u32) -> Result<Self, GpuError> {
        driver_ready().map_err(GpuError::Unavailable)?;
        let ctx = guarded("cuDevicePrimaryCtxRetain", || {
            CudaContext::new(ordinal as usize).map_err(|e| e.to_string())
        })
        .map_err(GpuError::Unavailable)?;
        Ok(GpuContext { ctx })
    }

    /// The `cudarc` context, for launching kernels.
    pub fn cuda(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn bind(&self) -> Result<(), GpuError> {
        self.ctx
            .bind_to_thread()
            .map_err(GpuError::driver("cuCtxSetCurrent"))
    }
}

/// Host memory that can be registered with the driver.
///
/// # Safety
/// `host_range` must return the same non-null pointer and nonzero length every time, and that
/// range must stay mapped (not freed, unmapped or remapped) for as long as the value lives.
pub unsafe trait HostMemory: Send + Sync + 'static {
    /// Start and length in bytes.
    fn host_range(&self) -> (*mut u8, usize);
}

/// A page-aligned heap buffer: registrable host memory for tests and staging.
#[derive(Debug)]
pub struct PageBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: `PageBuffer` exclusively owns its allocation; `&PageBuffer` gives only shared access.
unsafe impl Send for PageBuffer {}
// SAFETY: as above; mutation needs `&mut PageBuffer`.
unsafe impl Sync for PageBuffer {}

const PAGE: usize = 4096;

impl PageBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to whole pages), page aligned.
    pub fn zeroed(len: usize) -> Result<Self, GpuError> {
        let layout = Self::layout(len)?;
        // SAFETY: `layout` has nonzero size (checked in `layout`).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw)
            .ok_or_else(|| GpuError::InvalidArgument(format!("cannot allocate {len} bytes")))?;
        Ok(PageBuffer {
            ptr,
            len: layout.size(),
        })
    }

    fn layout(len: usize) -> Result<std::alloc::Layout, GpuError> {
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| GpuError::InvalidArgument(format!("buffer of {len} bytes")))?;
        std::alloc::Layout::from_size_align(size, PAGE)
            .map_err(|e| GpuError::InvalidArgument(e.to_string()))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `zeroed` with this same layout (`len` is already rounded).
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

// SAFETY: the allocation lives exactly as long as the `PageBuffer`, at a fixed address.
unsafe impl HostMemory for PageBuffer {
    fn host_range(&self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }
}

/// A host range registered with the driver (page-locked, device-visible, portable across
/// contexts); unregistered on drop, before its owner is released.
pub struct PinnedRegion {
    ctx: GpuContext,
    ptr: *mut u8,
    len: usize,
    // Declared last: dropped after `Drop::drop` has unregistered the range.
    _owner: Arc<dyn HostMemory>,
}

// SAFETY: the region is a registration token plus an owner that is itself `Send + Sync`; the
// driver's registration is process-wide, and the raw pointer is only handed to the driver.
unsafe impl Send for PinnedRegion {}
// SAFETY: as above; no method dereferences `ptr` on the host.
unsafe impl Sync for PinnedRegion {}

impl std::fmt::Debug for PinnedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl PinnedRegion {
    /// Registers all of `owner`'s memory. Slow (page-table work): once per arena.
    pub fn register(ctx: &GpuContext, owner: Arc<dyn HostMemory>) -> Result<Self, GpuError> {
        let (ptr, len) = owner.host_range();
        if ptr.is_null() || len == 0 {
            return Err(GpuError::InvalidArgument(
                "cannot register an empty range".into(),
            ));
        }
        ctx.bind()?;
        let started = std::time::Instant::now();
        // SAFETY: `HostMemory` guarantees `ptr..ptr+len` is mapped for as long as `owner`
        // lives, and we hold `owner` until after `cuMemHostUnregister` in `Drop`.
        unsafe { sys::cuMemHostRegister_v2(ptr.cast(), len, sys::CU_MEMHOSTREGISTER_PORTABLE) }
            .result()
            .map_err(GpuError::driver("cuMemHostRegister"))?;
        tracing::debug!(len, elapsed = ?started.elapsed(), "registered host memory");
        Ok(PinnedRegion {
            ctx: ctx.clone(),
            ptr,
            len,
            _owner: owner,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty ranges cannot be registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, range: &Range<usize>) -> Result<(), GpuError> {
        if range.start > range.end || range.end > self.len {
            return Err(GpuError::InvalidArgument(format!(
                "range {range:?} outside a pinned region of {} bytes",
                self.len
            )));
        }
        Ok(())
    }
}

impl Drop for PinnedRegion {
    fn drop(&mut self) {
        let result = self.ctx.bind().and_then(|()| {
            // SAFETY: `ptr` was registered in `register` and not yet unregistered; the owner
            // (and so the mapping) is still alive.
            unsafe { sys::cuMemHostUnregister(self.ptr.cast()) }
                .result()
                .map_err(GpuError::driver("cuMemHostUnregister"))
        });
        if let Err(e) = result {
            tracing::error!(error = %e, len = self.len, "unregistering host memory failed");
        }
    }
}

/// Device memory written by copies and kernels.
#[derive(Debug)]
pub struct DeviceBuffer {
    pub(crate) slice: CudaSlice<u8>,
    /// A raw view ([`DeviceBuffer::as_slice_mut`]) was handed out: work queued through it is
    /// invisible to cudarc's per-buffer events, so the drop waits for the context first.
    pub(crate) raw_views: bool,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // cudarc frees the memory in order on the buffer's own stream; work queued through a
        // raw view on another stream might still be running then. Waiting for the context
        // covers every stream (only buffers that lent a view pay for it).
        if self.raw_views
            && let Err(e) = self.slice.stream().context().synchronize()
        {
            tracing::error!(error = %e, "waiting for work on a device buffer before freeing it failed");
        }
    }
}

impl DeviceBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// True when zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }

    /// Checks that `n` bytes at `offset` lie inside the buffer.
    pub(crate) fn check(&self, offset: usize, n: usize) -> Result<(), GpuError> {
        if offset.checked_add(n).is_none_or(|end| end > self.len()) {
            return Err(GpuError::InvalidArgument(format!(
                "{n} bytes at offset {offset} overflow a device buffer of {}",
                self.len()
            )));
        }
        Ok(())
    }
}

/// A point on an [`H2dStream`]; keeps the regions copied before it alive until it completes.
#[derive(Debug)]
pub struct CopyEvent {
    event: CudaEvent,
    keep: Vec<Arc<PinnedRegion>>,
}

impl CopyEvent {
    /// Blocks until the copies before this event have finished.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.event
            .synchronize()
            .map_err(GpuError::driver("cuEventSynchronize"))
    }

    /// True once the copies before this event have finished.
    pub fn is_complete(&self) -> bool {
        self.event.is_complete()
    }

    /// Milliseconds between two events recorded on the same stream (`self` first).
    pub fn elapsed_ms(&self, end: &CopyEvent) -> Result<f32, GpuError> {
        self.event
            .elapsed_ms(&end.event)
            .map_err(GpuError::driver("cuEventElapsedTime"))
    }
}

impl Drop for CopyEvent {
    fn drop(&mut self) {
        if !self.keep.is_empty()
            && let Err(e) = self.event.synchronize()
        {
            tracing::error!(error = %e, "waiting for host-to-device copies failed");
        }
    }
}

/// Flags of the events [`H2dStream::record`] makes: timing enabled, spin-wait on synchronize.
const TIMING_EVENT: sys::CUevent_flags = sys::CUevent_flags::CU_EVENT_DEFAULT;

/// One client's dedicated host-to-device copy stream.
#[derive(Debug)]
pub struct H2dStream {
    stream: Arc<CudaStream>,
    /// Regions read by copies issued since the last event.
    in_flight: Mutex<Vec<Arc<PinnedRegion>>>,
}

impl H2dStream {
    /// A new non-default stream on `ctx`.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let stream = ctx
            .ctx
            .new_stream()
            .map_err(GpuError::driver("cuStreamCreate"))?;
        Ok(H2dStream {
            stream,
            in_flight: Mutex::new(Vec::new()),
        })
    }

    /// The `cudarc` stream, for launching kernels ordered after the copies.
    pub fn cuda(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Zeroed device memory, allocated in stream order.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer, GpuError> {
        let slice = self
            .stream
            .alloc_zeros::<u8>(len)
            .map_err(GpuError::driver("cuMemAlloc"))?;
        Ok(DeviceBuffer {
            slice,
            raw_views: false,
        })
    }

    /// Device memory whose contents are undefined until written, allocated in stream order:
    /// for buffers every read byte of which is written first (the decode buffer), where a
    /// memset would only cost bandwidth.
    pub fn alloc_uninit(&self, len: usize) -> Result<DeviceBuffer, GpuError> {
        // SAFETY: the bytes are `u8` (every bit pattern valid); device memory is never read
        // through a Rust reference, and what copies back to the host is plain bytes.
        let slice =
            unsafe { self.stream.alloc::<u8>(len) }.map_err(GpuError::driver("cuMemAlloc"))?;
        Ok(DeviceBuffer {
            slice,
            raw_views: false,
        })
    }

    /// Queues a copy of `src[range]` to `dst[dst_offset..]`. Returns at once; the host bytes
    /// must not change until an event recorded after it completes (the arena's slot protocol).
    pub fn copy_async(
        &self,
        src: &Arc<PinnedRegion>,
        range: Range<usize>,
        dst: &mut DeviceBuffer,
        dst_offset: usize,
    ) -> Result<(), GpuError> {
        src.check(&range)?;
        let n = range.end - range.start;
        dst.check(dst_offset, n)?;
        let (dptr, _record) = dst.slice.device_ptr_mut(&self.stream);
        // SAFETY: the source range is inside the registered region (checked) and stays mapped
        // while `src` lives, which we keep below until the stream has passed this copy; the
        // destination range is inside `dst` (checked), whose pending use `_record` orders.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dptr + dst_offset as u64,
                src.ptr.add(range.start).cast_const().cast(),
                n,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(GpuError::driver("cuMemcpyHtoDAsync"))?;
        let mut held = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !held.iter().any(|r| Arc::ptr_eq(r, src)) {
            held.push(Arc::clone(src));
        }
        Ok(())
    }

    /// Queues a copy of `src[range]` into the pinned region at `dst_offset` (the "host pinned
    /// ring" output mode). The host must not read those bytes until an event recorded after
    /// it completes; the region is kept alive until then, as for [`H2dStream::copy_async`].
    pub fn copy_to_host_async(
        &self,
        src: &DeviceBuffer,
        range: Range<usize>,
        dst: &Arc<PinnedRegion>,
        dst_offset: usize,
    ) -> Result<(), GpuError> {
        if range.start > range.end || range.end > src.len() {
            return Err(GpuError::InvalidArgument(format!(
                "range {range:?} outside a device buffer of {} bytes",
                src.len()
            )));
        }
        let n = range.end - range.start;
        let end = dst_offset
            .checked_add(n)
            .ok_or_else(|| GpuError::InvalidArgument("destination range overflows".into()))?;
        dst.check(&(dst_offset..end))?;
        let (sptr, _record) = src.slice.device_ptr(&self.stream);
        // SAFETY: the destination range is inside the registered region (checked), which stays
        // mapped while `dst` lives, and we keep `dst` below until the stream has passed this
        // copy; the source range is inside `src` (checked), whose pending writes `_record`
        // orders before the copy.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst.ptr.add(dst_offset).cast(),
                sptr + range.start as u64,
                n,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(GpuError::driver("cuMemcpyDtoHAsync"))?;
        let mut held = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !held.iter().any(|r| Arc::ptr_eq(r, dst)) {
            held.push(Arc::clone(dst));
        }
        Ok(())
    }

    /// Records an event after the copies queued so far. The event keeps timing
    /// (`CU_EVENT_DEFAULT`): cudarc's `record_event(None)` makes `CU_EVENT_DISABLE_TIMING`
    /// events, on which [`CopyEvent::elapsed_ms`] fails.
    pub fn record(&self) -> Result<CopyEvent, GpuError> {
        let event = self
            .stream
            .context()
            .new_event(Some(TIMING_EVENT))
            .map_err(GpuError::driver("cuEventCreate"))?;
        event
            .record(&self.stream)
            .map_err(GpuError::driver("cuEventRecord"))?;
        let keep = std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(CopyEvent { event, keep })
    }

    /// Makes later work on this stream wait for `event` (from any stream).
    pub fn wait(&self, event: &CopyEvent) -> Result<(), GpuError> {
        self.stream
            .wait(&event.event)
            .map_err(GpuError::driver("cuStreamWaitEvent"))
    }

    /// Blocks until everything queued has finished.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(GpuError::driver("cuStreamSynchronize"))?;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Copies `src` back to the host (blocking); for tests and diagnostics.
    pub fn to_host(&self, src: &DeviceBuffer) -> Result<Vec<u8>, GpuError> {
        self.stream
            .clone_dtoh(&src.slice)
            .map_err(GpuError::driver("cuMemcpyDtoH"))
    }
}

impl Drop for H2dStream {
    fn drop(&mut self) {
        if let Err(e) = self.synchronize() {
            tracing::error!(error = %e, "draining a copy stream failed");
        }
    }
}
