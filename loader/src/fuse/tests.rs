//! The view over the in-daemon backend, driven without a mount: a real cache over a
//! `file://` mount of a temp dir, the calls the kernel would make, and the answers they get.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use loaderd_cache::config::{CacheConfig, MemoryTierConfig};
use loaderd_cache::{ByteSize, LogicalPath, MountSpec};
use loaderd_fuse::{Attr, BLKSIZE, DirEntry, Kind, ROOT, View};
use nix::errno::Errno;

use super::*;

const BLOCK: usize = 64 << 10;
/// Four full blocks and a short one.
const SIZE: usize = 4 * BLOCK + 5_000;
const LISTED: usize = 23;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// A view of `/data` = a temp dir with `a.bin` ([`SIZE`] bytes), `sub/` and `many/` (files
/// `f00`..`f22`), over a cache of 64 KiB blocks.
struct Fixture {
    dir: tempfile::TempDir,
    view: View<CacheBackend>,
    cache: Arc<Cache>,
    // Dropped last: the view blocks on it.
    _rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.bin"), pattern(SIZE, 0)).expect("write a.bin");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir sub");
        std::fs::write(dir.path().join("sub/b.txt"), b"bee").expect("write b.txt");
        std::fs::create_dir(dir.path().join("many")).expect("mkdir many");
        for i in 0..LISTED {
            std::fs::write(dir.path().join(format!("many/f{i:02}")), [i as u8]).expect("write");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = CacheConfig {
            block_size: ByteSize(BLOCK as u64),
            memory: MemoryTierConfig {
                capacity: ByteSize(16 << 20),
                ..MemoryTierConfig::default()
            },
            ..CacheConfig::default()
        };
        let spec = MountSpec {
            path: "/data".into(),
            uri: format!("file://{}", dir.path().display()),
            options: Default::default(),
        };
        let cache = {
            let _in_runtime = rt.enter();
            Cache::open(cfg, vec![spec]).expect("cache")
        };
        let cfg = FuseConfig::default();
        let backend = CacheBackend::new(cache.clone(), rt.handle().clone(), cfg.object_mode);
        let view = View::new(backend, cfg.keep_cache);
        Fixture {
            dir,
            view,
            cache,
            _rt: rt,
        }
    }

    fn source(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// The inode of `path` (`a/b/c` under the root), looked up name by name.
    fn walk(&self, path: &str) -> Result<Attr, Errno> {
        let mut attr = self.view.getattr(ROOT)?;
        for name in path.split('/') {
            attr = self.view.lookup(attr.ino, OsStr::new(name))?;
        }
        Ok(attr)
    }

    fn read_all(&self, fh: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let got = self.view.read(fh, out.len() as u64, 50_000).expect("read");
            if got.is_empty() {
                return out;
            }
            out.extend_from_slice(&got);
        }
    }
}

fn mode_of(path: &Path) -> u16 {
    use std::os::unix::fs::MetadataExt;
    (std::fs::metadata(path).expect("stat").mode() & 0o555) as u16
}

