//! Backend errors as errnos: the one place the FUSE boundary maps them.

use crate::backend::ErrorKind;
use nix::errno::Errno;

/// How a failed request is answered: the errno, and whether the daemon logs it (failures of
/// the UFS, the daemon or the worker; a missing path is the caller's business).
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
        ErrorKind::InvalidArgument => (Errno::EINVAL, false),
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
}
