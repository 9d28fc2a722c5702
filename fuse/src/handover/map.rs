//! A read-write shared mapping of the state memfd with bounds-checked access: the only
//! `unsafe` of the handover. Access goes through raw copies (never references into the
//! mapping), because another process (a crashed server's successor) maps the same pages.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// `len` bytes of a file mapped shared, read-write.
#[derive(Debug)]
pub(crate) struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value; every access is a bounds-checked raw copy or
// an atomic, and the state log serialises its writers behind a mutex.
unsafe impl Send for SharedMap {}
// SAFETY: as above: `&self` methods copy or use atomics, no reference into the mapping escapes.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `fd` (which must be at least that long).
    pub(crate) fn new(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
        let size = NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty mapping"))?;
        // SAFETY: a fresh shared mapping of a file we hold; the pointer stays valid until `Drop`.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    fn check(&self, off: usize, len: usize) -> Option<()> {
        (off.checked_add(len)? <= self.len).then_some(())
    }

    /// Copies `out.len()` bytes at `off` into `out`; `None` if out of bounds.
    pub(crate) fn read(&self, off: usize, out: &mut [u8]) -> Option<()> {
        self.check(off, out.len())?;
        // SAFETY: `off..off + len` is inside the mapping (checked) and `out` is a distinct
        // local buffer, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len())
        };
        Some(())
    }

    /// Copies `data` to `off`; `None` if out of bounds.
    pub(crate) fn write(&self, off: usize, data: &[u8]) -> Option<()> {
        self.check(off, data.len())?;
        // SAFETY: in bounds (checked); `data` is not inside the mapping (callers pass their
        // own buffers), and writers are serialised by the state log.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        Some(())
    }

    /// Zeroes `len` bytes at `off`; `None` if out of bounds.
    pub(crate) fn zero(&self, off: usize, len: usize) -> Option<()> {
        self.check(off, len)?;
        // SAFETY: in bounds (checked); writers are serialised by the state log.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), 0, len) };
        Some(())
    }

    /// The 4-byte word at `off` as an atomic; `None` if out of bounds or misaligned.
    pub(crate) fn atomic_u32(&self, off: usize) -> Option<&AtomicU32> {
        self.check(off, 4)?;
        if !off.is_multiple_of(4) {
            return None;
        }
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the word lives as long
        // as `self`, and every access to it, in any process, is atomic.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) })
    }

    /// The 8-byte word at `off` as an atomic; `None` if out of bounds or misaligned.
    pub(crate) fn atomic_u64(&self, off: usize) -> Option<&AtomicU64> {
        self.check(off, 8)?;
        if !off.is_multiple_of(8) {
            return None;
        }
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); the word lives as long
        // as `self`, and every access to it, in any process, is atomic.
        Some(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
