//! The daemon's Unix socket files: their directory (0750), a stale socket left by a crashed
//! daemon replaced (a live one refused), mode 0660 and the configured group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tracing::warn;

/// Binds the Unix socket with mode 0660 (and the configured group), replacing a stale one.
pub fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    prepare_socket_path(path, group)?;
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding Unix socket {} (server.socket)", path.display()))?;
    restrict_socket(path, group)?;
    Ok(listener)
}

/// Creates the socket's directory (0750) and removes a stale socket left by a crashed daemon;
/// refuses a socket that another live daemon answers on.
pub fn prepare_socket_path(path: &Path, group: Option<&str>) -> anyhow::Result<()> {
    let dir = socket_dir(path);
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))?;
        if let Some(g) = group {
            nix::unistd::chown(&dir, None, Some(lookup_group(g)?))
                .with_context(|| format!("giving {} to group {g}", dir.display()))?;
        }
    }
    if path.exists() {
        let live = std::os::unix::net::UnixStream::connect(path).is_ok()
            || loaderd_proto::transport::connect_to(path).is_ok();
        if live {
            bail!(
                "another loaderd is serving {}; stop it or choose another socket",
                path.display()
            );
        }
        warn!(socket = %path.display(), "removing stale socket from an earlier run");
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Mode 0660 and the configured group on a bound socket.
pub fn restrict_socket(path: &Path, group: Option<&str>) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(lookup_group(g)?))
            .with_context(|| format!("giving {} to group {g}", path.display()))?;
    }
    Ok(())
}

fn socket_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn lookup_group(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    Ok(nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name:?} (server.socket_group)"))?
        .with_context(|| format!("no such group {name:?} (server.socket_group)"))?
        .gid)
}
