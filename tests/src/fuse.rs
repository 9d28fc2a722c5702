//! A `loaderd` serving its FUSE view, and whether this machine can mount one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::daemon::Daemon;
use crate::process::tail;

/// Why FUSE mounts cannot be tested on this machine, or `None` when they can be tried.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened".into());
    }
    None
}

/// A `loaderd` serving its FUSE view at [`FuseDaemon::mnt`]. Dropping it kills the daemon
/// and detaches the mount, so no stale mount outlives a test.
pub struct FuseDaemon {
    /// The daemon (gRPC and the rest work as usual).
    pub daemon: Daemon,
    /// The FUSE mount point.
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl FuseDaemon {
    /// Starts `loaderd --fuse-mount <tmp>/mnt ARGS...`; `Err` is a reason to skip (no
    /// FUSE device, mounting not permitted).
    pub fn start(args: &[String]) -> Result<FuseDaemon, String> {
        if let Some(reason) = fuse_unavailable() {
            return Err(reason);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("mount point");
        let mut all = vec!["--fuse-mount".to_string(), mnt.display().to_string()];
        all.extend_from_slice(args);
        match Daemon::try_start(&all) {
            Ok(daemon) => {
                let d = FuseDaemon {
                    daemon,
                    mnt,
                    _dir: dir,
                };
                assert!(
                    d.is_mounted(),
                    "loaderd is up but {} is not a FUSE mount; log:\n{}",
                    d.mnt.display(),
                    tail(&d.daemon.log(), 4000)
                );
                Ok(d)
            }
            Err(log) if log.contains("mounting FUSE") => Err(format!(
                "mounting FUSE is not permitted here: {}",
                tail(&log, 600)
            )),
            Err(log) => panic!("loaderd exited during start; args {all:?}; log:\n{log}"),
        }
    }

    /// Whether `/proc/self/mountinfo` lists a FUSE mount at the mount point.
    pub fn is_mounted(&self) -> bool {
        fuse_mounts(&self.mnt) > 0
    }

    /// `mnt` joined with a relative path.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// How many FUSE mounts `/proc/self/mountinfo` lists at exactly `path`.
pub fn fuse_mounts(path: &Path) -> usize {
    let want = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            let fstype = l.split(" - ").nth(1).unwrap_or("");
            point == want && fstype.starts_with("fuse")
        })
        .count()
}

impl std::ops::Deref for FuseDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for FuseDaemon {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Drop for FuseDaemon {
    fn drop(&mut self) {
        self.daemon.kill9();
        while fuse_mounts(&self.mnt) > 0 {
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}
