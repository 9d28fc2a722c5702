//! The read-only file system view over the cache, in the terms of the kernel's requests —
//! inode numbers, handles, offsets, attributes, bytes and errnos — but without fuser's types,
//! so tests drive it without a mount. `fs.rs` only translates fuser's calls into these and
//! the answers back.
//!
//! Every call resolves an inode to its logical path and asks the cache, blocking the calling
//! thread (a fuser request loop, never a runtime thread) on the daemon's runtime through its
//! handle.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use loaderd_cache::sync::lock;
use loaderd_cache::{Cache, FileHandle, LogicalPath, ReadType, Stat};
use metrics::counter;
use nix::errno::Errno;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use super::errno::errno_of;
use super::inode::{InodeTable, ROOT};
use super::perm::owner_and_mode;
use crate::config::FuseConfig;

/// The block size the view reports (`st_blksize`, `statfs`).
pub const BLKSIZE: u32 = 4096;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// The attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Also atime, ctime and crtime: the source's mtime (files) or the daemon's start (dirs).
    pub mtime: SystemTime,
    /// Permission bits, write bits cleared.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing. `offset` is the kernel's cookie for the entry *after*
/// this one: a later `readdir` at that offset continues there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub offset: u64,
    pub kind: Kind,
    pub name: &'a str,
}

/// An open file: its handle, and whether the kernel may keep the pages it cached at earlier
/// opens (only while the version is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
}

/// `statfs` numbers, in blocks of [`BLKSIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    pub free: u64,
    /// Inodes the kernel currently knows.
    pub files: u64,
}

/// A directory listing taken at `opendir`, served to every `readdir` of that handle.
struct DirHandle {
    ino: u64,
    parent: u64,
    entries: Vec<(String, LogicalPath, Stat)>,
}

/// What a listing position names: "." or ".." (an inode the kernel already knows) or a child.
enum Target<'a> {
    Dot(u64),
    Child(&'a LogicalPath, &'a Stat),
}

impl DirHandle {
    /// The listing from `offset` on, each item with the offset of the next. Offsets: 1 = ".",
    /// 2 = "..", 3 + i = entries[i].
    fn from(&self, offset: u64) -> impl Iterator<Item = (u64, &str, Target<'_>)> {
        let dots = [(self.ino, "."), (self.parent, "..")]
            .into_iter()
            .enumerate()
            .map(|(i, (ino, name))| (i as u64 + 1, name, Target::Dot(ino)));
        let children = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (name, path, stat))| {
                (i as u64 + 3, name.as_str(), Target::Child(path, stat))
            });
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        dots.chain(children).skip(skip)
    }
}

/// The loaderd namespace as a read-only file system.
pub struct View {
    cache: Arc<Cache>,
    rt: Handle,
    inodes: InodeTable,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    /// Hash of the object version each inode was last opened at: the kernel keeps its cached
    /// pages across opens (`keep_cache`) only while the version is unchanged, so a read
    /// never joins cached pages of an old version with bytes of a new one.
    opened_versions: Mutex<HashMap<u64, u64>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    keep_cache: bool,
    uid: u32,
    gid: u32,
    object_mode: u32,
    started: SystemTime,
}

fn parent_of(path: &LogicalPath) -> LogicalPath {
    match path.as_str().rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => {
            LogicalPath::parse(parent).unwrap_or_else(|_| LogicalPath::root())
        }
        _ => LogicalPath::root(),
    }
}

fn kind_of(stat: &Stat) -> Kind {
    match stat {
        Stat::File(_) => Kind::File,
        Stat::Dir => Kind::Dir,
    }
}

impl View {
    /// The namespace of `cache`, blocking on `rt` for every cache call.
    pub fn new(cache: Arc<Cache>, rt: Handle, cfg: &FuseConfig) -> Self {
        View {
            cache,
            rt,
            inodes: InodeTable::default(),
            files: Mutex::default(),
            opened_versions: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            keep_cache: cfg.keep_cache,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            object_mode: cfg.object_mode,
            started: SystemTime::now(),
        }
    }

    /// The errno for a cache error; UFS and daemon failures are logged with the path.
    fn fail(&self, op: &'static str, path: &LogicalPath, e: &loaderd_cache::Error) -> Errno {
        let r = errno_of(e.kind());
        if r.log {
            warn!(op, path = %path, error = %e, "FUSE request failed");
            counter!("loaderd_fuse_errors_total", "op" => op).increment(1);
        } else {
            debug!(op, path = %path, error = %e, "FUSE request failed");
        }
        r.errno
    }

    fn path(&self, ino: u64) -> Result<LogicalPath, Errno> {
        self.inodes.path(ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<LogicalPath, Errno> {
        let parent = self.path(parent)?;
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Errno::ENOENT);
        }
        parent.join(name).map_err(|_| Errno::ENOENT)
    }

    fn stat(&self, op: &'static str, path: &LogicalPath) -> Result<Stat, Errno> {
        self.rt
            .block_on(self.cache.stat(path))
            .map_err(|e| self.fail(op, path, &e))
    }

