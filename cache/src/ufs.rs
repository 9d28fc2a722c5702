//! Under file systems: object stores reached through `object_store`.
//!
//! A [`Ufs`] is one backend at one prefix (`s3://bucket/prefix`, `file:///data`). Every request
//! runs under a deadline and transient failures are retried here with exponential backoff
//! (the S3 client's own retry loop is turned off so there is exactly one policy to reason
//! about). Errors keep their meaning: `NotFound` stays not-found, `Precondition` means the
//! object changed under a cached version, auth failures are never retried.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig,
};
use tracing::{debug, warn};

use crate::config::UfsConfig;
use crate::error::{Error, Result};
use crate::stats;

pub(crate) mod list;
mod throttle;

pub use list::{DirListing, TreeListing};
pub use throttle::Throttle;

/// One file as the UFS describes it, relative to the mount's prefix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// Path below the mount point, `/`-separated, no leading `/`.
    pub rel: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag, or `mtime-size` where the backend has none. Part of every block id.
    pub version: String,
    /// Modification time, milliseconds since the epoch.
    pub mtime_ms: i64,
}

/// Option keys whose values are secret: accepted, never shown.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("secret") || k.contains("token") || k.contains("password")
}

/// The mount option that lets an S3 mount use the daemon's own credentials.
pub const CREDENTIALS_OPTION: &str = "credentials";

/// Where an S3 mount's credentials may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// The daemon's own: `AWS_*` environment, web identity, container or instance profile.
    /// Config-file mounts, and runtime mounts with `credentials=ambient`.
    Ambient,
    /// Only the mount's options: its own keys, or none (anonymous, unsigned requests).
    Explicit,
}

/// One backend at one prefix.
pub struct Ufs {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    uri: String,
    cfg: UfsConfig,
    local_root: Option<std::path::PathBuf>,
    /// Directories every file of a `file://` mount must resolve into (runtime mounts:
    /// `mounts.allowed_roots`), so a symlink inside cannot reach outside them.
    confine: Option<Arc<[std::path::PathBuf]>>,
    /// The daemon's cap on UFS read bandwidth (`cache.ufs.max_bandwidth`), shared by mounts.
    throttle: Option<Arc<Throttle>>,
}

impl std::fmt::Debug for Ufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ufs").field("uri", &self.uri).finish()
    }
}

impl Ufs {
    /// Opens `uri` (`s3://bucket[/prefix]` or `file:///dir`) with backend `options`.
    ///
    /// S3 options are those of `object_store` (`endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `session_token`, `allow_http`, `virtual_hosted_style_request`, ...);
    /// anything not given comes from the usual `AWS_*` environment variables.
    pub fn open(uri: &str, options: &BTreeMap<String, String>, cfg: &UfsConfig) -> Result<Self> {
        Ufs::open_with(uri, options, cfg, Credentials::Ambient)
    }

