//! Cache errors as errnos: the one place the FUSE boundary maps them.

use loaderd_cache::ErrorKind;
use nix::errno::Errno;

/// How a failed request is answered: the errno, and whether the daemon logs it (failures of
/// the UFS or the daemon; a missing path is the caller's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub errno: Errno,
    pub log: bool,
}

/// The errno for an error of `kind`.
pub fn errno_of(kind: ErrorKind) -> Reply {
    let (errno, log) = match kind {
        ErrorKind::NotFound => (Errno::ENOENT, false),
        // Only reachable through names the kernel would not send (`..`) or ranges it clamps.
        ErrorKind::InvalidArgument | ErrorKind::OutOfRange => (Errno::EINVAL, false),
        ErrorKind::IsDirectory => (Errno::EISDIR, false),
        // The object changed in the UFS under an open file: that open's version is gone;
        // reopening gets the new one.
        ErrorKind::Changed => (Errno::ESTALE, true),
        ErrorKind::Unavailable => (Errno::EIO, true),
        ErrorKind::PermissionDenied => (Errno::EACCES, true),
        ErrorKind::Timeout => (Errno::EIO, true),
        ErrorKind::ResourceExhausted => (Errno::ENOMEM, true),
        ErrorKind::Internal => (Errno::EIO, true),
    };
    Reply { errno, log }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_posix_errors() {
        let cases = [
            (ErrorKind::NotFound, Errno::ENOENT, false),
            (ErrorKind::InvalidArgument, Errno::EINVAL, false),
            (ErrorKind::IsDirectory, Errno::EISDIR, false),
            (ErrorKind::Changed, Errno::ESTALE, true),
            (ErrorKind::Unavailable, Errno::EIO, true),
            (ErrorKind::PermissionDenied, Errno::EACCES, true),
            (ErrorKind::Timeout, Errno::EIO, true),
            (ErrorKind::ResourceExhausted, Errno::ENOMEM, true),
            (ErrorKind::Internal, Errno::EIO, true),
        ];
        for (kind, errno, log) in cases {
            assert_eq!(errno_of(kind), Reply { errno, log }, "{kind:?}");
        }
    }

    #[test]
    fn cache_errors_reach_the_right_errno() {
        let missing = loaderd_cache::Error::NotFound {
            path: "/d/x".into(),
            uri: "file:///d/x".into(),
        };
        assert_eq!(errno_of(missing.kind()).errno, Errno::ENOENT);
        let ufs = loaderd_cache::Error::UfsTimeout {
            uri: "s3://b/x".into(),
            secs: 1.0,
        };
        assert_eq!(errno_of(ufs.kind()).errno, Errno::EIO);
    }
}
