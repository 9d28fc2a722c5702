//! The mount table: logical mount points of the unified namespace mapped to UFS URIs.
//!
//! Mount points never nest (neither is a prefix of another), so resolving a path is one
//! longest-prefix lookup with a single answer. Paths above mount points are synthetic
//! directories whose children are the next segments of the mount points below them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::UfsConfig;
use crate::error::{Error, Result};
use crate::path::LogicalPath;
use crate::ufs::{CREDENTIALS_OPTION, Credentials, Throttle, Ufs, is_secret_option};

/// A mount as written in the config file or sent by `loaderctl mount add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Logical mount point, e.g. `/imagenet`.
    pub path: String,
    /// UFS URI, e.g. `s3://bucket/prefix` or `file:///data`.
    pub uri: String,
    /// Backend options (S3: `endpoint`, `region`, `allow_http`, credentials, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl MountSpec {
    /// The options with secret values replaced, safe to log or return.
    pub fn redacted_options(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_option(k) {
                    "<redacted>".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// What mounts added at run time (`loaderctl mount add`) may reach (`[mounts]`). Mounts of
/// the config file and flags are the operator's and are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeMountPolicy {
    /// Directories a runtime `file://` mount must lie in (after resolving symlinks); empty:
    /// no runtime `file://` mounts.
    pub allowed_roots: Vec<std::path::PathBuf>,
    /// Endpoints (`http://host:port`) a runtime S3 mount may name in `endpoint` (or any
    /// other URL option); empty: none, only the default AWS endpoint.
    pub allowed_endpoints: Vec<String>,
}

/// S3 options naming a URL the daemon would send requests to.
fn is_url_option(key: &str) -> bool {
    use object_store::ClientConfigKey as C;
    use object_store::aws::AmazonS3ConfigKey as K;
    use std::str::FromStr;
    matches!(
        K::from_str(key),
        Ok(K::Endpoint
            | K::S3Endpoint
            | K::MetadataEndpoint
            | K::StsEndpoint
            | K::ContainerCredentialsFullUri
            | K::Client(C::ProxyUrl))
    )
}

impl RuntimeMountPolicy {
    /// The allowed roots that exist, with symlinks resolved.
    pub fn canonical_roots(&self) -> Vec<std::path::PathBuf> {
        self.allowed_roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect()
    }

    /// Checks a runtime mount: the spec to mount (a `file://` URI resolved to its real
    /// directory) and where its credentials may come from.
    pub fn check(&self, mut spec: MountSpec) -> Result<(MountSpec, Credentials)> {
        let refuse = |uri: &str, reason: String| Error::NotAllowed {
            uri: uri.to_string(),
            reason,
        };
        if let Some(dir) = spec.uri.strip_prefix("file://") {
            if self.allowed_roots.is_empty() {
                return Err(refuse(
                    &spec.uri,
                    "runtime file:// mounts are off (mounts.allowed_roots is empty)".into(),
                ));
            }
            let real = std::fs::canonicalize(dir).map_err(|e| Error::Mount {
                path: spec.uri.clone(),
                reason: format!("cannot resolve {dir}: {e}"),
            })?;
            let inside = self
                .canonical_roots()
                .iter()
                .any(|root| real.starts_with(root));
            if !inside {
                let roots: Vec<String> = self
                    .allowed_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect();
                return Err(refuse(
                    &spec.uri,
                    format!(
                        "{} is not under mounts.allowed_roots ({})",
                        real.display(),
                        roots.join(", ")
                    ),
                ));
            }
            spec.uri = format!("file://{}", real.display());
            return Ok((spec, Credentials::Explicit));
        }
        for (key, value) in &spec.options {
            let allowed = |v: &str| {
                let v = v.trim_end_matches('/');
                self.allowed_endpoints
                    .iter()
                    .any(|e| e.trim_end_matches('/').eq_ignore_ascii_case(v))
            };
            if is_url_option(key) && !allowed(value) {
                return Err(refuse(
                    &spec.uri,
                    format!(
                        "option `{key}` = {value:?} is not in mounts.allowed_endpoints ({})",
                        if self.allowed_endpoints.is_empty() {
                            "empty: only the default AWS endpoint".to_string()
                        } else {
                            self.allowed_endpoints.join(", ")
                        }
                    ),
                ));
            }
        }
        let creds = match spec.options.get(CREDENTIALS_OPTION).map(String::as_str) {
            Some("ambient") => Credentials::Ambient,
            _ => Credentials::Explicit,
        };
        Ok((spec, creds))
    }
}

/// A live mount.
#[derive(Debug)]
pub struct Mount {
    /// Where it appears in the namespace.
    pub point: LogicalPath,
    /// The spec it was made from (holds secrets: show only `redacted_options`).
    pub spec: MountSpec,
    /// The backend.
    pub ufs: Ufs,
}

/// What a logical path refers to.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A path inside a mount: the mount and the path relative to its root ("" for the root).
    InMount(Arc<Mount>, String),
    /// A directory above one or more mount points, with its child names.
    Virtual(BTreeSet<String>),
}

