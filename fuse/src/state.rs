//! Everything the file system remembers between kernel requests, in one place: the inode
//! table (inode → path and lookup count), the open files (handle → path and version), the
//! open directories (handle → the listing taken at `opendir`), the version each inode was
//! last opened at, and the next handle number. None of it refers to a backend's connections
//! or daemon state, so a restarted worker behind the front finds every handle still valid.
//!
//! Served through a handover ([`crate::handover`]), the inodes and open files live in the
//! mount's state memfd ([`FsState`], [`State::shared`]) instead of this process: a successor
//! or a restarted front sees the same inode numbers, lookup counts and handles. An open
//! file is then rebuilt from its inode's path and the logged size and version
//! ([`Backend::resume`]); a directory handle is not logged, and is rebuilt by listing the
//! directory again (its offsets are positions in the listing).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use tracing::warn;

use crate::backend::{Backend, Entry, Handle};
use crate::handover::{FsState, ROOT_INO};
use crate::inode::{InodeTable, ROOT_PATH, preferred_ino};

/// A directory listing taken at `opendir`, served to every `readdir` of that handle.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    pub parent: u64,
    /// (name, path, entry) in name order.
    pub entries: Vec<(String, String, Entry)>,
}

/// The inode table: this process's own, or the mount's logged one.
pub enum Inodes {
    Local(InodeTable),
    Shared(Arc<FsState>),
}

/// A logical path as the shared table keeps it (the root is "").
fn shared_key(path: &str) -> &OsStr {
    OsStr::new(if path == ROOT_PATH { "" } else { path })
}

/// The log could not take a change: the request fails rather than the kernel and the log
/// disagreeing.
fn log_failed(e: &crate::handover::StateError) -> Errno {
    warn!(error = %e, "FUSE state log");
    Errno::EIO
}

impl Inodes {
    /// The inode of `path`, counting one kernel lookup (a LOOKUP or READDIRPLUS reply).
    pub fn lookup(&self, path: &str) -> Result<u64, Errno> {
        match self {
            Inodes::Local(t) => Ok(t.lookup(path)),
            Inodes::Shared(s) => s.lookup(shared_key(path)).map_err(|e| log_failed(&e)),
        }
    }

    /// The inode `path` has (or, unknown, a stand-in number), without counting a lookup.
    pub fn peek(&self, path: &str) -> u64 {
        match self {
            Inodes::Local(t) => t.peek(path),
            Inodes::Shared(s) => s
                .ino_of(shared_key(path))
                .unwrap_or_else(|| preferred_ino(path)),
        }
    }

