//! SOCK_SEQPACKET sockets: every message is one datagram, optionally with a descriptor
//! attached (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::cmsg_space;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket,
};

pub(crate) fn nix_io(e: nix::Error) -> std::io::Error {
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
pub fn listen_at(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
    listen(&fd, Backlog::new(128).map_err(nix_io)?).map_err(nix_io)?;
    Ok(fd)
}

/// Accepts one connection.
pub fn accept_on(listener: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(nix_io)?;
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Connects to the SOCK_SEQPACKET socket at `path`.
pub fn connect_to(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
    Ok(fd)
}

/// Sends one message, with `pass` attached as SCM_RIGHTS when given.
pub fn send_msg(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    pass: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    send_msg_fds(fd, msg, pass.as_slice())
}

/// Sends one message with every descriptor of `pass` attached as SCM_RIGHTS.
pub fn send_msg_fds(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    pass: &[BorrowedFd<'_>],
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
pub fn recv_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let (len, fds) = recv_msg_fds(fd, buf)?;
    Ok((len, fds.into_iter().next()))
}

/// Most descriptors [`recv_msg_fds`] takes from one message.
pub const MAX_PASSED_FDS: usize = 4;

/// Receives one message into `buf`: its length (0 = peer gone) and the descriptors passed
/// with it (at most [`MAX_PASSED_FDS`]), in the order they were sent.
pub fn recv_msg_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = cmsg_space!([RawFd; MAX_PASSED_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(nix_io)?;
    let mut passed = Vec::new();
    for c in msg.cmsgs().map_err(nix_io)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed `raw` in this process for us alone.
                passed.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::other(
            "message larger than the receive buffer",
        ));
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(
            "more descriptors passed than the receiver takes",
        ));
    }
    Ok((msg.bytes, passed))
}