    fn attr(&self, ino: u64, stat: &Stat) -> Attr {
        let (size, nlink, mtime) = match stat {
            Stat::File(f) => {
                let mtime = UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(f.mtime_ms).unwrap_or_default());
                (f.size, 1, mtime)
            }
            Stat::Dir => (0, 2, self.started),
        };
        let kind = kind_of(stat);
        let (perm, uid, gid) = owner_and_mode(
            &self.cache,
            self.inodes.path(ino).as_ref(),
            kind == Kind::Dir,
            self.object_mode,
            (self.uid, self.gid),
        );
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
            nlink,
            uid,
            gid,
        }
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry `name` in directory `parent`, counting one kernel lookup of it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        let stat = self.stat("lookup", &path)?;
        let ino = self.inodes.lookup(&path);
        Ok(self.attr(ino, &stat))
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if self.inodes.path(ino).is_none() {
            lock(&self.opened_versions).remove(&ino);
        }
    }

    /// The attributes of a known inode.
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        let path = self.path(ino)?;
        let stat = self.stat("getattr", &path)?;
        Ok(self.attr(ino, &stat))
    }

    /// Opens a file with `open(2)` `flags`: any write access is `EROFS`. The file's version is
    /// resolved once; every read of the handle reads that version (or fails with `ESTALE`).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, Errno> {
        if flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        let path = self.path(ino)?;
        let fh = self
            .rt
            .block_on(self.cache.open_file(&path))
            .map_err(|e| self.fail("open", &path, &e))?;
        let id = self.next_fh();
        let version = xxhash_rust::xxh3::xxh3_64(fh.meta.version.as_bytes());
        let same_version = lock(&self.opened_versions).insert(ino, version) == Some(version);
        lock(&self.files).insert(id, Arc::new(fh));
        counter!("loaderd_fuse_opens_total").increment(1);
        // Without keep_cache the kernel drops this inode's cached pages.
        Ok(Opened {
            fh: id,
            keep_cache: self.keep_cache && same_version,
        })
    }

    /// Up to `size` bytes of open file `fh` from `offset` (fewer at the end, none past it).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let handle = lock(&self.files).get(&fh).cloned().ok_or(Errno::EBADF)?;
        let data = self
            .read_range(&handle, offset, size)
            .map_err(|e| self.fail("read", &handle.path, &e))?;
        counter!("loaderd_fuse_read_bytes_total").increment(data.len() as u64);
        Ok(data)
    }

    fn read_range(&self, fh: &FileHandle, offset: u64, size: u32) -> loaderd_cache::Result<Bytes> {
        let end = offset.saturating_add(u64::from(size)).min(fh.meta.size);
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
        self.rt.block_on(async {
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
    }

    /// Closes open file `fh`.
    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// Lists directory `ino` once; every `readdir` of the returned handle pages through that
    /// listing.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let listing = self
            .rt
            .block_on(self.cache.list(&path, false))
            .map_err(|e| self.fail("opendir", &path, &e))?;
        let entries = listing
            .into_iter()
            .filter_map(|(child, stat)| {
                let name = child.segments().last()?.to_string();
                Some((name, child, stat))
            })
            .collect();
        let parent = if ino == ROOT {
            ROOT
        } else {
            self.inodes.peek(&parent_of(&path))
        };
        let id = self.next_fh();
        lock(&self.dirs).insert(
            id,
            Arc::new(DirHandle {
                ino,
                parent,
                entries,
            }),
        );
        Ok(id)
    }

    fn dir(&self, fh: u64) -> Result<Arc<DirHandle>, Errno> {
        lock(&self.dirs).get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// The entries of directory handle `fh` from `offset` on, given to `add` until it answers
    /// `true` (the reply is full; that entry was not sent). Plain entries take no lookup.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.dir(fh)?;
        for (offset, name, target) in dir.from(offset) {
            let (ino, kind) = match target {
                Target::Dot(ino) => (ino, Kind::Dir),
                Target::Child(path, stat) => (self.inodes.peek(path), kind_of(stat)),
            };
            let entry = DirEntry {
                ino,
                offset,
                kind,
                name,
            };
            if add(entry) {
                break;
            }
        }
        Ok(())
    }

    /// Like [`View::readdir`], each entry with its attributes. The kernel takes a lookup of
    /// every child it receives (not of "." and ".."), so each child sent counts one.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>, &Attr) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.dir(fh)?;
        for (offset, name, target) in dir.from(offset) {
            let (attr, counted) = match target {
                Target::Dot(ino) => (self.attr(ino, &Stat::Dir), false),
                Target::Child(path, stat) => (self.attr(self.inodes.lookup(path), stat), true),
            };
            let entry = DirEntry {
                ino: attr.ino,
                offset,
                kind: attr.kind,
                name,
            };
            if add(entry, &attr) {
                // Did not fit: not sent, so no lookup.
                if counted {
                    self.inodes.forget(attr.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// The cache's capacity and free space as a file system's.
    pub fn statfs(&self) -> FsStats {
        let status = self.cache.status();
        let capacity: u64 = status.tiers.iter().map(|t| t.capacity).sum();
        let used: u64 = status.tiers.iter().map(|t| t.used).sum();
        let bsize = u64::from(BLKSIZE);
        FsStats {
            blocks: capacity / bsize,
            free: capacity.saturating_sub(used) / bsize,
            files: self.inodes.len() as u64,
        }
    }

    /// `access(2)` of a known inode: reading is up to the kernel's permission check, writing
    /// is `EROFS`.
    pub fn access(&self, ino: u64, write: bool) -> Result<(), Errno> {
        if write {
            return Err(Errno::EROFS);
        }
        self.path(ino).map(drop)
    }
}

#[cfg(test)]
mod tests;
