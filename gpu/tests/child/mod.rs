//! Re-executing this test binary as a second process that is handed a descriptor: the
//! parent clears close-on-exec on it, names it in an environment variable, and the two step
//! each other through the child's stdin (the parent's `go`) and stdout (the child's progress
//! tokens, matched anywhere in a line since libtest may print the test's name on the same one);
//! and [`run_test`], one test of this binary run to completion with or without
//! `LOADERD_REQUIRE_GPU=1`.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

/// A running child and what it printed so far.
pub struct ChildRun {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    transcript: String,
    /// Collects the child's stderr (panic messages) on its own thread, so a full pipe cannot
    /// stall the child while we read its stdout.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildRun {
    /// Runs only `test` of this binary in a child that inherits `fd` (its number in `env`,
    /// followed by `,` and `extra` when not empty).
    pub fn spawn(test: &str, fd: &OwnedFd, env: &str, extra: &str) -> Self {
        set_inheritable(fd);
        let mut value = fd.as_raw_fd().to_string();
        if !extra.is_empty() {
            value = format!("{value},{extra}");
        }
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(env, value)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the test binary");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        ChildRun {
            child,
            lines,
            transcript: String::new(),
            stderr: Some(stderr),
        }
    }

    /// Reads the child's output until a line contains `token` (true) or it ends (false).
    pub fn wait_for(&mut self, token: &str) -> bool {
        for line in self.lines.by_ref() {
            let Ok(line) = line else { return false };
            println!("child: {line}");
            self.transcript.push_str(&line);
            self.transcript.push('\n');
            if line.contains(token) {
                return true;
            }
        }
        false
    }

    /// Tells the child to go on, and closes its stdin.
    pub fn go(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            // A child that already exited is reported by `finish`.
            let _ = writeln!(stdin, "go");
        }
    }

    /// Waits for the child: its status and everything it printed (stdout, then stderr).
    pub fn finish(mut self) -> (ExitStatus, String) {
        self.child.stdin.take();
        for line in self.lines.by_ref().map_while(Result::ok) {
            self.transcript.push_str(&line);
            self.transcript.push('\n');
        }
        let status = self.child.wait().expect("wait for the child");
        if let Some(err) = self.stderr.take().and_then(|h| h.join().ok()) {
            self.transcript.push_str(&err);
        }
        (status, self.transcript)
    }
}

/// Runs only `test` of this binary in a child process, with `LOADERD_REQUIRE_GPU=1` when
/// `require` (removed otherwise): (passed, its stdout and stderr).
pub fn run_test(test: &str, require: bool) -> (bool, String) {
    let env = loaderd_gpu::detect::REQUIRE_GPU_ENV;
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    if require {
        cmd.env(env, "1");
    } else {
        cmd.env_remove(env);
    }
    let out = cmd.output().expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The child's side of [`ChildRun::go`]: blocks until the parent says go.
pub fn await_go() {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
    assert_eq!(line.trim(), "go", "the parent did not say go");
}

/// The numbers the parent put in the child's `env` (the descriptor first).
pub fn child_args(env: &str) -> Option<Vec<usize>> {
    let spec = std::env::var(env).ok()?;
    Some(
        spec.split(',')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("{env}={spec}")))
            .collect(),
    )
}

/// True when `fd` is close-on-exec.
pub fn cloexec(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFD on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0, "F_GETFD: {}", std::io::Error::last_os_error());
    flags & libc::FD_CLOEXEC != 0
}

fn set_inheritable(fd: &OwnedFd) {
    // SAFETY: F_SETFD on a descriptor we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0, "F_SETFD: {}", std::io::Error::last_os_error());
}
