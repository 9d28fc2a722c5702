//! A read-only pass-through of a local directory whose inode table and open handles live in
//! the handover state ([`FsState`]), so that a successor serves the same inodes and handles.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle as Fh, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};
use loaderd_fuse::handover::{FsState, ROOT_INO, StateError};

const TTL: Duration = Duration::from_secs(1);
/// Bit 63 of a request's unique id: the kernel resent it (FUSE_NOTIFY_RESEND).
const RESENT: u64 = 1 << 63;

pub struct PassFs {
    source: PathBuf,
    state: Arc<FsState>,
    read_delay: Duration,
    /// Requests served that the kernel resent after a crash.
    pub resent: Arc<AtomicU64>,
    crash_once_in_init: Option<PathBuf>,
}

/// Kills this process with SIGKILL unless `marker` exists, which it creates first: a crash
/// at a chosen point, once per mount.
pub fn crash_once(marker: &std::path::Path) {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
    {
        tracing::warn!(marker = %marker.display(), "crashing here on purpose");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

impl PassFs {
    pub fn new(
        source: PathBuf,
        state: Arc<FsState>,
        read_delay: Duration,
        crash_once_in_init: Option<PathBuf>,
    ) -> Self {
        PassFs {
            source,
            state,
            read_delay,
            resent: Arc::default(),
            crash_once_in_init,
        }
    }

    fn note(&self, req: &Request) {
        if req.unique().0 & RESENT != 0 {
            self.resent.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                unique = req.unique().0 & !RESENT,
                "serving a request the kernel resent"
            );
        }
    }

    fn path(&self, ino: INodeNo) -> Result<OsString, Errno> {
        self.state.inode(ino.0).map(|i| i.path).ok_or(Errno::ESTALE)
    }

    fn local(&self, path: &OsStr) -> PathBuf {
        self.source.join(path)
    }
}

fn child(parent: &OsStr, name: &OsStr) -> OsString {
    if parent.is_empty() {
        name.to_os_string()
    } else {
        let mut p = parent.to_os_string();
        p.push("/");
        p.push(name);
        p
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn state_errno(e: StateError) -> Errno {
    tracing::error!(error = %e, "state log");
    Errno::EIO
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.mtime(), m.mtime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.mtime(), m.mtime_nsec()),
        kind: if m.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (m.mode() & 0o555) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// What a handle opened: the file's identity, size and mtime (reads from another object fail).
fn version(m: &Metadata) -> Vec<u8> {
    [m.ino(), m.len(), m.mtime() as u64, m.mtime_nsec() as u64]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A listing's inode number for a name the kernel has not looked up (never a real one).
fn listing_ino(path: &OsStr) -> u64 {
    let h = path
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    h | (1 << 62)
}

impl Filesystem for PassFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> std::io::Result<()> {
        if let Some(marker) = &self.crash_once_in_init {
            crash_once(marker);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.note(req);
        let path = match self.path(parent) {
            Ok(p) => child(&p, name),
            Err(e) => return reply.error(e),
        };
        let meta = match std::fs::symlink_metadata(self.local(&path)) {
            Ok(m) => m,
            Err(e) => return reply.error(io_errno(&e)),
        };
        match self.state.lookup(&path) {
            Ok(ino) => reply.entry_with_ttls(&TTL, &TTL, &attr(ino, &meta), Generation(0)),
            Err(e) => reply.error(state_errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Err(e) = self.state.forget(ino.0, nlookup) {
            state_errno(e);
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<Fh>, reply: ReplyAttr) {
        self.note(req);
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::symlink_metadata(self.local(&path)) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.note(req);
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let meta = match std::fs::metadata(self.local(&path)) {
            Ok(m) => m,
            Err(e) => return reply.error(io_errno(&e)),
        };
        match self.state.open(ino.0, &version(&meta)) {
            // No FOPEN_KEEP_CACHE: every open reads through this server again.
            Ok(fh) => reply.opened(Fh(fh), FopenFlags::empty()),
            Err(e) => reply.error(state_errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.note(req);
        std::thread::sleep(self.read_delay);
        let Some(handle) = self.state.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let path = match self.path(INodeNo(handle.ino)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let file = match File::open(self.local(&path)) {
            Ok(f) => f,
            Err(e) => return reply.error(io_errno(&e)),
        };
        match file.metadata() {
            Ok(m) if version(&m) == handle.version => {}
            // Never serve bytes of another object than the one opened.
            _ => return reply.error(Errno::EIO),
        }
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.note(req);
        match self.state.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(state_errno(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: Fh,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.note(req);
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let mut names: Vec<(OsString, FileType)> = match std::fs::read_dir(self.local(&path)) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| {
                    let kind = match e.file_type() {
                        Ok(t) if t.is_dir() => FileType::Directory,
                        _ => FileType::RegularFile,
                    };
                    (e.file_name(), kind)
                })
                .collect(),
            Err(e) => return reply.error(io_errno(&e)),
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let dots = [
            (OsString::from("."), FileType::Directory),
            (OsString::from(".."), FileType::Directory),
        ];
        for (i, (name, kind)) in dots
            .into_iter()
            .chain(names)
            .enumerate()
            .skip(offset as usize)
        {
            let full = child(&path, &name);
            let entry_ino = match name.as_bytes() {
                b"." => ino.0,
                b".." => ROOT_INO,
                _ => self
                    .state
                    .ino_of(&full)
                    .unwrap_or_else(|| listing_ino(&full)),
            };
            if reply.add(INodeNo(entry_ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}
