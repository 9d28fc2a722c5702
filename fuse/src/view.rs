//! The read-only file system over a [`Backend`], in the terms of the kernel's requests —
//! inode numbers, handles, offsets, attributes, bytes and errnos — but without fuser's types,
//! so tests drive it without a mount. `fs.rs` only translates fuser's calls into these and
//! the answers back.
//!
//! Every call resolves an inode to its logical path and asks the backend, blocking the
//! calling thread (a fuser request loop).

use std::ffi::OsStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use metrics::counter;
use nix::errno::Errno;
use tracing::{debug, warn};

use crate::backend::{self, Backend, Entry, Kind, Owner};
use crate::errno::errno_of;
use crate::inode::ROOT;
use crate::path;
use crate::state::{DirHandle, State};

/// The block size the view reports (`st_blksize`, `statfs`).
pub const BLKSIZE: u32 = 4096;

/// The attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Also atime, ctime and crtime: the source's mtime (files) or the view's start (dirs).
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

/// What a listing position names: "." or ".." (an inode the kernel already knows) or a child.
enum Target<'a> {
    Dot(u64),
    Child(&'a str, &'a Entry),
}

/// The listing from `offset` on, each item with the offset of the next. Offsets: 1 = ".",
/// 2 = "..", 3 + i = entries[i].
fn listing_from(dir: &DirHandle, offset: u64) -> impl Iterator<Item = (u64, &str, Target<'_>)> {
    let dots = [(dir.ino, "."), (dir.parent, "..")]
        .into_iter()
        .enumerate()
        .map(|(i, (ino, name))| (i as u64 + 1, name, Target::Dot(ino)));
    let children = dir
        .entries
        .iter()
        .enumerate()
        .map(|(i, (name, path, entry))| (i as u64 + 3, name.as_str(), Target::Child(path, entry)));
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    dots.chain(children).skip(skip)
}

/// The namespace of a backend as a read-only file system.
pub struct View<B: Backend> {
    backend: B,
    state: State<B::File>,
    keep_cache: bool,
    /// Owner of "." and ".." in READDIRPLUS replies (the kernel ignores their attributes).
    dots: Owner,
    started: SystemTime,
}

impl<B: Backend> View<B> {
    /// The namespace of `backend`; `keep_cache` lets the kernel keep a file's pages across
    /// opens of one version.
    pub fn new(backend: B, keep_cache: bool) -> Self {
        Self::with_state(backend, keep_cache, State::default())
    }

    /// Like [`View::new`], remembering inodes and handles in `state` (e.g.
    /// [`State::shared`], a handed-over mount's).
    pub fn with_state(backend: B, keep_cache: bool, state: State<B::File>) -> Self {
        View {
            backend,
            state,
            keep_cache,
            dots: Owner::object(0o555, true, Owner::process_ids()),
            started: SystemTime::now(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The tables (inodes, handles).
    pub fn state(&self) -> &State<B::File> {
        &self.state
    }

    /// The errno for a backend error; failures of the UFS, daemon or worker are logged with
    /// the path.
    fn fail(&self, op: &'static str, path: &str, e: &backend::Error) -> Errno {
        let r = errno_of(e.kind);
        if r.log {
            warn!(op, path, error = %e, "FUSE request failed");
            counter!("loaderd_fuse_errors_total", "op" => op).increment(1);
        } else {
            debug!(op, path, error = %e, "FUSE request failed");
        }
        r.errno
    }

    fn path(&self, ino: u64) -> Result<String, Errno> {
        self.state.inodes.path(ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<String, Errno> {
        let parent = self.path(parent)?;
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        path::join(&parent, name).ok_or(Errno::ENOENT)
    }

    fn stat(&self, op: &'static str, path: &str) -> Result<Entry, Errno> {
        self.backend.stat(path).map_err(|e| self.fail(op, path, &e))
    }

    fn attr(&self, ino: u64, entry: &Entry) -> Attr {
        let (nlink, mtime) = match entry.kind {
            Kind::File => (1, entry.mtime.unwrap_or(UNIX_EPOCH)),
            Kind::Dir => (2, entry.mtime.unwrap_or(self.started)),
        };
        Attr {
            ino,
            kind: entry.kind,
            size: entry.size,
            mtime,
            perm: entry.owner.perm,
            nlink,
            uid: entry.owner.uid,
            gid: entry.owner.gid,
        }
    }

    /// The entry `name` in directory `parent`, counting one kernel lookup of it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        let entry = self.stat("lookup", &path)?;
        let ino = self.state.inodes.lookup(&path)?;
        Ok(self.attr(ino, &entry))
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.state.forget(ino, n);
    }

    /// The attributes of a known inode.
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        let path = self.path(ino)?;
        let entry = self.stat("getattr", &path)?;
        Ok(self.attr(ino, &entry))
    }

    /// Opens a file with `open(2)` `flags`: any write access is `EROFS`. The file's version is
    /// resolved once; every read of the handle reads that version (or fails with `ESTALE`).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, Errno> {
        if flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        let path = self.path(ino)?;
        let handle = self
            .backend
            .open(&path)
            .map_err(|e| self.fail("open", &path, &e))?;
        let (fh, same_version) = self.state.add_file(ino, handle)?;
        counter!("loaderd_fuse_opens_total").increment(1);
        // Without keep_cache the kernel drops this inode's cached pages.
        Ok(Opened {
            fh,
            keep_cache: self.keep_cache && same_version,
        })
    }

    /// Up to `size` bytes of open file `fh` from `offset` (fewer at the end, none past it).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let handle = self.state.file(fh, &self.backend).ok_or(Errno::EBADF)?;
        if offset >= handle.size {
            return Ok(Bytes::new());
        }
        let data = self
            .backend
            .read(&handle, offset, size)
            .map_err(|e| self.fail("read", &handle.path, &e))?;
        counter!("loaderd_fuse_read_bytes_total").increment(data.len() as u64);
        Ok(data)
    }

    /// Closes open file `fh`.
    pub fn release(&self, fh: u64) {
        self.state.remove_file(fh);
    }

    /// Lists directory `ino` once; every `readdir` of the returned handle pages through that
    /// listing.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        Ok(self.state.add_dir(self.list(ino)?))
    }

