//! The client side of local zero-copy reads (blocking; one connection per thread).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use loaderd_proto::transport::{
    MAX_SHM_MESSAGE, ReadOnlyMap, SHM_PROTOCOL_VERSION, connect_to, recv_msg, send_msg,
};
use loaderd_proto::v1 as pb;
use prost::Message;

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

/// Connects and reads the daemon's hello with the arena descriptor.
fn handshake(path: &Path) -> Result<(OwnedFd, pb::ShmHello, OwnedFd), ShmError> {
    let conn = connect_to(path)?;
    let mut buf = vec![0u8; MAX_SHM_MESSAGE];
    let (n, fd) = recv_msg(conn.as_fd(), &mut buf)?;
    let hello = decode::<pb::ShmHello>(&buf[..n])?;
    // A refused connection (too many): the hello says why and carries no arena.
    status(hello.code, hello.error.clone())?;
    if hello.version != SHM_PROTOCOL_VERSION {
        return Err(ShmError::Protocol(format!(
            "unknown version {}",
            hello.version
        )));
    }
    let fd = fd.ok_or_else(|| ShmError::Protocol("no arena descriptor in hello".into()))?;
    Ok((conn, hello, fd))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ShmError> {
    if bytes.is_empty() {
        return Err(ShmError::Protocol("daemon closed the connection".into()));
    }
    M::decode(bytes).map_err(|e| ShmError::Protocol(e.to_string()))
}

fn status(code: i32, message: String) -> Result<(), ShmError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ShmError::Status {
            code: tonic::Code::from_i32(code),
            message,
        })
    }
}

/// A bare connection to the shared-memory socket, after the daemon's hello: one request,
/// one reply. The typed clients below build on it; tools and tests use it to send any
/// request, well-formed or not.
pub struct ShmConnection {
    conn: OwnedFd,
    hello: pb::ShmHello,
    arena: OwnedFd,
    buf: Vec<u8>,
}

impl ShmConnection {
    /// Connects and reads the hello (an error when the daemon refuses the connection).
    pub fn connect(path: &Path) -> Result<Self, ShmError> {
        let (conn, hello, arena) = handshake(path)?;
        Ok(ShmConnection {
            conn,
            hello,
            arena,
            buf: vec![0u8; MAX_SHM_MESSAGE],
        })
    }

    /// The daemon's hello.
    pub fn hello(&self) -> &pb::ShmHello {
        &self.hello
    }

    /// Sends `req` and returns the reply's bytes and any descriptor passed with it.
    pub fn request(
        &mut self,
        req: &pb::ShmRequest,
    ) -> Result<(Vec<u8>, Option<OwnedFd>), ShmError> {
        send_msg(self.conn.as_fd(), &req.encode_to_vec(), None)?;
        let (n, fd) = recv_msg(self.conn.as_fd(), &mut self.buf)?;
        if n == 0 {
            return Err(ShmError::Protocol("daemon closed the connection".into()));
        }
        Ok((self.buf[..n].to_vec(), fd))
    }
}

/// A piece of a file, in order.
pub enum Piece<'a> {
    /// Bytes mapped from the daemon's arena (valid during the callback only).
    Mapped(&'a [u8]),
    /// Bytes that are not in the memory tier: read `len` bytes at `offset` over gRPC, of
    /// object version `version` (`ReadRequest.version`), the version of every other piece.
    Fallback {
        offset: u64,
        len: u64,
        version: &'a str,
    },
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
        let c = ShmConnection::connect(path)?;
        let map = ReadOnlyMap::new(&c.arena, c.hello.arena_len as usize)?;
        Ok(ShmClient {
            conn: c.conn,
            map,
            next_id: 0,
            unreleased: None,
            buf: c.buf,
        })
    }

    /// Reads `length` bytes (0: to the end) of `path` from `offset`, handing each piece in
    /// order to `f`; returns the file's size. The mapped pieces are valid only inside `f`; the
    /// daemon's lease on them is released with the next request or when the client drops.
    /// Every piece is of one object version; fallback pieces name it, so that the caller's
    /// gRPC read of them is pinned to it.
    pub fn read(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
        f: impl FnMut(u64, Piece<'_>) -> std::io::Result<()>,
    ) -> Result<u64, ShmError> {
        self.read_version(path, offset, length, "", f)
            .map(|(size, _)| size)
    }

    /// Like [`ShmClient::read`], of object version `version` only (`ShmRead.version`;
    /// empty: the current one, whichever it is): a file changed since fails with ABORTED
    /// instead. Returns the file's size and the version read.
    pub fn read_version(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
        version: &str,
        mut f: impl FnMut(u64, Piece<'_>) -> std::io::Result<()>,
    ) -> Result<(u64, String), ShmError> {
        self.next_id += 1;
        let id = self.next_id;
        let req = pb::ShmRequest {
            kind: Some(pb::shm_request::Kind::Read(pb::ShmRead {
                id,
                path: path.to_string(),
                offset,
                length,
                release: self.unreleased.take().into_iter().collect(),
                version: version.to_string(),
            })),
        };
        send_msg(self.conn.as_fd(), &req.encode_to_vec(), None)?;
        let (n, _) = recv_msg(self.conn.as_fd(), &mut self.buf)?;
        let reply = decode::<pb::ShmReadReply>(&self.buf[..n])?;
        if reply.id != id {
            return Err(ShmError::Protocol(format!(
                "reply {} to request {id}",
                reply.id
            )));
        }
        status(reply.code, reply.error)?;
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
                    version: &reply.version,
                }
            };
            if let Err(err) = f(e.file_offset, piece) {
                res = Err(err.into());
                break;
            }
        }
        self.unreleased = Some(id);
        res.map(|()| (reply.file_size, reply.version))
    }
}

