//! Connecting to a daemon over its Unix socket (or TCP).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use loaderd_proto::v1 as pb;
use loaderd_proto::v1::loader_client::LoaderClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use loaderd_proto::transport::{
    AUTHORIZATION, CONNECTION_WINDOW, MAX_FRAME, MAX_GRPC_MESSAGE, STREAM_WINDOW,
};

/// A client of the `Loader` service.
pub type Client = LoaderClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every request (TCP); nothing on the Unix socket,
/// where the daemon knows the caller from its credentials.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The token in `path` (surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Self, ConnectError> {
        let err = |reason: String| ConnectError::Token {
            path: path.to_path_buf(),
            reason,
        };
        let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| err("the token is not printable ASCII".into()))?;
        Ok(BearerToken(Some(value)))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach loaderd at {}: {source} (is the daemon running? set --socket or LOADERD_SOCKET)",
        socket.display()
    )]
    Unix {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("permission denied on loaderd's socket {}: {access}", socket.display())]
    PermissionDenied { socket: PathBuf, access: String },
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: String },
    #[error("cannot reach loaderd at {addr}: {source}")]
    Tcp {
        addr: String,
        source: tonic::transport::Error,
    },
}

fn endpoint(uri: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::try_from(uri.to_string())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true))
}

fn tune(channel: Channel, token: BearerToken) -> Client {
    LoaderClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE)
}

/// Connects over the Unix socket at `socket`.
pub async fn connect_unix(socket: &Path) -> Result<Client, ConnectError> {
    let path = socket.to_path_buf();
    let err = |source| ConnectError::Unix {
        socket: socket.to_path_buf(),
        source,
    };
    // The URI is required by the HTTP/2 layer but unused: the connector dials the socket.
    let channel = endpoint("http://loaderd.sock")
        .map_err(err)?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            if is_permission_denied(&e) {
                ConnectError::PermissionDenied {
                    socket: socket.to_path_buf(),
                    access: who_may_connect(socket),
                }
            } else {
                err(e)
            }
        })?;
    Ok(tune(channel, BearerToken::default()))
}

fn is_permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Who may connect to `socket`, from its owner, group and mode, for a caller who may not.
fn who_may_connect(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(e) => {
            return format!(
                "cannot even look at it ({e}): a directory above it is closed to this user"
            );
        }
    };
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| format!("gid {}", meta.gid()), |g| g.name);
    format!(
        "it is mode {:04o}, owner {user}, group {group}: run loaderctl as {user} or as a member \
         of group {group} (an admin adds you with `usermod -aG {group} USER`; log in again \
         after), or start the daemon with another --socket-group",
        meta.mode() & 0o7777
    )
}

/// Connects over TCP to `addr` (`host:port` or `http://host:port`), sending `token` with
/// every request.
pub async fn connect_tcp(addr: &str, token: BearerToken) -> Result<Client, ConnectError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let err = |source| ConnectError::Tcp {
        addr: addr.to_string(),
        source,
    };
    let channel = endpoint(&uri).map_err(err)?.connect().await.map_err(err)?;
    Ok(tune(channel, token))
}

/// Every entry of the listing of `path` (with `recursive`, every file below it), in path
/// order, gathered from the pages the daemon streams.
pub async fn list_all(
    c: &mut Client,
    path: &str,
    recursive: bool,
) -> Result<Vec<pb::FileInfo>, tonic::Status> {
    let mut pages = c
        .list(pb::ListRequest {
            path: path.to_string(),
            recursive,
            page_size: 0,
            with_mode: false,
        })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(page) = pages.message().await? {
        entries.extend(page.entries);
    }
    Ok(entries)
}

/// A cached read of `length` bytes (0: to the end) of `path` from `offset`, of object
/// version `version` only (empty: the current one): how the pieces of a shared-memory read
/// that are not in the daemon's memory are read, pinned to the version of the others.
pub fn pinned_read(path: &str, offset: u64, length: u64, version: &str) -> pb::ReadRequest {
    pb::ReadRequest {
        path: path.to_string(),
        offset,
        length,
        read_type: pb::ReadType::Cache as i32,
        version: version.to_string(),
    }
}