#[test]
fn lookup_names_files_and_directories_with_stable_inodes() {
    let f = Fixture::new();
    let root = f.view.getattr(ROOT).expect("root");
    assert_eq!((root.ino, root.kind, root.nlink), (ROOT, Kind::Dir, 2));

    let data = f.view.lookup(ROOT, OsStr::new("data")).expect("data");
    assert_eq!(data.kind, Kind::Dir);
    let a = f.view.lookup(data.ino, OsStr::new("a.bin")).expect("a.bin");
    assert_eq!((a.kind, a.size, a.nlink), (Kind::File, SIZE as u64, 1));
    assert_ne!(a.ino, data.ino);
    // The source's permission bits, write bits cleared, and its owner.
    assert_eq!(a.perm, mode_of(&f.source("a.bin")));
    assert_eq!(a.uid, nix::unistd::getuid().as_raw());
    let mtime = std::fs::metadata(f.source("a.bin"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let drift = mtime
        .duration_since(a.mtime)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(2),
        "mtime {:?} vs {mtime:?}",
        a.mtime
    );

    // getattr answers what lookup did; a second lookup gives the same inode.
    assert_eq!(f.view.getattr(a.ino), Ok(a.clone()));
    assert_eq!(f.view.lookup(data.ino, OsStr::new("a.bin")), Ok(a.clone()));
    assert_eq!(f.walk("data/sub/b.txt").map(|b| b.size), Ok(3));

    // Two lookups are two references: the inode stays known until both are forgotten.
    f.view.forget(a.ino, 1);
    assert_eq!(f.view.getattr(a.ino).map(|x| x.ino), Ok(a.ino));
    f.view.forget(a.ino, 1);
    assert_eq!(f.view.getattr(a.ino), Err(Errno::ENOENT));
    assert_eq!(
        f.view.lookup(data.ino, OsStr::new("a.bin")).map(|x| x.ino),
        Ok(a.ino)
    );
}

#[test]
fn missing_paths_and_bad_names_are_enoent() {
    let f = Fixture::new();
    let data = f.walk("data").expect("data");
    for name in ["nope.bin", "..", ".", "", "a/b"] {
        assert_eq!(
            f.view.lookup(data.ino, OsStr::new(name)),
            Err(Errno::ENOENT),
            "{name:?}"
        );
    }
    assert_eq!(
        f.view.lookup(ROOT, OsStr::new("elsewhere")),
        Err(Errno::ENOENT)
    );
    // An inode the kernel never got.
    assert_eq!(f.view.getattr(987_654_321), Err(Errno::ENOENT));
    assert_eq!(
        f.view.open(987_654_321, nix::libc::O_RDONLY),
        Err(Errno::ENOENT)
    );
    assert_eq!(f.view.opendir(987_654_321), Err(Errno::ENOENT));
    assert_eq!(f.view.access(987_654_321, false), Err(Errno::ENOENT));

    // A file gone from the source is ENOENT once the metadata is refreshed.
    let b = f.walk("data/sub/b.txt").expect("b.txt");
    std::fs::remove_file(f.source("sub/b.txt")).expect("rm");
    f.cache
        .invalidate(&LogicalPath::parse("/data/sub").expect("path"))
        .expect("invalidate");
    assert_eq!(f.view.getattr(b.ino), Err(Errno::ENOENT));
    assert_eq!(f.view.open(b.ino, nix::libc::O_RDONLY), Err(Errno::ENOENT));
}

/// Pages of at most `page` entries, each readdir continuing at the offset of the last entry
/// taken, until one comes back empty.
fn pages(f: &Fixture, fh: u64, page: usize, plus: bool) -> Vec<Vec<(String, u64, u64, Kind)>> {
    let mut out: Vec<Vec<(String, u64, u64, Kind)>> = Vec::new();
    let mut offset = 0;
    loop {
        let mut got = Vec::new();
        let mut take = |e: DirEntry<'_>| {
            if got.len() == page {
                return true;
            }
            got.push((e.name.to_string(), e.ino, e.offset, e.kind));
            false
        };
        if plus {
            f.view
                .readdirplus(fh, offset, |e, attr| {
                    assert_eq!((attr.ino, attr.kind), (e.ino, e.kind), "{}", e.name);
                    take(e)
                })
                .expect("readdirplus");
        } else {
            f.view.readdir(fh, offset, take).expect("readdir");
        }
        let Some(last) = got.last() else {
            return out;
        };
        offset = last.2;
        out.push(got);
    }
}

#[test]
fn empty_and_nested_empty_directories_are_listed_and_looked_up() {
    let f = Fixture::new();
    // Made before the first access: the manifest is listed then.
    for d in ["empty", "nest/ed", "sub/in"] {
        std::fs::create_dir_all(f.source(d)).expect("mkdir");
    }
    let data = f.walk("data").expect("data");
    let fh = f.view.opendir(data.ino).expect("opendir");
    let top: Vec<(String, Kind)> = pages(&f, fh, 100, true)
        .concat()
        .into_iter()
        .map(|e| (e.0, e.3))
        .collect();
    f.view.releasedir(fh);
    let dir = |n: &str| (n.to_string(), Kind::Dir);
    assert_eq!(
        top,
        [
            dir("."),
            dir(".."),
            ("a.bin".into(), Kind::File),
            dir("empty"),
            dir("many"),
            dir("nest"),
            dir("sub"),
        ]
    );
    for (path, want) in [
        ("data/empty", vec![".", ".."]),
        ("data/nest", vec![".", "..", "ed"]),
        ("data/nest/ed", vec![".", ".."]),
        ("data/sub", vec![".", "..", "b.txt", "in"]),
    ] {
        let attr = f.walk(path).expect(path);
        assert_eq!(
            (attr.kind, attr.size, attr.nlink),
            (Kind::Dir, 0, 2),
            "{path}"
        );
        assert_eq!(f.view.getattr(attr.ino).map(|a| a.kind), Ok(Kind::Dir));
        let fh = f.view.opendir(attr.ino).expect("opendir");
        assert_eq!(pages_names(&f, fh), want, "{path}");
        f.view.releasedir(fh);
        assert_eq!(f.view.open(attr.ino, 0), Err(Errno::EISDIR), "{path}");
    }
    assert_eq!(f.walk("data/empty/x"), Err(Errno::ENOENT));
}