/// All mounts of one daemon.
#[derive(Debug, Default)]
pub struct MountTable {
    mounts: RwLock<BTreeMap<LogicalPath, Arc<Mount>>>,
    /// The UFS bandwidth cap all mounts share, made at the first mount.
    throttle: OnceLock<Option<Arc<Throttle>>>,
}

impl MountTable {
    /// Adds a mount, refusing duplicates and nesting.
    pub fn add(&self, spec: MountSpec, ufs_cfg: &UfsConfig) -> Result<Arc<Mount>> {
        self.add_with(spec, ufs_cfg, Credentials::Ambient, None)
    }

    /// Adds a mount asked for at run time, if `policy` allows it.
    pub fn add_runtime(
        &self,
        spec: MountSpec,
        ufs_cfg: &UfsConfig,
        policy: &RuntimeMountPolicy,
    ) -> Result<Arc<Mount>> {
        let (spec, creds) = policy.check(spec)?;
        let confine = spec
            .uri
            .starts_with("file://")
            .then(|| policy.canonical_roots());
        self.add_with(spec, ufs_cfg, creds, confine)
    }

    fn add_with(
        &self,
        spec: MountSpec,
        ufs_cfg: &UfsConfig,
        creds: Credentials,
        confine: Option<Vec<std::path::PathBuf>>,
    ) -> Result<Arc<Mount>> {
        let point = LogicalPath::parse(&spec.path)?;
        let err = |reason: String| Error::Mount {
            path: point.to_string(),
            reason,
        };
        {
            let mounts = self.read();
            for existing in mounts.keys() {
                if existing == &point {
                    return Err(err("already mounted".into()));
                }
                if point.strip_prefix(existing).is_some() || existing.strip_prefix(&point).is_some()
                {
                    return Err(err(format!("overlaps the mount at {existing}")));
                }
            }
        }
        let mut ufs = Ufs::open_with(&spec.uri, &spec.options, ufs_cfg, creds)?;
        if let Some(roots) = confine {
            ufs = ufs.confine_to(roots);
        }
        let throttle = self
            .throttle
            .get_or_init(|| Throttle::new(ufs_cfg.max_bandwidth.0).map(Arc::new));
        if let Some(t) = throttle {
            ufs = ufs.throttled(t.clone());
        }
        let mount = Arc::new(Mount {
            point: point.clone(),
            spec,
            ufs,
        });
        let mut mounts = self.write();
        if mounts
            .keys()
            .any(|e| point.strip_prefix(e).is_some() || e.strip_prefix(&point).is_some())
        {
            return Err(err("a concurrent mount took this point".into()));
        }
        mounts.insert(point, mount.clone());
        Ok(mount)
    }

    /// Adds an already-built mount (tests wrap stores in fault injectors this way).
    pub fn insert(&self, mount: Mount) -> Arc<Mount> {
        let m = Arc::new(mount);
        self.write().insert(m.point.clone(), m.clone());
        m
    }

