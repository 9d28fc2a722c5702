//! How the file system is mounted and answers the kernel: the daemon's `[fuse]` section as
//! plain values (the daemon's config parses and documents them).

use std::time::Duration;

/// Mount and reply parameters of the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How long the kernel trusts a name lookup.
    pub entry_timeout: Duration,
    /// How long the kernel trusts attributes (size, mtime).
    pub attr_timeout: Duration,
    /// Threads serving kernel requests, each blocking on one backend call at a time.
    pub threads: usize,
    /// Largest read the kernel sends (and its readahead window).
    pub max_read: u32,
    /// Let users other than the mounting one read the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the file modes.
    pub default_permissions: bool,
    /// Keep a file's pages cached across opens while its version is unchanged.
    pub keep_cache: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            entry_timeout: Duration::from_secs(600),
            attr_timeout: Duration::from_secs(600),
            threads: 16,
            max_read: 1 << 20,
            allow_other: true,
            default_permissions: true,
            keep_cache: true,
        }
    }
}
