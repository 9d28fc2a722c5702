//! Everything the file system remembers between kernel requests, in one place: the inode
//! table (inode → path and lookup count), the open files (handle → path and version), the
//! open directories (handle → the listing taken at `opendir`), the version each inode was
//! last opened at, and the next handle number. None of it refers to a backend's connections
//! or daemon state, so a restarted worker behind the front finds every handle still valid,
//! and the whole of it is plain data that a successor process could take over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::{Entry, Handle};
use crate::inode::InodeTable;

/// A directory listing taken at `opendir`, served to every `readdir` of that handle.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    pub parent: u64,
    /// (name, path, entry) in name order.
    pub entries: Vec<(String, String, Entry)>,
}

/// The file system's tables.
pub struct State<F> {
    pub inodes: InodeTable,
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
        State {
            inodes: InodeTable::default(),
            files: Mutex::default(),
            opened_versions: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<F> State<F> {
    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an open of inode `ino`; returns its handle number and whether the version is
    /// the one the inode was last opened at.
    pub fn add_file(&self, ino: u64, handle: Handle<F>) -> (u64, bool) {
        let version = xxhash_rust::xxh3::xxh3_64(handle.version.as_bytes());
        let same = lock(&self.opened_versions).insert(ino, version) == Some(version);
        let fh = self.next_fh();
        lock(&self.files).insert(fh, Arc::new(handle));
        (fh, same)
    }

    pub fn file(&self, fh: u64) -> Option<Arc<Handle<F>>> {
        lock(&self.files).get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    pub fn add_dir(&self, dir: DirHandle) -> u64 {
        let fh = self.next_fh();
        lock(&self.dirs).insert(fh, Arc::new(dir));
        fh
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
