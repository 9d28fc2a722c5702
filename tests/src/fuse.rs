//! A `loaderd` serving its FUSE view — itself (`--fuse-mount`) or through the thin front
//! (`loaderd fuse`, a second process serving the mount from the daemon's sockets) — and
//! whether this machine can mount one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::daemon::Daemon;
use crate::process::{self, bin, clean_env, spawn_logged, tail, wait_ready};

/// Who serves the FUSE mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseServer {
    /// The daemon itself (`loaderd --fuse-mount`).
    InDaemon,
    /// The thin front (`loaderd fuse --socket … MOUNTPOINT`) over the daemon, its worker.
    Front,
}

/// The daemon flags of the FUSE view that the front takes too, without the `fuse-` prefix.
const FRONT_FLAGS: [&str; 4] = [
    "--fuse-threads",
    "--fuse-entry-timeout",
    "--fuse-attr-timeout",
    "--fuse-worker-wait",
];

/// `args` split into the worker's and the front's (the `--fuse-*` flags, renamed).
fn split_front_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut worker, mut front) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or(a);
        if FRONT_FLAGS.contains(&flag) {
            front.push(a.replacen("--fuse-", "--", 1));
            if !a.contains('=')
                && let Some(v) = it.next()
            {
                front.push(v.clone());
            }
        } else {
            worker.push(a.clone());
        }
    }
    (worker, front)
}

/// A running `loaderd fuse` front with its own log.
pub struct Front {
    args: Vec<String>,
    log: PathBuf,
    mnt: PathBuf,
    child: Option<Child>,
}