#[test]
fn readdir_pages_through_one_listing() {
    let f = Fixture::new();
    let many = f.walk("data/many").expect("many");
    let fh = f.view.opendir(many.ino).expect("opendir");
    let mut want: Vec<String> = vec![".".into(), "..".into()];
    want.extend((0..LISTED).map(|i| format!("f{i:02}")));

    let pages = pages(&f, fh, 5, false);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 5, 5, 5],
        "{pages:?}"
    );
    let all: Vec<_> = pages.concat();
    assert_eq!(all.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), want);
    // "." is the directory, ".." its parent (the root); the rest are files.
    assert_eq!((all[0].1, all[0].3), (many.ino, Kind::Dir));
    assert_eq!(
        (all[1].1, all[1].3),
        (f.walk("data").expect("data").ino, Kind::Dir)
    );
    assert!(all[2..].iter().all(|e| e.3 == Kind::File));
    // Each entry carries the offset of the next: 1, 2, 3, ... with no gap or repeat.
    let offsets: Vec<u64> = all.iter().map(|e| e.2).collect();
    assert_eq!(offsets, (1..=want.len() as u64).collect::<Vec<_>>());
    // Plain entries take no lookup: the files stay unknown to the inode table...
    assert!(
        all[2..]
            .iter()
            .all(|e| f.view.state().inodes.path(e.1).is_none())
    );
    // ...and the numbers are those lookups later give.
    let f03 = f.view.lookup(many.ino, OsStr::new("f03")).expect("f03");
    assert_eq!(f03.ino, all[5].1);

    // A listing stays as opendir took it: a file added later shows at the next opendir.
    std::fs::write(f.source("many/zz"), b"z").expect("write");
    f.cache
        .invalidate(&LogicalPath::parse("/data/many").expect("path"))
        .expect("invalidate");
    assert_eq!(pages_names(&f, fh), want);
    f.view.releasedir(fh);
    assert_eq!(f.view.readdir(fh, 0, |_| false), Err(Errno::EBADF));
    let fh = f.view.opendir(many.ino).expect("opendir again");
    assert_eq!(pages_names(&f, fh).last().map(String::as_str), Some("zz"));
}

fn pages_names(f: &Fixture, fh: u64) -> Vec<String> {
    pages(f, fh, 7, false)
        .concat()
        .into_iter()
        .map(|e| e.0)
        .collect()
}

#[test]
fn readdirplus_counts_a_lookup_for_each_entry_sent_only() {
    let f = Fixture::new();
    let many = f.walk("data/many").expect("many");
    let fh = f.view.opendir(many.ino).expect("opendir");
    let pages = pages(&f, fh, 4, true);
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), LISTED + 2);
    let all = pages.concat();
    // Every child sent is known once; the entry refused at the end of each page was
    // forgotten again, so one forget of each drops it.
    for e in &all[2..] {
        assert!(f.view.state().inodes.path(e.1).is_some(), "{} unknown", e.0);
        f.view.forget(e.1, 1);
        assert!(
            f.view.state().inodes.path(e.1).is_none(),
            "{} held twice",
            e.0
        );
    }
    // "." and ".." take no lookup.
    assert!(f.view.state().inodes.path(many.ino).is_some());
}

