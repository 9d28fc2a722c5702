//! The handover messages: one SOCK_SEQPACKET datagram each, little-endian, starting with a
//! magic word and the protocol version (a peer of another version is refused, never guessed).

use std::os::fd::{BorrowedFd, OwnedFd};

use fuser::{InitFlags, SessionInit, Version};
use loaderd_proto::transport::{recv_msg_fds, send_msg_fds};

/// Version of the handover protocol; both sides must speak the same one.
pub const HANDOVER_PROTOCOL: u32 = 1;

const MAGIC: u32 = u32::from_le_bytes(*b"LDFH");
const MAX_MESSAGE: usize = 256;

/// A handover message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A server asks for the mount (sent on connecting).
    Hello { pid: u32 },
    /// The holder passes the mount: `/dev/fuse` and the state memfd ride along (SCM_RIGHTS).
    /// `init` is `None` until a server has answered the kernel's FUSE_INIT; `generation`
    /// counts the servers the mount has had.
    Grant {
        generation: u64,
        init: Option<SessionInit>,
    },
    /// The server answered FUSE_INIT with this outcome (the holder keeps it for successors).
    Initialised { init: SessionInit },
    /// The server stopped reading, answered every request it had read, and exits.
    Released,
    /// The holder speaks another protocol version (or is already serving one).
    Refused { protocol: u32, reason: String },
}

/// A malformed or foreign message, or a socket error.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("handover socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the handover socket")]
    Closed,
    #[error("not a handover message ({0})")]
    Malformed(&'static str),
    #[error("the peer speaks handover protocol {0}, this build speaks {HANDOVER_PROTOCOL}")]
    Protocol(u32),
}

const HELLO: u8 = 1;
const GRANT: u8 = 2;
const INITIALISED: u8 = 3;
const RELEASED: u8 = 4;
const REFUSED: u8 = 5;

fn put_init(out: &mut Vec<u8>, init: &SessionInit) {
    out.extend_from_slice(&init.proto_version.0.to_le_bytes());
    out.extend_from_slice(&init.proto_version.1.to_le_bytes());
    out.extend_from_slice(&init.flags.bits().to_le_bytes());
    out.extend_from_slice(&init.max_readahead.to_le_bytes());
    out.extend_from_slice(&init.max_write.to_le_bytes());
    // fuse_init_out is 64 bytes; anything longer is not an INIT reply.
    let reply = &init.reply[..init.reply.len().min(MAX_INIT_REPLY)];
    out.push(reply.len() as u8);
    out.extend_from_slice(reply);
}

/// Longest INIT reply payload carried.
const MAX_INIT_REPLY: usize = 128;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(WireError::Malformed("short message"))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn init(&mut self) -> Result<SessionInit, WireError> {
        let proto_version = Version(self.u32()?, self.u32()?);
        let flags = InitFlags::from_bits_retain(self.u64()?);
        let max_readahead = self.u32()?;
        let max_write = self.u32()?;
        let len = usize::from(self.u8()?);
        let reply = self
            .0
            .get(..len)
            .ok_or(WireError::Malformed("short INIT reply"))?
            .to_vec();
        self.0 = &self.0[len..];
        Ok(SessionInit {
            proto_version,
            flags,
            max_readahead,
            max_write,
            reply,
        })
    }
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&HANDOVER_PROTOCOL.to_le_bytes());
        match self {
            Message::Hello { pid } => {
                out.push(HELLO);
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Message::Grant { generation, init } => {
                out.push(GRANT);
                out.extend_from_slice(&generation.to_le_bytes());
                out.push(u8::from(init.is_some()));
                if let Some(init) = init {
                    put_init(&mut out, init);
                }
            }
            Message::Initialised { init } => {
                out.push(INITIALISED);
                put_init(&mut out, init);
            }
            Message::Released => out.push(RELEASED),
            Message::Refused { protocol, reason } => {
                out.push(REFUSED);
                out.extend_from_slice(&protocol.to_le_bytes());
                let reason = reason.as_bytes();
                out.extend_from_slice(&reason[..reason.len().min(MAX_MESSAGE - 32)]);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader(bytes);
        if r.u32()? != MAGIC {
            return Err(WireError::Malformed("bad magic"));
        }
        let protocol = r.u32()?;
        let kind = r.u8()?;
        if kind == REFUSED {
            // Readable whatever the version, so that a mismatch is reported as such.
            let protocol = r.u32()?;
            let reason = String::from_utf8_lossy(r.0).into_owned();
            return Ok(Message::Refused { protocol, reason });
        }
        if protocol != HANDOVER_PROTOCOL {
            return Err(WireError::Protocol(protocol));
        }
        let msg = match kind {
            HELLO => Message::Hello { pid: r.u32()? },
            GRANT => {
                let generation = r.u64()?;
                let init = match r.u8()? {
                    0 => None,
                    1 => Some(r.init()?),
                    _ => return Err(WireError::Malformed("bad INIT flag")),
                };
                Message::Grant { generation, init }
            }
            INITIALISED => Message::Initialised { init: r.init()? },
            RELEASED => Message::Released,
            _ => return Err(WireError::Malformed("unknown kind")),
        };
        if !r.0.is_empty() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        Ok(msg)
    }
}

/// Sends `msg` with `fds` attached.
pub fn send(sock: BorrowedFd<'_>, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
    Ok(send_msg_fds(sock, &msg.encode(), fds)?)
}

/// Receives one message and the descriptors that came with it.
pub fn recv(sock: BorrowedFd<'_>) -> Result<(Message, Vec<OwnedFd>), WireError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let (len, fds) = recv_msg_fds(sock, &mut buf)?;
    if len == 0 {
        return Err(WireError::Closed);
    }
    Ok((Message::decode(&buf[..len])?, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_ones_are_refused() {
        let init = SessionInit {
            proto_version: Version(7, 45),
            flags: InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_DO_READDIRPLUS,
            max_readahead: 1 << 20,
            max_write: 1 << 24,
            reply: (0..64).collect(),
        };
        for m in [
            Message::Hello { pid: 42 },
            Message::Grant {
                generation: 3,
                init: None,
            },
            Message::Grant {
                generation: 4,
                init: Some(init.clone()),
            },
            Message::Initialised { init: init.clone() },
            Message::Released,
            Message::Refused {
                protocol: 1,
                reason: "busy".into(),
            },
        ] {
            assert_eq!(Message::decode(&m.encode()).expect("decode"), m);
        }
        let mut other = Message::Released.encode();
        other[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Message::decode(&other),
            Err(WireError::Protocol(2))
        ));
        assert!(matches!(
            Message::decode(b"GET / HTTP/1.1"),
            Err(WireError::Malformed(_))
        ));
        let mut long = Message::Released.encode();
        long.push(0);
        assert!(matches!(
            Message::decode(&long),
            Err(WireError::Malformed(_))
        ));
        assert!(
            Message::decode(
                &Message::Grant {
                    generation: 1,
                    init: Some(init.clone())
                }
                .encode()[..20]
            )
            .is_err()
        );
    }
}
