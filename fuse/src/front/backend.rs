//! The front's [`Backend`]: attributes, listings and capacity over the worker's gRPC socket,
//! data over its shared-memory socket (the bytes of the worker's memory tier, mapped
//! read-only; the gRPC fallback for what is not there, or when shared memory cannot serve),
//! every read pinned to the version the file was opened at.
//!
//! An open is one shared-memory round trip that resolves the file's size and version and
//! reads its head ([`HEAD`] bytes): the kernel's first read of a small file is then served
//! without asking the worker again.

use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use loaderd_client::{Piece, ShmError};
use loaderd_proto::v1 as pb;

use super::worker::{Worker, from_status};
use crate::backend::{Backend, Capacity, Entry, Error, ErrorKind, Handle, Kind, Owner, Result};
use crate::path;

/// Bytes of a file read at open, for the kernel's first read.
pub const HEAD: u64 = 128 << 10;

/// What an open file keeps besides its path and version: the head read at open, when it
/// was all in the worker's memory (a cache of bytes of the pinned version, never needed:
/// a handle without it reads as well).
#[derive(Debug, Default)]
pub struct Head(Option<Bytes>);

/// A range read over shared memory: the bytes (fallback pieces zeroed) and where the
/// fallback pieces are (offset in `data`, file offset, length).
struct ShmRange {
    data: BytesMut,
    fallback: Vec<(usize, u64, u64)>,
    size: u64,
    version: String,
}

/// The node's worker as a FUSE backend.
pub struct WorkerBackend {
    worker: Worker,
    object_mode: u32,
    ids: (u32, u32),
}

impl WorkerBackend {
    /// Serves `worker`'s namespace; entries whose source has no mode of its own (object
    /// stores) show `object_mode`, owned by this process.
    pub fn new(worker: Worker, object_mode: u32) -> Self {
        WorkerBackend {
            worker,
            object_mode,
            ids: Owner::process_ids(),
        }
    }

    /// The worker it serves from.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    fn entry(&self, info: &pb::FileInfo) -> Entry {
        let kind = if info.is_dir { Kind::Dir } else { Kind::File };
        let owner = match &info.mode {
            Some(m) => Owner {
                perm: (m.perm & 0o7555) as u16,
                uid: m.uid,
                gid: m.gid,
            },
            None => Owner::object(self.object_mode, info.is_dir, self.ids),
        };
        let mtime = (!info.is_dir).then(|| {
            UNIX_EPOCH + Duration::from_millis(u64::try_from(info.mtime_unix_ms).unwrap_or(0))
        });
        Entry {
            kind,
            size: info.size,
            mtime,
            owner,
        }
    }

    fn file_info(&self, path: &str) -> Result<pb::FileInfo> {
        self.worker.call(path, |w| {
            w.grpc(|mut c| async move {
                let req = pb::StatRequest {
                    path: path.to_string(),
                    with_mode: true,
                };
                Ok(c.stat(req).await?.into_inner())
            })
        })
    }

    /// `len` bytes of `path` from `offset` over gRPC, of `version` only.
    fn read_grpc(
        &self,
        path: &str,
        version: &str,
        offset: u64,
        len: u64,
        out: &mut BytesMut,
    ) -> Result<()> {
        let start = out.len();
        self.worker.call(path, |w| {
            out.truncate(start);
            let buf = &mut *out;
            w.grpc(|mut c| async move {
                let req = loaderd_client::pinned_read(path, offset, len, version);
                let mut chunks = c.read(req).await?.into_inner();
                while let Some(chunk) = chunks.message().await? {
                    buf.extend_from_slice(&chunk.data);
                }
                Ok(())
            })
        })
    }

    /// The range over shared memory (of `version`; empty: the current one), mapped pieces
    /// copied out. `None` when shared memory could not serve (no socket, a broken
    /// connection): the caller uses gRPC, whose retries decide whether the worker is there.
    fn shm_range(
        &self,
        path: &str,
        version: &str,
        offset: u64,
        len: u64,
    ) -> Option<Result<ShmRange>> {
        let mut data = BytesMut::with_capacity(len as usize);
        let mut fallback = Vec::new();
        let read = self.worker.with_shm(|c| {
            data.clear();
            fallback.clear();
            c.read_version(path, offset, len, version, |at, piece| {
                match piece {
                    Piece::Mapped(bytes) => data.extend_from_slice(bytes),
                    Piece::Fallback { len, .. } => {
                        // Its place in `data`, filled over gRPC.
                        fallback.push((data.len(), at, len));
                        data.resize(data.len() + len as usize, 0);
                    }
                }
                Ok(())
            })
        });
        Some(match read {
            // No connection, a broken one, or the worker's lease cap for shared-memory
            // clients reached: gRPC serves this read.
            Err(_)
            | Ok(Err(ShmError::Status {
                code: tonic::Code::ResourceExhausted,
                ..
            })) => return None,
            Ok(Err(ShmError::Status { code, message })) => {
                Err(from_status(&tonic::Status::new(code, message)))
            }
            Ok(Err(e)) => Err(Error::new(ErrorKind::Internal, e.to_string())),
            Ok(Ok((size, version))) => Ok(ShmRange {
                data,
                fallback,
                size,
                version,
            }),
        })
    }

    /// The range of an open file over shared memory, the pieces not in the worker's memory
    /// read over gRPC; `None` as for [`WorkerBackend::shm_range`].
    fn read_shm(&self, file: &Handle<Head>, offset: u64, len: u64) -> Option<Result<Bytes>> {
        let mut r = match self.shm_range(&file.path, &file.version, offset, len)? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        for (at, file_offset, piece_len) in std::mem::take(&mut r.fallback) {
            let mut piece = BytesMut::with_capacity(piece_len as usize);
            if let Err(e) = self.read_grpc(
                &file.path,
                &file.version,
                file_offset,
                piece_len,
                &mut piece,
            ) {
                return Some(Err(e));
            }
            if piece.len() as u64 != piece_len {
                return Some(Err(short(&file.path, file_offset, piece_len, piece.len())));
            }
            r.data[at..at + piece.len()].copy_from_slice(&piece);
        }
        Some(Ok(r.data.freeze()))
    }
}