    /// Removes the mount at exactly `path`.
    pub fn remove(&self, path: &LogicalPath) -> Result<Arc<Mount>> {
        self.write().remove(path).ok_or_else(|| Error::Mount {
            path: path.to_string(),
            reason: "no mount at this path".into(),
        })
    }

    /// Every mount, by mount point.
    pub fn list(&self) -> Vec<Arc<Mount>> {
        self.read().values().cloned().collect()
    }

    /// Finds what `path` refers to.
    pub fn resolve(&self, path: &LogicalPath) -> Result<Resolved> {
        let mounts = self.read();
        // The only candidate mount is the greatest key <= path that is a segment prefix.
        if let Some((point, mount)) = mounts.range(..=path.clone()).next_back()
            && let Some(rel) = path.strip_prefix(point)
        {
            return Ok(Resolved::InMount(mount.clone(), rel.to_string()));
        }
        let mut children = BTreeSet::new();
        for point in mounts.keys() {
            if let Some(rest) = point.strip_prefix(path)
                && let Some(first) = rest.split('/').next().filter(|s| !s.is_empty())
            {
                children.insert(first.to_string());
            }
        }
        if children.is_empty() && !path.is_root() {
            return Err(Error::NoMount {
                path: path.to_string(),
            });
        }
        Ok(Resolved::Virtual(children))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<LogicalPath, Arc<Mount>>> {
        crate::sync::read(&self.mounts)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<LogicalPath, Arc<Mount>>> {
        crate::sync::write(&self.mounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, dir: &std::path::Path) -> MountSpec {
        MountSpec {
            path: path.into(),
            uri: format!("file://{}", dir.display()),
            options: BTreeMap::new(),
        }
    }

    #[test]
    fn resolves_longest_prefix_and_virtual_dirs() {
        let d = tempfile::tempdir().unwrap();
        let t = MountTable::default();
        let cfg = UfsConfig::default();
        t.add(spec("/data/a", d.path()), &cfg).unwrap();
        t.add(spec("/data/b", d.path()), &cfg).unwrap();
        t.add(spec("/x", d.path()), &cfg).unwrap();
        match t
            .resolve(&LogicalPath::parse("/data/a/k/v.jpg").unwrap())
            .unwrap()
        {
            Resolved::InMount(m, rel) => {
                assert_eq!(m.point.as_str(), "/data/a");
                assert_eq!(rel, "k/v.jpg");
            }
            other => panic!("{other:?}"),
        }
        match t.resolve(&LogicalPath::parse("/data").unwrap()).unwrap() {
            Resolved::Virtual(c) => assert_eq!(c.into_iter().collect::<Vec<_>>(), ["a", "b"]),
            other => panic!("{other:?}"),
        }
        match t.resolve(&LogicalPath::root()).unwrap() {
            Resolved::Virtual(c) => assert_eq!(c.into_iter().collect::<Vec<_>>(), ["data", "x"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.resolve(&LogicalPath::parse("/data/ab").unwrap()),
            Err(Error::NoMount { .. })
        ));
    }

    #[test]
    fn refuses_nesting_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let t = MountTable::default();
        let cfg = UfsConfig::default();
        t.add(spec("/data", d.path()), &cfg).unwrap();
        assert!(t.add(spec("/data", d.path()), &cfg).is_err());
        assert!(t.add(spec("/data/x", d.path()), &cfg).is_err());
        assert!(t.add(spec("/", d.path()), &cfg).is_err());
        t.remove(&LogicalPath::parse("/data").unwrap()).unwrap();
        t.add(spec("/data/x", d.path()), &cfg).unwrap();
    }

    #[test]
    fn redacts_secrets() {
        let mut s = spec("/s", std::path::Path::new("/"));
        s.options
            .insert("secret_access_key".into(), "hunter2".into());
        s.options.insert("region".into(), "us-east-1".into());
        let r = s.redacted_options();
        assert_eq!(r["secret_access_key"], "<redacted>");
        assert_eq!(r["region"], "us-east-1");
    }
}
