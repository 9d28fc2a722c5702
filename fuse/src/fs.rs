//! The `fuser::Filesystem` of the FUSE view: glue that translates each kernel request into a
//! call of the [`View`] and its answer into the reply — attributes, entries, errnos — and
//! nothing else. Calls the view does not serve are answered by [`unsupported!`], one errno
//! each.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle as Fh, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug;

use crate::backend::{Backend, Kind};
use crate::options::Options;
use crate::state::State;
use crate::view::{Attr, BLKSIZE, View};

/// The view mounted: it answers the kernel; what FUSE needs beyond it (timeouts, INIT
/// parameters) lives here.
pub struct LoaderFs<B: Backend> {
    view: View<B>,
    entry_ttl: Duration,
    attr_ttl: Duration,
    max_read: u32,
    threads: usize,
}

impl<B: Backend> LoaderFs<B> {
    /// The file system of `backend`, answering the kernel as `opts` says.
    pub fn new(backend: B, opts: &Options) -> Self {
        Self::with_state(backend, opts, State::default())
    }

    /// Like [`LoaderFs::new`], remembering inodes and handles in `state` (a handed-over
    /// mount's: [`State::shared`]).
    pub fn with_state(backend: B, opts: &Options, state: State<B::File>) -> Self {
        LoaderFs {
            view: View::with_state(backend, opts.keep_cache, state),
            entry_ttl: opts.entry_timeout,
            attr_ttl: opts.attr_timeout,
            max_read: opts.max_read,
            threads: opts.threads,
        }
    }

    /// The view it serves.
    pub fn view(&self) -> &View<B> {
        &self.view
    }
}

fn errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// Answers FUSE calls the view does not serve, each with its errno (after mountpoint-s3's
/// `fuse_unsupported!`): `fn name(argument types) -> reply type = ERRNO;` becomes the
/// `Filesystem` method that logs the call and replies that errno.
macro_rules! unsupported {
    ($(fn $name:ident($($arg:ty),*) -> $reply:ty = $errno:ident;)*) => {
        $(
            fn $name(&self, _: &Request, $(_: $arg,)* reply: $reply) {
                debug!(op = stringify!($name), errno = stringify!($errno), "unsupported FUSE call");
                reply.error(Errno::$errno);
            }
        )*
    };
}

impl<B: Backend> Filesystem for LoaderFs<B> {
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
        match self.view.lookup(parent.0, name) {
            Ok(attr) => reply.entry_with_ttls(
                &self.attr_ttl,
                &self.entry_ttl,
                &file_attr(&attr),
                Generation(0),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.view.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<Fh>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.attr_ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.view.open(ino.0, flags.0) {
            // Without FOPEN_KEEP_CACHE the kernel drops this inode's cached pages.
            Ok(o) => reply.opened(
                Fh(o.fh),
                if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                },
            ),
            Err(e) => reply.error(errno(e)),
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
        match self.view.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
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
        self.view.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: Fh, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.view.opendir(ino.0) {
            Ok(fh) => reply.opened(Fh(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.view.resume_dir(ino.0, fh.0) {
            return reply.error(errno(e));
        }
        let res = self.view.readdir(fh.0, offset, |e| {
            reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), e.name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if let Err(e) = self.view.resume_dir(ino.0, fh.0) {
            return reply.error(errno(e));
        }
        let res = self.view.readdirplus(fh.0, offset, |e, attr| {
            reply.add(
                INodeNo(e.ino),
                e.offset,
                e.name,
                &self.entry_ttl,
                &file_attr(attr),
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.view.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.view.statfs();
        reply.statfs(s.blocks, s.free, s.free, s.files, 0, BLKSIZE, 255, BLKSIZE);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.view.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    unsupported! {
        // Nothing to flush on a read-only file system; ENOSYS tells the kernel to stop
        // sending FLUSH on every close (one round trip less per file).
        fn flush(INodeNo, Fh, LockOwner) -> ReplyEmpty = ENOSYS;
        fn getxattr(INodeNo, &OsStr, u32) -> ReplyXattr = NO_XATTR;
        // Python's open() asks whether a file is a terminal (TCGETS).
        fn ioctl(INodeNo, Fh, fuser::IoctlFlags, u32, &[u8], u32) -> fuser::ReplyIoctl = ENOTTY;
        fn readlink(INodeNo) -> ReplyData = EINVAL;

        // Everything that would change the namespace: a read-only file system.
        fn setattr(
            INodeNo, Option<u32>, Option<u32>, Option<u32>, Option<u64>, Option<TimeOrNow>,
            Option<TimeOrNow>, Option<SystemTime>, Option<Fh>, Option<SystemTime>,
            Option<SystemTime>, Option<SystemTime>, Option<fuser::BsdFileFlags>
        ) -> ReplyAttr = EROFS;
        fn mknod(INodeNo, &OsStr, u32, u32, u32) -> ReplyEntry = EROFS;
        fn mkdir(INodeNo, &OsStr, u32, u32) -> ReplyEntry = EROFS;
        fn unlink(INodeNo, &OsStr) -> ReplyEmpty = EROFS;
        fn rmdir(INodeNo, &OsStr) -> ReplyEmpty = EROFS;
        fn symlink(INodeNo, &OsStr, &std::path::Path) -> ReplyEntry = EROFS;
        fn rename(INodeNo, &OsStr, INodeNo, &OsStr, RenameFlags) -> ReplyEmpty = EROFS;
        fn link(INodeNo, INodeNo, &OsStr) -> ReplyEntry = EROFS;
        fn write(
            INodeNo, Fh, u64, &[u8], WriteFlags, OpenFlags, Option<LockOwner>
        ) -> ReplyWrite = EROFS;
        fn create(INodeNo, &OsStr, u32, u32, i32) -> ReplyCreate = EROFS;
        fn setxattr(INodeNo, &OsStr, &[u8], i32, u32) -> ReplyEmpty = EROFS;
        fn removexattr(INodeNo, &OsStr) -> ReplyEmpty = EROFS;
        fn fallocate(INodeNo, Fh, u64, u64, i32) -> ReplyEmpty = EROFS;
    }
}