/// One training batch, viewing the client's ring (valid until the next call).
pub struct Batch<'a> {
    pub seq: u64,
    pub labels: Vec<i64>,
    pub keys: Vec<String>,
    /// Samples that could not be read or decoded (not in `data`).
    pub skipped: Vec<String>,
    /// `labels.len()` samples of `sample_bytes` each, in a host ring; empty when the batch is
    /// in device memory (`device` is set).
    pub data: &'a [u8],
    /// Where the batch lies in a CUDA ring: this process has no host view of it.
    pub device: Option<DeviceSlot>,
}

impl Batch<'_> {
    /// The batch's bytes, wherever they are.
    pub fn len(&self) -> u64 {
        self.device.map_or(self.data.len() as u64, |d| d.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch in the device ring: `len` bytes at `offset` of the exported allocation of CUDA
/// device `device` (complete on the device when the batch is delivered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSlot {
    pub device: u32,
    pub offset: u64,
    pub len: u64,
}

/// The loader's ring as this client holds it.
enum Ring {
    /// A memfd, mapped read-only.
    Host(ReadOnlyMap),
    /// An exported CUDA allocation's POSIX descriptor, kept but not mapped: it is no memfd
    /// (mmap of it is meaningless); a CUDA importer maps it with
    /// cuMemImportFromShareableHandle.
    Cuda(OwnedFd),
}

/// Where a loader's ring is, from its `LoaderOpened` (an older daemon sets no memory: host).
pub fn ring_memory(opened: &pb::LoaderOpened) -> pb::BatchMemory {
    match pb::BatchMemory::try_from(opened.memory) {
        Ok(pb::BatchMemory::Cuda) => pb::BatchMemory::Cuda,
        _ => pb::BatchMemory::Host,
    }
}

/// Bytes of `slot_bytes × depth`, the least a ring must hold (None on overflow).
fn ring_len(opened: &pb::LoaderOpened) -> Option<u64> {
    opened.slot_bytes.checked_mul(u64::from(opened.depth))
}

/// Where batch `slot` of `samples` samples lies in a ring of `ring_bytes` (None when it
/// does not fit: a protocol error).
fn slot_range(
    opened: &pb::LoaderOpened,
    ring_bytes: u64,
    slot: u32,
    samples: u32,
) -> Option<(u64, u64)> {
    if slot >= opened.depth {
        return None;
    }
    let off = u64::from(slot).checked_mul(opened.slot_bytes)?;
    let len = u64::from(samples).checked_mul(opened.sample_bytes)?;
    (len <= opened.slot_bytes && off.checked_add(len)? <= ring_bytes).then_some((off, len))
}

/// A connection that receives training batches from the daemon's pipeline.
pub struct BatchClient {
    conn: OwnedFd,
    ring: Ring,
    /// The ring's length: what was mapped (host) or the exported allocation's (CUDA).
    ring_bytes: u64,
    opened: pb::LoaderOpened,
    held: Option<u32>,
    buf: Vec<u8>,
}

impl BatchClient {
    /// Starts a loader in the daemon and takes its batch ring: a host ring is mapped; with
    /// `req.cuda_device = Some(n)` the daemon may answer a CUDA ring (memory = CUDA), whose
    /// descriptor is kept unmapped ([`BatchClient::cuda_ring_fd`]), or a host ring with
    /// `gpu_reason` saying why not.
    pub fn open(path: &Path, req: pb::OpenLoader) -> Result<Self, ShmError> {
        Self::open_on(ShmConnection::connect(path)?, req)
    }

    /// Like [`BatchClient::open`], on a connection already made.
    pub fn open_on(conn: ShmConnection, req: pb::OpenLoader) -> Result<Self, ShmError> {
        let mut conn = conn;
        let (buf, fd) = conn.request(&pb::ShmRequest {
            kind: Some(pb::shm_request::Kind::OpenLoader(req)),
        })?;
        let opened = decode::<pb::LoaderOpened>(&buf)?;
        status(opened.code, opened.error.clone())?;
        let fd = fd.ok_or_else(|| ShmError::Protocol("no ring descriptor".into()))?;
        let least =
            ring_len(&opened).ok_or_else(|| ShmError::Protocol("ring size overflows".into()))?;
        let (ring, ring_bytes) = match ring_memory(&opened) {
            pb::BatchMemory::Cuda => {
                if opened.ring_bytes < least {
                    return Err(ShmError::Protocol(format!(
                        "CUDA ring of {} bytes holds less than {} slots of {}",
                        opened.ring_bytes, opened.depth, opened.slot_bytes
                    )));
                }
                (Ring::Cuda(fd), opened.ring_bytes)
            }
            _ => (Ring::Host(ReadOnlyMap::new(&fd, least as usize)?), least),
        };
        Ok(BatchClient {
            conn: conn.conn,
            ring,
            ring_bytes,
            opened,
            held: None,
            buf: conn.buf,
        })
    }

    /// Shapes, sizes and counts of this loader.
    pub fn opened(&self) -> &pb::LoaderOpened {
        &self.opened
    }

    /// Host or CUDA.
    pub fn memory(&self) -> pb::BatchMemory {
        ring_memory(&self.opened)
    }

    /// The ring's length in bytes.
    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
    }

    /// Why a loader that asked for a CUDA device got a host ring (None otherwise).
    pub fn gpu_reason(&self) -> Option<&str> {
        Some(self.opened.gpu_reason.as_str()).filter(|r| !r.is_empty())
    }

    /// The CUDA ring's POSIX descriptor, for a CUDA importer (None for a host ring).
    pub fn cuda_ring_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.ring {
            Ring::Cuda(fd) => Some(fd.as_fd()),
            Ring::Host(_) => None,
        }
    }

    /// The next batch in order, releasing the previous one; `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>, ShmError> {
        let msg = pb::ShmRequest {
            kind: Some(pb::shm_request::Kind::NextBatch(pb::NextBatch {
                release_slot: self.held.take().map_or(-1, i64::from),
            })),
        };
        send_msg(self.conn.as_fd(), &msg.encode_to_vec(), None)?;
        let (n, _) = recv_msg(self.conn.as_fd(), &mut self.buf)?;
        let ready = decode::<pb::BatchReady>(&self.buf[..n])?;
        status(ready.code, ready.error)?;
        if ready.end {
            return Ok(None);
        }
        self.held = Some(ready.slot);
        let (off, len) = slot_range(&self.opened, self.ring_bytes, ready.slot, ready.samples)
            .ok_or_else(|| ShmError::Protocol("batch outside the ring".into()))?;
        let (data, device) = match &self.ring {
            // SAFETY: the daemon delivered this slot to us and does not write it until we
            // release it with the next request, which needs `&mut self` and so ends this
            // borrow first.
            Ring::Host(map) => (
                unsafe { map.slice(off, len) }
                    .ok_or_else(|| ShmError::Protocol("batch outside the ring".into()))?,
                None,
            ),
            Ring::Cuda(_) => (
                &[][..],
                Some(DeviceSlot {
                    device: self.opened.cuda_device,
                    offset: off,
                    len,
                }),
            ),
        };
        Ok(Some(Batch {
            seq: ready.seq,
            labels: ready.labels,
            keys: ready.keys,
            skipped: ready.skipped,
            data,
            device,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(memory: pb::BatchMemory) -> pb::LoaderOpened {
        pb::LoaderOpened {
            slot_bytes: 1000,
            depth: 3,
            sample_bytes: 300,
            memory: memory as i32,
            ..Default::default()
        }
    }

    #[test]
    fn an_older_daemons_ring_is_host_memory() {
        assert_eq!(
            ring_memory(&opened(pb::BatchMemory::Unspecified)),
            pb::BatchMemory::Host
        );
        assert_eq!(
            ring_memory(&opened(pb::BatchMemory::Cuda)),
            pb::BatchMemory::Cuda
        );
        let mut unknown = opened(pb::BatchMemory::Host);
        unknown.memory = 99;
        assert_eq!(ring_memory(&unknown), pb::BatchMemory::Host);
    }

    #[test]
    fn slots_must_lie_inside_the_ring() {
        let o = opened(pb::BatchMemory::Cuda);
        assert_eq!(ring_len(&o), Some(3000));
        assert_eq!(slot_range(&o, 3000, 0, 3), Some((0, 900)));
        assert_eq!(slot_range(&o, 3000, 2, 3), Some((2000, 900)));
        // A slot past the depth, a batch larger than its slot, a ring shorter than the slots.
        assert_eq!(slot_range(&o, 4096, 3, 1), None);
        assert_eq!(slot_range(&o, 3000, 0, 4), None);
        assert_eq!(slot_range(&o, 2500, 2, 3), None);
        let huge = pb::LoaderOpened {
            slot_bytes: u64::MAX,
            depth: 2,
            sample_bytes: u64::MAX,
            ..Default::default()
        };
        assert_eq!(ring_len(&huge), None);
        assert_eq!(slot_range(&huge, u64::MAX, 1, 2), None);
    }
}
