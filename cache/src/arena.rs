//! A shared-memory arena: one `memfd` mapped read-write into the daemon.
//!
//! The memory tier lives here so that later stages (batch handoff, FUSE) can hand cached
//! bytes to other processes by passing the fd and an offset instead of copying. memfd memory
//! is not bound by a container's small `/dev/shm` and disappears with its last reference.
//! This module is the only place in the crate with `unsafe`; everything above it works with
//! offsets handed out by the allocator, which guarantees that live regions never overlap.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::error::{Error, Result};

/// A mapped memfd of fixed length.
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access goes through
// methods whose callers guarantee exclusive writers per region (see `write`).
unsafe impl Send for Arena {}
// SAFETY: as above; concurrent reads of a region are fine, and writes are region-exclusive.
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates and maps a zero-filled memfd of `len` bytes named `name` (shown in /proc).
    pub fn new(name: &str, len: usize) -> Result<Self> {
        let io = |e: nix::Error| Error::io("creating shared-memory arena", name, e.into());
        let size = NonZeroUsize::new(len).ok_or_else(|| {
            Error::config("cache.memory.capacity", "an arena needs a non-zero size")
        })?;
        let fd =
            memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(io)?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(io)?;
        // SAFETY: a fresh shared mapping of a memfd we own, of exactly its length; nothing
        // else aliases it yet. The pointer stays valid until `munmap` in `Drop`.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(io)?;
        Ok(Arena {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    /// The arena's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the arena is empty (never: length is non-zero).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, for handing the arena to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new read-only descriptor of the arena: a process given it can map the arena for
    /// reading but can never write the cache.
    pub fn read_only_fd(&self) -> Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|e| Error::io("reopening the arena read-only", path, e))?;
        Ok(file.into())
    }

    fn check(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "arena access {off}+{len} outside {} bytes",
            self.len
        );
    }

    /// Copies `data` to `off`.
    ///
    /// # Safety
    /// No other thread may read or write `off..off + data.len()` during the call, and no
    /// `&[u8]` from [`Arena::slice`] over that range may be alive.
    pub unsafe fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        // SAFETY: in bounds (checked); the caller guarantees exclusive access to the range;
        // `data` cannot overlap the arena's region being written (it is not handed out yet).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
    }

    /// The bytes at `off..off + len`, writable.
    ///
    /// # Safety
    /// The caller must have exclusive access to the range for the slice's lifetime: no other
    /// reader or writer of it, in this process or another.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        self.check(off, len);
        // SAFETY: in bounds (checked), mapped for the arena's lifetime, exclusive per the
        // caller's guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }

    /// The bytes at `off..off + len`.
    ///
    /// # Safety
    /// Nobody may write the range while the returned slice lives.
    pub unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        self.check(off, len);
        // SAFETY: in bounds (checked), mapped for the arena's lifetime, and the caller
        // guarantees no writer for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`; no slices outlive `self`
        // because they borrow it.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::error!(error = %e, "munmap of cache arena failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let a = Arena::new("test-arena", 1 << 16).unwrap();
        // SAFETY: single-threaded test, no slices alive during the write.
        unsafe { a.write(4096, b"hello") };
        // SAFETY: no writer while the slice lives.
        assert_eq!(unsafe { a.slice(4096, 5) }, b"hello");
        // SAFETY: as above.
        assert_eq!(unsafe { a.slice(0, 4) }, [0, 0, 0, 0]);
    }
}
