//! The `fuser::Filesystem` over the cache: every callback resolves an inode to its logical
//! path and asks the cache, blocking this fuser thread (never a runtime thread) on the
//! daemon's runtime through its handle.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle as Fh, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use loaderd_cache::{Cache, FileHandle, LogicalPath, ReadType, Stat};
use metrics::counter;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use super::errno::errno_of;
use super::inode::{InodeTable, ROOT};
use super::perm::owner_and_mode;
use crate::config::FuseConfig;

const BLKSIZE: u32 = 4096;

/// A directory listing taken at `opendir`, served to every `readdir` of that handle.
struct DirHandle {
    ino: u64,
    parent: u64,
    entries: Vec<(String, LogicalPath, Stat)>,
}

/// The loaderd namespace as a read-only file system.
pub struct LoaderFs {
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
    entry_ttl: Duration,
    attr_ttl: Duration,
    keep_cache: bool,
    max_read: u32,
    threads: usize,
    uid: u32,
    gid: u32,
    object_mode: u32,
    started: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parent_of(path: &LogicalPath) -> LogicalPath {
    match path.as_str().rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => {
            LogicalPath::parse(parent).unwrap_or_else(|_| LogicalPath::root())
        }
        _ => LogicalPath::root(),
    }
}

impl LoaderFs {
    pub fn new(cache: Arc<Cache>, rt: Handle, cfg: &FuseConfig) -> Self {
        LoaderFs {
            cache,
            rt,
            inodes: InodeTable::default(),
            files: Mutex::default(),
            opened_versions: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            entry_ttl: cfg.entry_timeout.0,
            attr_ttl: cfg.attr_timeout.0,
            keep_cache: cfg.keep_cache,
            max_read: u32::try_from(cfg.max_read.0).unwrap_or(u32::MAX),
            threads: cfg.threads,
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

    fn path(&self, ino: INodeNo) -> Result<LogicalPath, Errno> {
        self.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<LogicalPath, Errno> {
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

    fn attr(&self, ino: u64, stat: &Stat) -> FileAttr {
        let (kind, size, nlink, mtime) = match stat {
            Stat::File(f) => {
                let mtime = UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(f.mtime_ms).unwrap_or_default());
                (FileType::RegularFile, f.size, 1, mtime)
            }
            Stat::Dir => (FileType::Directory, 0, 2, self.started),
        };
        let (perm, uid, gid) = owner_and_mode(
            &self.cache,
            self.inodes.path(ino).as_ref(),
            kind == FileType::Directory,
            self.object_mode,
            (self.uid, self.gid),
        );
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
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
}

impl Filesystem for LoaderFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let supported = want & config.capabilities();
        if let Err(missing) = config.add_capabilities(supported) {
            debug!(?missing, "kernel lacks FUSE capabilities");
        }
        if let Err(nearest) = config.set_max_readahead(self.max_read) {
            let _ = config.set_max_readahead(nearest);
        }
        let background = u16::try_from(self.threads * 2).unwrap_or(u16::MAX);
        let _ = config.set_max_background(background.max(16));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let res = self
            .child(parent, name)
            .and_then(|path| Ok((self.stat("lookup", &path)?, path)));
        match res {
            Ok((stat, path)) => {
                let ino = self.inodes.lookup(&path);
                reply.entry_with_ttls(
                    &self.attr_ttl,
                    &self.entry_ttl,
                    &self.attr(ino, &stat),
                    Generation(0),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
        if self.inodes.path(ino.0).is_none() {
            lock(&self.opened_versions).remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<Fh>, reply: ReplyAttr) {
        match self.path(ino).and_then(|path| self.stat("getattr", &path)) {
            Ok(stat) => reply.attr(&self.attr_ttl, &self.attr(ino.0, &stat)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & nix::libc::O_ACCMODE != nix::libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.rt.block_on(self.cache.open_file(&path)) {
            Ok(fh) => {
                let id = self.next_fh();
                let version = xxhash_rust::xxh3::xxh3_64(fh.meta.version.as_bytes());
                let same_version =
                    lock(&self.opened_versions).insert(ino.0, version) == Some(version);
                lock(&self.files).insert(id, Arc::new(fh));
                counter!("loaderd_fuse_opens_total").increment(1);
                // Without FOPEN_KEEP_CACHE the kernel drops this inode's cached pages.
                let flags = if self.keep_cache && same_version {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(Fh(id), flags);
            }
            Err(e) => reply.error(self.fail("open", &path, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = lock(&self.files).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match self.read_range(&handle, offset, size) {
            Ok(data) => {
                counter!("loaderd_fuse_read_bytes_total").increment(data.len() as u64);
                reply.data(&data);
            }
            Err(e) => reply.error(self.fail("read", &handle.path, &e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: Fh, _lo: LockOwner, reply: ReplyEmpty) {
        // Nothing to flush on a read-only file system; ENOSYS tells the kernel to stop
        // sending FLUSH on every close (one round trip less per file).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: Fh, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listing = match self.rt.block_on(self.cache.list(&path, false)) {
            Ok(l) => l,
            Err(e) => return reply.error(self.fail("opendir", &path, &e)),
        };
        let entries = listing
            .into_iter()
            .filter_map(|(child, stat)| {
                let name = child.segments().last()?.to_string();
                Some((name, child, stat))
            })
            .collect();
        let parent = if ino.0 == ROOT {
            ROOT
        } else {
            self.inodes.peek(&parent_of(&path))
        };
        let id = self.next_fh();
        lock(&self.dirs).insert(
            id,
            Arc::new(DirHandle {
                ino: ino.0,
                parent,
                entries,
            }),
        );
        reply.opened(Fh(id), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // Offsets: 1 = ".", 2 = "..", 3 + i = entries[i]; each entry carries the next one's.
        let dots = [(dir.ino, "."), (dir.parent, "..")];
        for (i, (ino, name)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, (name, path, stat)) in dir.entries.iter().enumerate().skip(skip) {
            let kind = match stat {
                Stat::File(_) => FileType::RegularFile,
                Stat::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(self.inodes.peek(path)), i as u64 + 3, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(dir) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let dots = [(dir.ino, "."), (dir.parent, "..")];
        for (i, (ino, name)) in dots.iter().enumerate().skip(offset as usize) {
            let attr = self.attr(*ino, &Stat::Dir);
            // The kernel takes no lookup reference for "." and "..".
            if reply.add(
                INodeNo(*ino),
                i as u64 + 1,
                name,
                &self.entry_ttl,
                &attr,
                Generation(0),
            ) {
                return reply.ok();
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, (name, path, stat)) in dir.entries.iter().enumerate().skip(skip) {
            // The kernel takes a lookup reference to every entry it receives.
            let ino = self.inodes.lookup(path);
            let attr = self.attr(ino, stat);
            if reply.add(
                INodeNo(ino),
                i as u64 + 3,
                name,
                &self.entry_ttl,
                &attr,
                Generation(0),
            ) {
                // Did not fit: not sent, so no reference.
                self.inodes.forget(ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let status = self.cache.status();
        let capacity: u64 = status.tiers.iter().map(|t| t.capacity).sum();
        let used: u64 = status.tiers.iter().map(|t| t.used).sum();
        let bsize = u64::from(BLKSIZE);
        let free = capacity.saturating_sub(used) / bsize;
        reply.statfs(
            capacity / bsize,
            free,
            free,
            self.inodes.len() as u64,
            0,
            BLKSIZE,
            255,
            BLKSIZE,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.path(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: Fh,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Python's open() asks whether a file is a terminal (TCGETS).
        reply.error(Errno::ENOTTY);
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    // Everything that would change the namespace: a read-only file system.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<Fh>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: Fh,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: Fh,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        let p = |s| LogicalPath::parse(s).unwrap();
        assert_eq!(parent_of(&p("/a/b/c")), p("/a/b"));
        assert_eq!(parent_of(&p("/a")), LogicalPath::root());
        assert_eq!(parent_of(&LogicalPath::root()), LogicalPath::root());
    }
}
