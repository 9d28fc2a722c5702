//! Local zero-copy reads: the daemon's memory-tier arena shared with client processes.
//!
//! gRPC moves every byte through HTTP/2 framing and three copies; for data already in the
//! memory tier a local client can do better. The daemon listens on a second Unix socket
//! (SOCK_SEQPACKET, so every protobuf message is one datagram), sends a *read-only* descriptor
//! of its arena once per connection (SCM_RIGHTS), and answers each read with the arena extents
//! that hold the bytes. Those extents are leased: the daemon does not reuse their slots until
//! the client releases the read or disconnects (a killed client frees everything it held).
//! Bytes not in the memory tier are named as fallback extents, which the client reads over gRPC.
//!
//! This module holds the socket and mapping plumbing, the only `unsafe` of this crate.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod clients;
pub mod server;

use std::io::{IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::cmsg_space;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket,
};

/// Largest message either side sends.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The shared-memory socket that goes with gRPC socket `grpc`: `loaderd.sock` → `loaderd.shm.sock`.
pub fn default_shm_socket(grpc: &Path) -> PathBuf {
    let stem = grpc
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "loaderd".into());
    grpc.with_file_name(format!("{stem}.shm.sock"))
}

fn nix_io(e: nix::Error) -> std::io::Error {
    e.into()
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io)
}

/// A listening SOCK_SEQPACKET socket at `path`.
pub(crate) fn listen_at(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
    listen(&fd, Backlog::new(128).map_err(nix_io)?).map_err(nix_io)?;
    Ok(fd)
}

/// Accepts one connection.
pub(crate) fn accept_on(listener: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(nix_io)?;
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Connects to the SOCK_SEQPACKET socket at `path`.
pub(crate) fn connect_to(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
    Ok(fd)
}

/// Sends one message, with `pass` attached as SCM_RIGHTS when given.
pub(crate) fn send_msg(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    pass: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let iov = [IoSlice::new(msg)];
    let fds: Vec<RawFd> = pass.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(nix_io)?;
    Ok(())
}

/// Receives one message into `buf`: its length (0 = peer gone) and a passed descriptor.
pub(crate) fn recv_msg(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(nix_io)?;
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::other(
            "message larger than the receive buffer",
        ));
    }
    let mut passed = None;
    for c in msg.cmsgs().map_err(nix_io)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed `raw` in this process for us alone.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                passed.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, passed))
}

/// A read-only shared mapping of a received arena descriptor.
pub(crate) struct ReadOnlyMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only memory owned by this value.
unsafe impl Send for ReadOnlyMap {}
// SAFETY: only shared reads happen through `&self`.
unsafe impl Sync for ReadOnlyMap {}

impl ReadOnlyMap {
    /// Maps `len` bytes of `fd` for reading.
    pub(crate) fn new(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
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
    pub(crate) unsafe fn slice(&self, off: u64, len: u64) -> Option<&[u8]> {
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
