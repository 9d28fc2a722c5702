//! Mounting and serving: the mount options from [`Options`], a stale mount of a crashed
//! server detached first, and one function ([`FuseMount::serve`]) that runs a
//! `fuser::Session` however it was made — by mounting here, or (later) from a `/dev/fuse`
//! descriptor another process handed over.

use std::io;
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, MountOption, Session, SessionACL};
use nix::mount::{MntFlags, umount2};
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::fs::LoaderFs;
use crate::options::Options;

/// Errors of mounting the file system.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
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

/// A served FUSE mount; [`FuseMount::unmount`] (or dropping it) unmounts.
pub struct FuseMount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

impl FuseMount {
    /// Mounts `fs` at `path`, detaching a stale mount first, and serves it.
    pub fn mount<B: Backend>(
        path: &Path,
        fs: LoaderFs<B>,
        opts: &Options,
    ) -> Result<Self, MountError> {
        clear_stale_mount(path)?;
        std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
            path: path.to_path_buf(),
            source,
        })?;
        let session =
            Session::new(fs, path, &session_config(opts)).map_err(|source| MountError::Mount {
                path: path.to_path_buf(),
                source,
            })?;
        let mount = Self::serve(session, path)?;
        raise_readahead(path, opts.max_read);
        info!(mount_point = %path.display(), threads = opts.threads, "FUSE view mounted");
        Ok(mount)
    }

    /// Serves `session` (mounted at `path`) on its request threads until unmounted.
    pub fn serve<B: Backend>(
        session: Session<LoaderFs<B>>,
        path: &Path,
    ) -> Result<Self, MountError> {
        let session = session.spawn().map_err(|source| MountError::Mount {
            path: path.to_path_buf(),
            source,
        })?;
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

/// The fuser configuration `opts` asks for: read-only, no devices or setuid, no atime,
/// `max_read`, and the permission and sharing options.
pub fn session_config(opts: &Options) -> fuser::Config {
    let mut options = vec![
        MountOption::FSName("loaderd".into()),
        MountOption::Subtype("loaderd".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={}", opts.max_read)),
    ];
    if opts.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    config
}

/// Raises the kernel's readahead for the mount to `max_read` (the FUSE INIT reply cannot go
/// beyond the kernel's 128 KiB default; the mount's backing device can). Sequential reads of
/// large files take fewer, larger requests. Best effort: it needs root.
pub(crate) fn raise_readahead(path: &Path, max_read: u32) {
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

/// Detaches what a crashed server left mounted at `path`: a FUSE mount whose server is gone
/// answers every access with ENOTCONN and must be unmounted before mounting again. A live
/// mount there (another server's, or any other file system) is refused, never detached.
pub fn clear_stale_mount(path: &Path) -> Result<(), MountError> {
    // The kernel may answer stat from cached attributes; opening the directory always asks
    // the server.
    let enotconn =
        |r: io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN));
    let dead =
        enotconn(std::fs::metadata(path).map(drop)) || enotconn(std::fs::read_dir(path).map(drop));
    if !dead {
        return match mount_type(path) {
            None => Ok(()),
            Some(fstype) => Err(MountError::MountPoint {
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
        Err(source) => Err(MountError::Stale {
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