#[test]
fn reads_at_offsets_return_the_bytes_there() {
    let f = Fixture::new();
    let want = pattern(SIZE, 0);
    let a = f.walk("data/a.bin").expect("a.bin");
    let o = f.view.open(a.ino, nix::libc::O_RDONLY).expect("open");
    let cases = [
        (0, 4096),
        (1, 10),
        // Across a block boundary, and across three blocks.
        (BLOCK as u64 - 100, 200),
        (BLOCK as u64 / 2, 2 * BLOCK as u32),
        // The end: short, then nothing.
        (SIZE as u64 - 10, 4096),
        (SIZE as u64, 4096),
        (SIZE as u64 + 1_000_000, 4096),
    ];
    for (offset, size) in cases {
        let got = f.view.read(o.fh, offset, size).expect("read");
        let from = (offset as usize).min(SIZE);
        let to = (from + size as usize).min(SIZE);
        assert_eq!(got.len(), to - from, "read({offset}, {size})");
        assert!(got[..] == want[from..to], "bytes of read({offset}, {size})");
    }
    assert!(f.read_all(o.fh) == want, "whole file");
    f.view.release(o.fh);
    assert_eq!(f.view.read(o.fh, 0, 10), Err(Errno::EBADF));

    // Read-only: any write access is refused; a directory is not a file.
    for flags in [nix::libc::O_WRONLY, nix::libc::O_RDWR] {
        assert_eq!(f.view.open(a.ino, flags), Err(Errno::EROFS));
    }
    assert_eq!(f.view.access(a.ino, true), Err(Errno::EROFS));
    assert_eq!(f.view.access(a.ino, false), Ok(()));
    let sub = f.walk("data/sub").expect("sub");
    assert_eq!(
        f.view.open(sub.ino, nix::libc::O_RDONLY),
        Err(Errno::EISDIR)
    );
}

#[test]
fn a_version_change_between_open_and_read_never_mixes_versions() {
    let f = Fixture::new();
    let old = pattern(SIZE, 0);
    let a = f.walk("data/a.bin").expect("a.bin");
    let first = f.view.open(a.ino, nix::libc::O_RDONLY).expect("open");
    // The kernel has no pages of this inode yet; a second open of the same version keeps
    // what the first one cached.
    assert!(!first.keep_cache);
    let again = f.view.open(a.ino, nix::libc::O_RDONLY).expect("open");
    assert!(again.keep_cache);
    f.view.release(again.fh);
    let head = f.view.read(first.fh, 0, BLOCK as u32).expect("first block");
    assert!(head[..] == old[..BLOCK]);

    // The source changes under the open file.
    let new = pattern(3 * BLOCK, 7);
    std::fs::write(f.source("a.bin"), &new).expect("rewrite a.bin");

    // The open file reads its own version: the block it read (cached at that version), and
    // ESTALE for one it never read; never bytes of the new version.
    let cached = f.view.read(first.fh, 10, 100).expect("cached block");
    assert!(cached[..] == old[10..110]);
    assert_eq!(
        f.view.read(first.fh, 2 * BLOCK as u64, 100),
        Err(Errno::ESTALE)
    );
    f.view.release(first.fh);

    // The failed read refreshed the metadata: a new open gets the new version, and the
    // kernel is told to drop the old version's pages.
    assert_eq!(f.view.getattr(a.ino).map(|x| x.size), Ok(new.len() as u64));
    let reopened = f.view.open(a.ino, nix::libc::O_RDONLY).expect("reopen");
    assert!(!reopened.keep_cache, "pages of the old version kept");
    assert!(f.read_all(reopened.fh) == new, "the new version whole");
}

#[test]
fn statfs_counts_the_tiers_and_the_known_inodes() {
    let f = Fixture::new();
    let before = f.view.statfs();
    assert_eq!(before.blocks, (16 << 20) / u64::from(BLKSIZE));
    assert_eq!(before.files, 1);
    let a = f.walk("data/a.bin").expect("a.bin");
    let o = f.view.open(a.ino, nix::libc::O_RDONLY).expect("open");
    f.read_all(o.fh);
    let after = f.view.statfs();
    assert_eq!(after.files, 3, "root, data, a.bin");
    assert!(after.free < before.free, "{after:?} vs {before:?}");
}

#[test]
fn cache_errors_reach_the_right_errno() {
    let missing = loaderd_cache::Error::NotFound {
        path: "/d/x".into(),
        uri: "file:///d/x".into(),
    };
    let e = error(&missing);
    assert_eq!(loaderd_fuse::errno_of(e.kind).errno, Errno::ENOENT);
    assert!(e.message.contains("/d/x"), "{e}");
    let ufs = loaderd_cache::Error::UfsTimeout {
        uri: "s3://b/x".into(),
        secs: 1.0,
    };
    assert_eq!(loaderd_fuse::errno_of(error(&ufs).kind).errno, Errno::EIO);
}
