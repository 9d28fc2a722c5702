//! The client side of local zero-copy reads (blocking; one connection per thread).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use loaderd_proto::v1 as pb;
use prost::Message;

use super::{MAX_MESSAGE, ReadOnlyMap, connect_to, recv_msg, send_msg};

/// Why a shared-memory read failed.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared-memory socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message}")]
    Status { code: tonic::Code, message: String },
    #[error("shared-memory protocol: {0}")]
    Protocol(String),
}

/// A piece of a file, in order.
pub enum Piece<'a> {
    /// Bytes mapped from the daemon's arena (valid during the callback only).
    Mapped(&'a [u8]),
    /// Bytes that are not in the memory tier: read `len` bytes at `offset` over gRPC.
    Fallback { offset: u64, len: u64 },
}

/// A connection to a daemon's shared-memory socket with the arena mapped.
pub struct ShmClient {
    conn: OwnedFd,
    map: ReadOnlyMap,
    next_id: u64,
    /// The last read, released with the next request (or when the connection closes).
    unreleased: Option<u64>,
    buf: Vec<u8>,
}

impl ShmClient {
    /// Connects and maps the arena.
    pub fn connect(path: &Path) -> Result<Self, ShmError> {
        let conn = connect_to(path)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, fd) = recv_msg(conn.as_fd(), &mut buf)?;
        let hello =
            pb::ShmHello::decode(&buf[..n]).map_err(|e| ShmError::Protocol(e.to_string()))?;
        if hello.version != super::server::VERSION {
            return Err(ShmError::Protocol(format!(
                "unknown version {}",
                hello.version
            )));
        }
        let fd = fd.ok_or_else(|| ShmError::Protocol("no arena descriptor in hello".into()))?;
        let map = ReadOnlyMap::new(&fd, hello.arena_len as usize)?;
        Ok(ShmClient {
            conn,
            map,
            next_id: 0,
            unreleased: None,
            buf,
        })
    }

    /// Reads `length` bytes (0: to the end) of `path` from `offset`, handing each piece in
    /// order to `f`; returns the file's size. The mapped pieces are valid only inside `f`; the
    /// daemon's lease on them is released with the next request or when the client drops.
    pub fn read(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
        mut f: impl FnMut(u64, Piece<'_>) -> std::io::Result<()>,
    ) -> Result<u64, ShmError> {
        self.next_id += 1;
        let id = self.next_id;
        let req = pb::ShmRequest {
            kind: Some(pb::shm_request::Kind::Read(pb::ShmRead {
                id,
                path: path.to_string(),
                offset,
                length,
                release: self.unreleased.take().into_iter().collect(),
            })),
        };
        send_msg(self.conn.as_fd(), &req.encode_to_vec(), None)?;
        let (n, _) = recv_msg(self.conn.as_fd(), &mut self.buf)?;
        if n == 0 {
            return Err(ShmError::Protocol("daemon closed the connection".into()));
        }
        let reply = pb::ShmReadReply::decode(&self.buf[..n])
            .map_err(|e| ShmError::Protocol(e.to_string()))?;
        if reply.id != id {
            return Err(ShmError::Protocol(format!(
                "reply {} to request {id}",
                reply.id
            )));
        }
        if reply.code != 0 {
            return Err(ShmError::Status {
                code: tonic::Code::from_i32(reply.code),
                message: reply.error,
            });
        }
        let mut res = Ok(());
        for e in &reply.extents {
            let piece = if e.in_arena {
                // SAFETY: the daemon leased this extent for request `id`; the lease is released
                // by the next request, which needs `&mut self` and so cannot overlap the slice.
                match unsafe { self.map.slice(e.arena_offset, e.length) } {
                    Some(bytes) => Piece::Mapped(bytes),
                    None => {
                        res = Err(ShmError::Protocol("extent outside the arena".into()));
                        break;
                    }
                }
            } else {
                Piece::Fallback {
                    offset: e.file_offset,
                    len: e.length,
                }
            };
            if let Err(err) = f(e.file_offset, piece) {
                res = Err(err.into());
                break;
            }
        }
        self.unreleased = Some(id);
        res.map(|()| reply.file_size)
    }
}
