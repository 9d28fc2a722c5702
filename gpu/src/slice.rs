//! [`DeviceSliceMut`]: a mutable view of device memory, the output of a batch.
//!
//! A batch may land in a [`DeviceBuffer`] (tests, benches, a loader's private memory) or in a
//! slot of an [`crate::ExportedMemory`] (the device ring another process maps); both hand out
//! the same view, so [`crate::GpuBatchPipeline::run`] and [`crate::AugmentKernel::launch`] need
//! not know which. The view borrows its memory mutably for `'a`: while it lives nothing else in
//! this process writes those bytes through a safe API.
//!
//! Ordering: work queued through a view is ordered only by the stream it is queued on. `cudarc`
//! tracks a [`DeviceBuffer`]'s uses with events, but not uses through a raw view: synchronize
//! that stream (or record an event on it and wait) before the memory is used on another stream
//! or read by another process.

use std::marker::PhantomData;
use std::ops::Range;

use cudarc::driver::{DevicePtrMut, sys};

use crate::GpuError;
use crate::pinned::{DeviceBuffer, H2dStream};

/// `len` bytes of device memory at `ptr`, writable for `'a`; see the module doc.
#[derive(Debug)]
pub struct DeviceSliceMut<'a> {
    ptr: sys::CUdeviceptr,
    len: usize,
    _memory: PhantomData<&'a mut [u8]>,
}

impl<'a> DeviceSliceMut<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be device memory, mapped read-write for the current device, that
    /// stays mapped for `'a` and that nothing else writes (or reads while this view writes)
    /// for `'a` except through this view.
    pub(crate) unsafe fn from_raw(ptr: sys::CUdeviceptr, len: usize) -> Self {
        DeviceSliceMut {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first byte (for logs and for handing to CUDA libraries).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// A shorter view of the same memory, borrowing this one.
    pub fn reborrow(&mut self) -> DeviceSliceMut<'_> {
        DeviceSliceMut {
            ptr: self.ptr,
            len: self.len,
            _memory: PhantomData,
        }
    }

    /// Bytes `range` of this view, borrowing it; [`GpuError::InvalidArgument`] when `range` is
    /// not inside it.
    pub fn sub(&mut self, range: Range<usize>) -> Result<DeviceSliceMut<'_>, GpuError> {
        check_range(&range, self.len)?;
        Ok(DeviceSliceMut {
            ptr: self.ptr + range.start as u64,
            len: range.end - range.start,
            _memory: PhantomData,
        })
    }
}

/// `range` is ordered and inside `len` bytes.
pub(crate) fn check_range(range: &Range<usize>, len: usize) -> Result<(), GpuError> {
    if range.start > range.end || range.end > len {
        return Err(GpuError::InvalidArgument(format!(
            "range {range:?} outside {len} bytes of device memory"
        )));
    }
    Ok(())
}

impl DeviceBuffer {
    /// All of the buffer as a view (the output of [`crate::GpuBatchPipeline::run`]). Work queued
    /// through the view is ordered by its stream only (see the module doc): use the buffer on
    /// the stream it was allocated on, or synchronize first. Freeing is safe either way: a
    /// buffer that lent a view waits for its context's work before it is freed.
    pub fn as_slice_mut(&mut self) -> DeviceSliceMut<'_> {
        self.raw_views = true;
        let stream = self.slice.stream().clone();
        let len = self.slice.len();
        // Waits (on the buffer's own stream) for cudarc's pending uses of the buffer.
        let (ptr, _record) = self.slice.device_ptr_mut(&stream);
        // SAFETY: `ptr..ptr + len` is this buffer's allocation, which `&mut self` keeps alive
        // and unaliased for the view's lifetime.
        unsafe { DeviceSliceMut::from_raw(ptr, len) }
    }
}

impl H2dStream {
    /// Queues `cuMemsetD8Async(value)` over all of `dst`.
    pub fn memset(&self, dst: &mut DeviceSliceMut<'_>, value: u8) -> Result<(), GpuError> {
        self.cuda()
            .context()
            .bind_to_thread()
            .map_err(GpuError::driver("cuCtxSetCurrent"))?;
        // SAFETY: `dst` is `len` bytes of writable device memory (its construction contract).
        unsafe { sys::cuMemsetD8Async(dst.ptr, value, dst.len, self.cuda().cu_stream()) }
            .result()
            .map_err(GpuError::driver("cuMemsetD8Async"))
    }

    /// Copies `src` (pageable host bytes) to the start of `dst` and waits for the stream; for
    /// tests and diagnostics (a pageable copy is slow and blocks).
    pub fn write_blocking(&self, src: &[u8], dst: &mut DeviceSliceMut<'_>) -> Result<(), GpuError> {
        check_range(&(0..src.len()), dst.len)?;
        self.cuda()
            .context()
            .bind_to_thread()
            .map_err(GpuError::driver("cuCtxSetCurrent"))?;
        // SAFETY: `dst` has at least `src.len()` writable bytes (checked); `src` stays borrowed
        // until the stream is synchronized below, so the driver's read of it is finished.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.ptr,
                src.as_ptr().cast(),
                src.len(),
                self.cuda().cu_stream(),
            )
        }
        .result()
        .map_err(GpuError::driver("cuMemcpyHtoDAsync"))?;
        self.synchronize()
    }

    /// Copies `src` back to the host after the work queued so far on this stream (blocking);
    /// for tests and diagnostics.
    pub fn read_blocking(&self, src: &DeviceSliceMut<'_>) -> Result<Vec<u8>, GpuError> {
        read_device(self, src.ptr, src.len)
    }
}

/// Blocking copy of `len` device bytes at `ptr` to the host, ordered after `stream`'s work.
pub(crate) fn read_device(
    stream: &H2dStream,
    ptr: sys::CUdeviceptr,
    len: usize,
) -> Result<Vec<u8>, GpuError> {
    let mut out = vec![0u8; len];
    stream
        .cuda()
        .context()
        .bind_to_thread()
        .map_err(GpuError::driver("cuCtxSetCurrent"))?;
    // SAFETY: callers pass `len` readable device bytes at `ptr`; `out` holds `len` bytes and
    // outlives the copy, which the synchronize below waits for.
    unsafe {
        sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), ptr, len, stream.cuda().cu_stream())
    }
    .result()
    .map_err(GpuError::driver("cuMemcpyDtoHAsync"))?;
    stream.synchronize()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_views_stay_inside() {
        // A view is only an address and a length: no device memory is touched here.
        // SAFETY: the view is never handed to the driver.
        let mut v = unsafe { DeviceSliceMut::from_raw(0x1000, 100) };
        let s = v.sub(10..30).unwrap();
        assert_eq!((s.device_ptr(), s.len()), (0x1000 + 10, 20));
        assert!(v.sub(0..100).is_ok());
        assert!(v.sub(90..101).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 20..10;
        assert!(v.sub(backwards).is_err());
        let e = v.sub(100..100).unwrap();
        assert!(e.is_empty());
        assert_eq!(v.reborrow().len(), 100);
    }
}