    /// Like [`Ufs::open`]; with [`Credentials::Explicit`] nothing comes from the daemon's
    /// environment or instance: the options' keys sign requests, or none do.
    pub fn open_with(
        uri: &str,
        options: &BTreeMap<String, String>,
        cfg: &UfsConfig,
        creds: Credentials,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Mount {
            path: uri.to_string(),
            reason,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("URI must look like s3://bucket/prefix or file:///dir".into()))?;
        let mut local_root = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.contains('@') || bucket.contains(':') {
                    return Err(bad(
                        "credentials or ports do not belong in the URI; use mount options".into(),
                    ));
                }
                if bucket.len() < 3 {
                    return Err(bad(format!("{bucket:?} is not a valid bucket name")));
                }
                let client = ClientOptions::new()
                    .with_timeout(cfg.timeout.0)
                    .with_connect_timeout(cfg.timeout.0.min(Duration::from_secs(5)));
                // One retry policy, ours: the client's own loop is off.
                let retry = RetryConfig {
                    max_retries: 0,
                    ..RetryConfig::default()
                };
                let base = match creds {
                    Credentials::Ambient => AmazonS3Builder::from_env(),
                    Credentials::Explicit => AmazonS3Builder::new(),
                };
                // Client options first: user options (allow_http, ...) then refine them.
                let mut b = base
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                let mut has_keys = false;
                for (k, v) in options {
                    if k == CREDENTIALS_OPTION {
                        if v != "ambient" {
                            return Err(bad(format!(
                                "option `{CREDENTIALS_OPTION}` can only be `ambient`, not {v:?}"
                            )));
                        }
                        continue;
                    }
                    let key = AmazonS3ConfigKey::from_str(k)
                        .map_err(|_| bad(format!("unknown S3 option `{k}`")))?;
                    has_keys |= matches!(
                        key,
                        AmazonS3ConfigKey::AccessKeyId | AmazonS3ConfigKey::SecretAccessKey
                    );
                    b = b.with_config(key, v);
                }
                if creds == Credentials::Explicit && !has_keys {
                    // Without keys of its own, a mount is anonymous: object_store would
                    // otherwise ask the instance metadata service for the daemon's role.
                    b = b.with_skip_signature(true);
                }
                let s3 = b.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(s3), prefix.to_string())
            }
            "file" => {
                if let Some(k) = options.keys().next() {
                    return Err(bad(format!("file:// mounts take no options (got `{k}`)")));
                }
                if !rest.starts_with('/') {
                    return Err(bad("file URIs need an absolute path: file:///dir".into()));
                }
                let dir = std::path::Path::new(rest);
                if !dir.is_dir() {
                    return Err(bad(format!("{} is not a directory", dir.display())));
                }
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
                local_root = Some(dir.to_path_buf());
                (Arc::new(fs), String::new())
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}` (use s3 or file)"
                )));
            }
        };
        Ok(Ufs {
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            uri: uri.trim_end_matches('/').to_string(),
            cfg: cfg.clone(),
            local_root,
            confine: None,
            throttle: None,
        })
    }

    /// Reads through `throttle`, the bandwidth cap shared by the daemon's mounts.
    pub fn throttled(mut self, throttle: Arc<Throttle>) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Confines a `file://` UFS to `roots` (canonical directories): files that resolve
    /// outside them (symlinks) are not listed and cannot be read.
    pub fn confine_to(mut self, roots: Vec<std::path::PathBuf>) -> Self {
        self.confine = Some(roots.into());
        self
    }

    /// Where `rel` really is when that is outside the confinement (`None`: it is inside,
    /// or there is no confinement, or it does not exist).
    fn escapes(&self, rel: &str) -> Option<std::path::PathBuf> {
        let (roots, base) = (self.confine.as_ref()?, self.local_root.as_ref()?);
        let real = std::fs::canonicalize(base.join(rel)).ok()?;
        (!roots.iter().any(|r| real.starts_with(r))).then_some(real)
    }

    fn refuse_escape(&self, rel: &str) -> Result<()> {
        match self.escapes(rel) {
            None => Ok(()),
            Some(real) => {
                warn!(uri = %self.uri_of(rel), real = %real.display(), "read outside mounts.allowed_roots refused");
                Err(Error::NotAllowed {
                    uri: self.uri_of(rel),
                    reason: format!(
                        "it resolves to {} outside mounts.allowed_roots",
                        real.display()
                    ),
                })
            }
        }
    }

    /// Wraps an existing store (fault-injection wrappers in tests).
    pub fn from_store(store: Arc<dyn ObjectStore>, uri: &str, cfg: &UfsConfig) -> Self {
        Ufs {
            store,
            prefix: ObjectPath::default(),
            uri: uri.to_string(),
            cfg: cfg.clone(),
            local_root: None,
            confine: None,
            throttle: None,
        }
    }

    /// The local directory of a `file://` mount (`None` for object stores).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// The URI this UFS was opened with (it never holds credentials).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The full URI of `rel`, for error messages.
    pub fn uri_of(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.uri.clone()
        } else {
            format!("{}/{}", self.uri, rel)
        }
    }

    fn location(&self, rel: &str) -> Result<ObjectPath> {
        let joined = if self.prefix.as_ref().is_empty() {
            rel.to_string()
        } else if rel.is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}/{}", self.prefix, rel)
        };
        ObjectPath::parse(&joined).map_err(|_| Error::InvalidPath {
            path: rel.to_string(),
            reason: "not a valid object key",
        })
    }

    fn to_meta(&self, m: ObjectMeta) -> Option<FileMeta> {
        let full = m.location.as_ref();
        let rel = if self.prefix.as_ref().is_empty() {
            full
        } else {
            full.strip_prefix(self.prefix.as_ref())?.strip_prefix('/')?
        };
        let mtime_ms = m.last_modified.timestamp_millis();
        Some(FileMeta {
            rel: rel.to_string(),
            size: m.size,
            version: m
                .e_tag
                .unwrap_or_else(|| format!("{mtime_ms:x}-{:x}", m.size)),
            mtime_ms,
        })
    }

    /// HEAD of one object.
    pub async fn head(&self, rel: &str) -> Result<FileMeta> {
        self.refuse_escape(rel)?;
        let loc = self.location(rel)?;
        let meta = self.retrying("head", rel, || self.store.head(&loc)).await?;
        stats::ufs_head();
        self.to_meta(meta).ok_or_else(|| Error::NotFound {
            path: rel.to_string(),
            uri: self.uri_of(rel),
        })
    }

    /// Bytes `range` of `file`, only if the object still has `file.version`.
    pub async fn get_range(&self, file: &FileMeta, range: Range<u64>) -> Result<Bytes> {
        self.refuse_escape(&file.rel)?;
        let loc = self.location(&file.rel)?;
        // Only ETags can be checked by the backend; `mtime-size` versions are checked below.
        let etag = (!is_synthetic_version(&file.version)).then(|| file.version.clone());
        let want = range.end - range.start;
        if let Some(throttle) = &self.throttle {
            throttle.pass(want).await;
        }
        let res = self
            .retrying("get", &file.rel, || async {
                let opts = GetOptions {
                    if_match: etag.clone(),
                    range: Some(GetRange::Bounded(range.clone())),
                    ..GetOptions::default()
                };
                let got = self.store.get_opts(&loc, opts).await?;
                if etag.is_none()
                    && self.to_meta(got.meta.clone()).map(|m| m.version)
                        != Some(file.version.clone())
                {
                    return Err(object_store::Error::Precondition {
                        path: file.rel.clone(),
                        source: "modification time or size changed".into(),
                    });
                }
                got.bytes().await
            })
            .await;
        let bytes = match res {
            Err(Error::Ufs {
                source: object_store::Error::Precondition { .. },
                ..
            }) => {
                return Err(Error::Changed {
                    path: self.uri_of(&file.rel),
                });
            }
            other => other?,
        };
        if bytes.len() as u64 != want {
            // A short read means the object shrank: treat it as changed, never as data.
            return Err(Error::Changed {
                path: self.uri_of(&file.rel),
            });
        }
        stats::ufs_get(want);
        Ok(bytes)
    }

    /// Runs `op` under the deadline, retrying transient failures with backoff.
    async fn retrying<T, F, Fut>(&self, what: &'static str, rel: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut backoff = self.cfg.initial_backoff.0;
        let mut attempt = 0u32;
        loop {
            let err = match tokio::time::timeout(self.cfg.timeout.0, op()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => classify(e, &self.uri_of(rel), rel),
                Err(_) => Error::UfsTimeout {
                    uri: self.uri_of(rel),
                    secs: self.cfg.timeout.0.as_secs_f64(),
                },
            };
            let transient = match &err {
                Error::UfsTimeout { .. } => true,
                Error::Ufs { source, .. } => is_transient(source),
                _ => false,
            };
            if !transient || attempt >= self.cfg.retries {
                if transient {
                    stats::ufs_error();
                    warn!(uri = %self.uri_of(rel), op = what, attempts = attempt + 1, error = %err, "UFS request failed");
                }
                return Err(err);
            }
            attempt += 1;
            stats::ufs_retry();
            debug!(uri = %self.uri_of(rel), op = what, attempt, error = %err, "retrying UFS request");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.cfg.max_backoff.0);
        }
    }
}

