//! The FUSE view: the whole logical namespace as a read-only POSIX file system, so code that
//! only knows paths (`ImageFolder('/mnt/loaderd/imagenet/train')`) reads through the cache.
//!
//! The daemon mounts it itself rather than running a separate FUSE process that talks gRPC:
//! a read is a call into the [`Cache`] in this process — the bytes of a cached block go from
//! the memory tier straight into the reply to the kernel, with no RPC hop, no second copy and
//! no second cache to keep coherent.
//!
//! * Layout: [`View`] (`view.rs`) is the file system — lookup, getattr, readdir, open, read,
//!   release in terms of inode numbers, handles, offsets, attributes, bytes and errnos, with
//!   no fuser types, so unit tests drive it over a real cache without a mount. [`LoaderFs`]
//!   (`fs.rs`) is the `fuser::Filesystem`: glue that translates requests and replies only;
//!   every call the view does not serve is answered by one macro, an errno each.
//! * Threads: fuser runs `fuse.threads` request loops, each blocking on one cache call at a
//!   time through the runtime's [`Handle`]; the runtime's own threads never block. Size it to
//!   the number of concurrent readers.
//! * Inodes: numbered by a hash of the logical path (`inode.rs`), so a path keeps its number;
//!   lookups are counted and forgotten as the kernel asks.
//! * Metadata: lookup/getattr/readdir(plus) come from the cache's metadata (the manifest);
//!   the kernel keeps answers for `entry_timeout`/`attr_timeout`, so a change in the UFS is
//!   seen after both the metadata TTL (or `loaderctl invalidate`) and the kernel timeout.
//! * Data: `open` resolves the file once (its version pins every block id); `read` serves
//!   block slices; `FOPEN_KEEP_CACHE` keeps the page cache across opens (datasets are
//!   immutable; a size or mtime change still drops the pages).
//! * Errors: one exhaustive mapping of cache errors (`errno.rs`); writes of any kind are
//!   `EROFS` (the mount is also `ro`); UFS failures are `EIO` with a warning naming the path.
//! * Lifecycle: a stale mount left by a crashed daemon (ENOTCONN on stat, or listed in
//!   `/proc/self/mountinfo`) is detached before mounting; shutdown unmounts and joins the
//!   session threads.

mod errno;
mod fs;
mod inode;
mod perm;
mod view;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, MountOption, SessionACL};
use loaderd_cache::Cache;
use nix::mount::{MntFlags, umount2};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

pub use errno::errno_of;
pub use fs::LoaderFs;
pub use inode::InodeTable;
pub use view::{Attr, BLKSIZE, DirEntry, FsStats, Kind, Opened, View};

use crate::config::FuseConfig;

/// Errors of mounting the FUSE view.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("FUSE mount point {}: {source}", path.display())]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("detaching the stale FUSE mount at {}: {source}", path.display())]
    Stale {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("mounting FUSE at {} (is /dev/fuse available and are we allowed to mount?): {source}", path.display())]
    Mount { path: PathBuf, source: io::Error },
}

/// A mounted FUSE view; [`FuseMount::unmount`] (or dropping it) unmounts.
pub struct FuseMount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

impl FuseMount {
    /// Mounts the namespace of `cache` at `cfg.mount_point`, detaching a stale mount first.
    pub fn mount(
        path: &Path,
        cfg: &FuseConfig,
        cache: Arc<Cache>,
        rt: Handle,
    ) -> Result<Self, FuseError> {
        clear_stale_mount(path)?;
        std::fs::create_dir_all(path).map_err(|source| FuseError::MountPoint {
            path: path.to_path_buf(),
            source,
        })?;
        let fs = LoaderFs::new(View::new(cache, rt, cfg), cfg);
        let session = fuser::spawn_mount(fs, path, &session_config(cfg)).map_err(|source| {
            FuseError::Mount {
                path: path.to_path_buf(),
                source,
            }
        })?;
        raise_readahead(path, cfg.max_read.0);
        info!(mount_point = %path.display(), threads = cfg.threads, "FUSE view mounted");
        Ok(FuseMount {
            session: Some(session),
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and joins the request threads. A mount kept busy by open files is detached
    /// lazily (it disappears when the last user lets go).
    pub fn unmount(mut self) {
        self.unmount_now();
    }

    fn unmount_now(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        match session.umount_and_join() {
            Ok(()) => info!(mount_point = %self.path.display(), "FUSE view unmounted"),
            Err(e) => {
                warn!(mount_point = %self.path.display(), error = %e, "unmount failed; detaching lazily");
                if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
                    warn!(mount_point = %self.path.display(), error = %e, "lazy unmount failed");
                }
            }
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.unmount_now();
    }
}

fn session_config(cfg: &FuseConfig) -> fuser::Config {
    let mut options = vec![
        MountOption::FSName("loaderd".into()),
        MountOption::Subtype("loaderd".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={}", cfg.max_read.0)),
    ];
    if cfg.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads);
    config.clone_fd = true;
    config
}

/// Raises the kernel's readahead for the mount to `max_read` (the FUSE INIT reply cannot go
/// beyond the kernel's 128 KiB default; the mount's backing device can). Sequential reads of
/// large files take fewer, larger requests. Best effort: it needs root.
fn raise_readahead(path: &Path, max_read: u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let dev = meta.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    match std::fs::write(&bdi, (max_read / 1024).to_string()) {
        Ok(()) => debug!(%bdi, kib = max_read / 1024, "FUSE readahead raised"),
        Err(e) => debug!(%bdi, error = %e, "FUSE readahead left at the kernel default"),
    }
}

/// Detaches what a crashed daemon left mounted at `path`: a FUSE mount whose server is gone
/// answers every access with ENOTCONN and must be unmounted before mounting again. A live
/// mount there (another daemon's, or any other file system) is refused, never detached.
pub fn clear_stale_mount(path: &Path) -> Result<(), FuseError> {
    // The kernel may answer stat from cached attributes; opening the directory always asks
    // the server.
    let enotconn =
        |r: io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN));
    let dead =
        enotconn(std::fs::metadata(path).map(drop)) || enotconn(std::fs::read_dir(path).map(drop));
    if !dead {
        return match mount_type(path) {
            None => Ok(()),
            Some(fstype) => Err(FuseError::MountPoint {
                path: path.to_path_buf(),
                source: io::Error::other(format!(
                    "already a live mount point ({fstype}); unmount it or choose another"
                )),
            }),
        };
    }
    warn!(mount_point = %path.display(), "detaching a stale FUSE mount from an earlier run");
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(source) => Err(FuseError::Stale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The file system type of the mount at exactly `path`, from `/proc/self/mountinfo`.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    let want = if want.len() > 1 {
        want.trim_end_matches('/')
    } else {
        &want
    };
    info.lines().rev().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let point = fields.split(' ').nth(4)?;
        (unescape_mountinfo(point) == want)
            .then(|| rest.split(' ').next().unwrap_or("").to_string())
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\04"), "/odd\\04");
    }

    #[test]
    fn an_ordinary_directory_is_not_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_type(dir.path()), None);
        clear_stale_mount(dir.path()).unwrap();
        assert!(mount_type(Path::new("/proc")).is_some());
        assert!(clear_stale_mount(Path::new("/proc")).is_err());
    }
}
