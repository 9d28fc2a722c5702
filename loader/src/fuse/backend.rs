//! The in-daemon backend of the FUSE file system: every call is a call into this daemon's
//! [`Cache`], blocking the FUSE request thread (never a runtime thread) on the daemon's
//! runtime through its handle. A read of a cached block hands a slice of the memory tier
//! straight to the reply: no RPC hop, no copy.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use loaderd_cache::{Cache, FileHandle, LogicalPath, ReadType, Stat};
use loaderd_fuse::{Backend, Capacity, Entry, Error, ErrorKind, Handle, Kind};
use tokio::runtime::Handle as Runtime;

use super::perm::owner_and_mode;

/// The daemon's cache as a FUSE backend.
pub struct CacheBackend {
    cache: Arc<Cache>,
    rt: Runtime,
    object_mode: u32,
    ids: (u32, u32),
}

impl CacheBackend {
    /// The namespace of `cache`, blocking on `rt`; object-store files show `object_mode`.
    pub fn new(cache: Arc<Cache>, rt: Runtime, object_mode: u32) -> Self {
        CacheBackend {
            cache,
            rt,
            object_mode,
            ids: loaderd_fuse::Owner::process_ids(),
        }
    }

    fn entry(&self, path: &LogicalPath, stat: &Stat) -> Entry {
        let (kind, size, mtime) = match stat {
            Stat::File(f) => {
                let ms = u64::try_from(f.mtime_ms).unwrap_or_default();
                (
                    Kind::File,
                    f.size,
                    Some(UNIX_EPOCH + Duration::from_millis(ms)),
                )
            }
            Stat::Dir => (Kind::Dir, 0, None),
        };
        let owner = owner_and_mode(
            &self.cache,
            path,
            kind == Kind::Dir,
            self.object_mode,
            self.ids,
        );
        Entry {
            kind,
            size,
            mtime,
            owner,
        }
    }
}

/// A cache error in the file system's terms: one exhaustive mapping.
pub fn error(e: &loaderd_cache::Error) -> Error {
    use loaderd_cache::ErrorKind as C;
    let kind = match e.kind() {
        C::NotFound => ErrorKind::NotFound,
        C::InvalidArgument | C::OutOfRange => ErrorKind::InvalidArgument,
        C::IsDirectory => ErrorKind::IsDirectory,
        C::Changed => ErrorKind::Changed,
        C::Unavailable => ErrorKind::Unavailable,
        C::PermissionDenied => ErrorKind::PermissionDenied,
        C::Timeout => ErrorKind::Timeout,
        C::ResourceExhausted => ErrorKind::ResourceExhausted,
        C::Internal => ErrorKind::Internal,
    };
    Error::new(kind, e.to_string())
}

fn logical(path: &str) -> loaderd_fuse::Result<LogicalPath> {
    LogicalPath::parse(path).map_err(|e| error(&e))
}

impl Backend for CacheBackend {
    type File = FileHandle;

    fn stat(&self, path: &str) -> loaderd_fuse::Result<Entry> {
        let path = logical(path)?;
        let stat = self
            .rt
            .block_on(self.cache.stat(&path))
            .map_err(|e| error(&e))?;
        Ok(self.entry(&path, &stat))
    }

    fn list(&self, path: &str) -> loaderd_fuse::Result<Vec<(String, Entry)>> {
        let path = logical(path)?;
        let listing = self
            .rt
            .block_on(self.cache.list(&path, false))
            .map_err(|e| error(&e))?;
        Ok(listing
            .into_iter()
            .filter_map(|(child, stat)| {
                let name = child.segments().last()?.to_string();
                Some((name, self.entry(&child, &stat)))
            })
            .collect())
    }

    fn open(&self, path: &str) -> loaderd_fuse::Result<Handle<FileHandle>> {
        let path = logical(path)?;
        let fh = self
            .rt
            .block_on(self.cache.open_file(&path))
            .map_err(|e| error(&e))?;
        Ok(Handle {
            path: path.as_str().to_string(),
            size: fh.meta.size,
            version: fh.meta.version.clone(),
            file: fh,
        })
    }

    fn read(
        &self,
        handle: &Handle<FileHandle>,
        offset: u64,
        len: u32,
    ) -> loaderd_fuse::Result<Bytes> {
        let fh = &handle.file;
        let end = offset.saturating_add(u64::from(len)).min(fh.meta.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let blocks = self.cache.blocks(fh, offset..end);
        let fetch = |b: &loaderd_cache::block::BlockRef| {
            let b = b.clone();
            async move {
                let data = self.cache.get_block(fh, &b, ReadType::Cache).await?;
                Ok::<_, loaderd_cache::Error>(b.slice(&data, &(offset..end)))
            }
        };
        self.rt
            .block_on(async {
                match blocks.as_slice() {
                    // The common case: a slice of one cached block, no copy before the kernel.
                    [one] => fetch(one).await,
                    many => {
                        let parts = futures::future::try_join_all(many.iter().map(fetch)).await?;
                        let mut out = BytesMut::with_capacity((end - offset) as usize);
                        for p in parts {
                            out.extend_from_slice(&p);
                        }
                        Ok(out.freeze())
                    }
                }
            })
            .map_err(|e| error(&e))
    }

    fn capacity(&self) -> loaderd_fuse::Result<Capacity> {
        let status = self.cache.status();
        Ok(Capacity {
            total: status.tiers.iter().map(|t| t.capacity).sum(),
            used: status.tiers.iter().map(|t| t.used).sum(),
        })
    }
}