/// Whether `version` was made up from mtime and size (the backend gave no ETag).
fn is_synthetic_version(version: &str) -> bool {
    // ETags from S3 are quoted; object_store's local ETags are `inode-mtime-size` in hex and
    // are checked by the backend itself, so only our own fallback needs the manual check.
    version.matches('-').count() == 1
        && !version.starts_with('"')
        && version
            .split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn classify(e: object_store::Error, uri: &str, rel: &str) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound {
            path: rel.to_string(),
            uri: uri.to_string(),
        },
        source => Error::Ufs {
            uri: uri.to_string(),
            source,
        },
    }
}

fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } | E::JoinError { .. } => true,
        E::NotFound { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => false,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_roundtrip_and_change_detection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x.bin"), b"0123456789").unwrap();
        let uri = format!("file://{}", dir.path().display());
        let ufs = Ufs::open(&uri, &BTreeMap::new(), &UfsConfig::default()).unwrap();
        let files = ufs.list_tree("").await.unwrap().files;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rel, "a/x.bin");
        let got = ufs.get_range(&files[0], 2..5).await.unwrap();
        assert_eq!(&got[..], b"234");
        assert!(matches!(
            ufs.head("a/nope").await,
            Err(Error::NotFound { .. })
        ));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("a/x.bin"), b"abcdefghijklmnop").unwrap();
        assert!(matches!(
            ufs.get_range(&files[0], 0..4).await,
            Err(Error::Changed { .. })
        ));
    }

    #[test]
    fn refuses_bad_uris() {
        let cfg = UfsConfig::default();
        for uri in [
            "bucket/x",
            "gs://b/x",
            "s3://ab",
            "s3://key:secret@bucket/x",
            "file://rel",
        ] {
            assert!(Ufs::open(uri, &BTreeMap::new(), &cfg).is_err(), "{uri}");
        }
        let mut opts = BTreeMap::new();
        opts.insert("no_such_option".to_string(), "1".to_string());
        let err = Ufs::open("s3://bucket/x", &opts, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_option"), "{err}");
    }
}
