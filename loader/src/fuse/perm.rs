//! What the FUSE view shows as a file's owner and permission bits, so that the kernel
//! (mounted with `default_permissions`) lets other users read only what they could read at
//! the source. The gRPC API answers the same (`FileInfo.mode`) for the thin front.

use std::os::unix::fs::MetadataExt;

use loaderd_cache::mount::Resolved;
use loaderd_cache::{Cache, LogicalPath};
use loaderd_fuse::Owner;
use tracing::debug;

/// The owner and bits the source gives `path`: the source file's for `file://` mounts
/// (write bits cleared; no access when it cannot be stat'ed, owned by `daemon`), `None`
/// where the source has none (object stores, the directories above mount points).
pub fn source_owner(cache: &Cache, path: &LogicalPath, daemon: (u32, u32)) -> Option<Owner> {
    let Ok(Resolved::InMount(mount, rel)) = cache.mounts().resolve(path) else {
        return None;
    };
    let root = mount.ufs.local_root()?;
    Some(match std::fs::metadata(root.join(&rel)) {
        Ok(md) => Owner {
            perm: (md.mode() & 0o555) as u16,
            uid: md.uid(),
            gid: md.gid(),
        },
        Err(e) => {
            debug!(path = %path, error = %e, "source of a FUSE file cannot be stat'ed");
            Owner {
                perm: 0,
                uid: daemon.0,
                gid: daemon.1,
            }
        }
    })
}

/// Permission bits (write bits cleared) and owner of `path`: the source's
/// ([`source_owner`]) for `file://` mounts, `object_mode` and `daemon`'s ids for object
/// stores (directories get x where r is set), 0555 for the directories above mount points.
pub fn owner_and_mode(
    cache: &Cache,
    path: &LogicalPath,
    dir: bool,
    object_mode: u32,
    daemon: (u32, u32),
) -> Owner {
    if let Some(owner) = source_owner(cache, path, daemon) {
        return owner;
    }
    match cache.mounts().resolve(path) {
        Ok(Resolved::InMount(..)) => Owner::object(object_mode, dir, daemon),
        _ => Owner::object(0o555, dir, daemon),
    }
}
