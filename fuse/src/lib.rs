//! loaderd's FUSE file system: the read-only POSIX view of the logical namespace.

pub mod handover;
