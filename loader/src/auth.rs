//! Who may call what: data calls (read, list, stat, load, status, loaders) for every client
//! that reaches the API, admin calls (mount add/rm, free, invalidate) only for admins.
//!
//! On the Unix socket the caller is known from its peer credentials (`SO_PEERCRED`): uid 0,
//! the daemon's own uid and members of `server.admin_group` are admins. On TCP every request
//! must carry a token (`authorization: Bearer <token>`): the data token, or the admin token
//! for admin calls. Refusals are counted in `loaderd_requests_refused_total`.

use std::path::Path;
use std::sync::Arc;

use loaderd_cache::cluster::constant_time_eq;
use metrics::counter;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};
use tracing::warn;

use crate::config::ServerConfig;
use loaderd_proto::transport::AUTHORIZATION;

/// Shortest token accepted (as for the cluster token).
const MIN_TOKEN: usize = 16;

/// Why the access rules could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {key} {}: {source}", path.display())]
    ReadToken {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: the token must be at least {MIN_TOKEN} characters", path.display())]
    ShortToken {
        key: &'static str,
        path: std::path::PathBuf,
    },
    #[error("server.admin_group {0:?}: no such group")]
    NoGroup(String),
    #[error("server.admin_group {group:?}: {source}")]
    Group { group: String, source: nix::Error },
}

/// What a TCP token grants; put in the request's extensions by [`TcpTokenCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Data,
    Admin,
}

/// The access rules of one daemon; cheap to clone.
#[derive(Debug, Clone)]
pub struct Access {
    daemon_uid: u32,
    admin_group: Option<(String, u32)>,
    tokens: Option<Arc<Tokens>>,
}

#[derive(Debug)]
struct Tokens {
    data: String,
    admin: Option<String>,
}

fn read_token(key: &'static str, path: &Path) -> Result<String, AuthError> {
    let token = std::fs::read_to_string(path)
        .map_err(|source| AuthError::ReadToken {
            key,
            path: path.to_path_buf(),
            source,
        })?
        .trim()
        .to_string();
    if token.len() < MIN_TOKEN {
        return Err(AuthError::ShortToken {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// `name` or a numeric gid, resolved to (name, gid).
fn resolve_group(name: &str) -> Result<(String, u32), AuthError> {
    let err = |source| AuthError::Group {
        group: name.to_string(),
        source,
    };
    let group = match name.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).map_err(err)?,
        Err(_) => nix::unistd::Group::from_name(name).map_err(err)?,
    };
    match (group, name.parse::<u32>()) {
        (Some(g), _) => Ok((g.name, g.gid.as_raw())),
        // A gid without a name in /etc/group is still a gid.
        (None, Ok(gid)) => Ok((gid.to_string(), gid)),
        (None, Err(_)) => Err(AuthError::NoGroup(name.to_string())),
    }
}

/// The supplementary groups of process `pid` (`Groups:` of `/proc/PID/status`).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Counts a refused request in `loaderd_requests_refused_total{api, reason}`.
pub fn refused(api: &'static str, reason: &'static str) {
    counter!("loaderd_requests_refused_total", "api" => api, "reason" => reason).increment(1);
}

impl Default for Access {
    /// Admins are uid 0 and the daemon's uid; no TCP tokens.
    fn default() -> Self {
        Access {
            daemon_uid: nix::unistd::getuid().as_raw(),
            admin_group: None,
            tokens: None,
        }
    }
}

impl Access {
    /// The rules of `cfg`: reads the token files and resolves the admin group.
    pub fn from_config(cfg: &ServerConfig) -> Result<Self, AuthError> {
        let admin_group = cfg.admin_group.as_deref().map(resolve_group).transpose()?;
        let tokens = match &cfg.tcp_token_file {
            Some(path) => Some(Arc::new(Tokens {
                data: read_token("server.tcp_token_file", path)?,
                admin: cfg
                    .tcp_admin_token_file
                    .as_deref()
                    .map(|p| read_token("server.tcp_admin_token_file", p))
                    .transpose()?,
            })),
            None => None,
        };
        Ok(Access {
            daemon_uid: nix::unistd::getuid().as_raw(),
            admin_group,
            tokens,
        })
    }

    /// The interceptor of the TCP listener: refuses requests without a valid token.
    pub fn tcp_check(&self) -> TcpTokenCheck {
        TcpTokenCheck(self.tokens.clone())
    }

    /// Who is an admin, for error messages.
    fn rule(&self) -> String {
        let mut who = format!("uid 0, uid {}", self.daemon_uid);
        match &self.admin_group {
            Some((name, gid)) => who.push_str(&format!(", or group {name} (gid {gid})")),
            None => who.push_str(" (no server.admin_group set)"),
        }
        who
    }

    fn is_admin_user(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some((_, admin)) = self.admin_group else {
            return false;
        };
        gid == admin || pid.is_some_and(|p| groups_of(p).contains(&admin))
    }

    /// `Ok` when the caller of `req` may perform the admin call `op` (e.g. "mount add").
    pub fn require_admin<T>(&self, req: &Request<T>, op: &str) -> Result<(), Status> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            let Some(cred) = info.peer_cred else {
                refused("unix", "no_credentials");
                return Err(Status::permission_denied(format!(
                    "{op} needs an admin caller ({}); the caller's credentials are unknown",
                    self.rule()
                )));
            };
            if self.is_admin_user(cred.uid(), cred.gid(), cred.pid()) {
                return Ok(());
            }
            refused("unix", "not_admin");
            warn!(op, uid = cred.uid(), pid = ?cred.pid(), "admin call refused");
            return Err(Status::permission_denied(format!(
                "{op} needs an admin caller: {}; the caller is uid {}",
                self.rule(),
                cred.uid()
            )));
        }
        match req.extensions().get::<Role>() {
            Some(Role::Admin) => Ok(()),
            Some(Role::Data) => {
                refused("tcp", "not_admin");
                warn!(op, "admin call with the data token refused");
                Err(Status::permission_denied(format!(
                    "{op} over TCP needs the admin token (server.tcp_admin_token_file); \
                     this request carries the data token"
                )))
            }
            None => {
                refused("other", "not_admin");
                Err(Status::permission_denied(format!(
                    "{op} needs an admin caller; this connection has no known caller"
                )))
            }
        }
    }
}

/// Refuses TCP requests without the data or admin token and records the [`Role`] granted.
#[derive(Clone)]
pub struct TcpTokenCheck(Option<Arc<Tokens>>);

impl tonic::service::Interceptor for TcpTokenCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.0 else {
            refused("tcp", "no_token_configured");
            return Err(Status::unauthenticated(
                "the TCP API has no token configured (server.tcp_token_file)",
            ));
        };
        let presented = req
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            refused("tcp", "no_token");
            return Err(Status::unauthenticated(
                "the TCP API needs a token: send `authorization: Bearer <token>` \
                 (loaderctl --token-file)",
            ));
        };
        let is = |t: &str| constant_time_eq(presented.as_bytes(), t.as_bytes());
        let role = if tokens.admin.as_deref().is_some_and(is) {
            Role::Admin
        } else if is(&tokens.data) {
            Role::Data
        } else {
            refused("tcp", "wrong_token");
            return Err(Status::unauthenticated("wrong token for the TCP API"));
        };
        req.extensions_mut().insert(role);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_this_process_are_read() {
        let me = std::process::id() as i32;
        let want: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = groups_of(me);
        let mut want = want;
        got.sort_unstable();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want);
    }

    #[test]
    fn numeric_and_named_groups_resolve() {
        assert_eq!(resolve_group("0").unwrap().1, 0);
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