    /// The path of a known inode.
    pub fn path(&self, ino: u64) -> Option<String> {
        match self {
            Inodes::Local(t) => t.path(ino),
            Inodes::Shared(s) => {
                let path = s.inode(ino)?.path;
                Some(match path.to_str()? {
                    "" => ROOT_PATH.to_string(),
                    p => p.to_string(),
                })
            }
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        match self {
            Inodes::Local(t) => t.forget(ino, n),
            Inodes::Shared(s) => {
                if let Err(e) = s.forget(ino, n) {
                    log_failed(&e);
                }
            }
        }
    }

    /// Inodes the kernel currently knows (the root included).
    pub fn len(&self) -> usize {
        match self {
            Inodes::Local(t) => t.len(),
            Inodes::Shared(s) => s.counts().0,
        }
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

/// The file system's tables.
pub struct State<F> {
    pub inodes: Inodes,
    /// Open files; under a handover a cache of the logged handles.
    files: Mutex<HashMap<u64, Arc<Handle<F>>>>,
    /// Hash of the object version each inode was last opened at: the kernel keeps its cached
    /// pages across opens (`keep_cache`) only while the version is unchanged, so a read
    /// never joins cached pages of an old version with bytes of a new one.
    opened_versions: Mutex<HashMap<u64, u64>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
}

impl<F> Default for State<F> {
    fn default() -> Self {
        Self::with_inodes(Inodes::Local(InodeTable::default()))
    }
}

/// Directory handles of a shared state start here.
const DIR_FH_BASE: u64 = 1 << 63;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle's size and version as logged (the shared state keeps them opaque).
fn encode_version(size: u64, version: &str) -> Vec<u8> {
    let mut out = size.to_le_bytes().to_vec();
    out.extend_from_slice(version.as_bytes());
    out
}

fn decode_version(bytes: &[u8]) -> Option<(u64, String)> {
    let (size, version) = bytes.split_first_chunk::<8>()?;
    Some((
        u64::from_le_bytes(*size),
        String::from_utf8(version.to_vec()).ok()?,
    ))
}

impl<F> State<F> {
    fn with_inodes(inodes: Inodes) -> Self {
        State {
            inodes,
            files: Mutex::default(),
            opened_versions: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    /// Tables kept in a handed-over mount's state: inodes and open files survive this
    /// process. `generation` (the mount's server count before this one) keeps this server's
    /// directory handles apart from those an earlier server gave out: the high bit set (the
    /// logged file handles count up from 1), then 2^40 numbers per server.
    pub fn shared(state: Arc<FsState>, generation: u64) -> Self {
        debug_assert!(state.inode(ROOT_INO).is_some());
        let s = Self::with_inodes(Inodes::Shared(state));
        s.next_fh.store(
            DIR_FH_BASE | ((generation & 0x7f_ffff) << 40),
            Ordering::Relaxed,
        );
        s
    }

    fn shared_state(&self) -> Option<&FsState> {
        match &self.inodes {
            Inodes::Shared(s) => Some(s),
            Inodes::Local(_) => None,
        }
    }

    /// Whether the tables live in a handed-over mount's state.
    pub fn is_shared(&self) -> bool {
        self.shared_state().is_some()
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an open of inode `ino`; returns its handle number and whether the version is
    /// the one the inode was last opened at.
    pub fn add_file(&self, ino: u64, handle: Handle<F>) -> Result<(u64, bool), Errno> {
        let version = xxhash_rust::xxh3::xxh3_64(handle.version.as_bytes());
        let fh = match self.shared_state() {
            Some(s) => s
                .open(ino, &encode_version(handle.size, &handle.version))
                .map_err(|e| log_failed(&e))?,
            None => self.next_fh(),
        };
        let same = lock(&self.opened_versions).insert(ino, version) == Some(version);
        lock(&self.files).insert(fh, Arc::new(handle));
        Ok((fh, same))
    }

    /// Open file `fh`; under a handover one an earlier server opened is rebuilt from the
    /// log by `backend`.
    pub fn file<B: Backend<File = F>>(&self, fh: u64, backend: &B) -> Option<Arc<Handle<F>>> {
        if let Some(h) = lock(&self.files).get(&fh) {
            return Some(h.clone());
        }
        let s = self.shared_state()?;
        let logged = s.handle(fh)?;
        let path = self.inodes.path(logged.ino)?;
        let (size, version) = decode_version(&logged.version)?;
        let handle = Arc::new(backend.resume(path, size, version)?);
        Some(lock(&self.files).entry(fh).or_insert(handle).clone())
    }

    pub fn remove_file(&self, fh: u64) {
        lock(&self.files).remove(&fh);
        if let Some(s) = self.shared_state()
            && let Err(e) = s.release(fh)
        {
            log_failed(&e);
        }
    }

    pub fn add_dir(&self, dir: DirHandle) -> u64 {
        let fh = self.next_fh();
        self.put_dir(fh, dir);
        fh
    }

    /// Keeps `dir` as handle `fh` (a handle rebuilt after a handover keeps its number).
    pub fn put_dir(&self, fh: u64, dir: DirHandle) {
        lock(&self.dirs).insert(fh, Arc::new(dir));
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        lock(&self.dirs).get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// The kernel dropped `n` lookups of `ino`; its last-opened version goes with the inode.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        if self.inodes.path(ino).is_none() {
            lock(&self.opened_versions).remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_through_the_log_encoding() {
        let bytes = encode_version(3 << 20, "\"etag-1\"");
        assert_eq!(decode_version(&bytes), Some((3 << 20, "\"etag-1\"".into())));
        assert_eq!(decode_version(&[1, 2]), None);
    }
}
