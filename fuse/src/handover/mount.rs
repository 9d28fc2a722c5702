//! Mounting a `/dev/fuse` descriptor with mount(2), so that the mount belongs to whoever
//! holds the descriptor, not to a fuser session (whose end would unmount it).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// How the mount looks to the kernel.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The `source` column of /proc/mounts.
    pub fs_name: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    /// Let users other than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// Let the kernel check permissions from the modes (`default_permissions`).
    pub default_permissions: bool,
    /// Largest read the kernel sends (`max_read`).
    pub max_read: u32,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            fs_name: "loaderd".into(),
            subtype: "loaderd".into(),
            allow_other: false,
            default_permissions: false,
            max_read: 1 << 20,
        }
    }
}

/// Mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening /dev/fuse: {0}")]
    Device(#[source] std::io::Error),
    #[error("mount point {}: {source}", path.display())]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting FUSE at {} (needs CAP_SYS_ADMIN): {source}", path.display())]
    Mount {
        path: PathBuf,
        source: nix::errno::Errno,
    },
}

/// Opens `/dev/fuse` and mounts it read-only at `path`: the descriptor is the mount's
/// connection (its FUSE_INIT is waiting to be read), and the mount stays until
/// [`unmount`] or until the last copy of the descriptor is closed.
pub fn mount_fuse(path: &Path, cfg: &MountConfig) -> Result<OwnedFd, MountError> {
    let meta = std::fs::metadata(path).map_err(|source| MountError::MountPoint {
        path: path.to_path_buf(),
        source,
    })?;
    let dev: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(MountError::Device)?
        .into();
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},max_read={}",
        dev.as_raw_fd(),
        meta.mode() & libc::S_IFMT,
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        cfg.max_read
    );
    if cfg.allow_other {
        data.push_str(",allow_other");
    }
    if cfg.default_permissions {
        data.push_str(",default_permissions");
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    let fstype = format!("fuse.{}", cfg.subtype);
    mount(
        Some(cfg.fs_name.as_str()),
        path,
        Some(fstype.as_str()),
        flags,
        Some(data.as_str()),
    )
    .map_err(|source| MountError::Mount {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(dev)
}

/// Detaches the mount at `path` (lazily: it goes when its last user lets go).
pub fn unmount(path: &Path) -> nix::Result<()> {
    umount2(path, MntFlags::MNT_DETACH)
}
