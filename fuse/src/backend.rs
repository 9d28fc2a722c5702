//! What the file system needs from whoever holds the data: the [`Backend`] trait, five
//! blocking calls in terms of logical paths. The daemon implements it over its own cache
//! (the in-daemon view, `--fuse-mount`); the thin front ([`crate::front`]) over a worker's
//! local sockets. The view calls it from the FUSE request threads, never from an async
//! runtime's threads, so an implementation may block.

use std::time::SystemTime;

use bytes::Bytes;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Permission bits (write bits cleared) and owner of an entry, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner and bits of an object-store entry (no owner of its own): `object_mode`, and
    /// for directories x where r is set, owned by `ids` (the serving process's uid and gid).
    pub fn object(object_mode: u32, dir: bool, ids: (u32, u32)) -> Owner {
        let x = if dir { (object_mode & 0o444) >> 2 } else { 0 };
        Owner {
            perm: (object_mode | x) as u16,
            uid: ids.0,
            gid: ids.1,
        }
    }

    /// This process's uid and gid.
    pub fn process_ids() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }
}

/// One entry of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Bytes (0 for directories).
    pub size: u64,
    /// The source's mtime (files); `None` for directories, which show the view's start.
    pub mtime: Option<SystemTime>,
    pub owner: Owner,
}

/// An open file: the path and version every read of it is pinned to, and what the backend
/// keeps for reading it (`F`: the in-daemon cache's resolved file; nothing for the front,
/// whose handles are only path + version and so outlive a worker restart).
#[derive(Debug)]
pub struct Handle<F> {
    pub path: String,
    pub size: u64,
    /// The object version (ETag, or mtime+size) the file was opened at.
    pub version: String,
    pub file: F,
}

/// Capacity and use of the cache behind the view, in bytes (`statfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    pub total: u64,
    pub used: u64,
}

/// What went wrong, in the terms the errno mapping needs (`errno.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    IsDirectory,
    /// The object changed under an open file: that open's version is gone.
    Changed,
    /// The UFS, or the worker behind the front, cannot be reached.
    Unavailable,
    PermissionDenied,
    Timeout,
    ResourceExhausted,
    Internal,
}

/// A failed backend call: its kind, and a message that names the path and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The namespace the view serves. Paths are logical and normalised (`/data/a.jpg`).
pub trait Backend: Send + Sync + 'static {
    /// What the backend keeps per open file besides its path and version.
    type File: Send + Sync + 'static;

    /// What `path` is.
    fn stat(&self, path: &str) -> Result<Entry>;

    /// The children of directory `path`, as (name, entry), in name order.
    fn list(&self, path: &str) -> Result<Vec<(String, Entry)>>;

    /// Resolves file `path` for reading at its current version (`IsDirectory` for a
    /// directory).
    fn open(&self, path: &str) -> Result<Handle<Self::File>>;

    /// Up to `len` bytes of `file` from `offset` (fewer at the end, none past it), all of the
    /// version it was opened at: `Changed` rather than bytes of another version.
    fn read(&self, file: &Handle<Self::File>, offset: u64, len: u32) -> Result<Bytes>;

    /// The cache's capacity and use.
    fn capacity(&self) -> Result<Capacity>;

    /// An open file an earlier server of a handed-over mount opened, from what it logged
    /// (path, size, version): reads stay pinned to that version. `None`: this backend's
    /// handles hold more than that and cannot be rebuilt (the in-daemon view, which is never
    /// handed over).
    fn resume(&self, path: String, size: u64, version: String) -> Option<Handle<Self::File>> {
        let _ = (path, size, version);
        None
    }
}
