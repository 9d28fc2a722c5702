//! Inode numbers for logical paths.
//!
//! The kernel names files by inode number; the backend names them by logical path
//! (`/data/a.jpg`, normalised: see [`crate::path`]). An inode's
//! number is the xxh3 hash of its path (the root is 1), so a path keeps its number across
//! lookups, forgets and daemon restarts; a collision with a different live path probes the
//! next number. The table holds only inodes the kernel knows (it counts lookups and drops an
//! entry when the kernel forgets it), so a walk over millions of files does not pin millions
//! of paths in memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use xxhash_rust::xxh3::xxh3_64;

/// The root directory's inode number (FUSE's fixed value).
pub const ROOT: u64 = 1;

/// The root directory's path.
pub const ROOT_PATH: &str = "/";

#[derive(Debug)]
struct Node {
    path: String,
    lookups: u64,
}

/// Two-way map between inode numbers and logical paths, with kernel lookup counts.
#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut inner = Inner::default();
        inner.by_ino.insert(
            ROOT,
            Node {
                path: ROOT_PATH.to_string(),
                lookups: 1,
            },
        );
        inner.by_path.insert(ROOT_PATH.to_string(), ROOT);
        InodeTable {
            inner: Mutex::new(inner),
        }
    }
}

/// The number a path gets when nothing else holds it: never 0 (invalid) or 1 (the root).
pub fn preferred_ino(path: &str) -> u64 {
    if path == ROOT_PATH {
        return ROOT;
    }
    match xxh3_64(path.as_bytes()) {
        h @ 0..=ROOT => h + 2,
        h => h,
    }
}

impl InodeTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The inode of `path`, counting one kernel lookup (a LOOKUP or READDIRPLUS reply).
    pub fn lookup(&self, path: &str) -> u64 {
        let mut inner = self.lock();
        if let Some(&ino) = inner.by_path.get(path) {
            if let Some(node) = inner.by_ino.get_mut(&ino) {
                node.lookups += 1;
            }
            return ino;
        }
        let mut ino = preferred_ino(path);
        while inner.by_ino.contains_key(&ino) {
            ino = ino.wrapping_add(1).max(ROOT + 1);
        }
        inner.by_ino.insert(
            ino,
            Node {
                path: path.to_string(),
                lookups: 1,
            },
        );
        inner.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The inode `path` has or would get, without counting a lookup (plain READDIR entries,
    /// which the kernel does not remember).
    pub fn peek(&self, path: &str) -> u64 {
        self.lock()
            .by_path
            .get(path)
            .copied()
            .unwrap_or_else(|| preferred_ino(path))
    }

    /// The path of a known inode.
    pub fn path(&self, ino: u64) -> Option<String> {
        self.lock().by_ino.get(&ino).map(|n| n.path.clone())
    }

    /// The kernel dropped `n` lookups of `ino`; the entry goes when none are left. The root
    /// stays.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut inner = self.lock();
        let Some(node) = inner.by_ino.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0
            && let Some(node) = inner.by_ino.remove(&ino)
        {
            inner.by_path.remove(&node.path);
        }
    }

    /// Inodes the kernel currently knows (the root included).
    pub fn len(&self) -> usize {
        self.lock().by_ino.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn root_is_one_and_paths_are_stable() {
        let t = InodeTable::default();
        assert_eq!(t.lookup(ROOT_PATH), ROOT);
        assert_eq!(t.path(ROOT), Some(ROOT_PATH.to_string()));
        let a = t.lookup(&p("/data/a.jpg"));
        assert_eq!(a, preferred_ino(&p("/data/a.jpg")));
        assert!(a > ROOT);
        assert_eq!(t.lookup(&p("/data/a.jpg")), a);
        assert_eq!(t.peek(&p("/data/a.jpg")), a);
        assert_eq!(t.path(a), Some(p("/data/a.jpg")));
        // A second table (a restarted daemon) gives the same number.
        assert_eq!(InodeTable::default().lookup(&p("/data/a.jpg")), a);
        assert_ne!(t.lookup(&p("/data/b.jpg")), a);
    }

    #[test]
    fn forget_drops_after_the_last_lookup() {
        let t = InodeTable::default();
        let a = t.lookup(&p("/x"));
        t.lookup(&p("/x"));
        t.forget(a, 1);
        assert_eq!(t.path(a), Some(p("/x")));
        t.forget(a, 1);
        assert_eq!(t.path(a), None);
        assert!(t.is_empty());
        // Forgetting the root or an unknown inode is harmless.
        t.forget(ROOT, 10);
        t.forget(12345, 1);
        assert_eq!(t.path(ROOT), Some(ROOT_PATH.to_string()));
        // The number comes back the same.
        assert_eq!(t.lookup(&p("/x")), a);
    }

    #[test]
    fn collisions_probe_to_a_free_number() {
        let t = InodeTable::default();
        let a = p("/a");
        let want = preferred_ino(&a);
        // Another path squats on /a's number.
        {
            let mut inner = t.lock();
            inner.by_ino.insert(
                want,
                Node {
                    path: p("/squatter"),
                    lookups: 1,
                },
            );
            inner.by_path.insert(p("/squatter"), want);
        }
        let got = t.lookup(&a);
        assert_ne!(got, want);
        assert_eq!(t.path(got), Some(a.clone()));
        assert_eq!(t.path(want), Some(p("/squatter")));
        assert_eq!(t.lookup(&a), got);
    }
}
