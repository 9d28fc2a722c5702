//! The front's connections to the node's worker — gRPC over its Unix socket, and a pool of
//! shared-memory connections (one per concurrent reader) — and the one place that decides
//! whether a failure means "the worker is not there" (retry with backoff, bounded by
//! `fuse.worker_wait`) or is the worker's answer (pass it on).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use loaderd_client::{Client, ShmClient, ShmError, connect_unix};
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::backend::{Error, ErrorKind, Result};

/// The first pause after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The outcome of one attempt at a call.
pub enum Attempt<T> {
    /// The worker answered (with a result or an error of its own).
    Done(Result<T>),
    /// The worker could not be reached; the cause, for the log and the final error.
    Unreachable(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker, as the front reaches it.
pub struct Worker {
    socket: PathBuf,
    shm_socket: PathBuf,
    rt: tokio::runtime::Runtime,
    grpc: Mutex<Option<Client>>,
    shm: Mutex<Vec<ShmClient>>,
    wait: Duration,
    /// Since when the worker has been unreachable (None while it answers).
    down_since: Mutex<Option<Instant>>,
}

/// Whether a gRPC error was made on this side (no connection, connection reset, stream
/// broken), not sent by the worker: a status the worker sends carries no source error.
pub fn unreachable(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// A status the worker sent, in the file system's terms.
pub fn from_status(s: &Status) -> Error {
    let kind = match s.code() {
        Code::NotFound => ErrorKind::NotFound,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::FailedPrecondition => ErrorKind::IsDirectory,
        Code::Aborted => ErrorKind::Changed,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, s.message().to_string())
}

/// `e` and every error below it, as one line: the cause a log reader needs ("Connection
/// refused", "No such file or directory") is usually at the bottom.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl Worker {
    /// The worker listening on `socket` and `shm_socket` (`None`: beside `socket`); calls
    /// wait up to `wait` for it to be reachable.
    pub fn new(socket: &Path, shm_socket: Option<&Path>, wait: Duration) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loaderd-front")
            .enable_all()
            .build()?;
        Ok(Worker {
            socket: socket.to_path_buf(),
            shm_socket: shm_socket.map_or_else(
                || loaderd_proto::transport::default_shm_socket(socket),
                Path::to_path_buf,
            ),
            rt,
            grpc: Mutex::new(None),
            shm: Mutex::new(Vec::new()),
            wait,
            down_since: Mutex::new(None),
        })
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `attempt` until the worker answers or has been unreachable for `wait`; then the
    /// error names `path` and the cause.
    pub fn call<T>(&self, path: &str, mut attempt: impl FnMut(&Self) -> Attempt<T>) -> Result<T> {
        let deadline = Instant::now() + self.wait;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match attempt(self) {
                Attempt::Done(r) => {
                    self.reached();
                    return r;
                }
                Attempt::Unreachable(cause) => {
                    self.unreached(&cause);
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "{path}: the worker at {} was unreachable for {:?} \
                                 (fuse.worker_wait): {cause}",
                                self.socket.display(),
                                self.wait
                            ),
                        ));
                    }
                    std::thread::sleep(backoff.min(deadline - now));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn reached(&self) {
        if let Some(since) = lock(&self.down_since).take() {
            info!(socket = %self.socket.display(), down_for = ?since.elapsed(), "worker reachable again");
        }
    }

    fn unreached(&self, cause: &str) {
        let mut down = lock(&self.down_since);
        if down.is_none() {
            *down = Some(Instant::now());
            warn!(socket = %self.socket.display(), cause, "worker unreachable; FUSE requests wait for it");
        }
    }

    /// A gRPC client, connecting when there is none.
    fn client(&self) -> std::result::Result<Client, String> {
        let mut slot = lock(&self.grpc);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .rt
            .block_on(connect_unix(&self.socket))
            .map_err(|e| with_causes(&e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One attempt at a gRPC call.
    pub fn grpc<T, F, Fut>(&self, f: F) -> Attempt<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let client = match self.client() {
            Ok(c) => c,
            Err(cause) => return Attempt::Unreachable(cause),
        };
        match self.rt.block_on(f(client)) {
            Ok(v) => Attempt::Done(Ok(v)),
            Err(s) if unreachable(&s) => {
                lock(&self.grpc).take();
                Attempt::Unreachable(format!("{}: {}", self.socket.display(), with_causes(&s)))
            }
            Err(s) => Attempt::Done(Err(from_status(&s))),
        }
    }

    /// Runs `f` on a shared-memory connection (connecting one when the pool has none); the
    /// connection goes back to the pool unless it broke. `Err` when none could be made or
    /// it broke: the caller reads over gRPC instead, whose retries decide whether the
    /// worker is there.
    pub fn with_shm<T>(
        &self,
        f: impl FnOnce(&mut ShmClient) -> std::result::Result<T, ShmError>,
    ) -> std::result::Result<std::result::Result<T, ShmError>, ShmError> {
        let pooled = lock(&self.shm).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => ShmClient::connect(&self.shm_socket)?,
        };
        match f(&mut conn) {
            Err(e @ (ShmError::Io(_) | ShmError::Protocol(_))) => Err(e),
            other => {
                lock(&self.shm).push(conn);
                Ok(other)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_side_failures_mean_the_worker_is_not_there() {
        // What the worker sends: its answer, passed on.
        for s in [
            Status::not_found("/d/x: not found"),
            Status::unavailable("s3://b/x: connection refused"),
            Status::aborted("object changed during the read"),
        ] {
            assert!(!unreachable(&s), "{s:?}");
        }
        // Made on this side: no connection, reset, broken stream.
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(unreachable(&Status::from_error(Box::new(io))));
    }

    #[test]
    fn worker_statuses_map_to_kinds() {
        let cases = [
            (Code::NotFound, ErrorKind::NotFound),
            (Code::OutOfRange, ErrorKind::InvalidArgument),
            (Code::FailedPrecondition, ErrorKind::IsDirectory),
            (Code::Aborted, ErrorKind::Changed),
            (Code::Unavailable, ErrorKind::Unavailable),
            (Code::PermissionDenied, ErrorKind::PermissionDenied),
            (Code::DeadlineExceeded, ErrorKind::Timeout),
            (Code::ResourceExhausted, ErrorKind::ResourceExhausted),
            (Code::Unknown, ErrorKind::Internal),
        ];
        for (code, kind) in cases {
            let e = from_status(&Status::new(code, "/d/x: why"));
            assert_eq!(
                (e.kind, e.message.as_str()),
                (kind, "/d/x: why"),
                "{code:?}"
            );
        }
    }

    #[test]
    fn an_absent_worker_is_waited_for_then_unavailable_naming_the_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("loaderd.sock");
        let w = Worker::new(&socket, None, Duration::from_millis(300)).expect("worker");
        let started = Instant::now();
        let mut attempts = 0;
        let r: Result<()> = w.call("/d/x", |w| {
            attempts += 1;
            w.grpc(|_c| async { Ok(()) })
        });
        let e = r.expect_err("no worker");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(attempts > 2, "retried {attempts} times");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let socket = socket.display().to_string();
        for part in [
            "/d/x",
            socket.as_str(),
            "unreachable for 300ms",
            "No such file",
        ] {
            assert!(e.message.contains(part), "{part:?} not in {}", e.message);
        }
        // An attempt that is answered ends the wait at once.
        let r = w.call("/d/x", |_| Attempt::Done(Ok(7)));
        assert_eq!(r, Ok(7));
    }
}
