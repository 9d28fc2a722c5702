//! Read-only mappings of the descriptors the daemon passes (its arena, a batch ring).

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::seqpacket::nix_io;

/// A read-only shared mapping of a received arena descriptor.
pub struct ReadOnlyMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only memory owned by this value.
unsafe impl Send for ReadOnlyMap {}
// SAFETY: only shared reads happen through `&self`.
unsafe impl Sync for ReadOnlyMap {}

impl ReadOnlyMap {
    /// Maps `len` bytes of `fd` for reading.
    pub fn new(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
        let size = NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty arena"))?;
        // SAFETY: a fresh read-only shared mapping; the pointer stays valid until `Drop`.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(nix_io)?;
        Ok(ReadOnlyMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Bytes `off..off + len`, or `None` if out of bounds.
    ///
    /// # Safety
    /// The daemon must hold a lease on the range for as long as the slice lives (it then never
    /// writes it).
    pub unsafe fn slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: in bounds (checked), mapped until drop, and not written while leased.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(off as usize), len as usize)
        })
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; slices borrow `self` and are gone.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
