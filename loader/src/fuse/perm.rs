//! What the FUSE view shows as a file's owner and permission bits, so that the kernel
//! (mounted with `default_permissions`) lets other users read only what they could read at
//! the source.

use std::os::unix::fs::MetadataExt;

use loaderd_cache::mount::Resolved;
use loaderd_cache::{Cache, LogicalPath};
use loaderd_fuse::Owner;
use tracing::debug;

/// Permission bits (write bits cleared) and owner of `path`: the source file's for
/// `file://` mounts (no access when it cannot be stat'ed), `object_mode` and `daemon`'s ids
/// for object stores (directories get x where r is set), 0555 for the directories above
/// mount points.
pub fn owner_and_mode(
    cache: &Cache,
    path: &LogicalPath,
    dir: bool,
    object_mode: u32,
    daemon: (u32, u32),
) -> Owner {
    let ours = |mode: u32| Owner {
        perm: mode as u16,
        uid: daemon.0,
        gid: daemon.1,
    };
    let Ok(Resolved::InMount(mount, rel)) = cache.mounts().resolve(path) else {
        return ours(0o555);
    };
    let Some(root) = mount.ufs.local_root() else {
        return Owner::object(object_mode, dir, daemon);
    };
    match std::fs::metadata(root.join(&rel)) {
        Ok(md) => Owner {
            perm: (md.mode() & 0o555) as u16,
            uid: md.uid(),
            gid: md.gid(),
        },
        Err(e) => {
            debug!(path = %path, error = %e, "source of a FUSE file cannot be stat'ed");
            ours(0)
        }
    }
}