impl Front {
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(bin("loaderd"));
        clean_env(&mut cmd)
            .arg("fuse")
            .args(&self.args)
            .arg(&self.mnt);
        let mut child = spawn_logged(&mut cmd, &self.log);
        let mnt = self.mnt.clone();
        let ready = wait_ready(
            &mut child,
            || (fuse_mounts(&mnt) > 0 && fs::read_dir(&mnt).is_ok()).then_some(()),
            "loaderd fuse",
            || format!("args {:?}; log:\n{}", self.args, self.log()),
        );
        if let Err(status) = ready {
            return Err(format!("({status})\n{}", self.log()));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Everything the front wrote, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash; the mount stays, dead. The supervisor's serving front dies with it
    /// (it is killed too here, and waited for, so the mount is dead on return).
    pub fn kill9(&mut self) {
        let serving = self.pid().map(children_of).unwrap_or_default();
        process::kill9(&mut self.child);
        for pid in serving {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
            crate::wait_until(std::time::Duration::from_secs(30), || {
                fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
            });
        }
    }

    /// SIGTERM, then asserts a clean exit (code 0).
    #[track_caller]
    pub fn stop(&mut self) {
        process::stop(self.child.take(), "loaderd fuse", || self.log());
    }

    /// OS process id of the running front (the supervisor, unless `--no-supervisor`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serving front the supervisor runs as its child, once there is one (up to 60 s).
    pub fn serving_pid(&self) -> Option<u32> {
        let sup = self.pid()?;
        let mut found = None;
        crate::wait_until(std::time::Duration::from_secs(60), || {
            found = children_of(sup).into_iter().next();
            found.is_some()
        });
        found
    }

    /// Sends `signal` (`TERM`, `KILL`) to the serving front and waits (up to 60 s) until
    /// the supervisor runs another one; returns the new one's pid.
    #[track_caller]
    pub fn signal_serving(&self, signal: &str) -> u32 {
        let old = self
            .serving_pid()
            .unwrap_or_else(|| panic!("no serving front; log:\n{}", tail(&self.log(), 3000)));
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(old.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} {old}");
        let sup = self.pid().expect("a supervisor");
        let mut new = None;
        crate::wait_until(std::time::Duration::from_secs(60), || {
            new = children_of(sup).into_iter().find(|&p| p != old);
            new.is_some()
        });
        new.unwrap_or_else(|| {
            panic!(
                "no new serving front after kill -{signal}; log:\n{}",
                tail(&self.log(), 3000)
            )
        })
    }
}

/// Processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let ppid: u32 = fields.next()?.parse().ok()?;
        (ppid == pid && state != "Z").then_some(child)
    })
    .collect()
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill9();
    }
}

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
    /// The daemon (gRPC and the rest work as usual); the front's worker when there is one.
    pub daemon: Daemon,
    /// The front serving the mount, if it is not the daemon.
    pub front: Option<Front>,
    /// The FUSE mount point.
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl FuseDaemon {
    /// Starts `loaderd --fuse-mount <tmp>/mnt ARGS...`; `Err` is a reason to skip (no
    /// FUSE device, mounting not permitted).
    pub fn start(args: &[String]) -> Result<FuseDaemon, String> {
        Self::start_with(FuseServer::InDaemon, args)
    }

    /// Like [`FuseDaemon::start`], the mount served by `server`: for the front, `loaderd
    /// ARGS...` (without the `--fuse-*` flags) is the worker, and `loaderd fuse --socket
    /// <its socket> <the --fuse-* flags, renamed> <tmp>/mnt` serves the mount.
    pub fn start_with(server: FuseServer, args: &[String]) -> Result<FuseDaemon, String> {
        Self::start_inner(server, args, &[])
    }

    /// The worker `loaderd WORKER...` and the front `loaderd fuse --socket <its socket>
    /// FRONT... <tmp>/mnt`.
    pub fn start_front(worker: &[String], front: &[String]) -> Result<FuseDaemon, String> {
        Self::start_inner(FuseServer::Front, worker, front)
    }

    fn start_inner(
        server: FuseServer,
        args: &[String],
        front_extra: &[String],
    ) -> Result<FuseDaemon, String> {
        if let Some(reason) = fuse_unavailable() {
            return Err(reason);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("mount point");
        let (all, front_args) = match server {
            FuseServer::InDaemon => {
                let mut all = vec!["--fuse-mount".to_string(), mnt.display().to_string()];
                all.extend_from_slice(args);
                (all, None)
            }
            FuseServer::Front => {
                let (worker, front) = split_front_args(args);
                (worker, Some([front, front_extra.to_vec()].concat()))
            }
        };
        let started = Daemon::try_start(&all).and_then(|daemon| {
            let Some(front_args) = front_args else {
                return Ok((daemon, None));
            };
            let mut front = Front {
                args: [
                    vec!["--socket".to_string(), daemon.socket.display().to_string()],
                    front_args,
                ]
                .concat(),
                log: dir.path().join("front.log"),
                mnt: mnt.clone(),
                child: None,
            };
            front.try_spawn()?;
            Ok((daemon, Some(front)))
        });
        match started {
            Ok((daemon, front)) => {
                let d = FuseDaemon {
                    daemon,
                    front,
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

    /// Who serves the mount.
    pub fn server(&self) -> FuseServer {
        match self.front {
            Some(_) => FuseServer::Front,
            None => FuseServer::InDaemon,
        }
    }

    /// What the daemon and the front (if any) logged.
    pub fn log(&self) -> String {
        let mut log = self.daemon.log();
        if let Some(f) = &self.front {
            log.push_str(&f.log());
        }
        log
    }

    /// SIGKILL to the process serving the mount (the front, or the daemon).
    pub fn kill9(&mut self) {
        match &mut self.front {
            Some(f) => f.kill9(),
            None => self.daemon.kill9(),
        }
    }

    /// Starts the process serving the mount again (stopping it first if running).
    #[track_caller]
    pub fn restart(&mut self) {
        match &mut self.front {
            Some(f) => {
                f.stop();
                if let Err(log) = f.try_spawn() {
                    panic!("loaderd fuse exited during restart; log:\n{log}");
                }
            }
            None => self.daemon.restart(),
        }
    }

    /// SIGTERM to the front (if any), then to the daemon; each must exit cleanly.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Some(f) = &mut self.front {
            f.stop();
        }
        self.daemon.stop();
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
        if let Some(f) = &mut self.front {
            f.kill9();
        }
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

/// Each named test body (a `fn(FuseServer)` in the calling file) as two tests:
/// `in_daemon::NAME` against the daemon's own mount and `front::NAME` against the front.
#[macro_export]
macro_rules! against_both_fuse_servers {
    ($($name:ident),* $(,)?) => {
        mod in_daemon {
            $(#[test]
            fn $name() {
                super::$name($crate::FuseServer::InDaemon)
            })*
        }
        mod front {
            $(#[test]
            fn $name() {
                super::$name($crate::FuseServer::Front)
            })*
        }
    };
}
