//! What the FUSE view shows as a file's owner and permission bits, so that the kernel
//! (mounted with `default_permissions`) lets other users read only what they could read at
//! the source.

use std::os::unix::fs::MetadataExt;

use loaderd_cache::mount::Resolved;
use loaderd_cache::{Cache, LogicalPath};
use tracing::debug;

/// Permission bits (write bits cleared) and owner (uid, gid) of `path`: the source file's
/// for `file://` mounts (no access when it cannot be stat'ed), `object_mode` and `daemon`'s
/// ids for object stores (directories get x where r is set), 0555 for the directories above
/// mount points.
pub fn owner_and_mode(
    cache: &Cache,
    path: Option<&LogicalPath>,
    dir: bool,
    object_mode: u32,
    daemon: (u32, u32),
) -> (u16, u32, u32) {
    let ours = |mode: u32| (mode as u16, daemon.0, daemon.1);
    let Some(path) = path else {
        return ours(0o555);
    };
    let Ok(Resolved::InMount(mount, rel)) = cache.mounts().resolve(path) else {
        return ours(0o555);
    };
    let Some(root) = mount.ufs.local_root() else {
        let x = if dir { (object_mode & 0o444) >> 2 } else { 0 };
        return ours(object_mode | x);
    };
    match std::fs::metadata(root.join(&rel)) {
        Ok(md) => ((md.mode() & 0o555) as u16, md.uid(), md.gid()),
        Err(e) => {
            debug!(path = %path, error = %e, "source of a FUSE file cannot be stat'ed");
            ours(0)
        }
    }
}