fn short(path: &str, offset: u64, want: u64, got: usize) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("{path}: the worker answered {got} of {want} bytes at {offset}"),
    )
}

impl Backend for WorkerBackend {
    type File = Head;

    fn stat(&self, path: &str) -> Result<Entry> {
        Ok(self.entry(&self.file_info(path)?))
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, Entry)>> {
        let infos = self.worker.call(dir, |w| {
            w.grpc(|mut c| async move {
                let req = pb::ListRequest {
                    path: dir.to_string(),
                    recursive: false,
                    page_size: 0,
                    with_mode: true,
                };
                let mut pages = c.list(req).await?.into_inner();
                let mut all = Vec::new();
                while let Some(page) = pages.message().await? {
                    all.extend(page.entries);
                }
                Ok(all)
            })
        })?;
        Ok(infos
            .iter()
            .map(|info| (path::name(&info.path).to_string(), self.entry(info)))
            .collect())
    }

    fn open(&self, path: &str) -> Result<Handle<Head>> {
        if let Some(r) = self.shm_range(path, "", 0, HEAD) {
            let r = r?;
            let head = r.fallback.is_empty().then(|| r.data.freeze());
            return Ok(Handle {
                path: path.to_string(),
                size: r.size,
                version: r.version,
                file: Head(head),
            });
        }
        let info = self.file_info(path)?;
        if info.is_dir {
            return Err(Error::new(
                ErrorKind::IsDirectory,
                format!("{path} is a directory"),
            ));
        }
        Ok(Handle {
            path: path.to_string(),
            size: info.size,
            version: info.version,
            file: Head::default(),
        })
    }

    fn read(&self, file: &Handle<Head>, offset: u64, len: u32) -> Result<Bytes> {
        let len = u64::from(len).min(file.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Bytes::new());
        }
        if let Some(head) = &file.file.0
            && offset + len <= head.len() as u64
        {
            return Ok(head.slice(offset as usize..(offset + len) as usize));
        }
        if let Some(r) = self.read_shm(file, offset, len) {
            return r;
        }
        let mut out = BytesMut::with_capacity(len as usize);
        self.read_grpc(&file.path, &file.version, offset, len, &mut out)?;
        Ok(out.freeze())
    }

    /// A handle is its path and version: it reads the same after a handover.
    fn resume(&self, path: String, size: u64, version: String) -> Option<Handle<Head>> {
        Some(Handle {
            path,
            size,
            version,
            file: Head::default(),
        })
    }

    fn capacity(&self) -> Result<Capacity> {
        let status = self.worker.call("/", |w| {
            w.grpc(|mut c| async move { Ok(c.status(pb::StatusRequest {}).await?.into_inner()) })
        })?;
        Ok(Capacity {
            total: status.tiers.iter().map(|t| t.capacity_bytes).sum(),
            used: status.tiers.iter().map(|t| t.used_bytes).sum(),
        })
    }
}