    /// Under a handover, rebuilds directory handle `fh` of `ino` that an earlier server
    /// opened (directory handles are not logged: the listing is taken again, and the
    /// kernel's offsets are positions in it). Nothing to do for a handle this server knows.
    pub fn resume_dir(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        if !self.state.is_shared() || self.state.dir(fh).is_some() {
            return Ok(());
        }
        self.state.put_dir(fh, self.list(ino)?);
        Ok(())
    }

    fn list(&self, ino: u64) -> Result<DirHandle, Errno> {
        let path = self.path(ino)?;
        let listing = self
            .backend
            .list(&path)
            .map_err(|e| self.fail("opendir", &path, &e))?;
        let entries = listing
            .into_iter()
            .filter_map(|(name, entry)| {
                let child = path::join(&path, &name)?;
                Some((name, child, entry))
            })
            .collect();
        let parent = if ino == ROOT {
            ROOT
        } else {
            self.state.inodes.peek(path::parent(&path))
        };
        Ok(DirHandle {
            ino,
            parent,
            entries,
        })
    }

    /// The entries of directory handle `fh` from `offset` on, given to `add` until it answers
    /// `true` (the reply is full; that entry was not sent). Plain entries take no lookup.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.state.dir(fh).ok_or(Errno::EBADF)?;
        for (offset, name, target) in listing_from(&dir, offset) {
            let (ino, kind) = match target {
                Target::Dot(ino) => (ino, Kind::Dir),
                Target::Child(path, entry) => (self.state.inodes.peek(path), entry.kind),
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
        let dir = self.state.dir(fh).ok_or(Errno::EBADF)?;
        let dot = Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: None,
            owner: self.dots,
        };
        for (offset, name, target) in listing_from(&dir, offset) {
            let (attr, counted) = match target {
                Target::Dot(ino) => (self.attr(ino, &dot), false),
                Target::Child(path, entry) => {
                    (self.attr(self.state.inodes.lookup(path)?, entry), true)
                }
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
                    self.state.inodes.forget(attr.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.state.remove_dir(fh);
    }

    /// The cache's capacity and free space as a file system's (zero when the backend cannot
    /// say).
    pub fn statfs(&self) -> FsStats {
        let cap = self.backend.capacity().unwrap_or_else(|e| {
            self.fail("statfs", "/", &e);
            backend::Capacity::default()
        });
        let bsize = u64::from(BLKSIZE);
        FsStats {
            blocks: cap.total / bsize,
            free: cap.total.saturating_sub(cap.used) / bsize,
            files: self.state.inodes.len() as u64,
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
