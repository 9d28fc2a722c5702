//! Processes: where the binaries are, their environment, waiting for them with bounds, and
//! stopping them.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a daemon or S3 server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Root of the repository (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Path of a built binary (`loaderd`, `loaderctl`).
///
/// `$LOADERD_BIN_DIR/name` if that variable is set, else the cargo target
/// directory of the running test executable (`target/<profile>/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("LOADERD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current test executable");
            let mut dir = exe
                .parent()
                .expect("test executable has a directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found; build the binaries first: cargo build --bins",
        path.display()
    );
    path
}

/// Sends SIGTERM to `child` and waits up to `EXIT_TIMEOUT`; kills it after that.
/// Returns the exit status, or `None` if it had to be killed.
pub(crate) fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// SIGKILL to the process in `child`, if any, and waits: a crash.
pub(crate) fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGTERM to `child`, if any, then asserts a clean exit (code 0) within
/// [`EXIT_TIMEOUT`]; `what` and `log()` name it in the failure.
#[track_caller]
pub(crate) fn stop(child: Option<Child>, what: &str, log: impl Fn() -> String) {
    if let Some(mut c) = child {
        match terminate(&mut c) {
            Some(status) => assert!(
                status.code() == Some(0),
                "{what} exited with {status} after SIGTERM; log:\n{}",
                tail(&log(), 4000)
            ),
            None => panic!(
                "{what} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log:\n{}",
                tail(&log(), 4000)
            ),
        }
    }
}

/// Spawns `cmd` with no stdin, its stdout and stderr appended to the file at `log`.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", log.display()));
    let err = file.try_clone().expect("clone log file");
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Polls `ready` every 50 ms until it gives a value, for at most [`READY_TIMEOUT`]. `Err` is
/// the exit status of a `child` that exited first; past the limit `child` is killed and the
/// test panics, naming `what` and `details()` (its arguments, its log).
pub(crate) fn wait_ready<T>(
    child: &mut Child,
    mut ready: impl FnMut() -> Option<T>,
    what: &str,
    details: impl FnOnce() -> String,
) -> Result<T, ExitStatus> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} not ready after {READY_TIMEOUT:?}; {}", details());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Last `max` bytes of `text` (on a char boundary).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `LOADERD_*` variables a test's processes keep: where the binaries are, and where the CUDA
/// libraries are (a GPU machine's check names them; they are not daemon settings).
const KEPT_ENV: [&str; 3] = ["LOADERD_BIN_DIR", "LOADERD_NVRTC_LIB", "LOADERD_NVJPEG_LIB"];

/// Removes `LOADERD_*` variables (they would override the flags the tests
/// pass) from a command's environment, keeping those in [`KEPT_ENV`].
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("LOADERD_") && !KEPT_ENV.contains(&name.as_ref()) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs `cmd` with piped output, killing it after `timeout` (then panics):
/// for one-shot invocations of `loaderd` that must not turn into a server.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = clean_env(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// `["--flag", "value", ...]` from string pairs; saves `.to_string()` noise.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
