//! Errors of the cache crate, by meaning. Callers branch on the variant, never on text.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the cache, the namespace or the UFS below it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The logical path names nothing in the UFS.
    #[error("not found: {path} ({uri})")]
    NotFound { path: String, uri: String },
    /// The logical path is under no mount.
    #[error("no mount covers {path}")]
    NoMount { path: String },
    /// The path is malformed or escapes its mount.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A directory was given where a file is needed.
    #[error("{path} is a directory")]
    IsDirectory { path: String },
    /// The object changed in the UFS since its metadata was cached; the caller may retry.
    #[error("{path} changed in the UFS while it was read")]
    Changed { path: String },
    /// A read pinned to one version found another: the object changed between the read's
    /// first block and a later one. `new` is empty when the object is gone.
    #[error("object changed during the read: {path} (version {old} → {})", if new.is_empty() { "deleted" } else { new.as_str() })]
    VersionChanged {
        path: String,
        old: String,
        new: String,
    },
    /// The UFS refused or failed the request after retries.
    #[error("UFS error on {uri}: {source}")]
    Ufs {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    /// The UFS did not answer in time.
    #[error("UFS timed out after {secs:.1}s on {uri}")]
    UfsTimeout { uri: String, secs: f64 },
    /// A read starts past the end of the file (OUT_OF_RANGE on every path).
    #[error("offset {offset} (length {length}) is past the end of {path} ({size} bytes)")]
    Range {
        path: String,
        offset: u64,
        length: u64,
        size: u64,
    },
    /// A configuration value is invalid; `key` names it as in the TOML file.
    #[error("invalid config `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// A mount point is taken, nested in another, or unknown.
    #[error("mount {path}: {reason}")]
    Mount { path: String, reason: String },
    /// Local I/O failed (SSD tier, manifests, shared memory).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon's memory budget for this kind of data is used up.
    #[error("memory budget exhausted: {what}")]
    Budget { what: &'static str },
    /// A peer of the cluster failed a request (it is skipped for a while).
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    /// Cluster membership could not be set up.
    #[error("cluster membership: {0}")]
    Membership(String),
    /// The fetch this read waited on ended without an answer: its task was cancelled (the
    /// runtime shutting down) or panicked. Nothing is wrong with the request or the budget;
    /// a retry starts a new fetch.
    #[error("the fetch of this block ended without an answer; retry")]
    FetchDropped,
    /// A single-flight fetch that this read waited on failed.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
    /// A runtime mount the daemon's policy (`[mounts]`) does not allow.
    #[error("mount {uri} refused: {reason}")]
    NotAllowed { uri: String, reason: String },
}

impl Error {
    /// The innermost error, looking through shared single-flight results.
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(inner) => inner.root(),
            other => other,
        }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Coarse classes of [`Error`], for mapping onto protocol status codes and errnos in one
/// exhaustive place per boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    /// A read past the end of a file.
    OutOfRange,
    IsDirectory,
    Changed,
    Unavailable,
    PermissionDenied,
    Timeout,
    ResourceExhausted,
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use object_store::Error as O;
        match self {
            Error::NotFound { .. } | Error::NoMount { .. } => ErrorKind::NotFound,
            Error::Range { .. } => ErrorKind::OutOfRange,
            Error::InvalidPath { .. } | Error::Config { .. } | Error::Mount { .. } => {
                ErrorKind::InvalidArgument
            }
            Error::IsDirectory { .. } => ErrorKind::IsDirectory,
            Error::Changed { .. } | Error::VersionChanged { .. } => ErrorKind::Changed,
            Error::Ufs { source, .. } => match source {
                O::PermissionDenied { .. } | O::Unauthenticated { .. } => {
                    ErrorKind::PermissionDenied
                }
                O::NotFound { .. } => ErrorKind::NotFound,
                O::Precondition { .. } | O::NotModified { .. } => ErrorKind::Changed,
                _ => ErrorKind::Unavailable,
            },
            Error::UfsTimeout { .. } => ErrorKind::Timeout,
            Error::Budget { .. } => ErrorKind::ResourceExhausted,
            Error::Io { .. } => ErrorKind::Internal,
            Error::Peer { .. } | Error::Membership(_) | Error::FetchDropped => {
                ErrorKind::Unavailable
            }
            Error::Shared(inner) => inner.kind(),
            Error::NotAllowed { .. } => ErrorKind::PermissionDenied,
        }
    }
}

/// Maps a cache error onto a gRPC status, by class (the one mapping of every gRPC boundary).
pub fn to_status(e: &Error) -> tonic::Status {
    use tonic::Status;
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::OutOfRange => Status::out_of_range(msg),
        ErrorKind::IsDirectory => Status::failed_precondition(msg),
        ErrorKind::Changed => Status::aborted(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(msg),
        ErrorKind::Timeout => Status::deadline_exceeded(msg),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(msg),
        ErrorKind::Internal => Status::internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_on_the_wire() {
        let past_end = Error::Range {
            path: "/ds/f".into(),
            offset: 11,
            length: 0,
            size: 10,
        };
        assert_eq!(to_status(&past_end).code(), tonic::Code::OutOfRange);
        let dropped = Error::Shared(std::sync::Arc::new(Error::FetchDropped));
        assert_eq!(dropped.kind(), ErrorKind::Unavailable);
        assert_eq!(to_status(&dropped).code(), tonic::Code::Unavailable);
    }
}
