//! loaderd's FUSE file system: the whole logical namespace as a read-only POSIX file system,
//! so code that only knows paths (`ImageFolder('/mnt/loaderd/imagenet/train')`) reads
//! through the cache. It is served two ways, over one [`Backend`] trait:
//!
//! * in the daemon (`loaderd --fuse-mount`): a read is a call into the daemon's own cache,
//!   the bytes of a cached block going from the memory tier straight into the reply;
//! * by the thin front ([`front`], `loaderd fuse --socket … MOUNTPOINT`): a process with no
//!   cache of its own that serves the mount from the node's worker over its local sockets
//!   (gRPC for attributes and listings, the shared-memory socket for data) and waits out a
//!   worker restart instead of failing.
//!
//! Layout: [`View`] (`view.rs`) is the file system — lookup, getattr, readdir, open, read,
//! release in terms of inode numbers, handles, offsets, attributes, bytes and errnos, with no
//! fuser types; [`State`] (`state.rs`) holds everything it remembers (inodes, open files and
//! directories), plain data with no connection in it; [`LoaderFs`] (`fs.rs`) is the
//! `fuser::Filesystem`, glue that translates requests and replies only; [`FuseMount`]
//! (`mount.rs`) mounts and serves a session.
//!
//! * Threads: fuser runs `threads` request loops, each blocking on one backend call at a
//!   time. Size it to the number of concurrent readers.
//! * Inodes: numbered by a hash of the logical path (`inode.rs`), so a path keeps its number
//!   across restarts; lookups are counted and forgotten as the kernel asks.
//! * Metadata: lookup/getattr/readdir(plus) come from the backend; the kernel keeps answers
//!   for `entry_timeout`/`attr_timeout`.
//! * Data: `open` resolves the file once (path + version); every `read` is pinned to that
//!   version; `FOPEN_KEEP_CACHE` keeps the page cache across opens of one version.
//! * Restarts: [`handover`] hands the live `/dev/fuse` descriptor and the file system's
//!   state to a successor (SIGTERM) or through a supervisor (a crash).
//! * Errors: one exhaustive mapping of backend errors (`errno.rs`); writes of any kind are
//!   `EROFS` (the mount is also `ro`); UFS and worker failures are `EIO` with a warning
//!   naming the path.

mod backend;
mod errno;
pub mod front;
mod fs;
pub mod handover;
mod inode;
mod mount;
mod options;
pub mod path;
mod state;
mod view;

pub use backend::{Backend, Capacity, Entry, Error, ErrorKind, Handle, Kind, Owner, Result};
pub use errno::{Reply, errno_of};
pub use fs::LoaderFs;
pub use inode::{InodeTable, ROOT, ROOT_PATH, preferred_ino};
pub use mount::{FuseMount, MountError, clear_stale_mount, session_config};
pub use options::Options;
pub use state::{DirHandle, Inodes, State};
pub use view::{Attr, BLKSIZE, DirEntry, FsStats, Opened, View};
