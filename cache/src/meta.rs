//! Metadata: stat and list answers, cached, and persisted dataset manifests.
//!
//! On object stores LIST and HEAD requests cost more than the bytes of a small file, so a
//! mount is LISTed once (recursively, all pages) into a *manifest* of (path, size, version,
//! mtime) that answers every stat and list under it. The manifest is written to the SSD
//! tier's directory and reused after a restart while younger than the TTL; opening a file then
//! costs no request at all. Datasets are immutable by convention, so the TTL is long; `Invalidate`
//! drops a manifest explicitly. A read that finds the object changed refreshes that one entry.
//!
//! With manifests off, stat and one-level list answers are cached per path for the TTL.
//! Either way, the estimated memory of all metadata stays under `metadata.max_bytes`.
//!
//! Directories are those the source has (see [`crate::ufs`]'s listing): a manifest keeps every
//! directory, empty ones and directory markers included, not only those implied by a file;
//! a name that is a directory is never also a file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::MetadataConfig;
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::mount::Mount;
use crate::sync::lock;
use crate::ufs::list::add_parents;
use crate::ufs::{DirListing, FileMeta};

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    File(FileMeta),
    Dir,
}

/// One child in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub stat: Stat,
}

/// A mount's complete listing.
#[derive(Debug)]
struct Manifest {
    created: SystemTime,
    files: BTreeMap<String, FileMeta>,
    /// Every directory below the root: those the source lists (empty ones too) and every
    /// parent of a file. No file has the path of one.
    dirs: BTreeSet<String>,
    bytes: u64,
}

impl Manifest {
    fn new(
        created: SystemTime,
        files: impl IntoIterator<Item = FileMeta>,
        dirs: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut files: BTreeMap<_, _> = files.into_iter().map(|f| (f.rel.clone(), f)).collect();
        let mut dirs: BTreeSet<String> = dirs.into_iter().collect();
        let listed: Vec<String> = dirs.iter().cloned().collect();
        for path in files.keys().chain(&listed) {
            add_parents(&mut dirs, path, "");
        }
        // A directory wins over a file of the same name (the UFS listing already hid it).
        files.retain(|rel, _| !dirs.contains(rel));
        let bytes = files.values().map(entry_bytes).sum::<u64>()
            + dirs.iter().map(|d| d.len() as u64 + 64).sum::<u64>();
        Manifest {
            created,
            files,
            dirs,
            bytes,
        }
    }

    fn fresh(&self, ttl: Duration) -> bool {
        self.created.elapsed().map(|age| age < ttl).unwrap_or(true)
    }

    fn stat(&self, rel: &str) -> Option<Stat> {
        if rel.is_empty() || self.dirs.contains(rel) {
            return Some(Stat::Dir);
        }
        self.files.get(rel).map(|f| Stat::File(f.clone()))
    }

    fn list(&self, rel: &str) -> Vec<DirEntry> {
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let mut out: Vec<DirEntry> = self
            .dirs
            .range(prefix.clone()..)
            .map_while(|d| d.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(|name| DirEntry {
                name: name.to_string(),
                stat: Stat::Dir,
            })
            .collect();
        let mut from = prefix.clone();
        while let Some((key, meta)) = self.files.range(from.clone()..).next() {
            let Some(rest) = key.strip_prefix(&prefix) else {
                break;
            };
            match rest.split_once('/') {
                None => {
                    out.push(DirEntry {
                        name: rest.to_string(),
                        stat: Stat::File(meta.clone()),
                    });
                    from = format!("{key}\0");
                }
                // A sub-directory's files (the directory itself came from `dirs`): '0'
                // follows '/', so this skips every key below it in one step.
                Some((child, _)) => from = format!("{prefix}{child}0"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn walk(&self, rel: &str) -> Vec<FileMeta> {
        if let Some(f) = self.files.get(rel) {
            return vec![f.clone()];
        }
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        self.files
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn entry_bytes(f: &FileMeta) -> u64 {
    // Key and value strings plus map/node overhead.
    (2 * f.rel.len() + f.version.len() + 96) as u64
}

/// A manifest load's outcome, shared by everyone who waited for it.
type Loaded = std::result::Result<Arc<Manifest>, Arc<Error>>;

#[derive(Default)]
struct MountMeta {
    /// The manifest load in flight: one LIST per mount, its result or error shared by every
    /// reader that arrives meanwhile (a hung store costs each of them one timeout, not one
    /// per reader queued ahead).
    load: InFlight<(), Loaded>,
    manifest: Mutex<Option<(Arc<Manifest>, Instant)>>,
    /// Per-path answers when manifests are off: stat and list results with their time.
    stats: Mutex<HashMap<String, (Instant, Option<Stat>)>>,
    lists: Mutex<HashMap<String, (Instant, Vec<DirEntry>)>>,
}

/// The metadata cache of all mounts.
pub struct Metadata {
    cfg: MetadataConfig,
    dir: Option<PathBuf>,
    mounts: Mutex<HashMap<String, Arc<MountMeta>>>,
}

impl Metadata {
    /// Manifests persist under `dir` (the SSD tier's directory) when given.
    pub fn new(cfg: MetadataConfig, dir: Option<PathBuf>) -> Self {
        Metadata {
            cfg,
            dir: dir.map(|d| d.join("manifests")),
            mounts: Mutex::new(HashMap::new()),
        }
    }

    fn mount_meta(&self, mount: &Mount) -> Arc<MountMeta> {
        lock(&self.mounts)
            .entry(mount.ufs.uri().to_string())
            .or_default()
            .clone()
    }

    /// What `rel` is in `mount`.
    pub async fn stat(&self, mount: &Arc<Mount>, rel: &str) -> Result<Stat> {
        let not_found = || Error::NotFound {
            path: format!("{}/{}", mount.point.as_str().trim_end_matches('/'), rel),
            uri: mount.ufs.uri_of(rel),
        };
        if self.cfg.manifest {
            return self.manifest(mount).await?.stat(rel).ok_or_else(not_found);
        }
        let mm = self.mount_meta(mount);
        if let Some((at, s)) = lock(&mm.stats).get(rel)
            && at.elapsed() < self.cfg.ttl.0
        {
            return s.clone().ok_or_else(not_found);
        }
        let stat = if rel.is_empty() {
            Some(Stat::Dir)
        } else if mount.ufs.local_root().is_some() {
            // On disk a name is a file or a directory, never both.
            match mount.ufs.head(rel).await {
                Ok(f) => Some(Stat::File(f)),
                Err(Error::NotFound { .. }) => {
                    mount.ufs.list_dir(rel).await?.exists.then_some(Stat::Dir)
                }
                Err(e) => return Err(e),
            }
        } else {
            // An object store may hold a file `rel` and objects below `rel/` (or a marker
            // `rel/`): ask both at once; the directory wins, as in listings.
            let (head, dir) = tokio::join!(mount.ufs.head(rel), mount.ufs.list_dir(rel));
            if dir?.exists {
                Some(Stat::Dir)
            } else {
                match head {
                    Ok(f) => Some(Stat::File(f)),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        self.remember(&mm.stats, rel, stat.clone());
        stat.ok_or_else(not_found)
    }

    /// The children of directory `rel`.
    pub async fn list(&self, mount: &Arc<Mount>, rel: &str) -> Result<Vec<DirEntry>> {
        if self.cfg.manifest {
            return Ok(self.manifest(mount).await?.list(rel));
        }
        let mm = self.mount_meta(mount);
        if let Some((at, l)) = lock(&mm.lists).get(rel)
            && at.elapsed() < self.cfg.ttl.0
        {
            return Ok(l.clone());
        }
        let DirListing { files, dirs, .. } = mount.ufs.list_dir(rel).await?;
        let mut out: Vec<DirEntry> = dirs
            .into_iter()
            .map(|name| DirEntry {
                name,
                stat: Stat::Dir,
            })
            .chain(files.into_iter().map(|f| DirEntry {
                name: f.rel.rsplit('/').next().unwrap_or(&f.rel).to_string(),
                stat: Stat::File(f),
            }))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.remember(&mm.lists, rel, out.clone());
        Ok(out)
    }

    /// Every file at or below `rel`.
    pub async fn walk(&self, mount: &Arc<Mount>, rel: &str) -> Result<Vec<FileMeta>> {
        if self.cfg.manifest {
            return Ok(self.manifest(mount).await?.walk(rel));
        }
        if let Stat::File(f) = self.stat(mount, rel).await? {
            return Ok(vec![f]);
        }
        let mut files = mount.ufs.list_tree(rel).await?.files;
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(files)
    }

    /// Replaces the cached answer for one file after the UFS showed it changed.
    pub async fn refresh_file(&self, mount: &Mount, rel: &str) -> Result<Option<FileMeta>> {
        let fresh = match mount.ufs.head(rel).await {
            Ok(f) => Some(f),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let mm = self.mount_meta(mount);
        let mut slot = lock(&mm.manifest);
        if let Some((m, used)) = slot.as_ref() {
            let mut files = m.files.clone();
            match &fresh {
                Some(f) => files.insert(rel.to_string(), f.clone()),
                None => files.remove(rel),
            };
            *slot = Some((
                Arc::new(Manifest::new(
                    m.created,
                    files.into_values(),
                    m.dirs.iter().cloned(),
                )),
                *used,
            ));
        }
        drop(slot);
        lock(&mm.stats).insert(
            rel.to_string(),
            (Instant::now(), fresh.clone().map(Stat::File)),
        );
        Ok(fresh)
    }

    /// Forgets everything cached about `rel` and below (a mount's root drops its manifest,
    /// on disk too). Returns the number of entries dropped.
    pub fn invalidate(&self, mount: &Mount, rel: &str) -> u64 {
        let mm = self.mount_meta(mount);
        let mut dropped = 0u64;
        if let Some((m, _)) = lock(&mm.manifest).take() {
            // Any invalidation under a mount drops its manifest: it is one listing.
            dropped += (m.files.len() + m.dirs.len()) as u64;
        }
        if let Some(path) = self.manifest_path(mount) {
            let _ = std::fs::remove_file(path);
        }
        let under = |k: &String| rel.is_empty() || k == rel || k.starts_with(&format!("{rel}/"));
        {
            let map = &mm.stats;
            let mut m = lock(map);
            let before = m.len();
            m.retain(|k, _| !under(k));
            dropped += (before - m.len()) as u64;
        }
        let mut l = lock(&mm.lists);
        let before = l.len();
        l.retain(|k, _| !under(k) && !rel.starts_with(k.as_str()));
        dropped += (before - l.len()) as u64;
        dropped
    }

    /// (entries, estimated bytes) held in memory.
    pub fn usage(&self) -> (u64, u64) {
        let mounts: Vec<_> = lock(&self.mounts).values().cloned().collect();
        let mut entries = 0;
        let mut bytes = 0;
        for mm in mounts {
            if let Some((m, _)) = lock(&mm.manifest).as_ref() {
                entries += (m.files.len() + m.dirs.len()) as u64;
                bytes += m.bytes;
            }
            let s = lock(&mm.stats);
            entries += s.len() as u64;
            bytes += s.keys().map(|k| k.len() as u64 + 160).sum::<u64>();
            let l = lock(&mm.lists);
            entries += l.len() as u64;
            bytes += l
                .values()
                .map(|(_, v)| v.iter().map(|e| e.name.len() as u64 + 160).sum::<u64>())
                .sum::<u64>();
        }
        (entries, bytes)
    }

    fn remember<V>(&self, map: &Mutex<HashMap<String, (Instant, V)>>, rel: &str, v: V) {
        let (_, bytes) = self.usage();
        let mut m = lock(map);
        if bytes > self.cfg.max_bytes.0 {
            // Over budget: start this cache over rather than grow.
            m.clear();
        }
        m.insert(rel.to_string(), (Instant::now(), v));
    }

    fn manifest_path(&self, mount: &Mount) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!(
            "{:016x}.manifest",
            xxh3_64(mount.ufs.uri().as_bytes())
        )))
    }

    /// The mount's manifest: in memory, else from disk, else LISTed from the UFS (one load
    /// per mount at a time, shared by all who ask meanwhile).
    async fn manifest(&self, mount: &Arc<Mount>) -> Result<Arc<Manifest>> {
        let mm = self.mount_meta(mount);
        let ttl = self.cfg.ttl.0;
        if let Some(m) = mm.fresh_manifest(ttl) {
            return Ok(m);
        }
        let start = {
            let (mm, mount, path) = (mm.clone(), mount.clone(), self.manifest_path(mount));
            // Started under the flight's lock, after any earlier flight landed: a manifest it
            // stored is found here instead of LISTing again.
            move || async move {
                match mm.fresh_manifest(ttl) {
                    Some(m) => Ok(m),
                    None => load_manifest(&mount, path, ttl).await.map(Arc::new),
                }
                .map_err(Arc::new)
            }
        };
        let land = |loaded: Loaded| {
            let m = loaded?;
            let mut slot = lock(&mm.manifest);
            if slot.as_ref().is_some_and(|(held, _)| Arc::ptr_eq(held, &m)) {
                return Ok(m);
            }
            drop(slot);
            self.make_room(m.bytes, &mm).map_err(Arc::new)?;
            slot = lock(&mm.manifest);
            *slot = Some((m.clone(), Instant::now()));
            Ok(m)
        };
        mm.load.run(&(), start, land).await.map_err(Error::Shared)
    }

    /// Drops other mounts' manifests from memory (least recently used first) until `need`
    /// more bytes fit the budget.
    fn make_room(&self, need: u64, keep: &Arc<MountMeta>) -> Result<()> {
        let budget = self.cfg.max_bytes.0;
        if need > budget {
            return Err(Error::Budget {
                what: "one manifest exceeds cache.metadata.max_bytes",
            });
        }
        loop {
            let (_, used) = self.usage();
            if used + need <= budget {
                return Ok(());
            }
            let mounts: Vec<_> = lock(&self.mounts).values().cloned().collect();
            let victim = mounts
                .iter()
                .filter(|mm| !Arc::ptr_eq(mm, keep))
                .filter_map(|mm| lock(&mm.manifest).as_ref().map(|(_, t)| (*t, mm.clone())))
                .min_by_key(|(t, _)| *t);
            match victim {
                Some((_, mm)) => *lock(&mm.manifest) = None,
                None => {
                    for mm in &mounts {
                        lock(&mm.stats).clear();
                        lock(&mm.lists).clear();
                    }
                    return Ok(());
                }
            }
        }
    }
}

impl MountMeta {
    /// The manifest in memory if younger than `ttl` (marked as used).
    fn fresh_manifest(&self, ttl: Duration) -> Option<Arc<Manifest>> {
        let mut slot = lock(&self.manifest);
        match slot.as_mut() {
            Some((m, used)) if m.fresh(ttl) => {
                *used = Instant::now();
                Some(m.clone())
            }
            _ => None,
        }
    }
}

/// A mount's manifest from disk when persisted and fresh, else LISTed from the UFS (and
/// persisted at `path`).
async fn load_manifest(mount: &Mount, path: Option<PathBuf>, ttl: Duration) -> Result<Manifest> {
    if let Some(p) = &path {
        let (p, uri) = (p.clone(), mount.ufs.uri().to_string());
        let from_disk = tokio::task::spawn_blocking(move || read_manifest(&p, &uri))
            .await
            .ok()
            .flatten()
            .filter(|m| m.fresh(ttl));
        if let Some(m) = from_disk {
            info!(mount = %mount.point, files = m.files.len(), dirs = m.dirs.len(), "dataset manifest loaded from disk");
            return Ok(m);
        }
    }
    let started = Instant::now();
    let tree = mount.ufs.list_tree("").await?;
    let m = Manifest::new(SystemTime::now(), tree.files, tree.dirs);
    info!(mount = %mount.point, files = m.files.len(), dirs = m.dirs.len(), secs = started.elapsed().as_secs_f64(), "dataset manifest listed from the UFS");
    if let Some(p) = &path
        && let Err(e) = write_manifest(p, mount.ufs.uri(), &m)
    {
        warn!(path = %p.display(), error = %e, "could not persist manifest");
    }
    Ok(m)
}

/// The on-disk manifest's format: 2 added directories (a manifest of format 1, which had
/// none, is LISTed again once rather than trusted without its empty directories).
const MANIFEST_FORMAT: u32 = 2;

/// The first line of a manifest file; then `files` lines of [`FileMeta`] and `dirs` lines of
/// directory paths, each one JSON value.
#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestHeader {
    #[serde(default)]
    format: u32,
    uri: String,
    created_unix_ms: u64,
    files: u64,
    #[serde(default)]
    dirs: u64,
}

fn write_manifest(path: &std::path::Path, uri: &str, m: &Manifest) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let header = ManifestHeader {
        format: MANIFEST_FORMAT,
        uri: uri.to_string(),
        created_unix_ms: m
            .created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        files: m.files.len() as u64,
        dirs: m.dirs.len() as u64,
    };
    serde_json::to_writer(&mut w, &header)?;
    w.write_all(b"\n")?;
    for f in m.files.values() {
        serde_json::to_writer(&mut w, f)?;
        w.write_all(b"\n")?;
    }
    for d in &m.dirs {
        serde_json::to_writer(&mut w, d)?;
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read_manifest(path: &std::path::Path, uri: &str) -> Option<Manifest> {
    let f = std::fs::File::open(path).ok()?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header: ManifestHeader = serde_json::from_str(&lines.next()?.ok()?).ok()?;
    if header.uri != uri || header.format != MANIFEST_FORMAT {
        return None;
    }
    let mut lines = lines.map(|l| l.ok());
    let files: Vec<FileMeta> = lines
        .by_ref()
        .take(usize::try_from(header.files).ok()?)
        .map(|l| l.and_then(|l| serde_json::from_str(&l).ok()))
        .collect::<Option<_>>()?;
    let dirs: Vec<String> = lines
        .map(|l| l.and_then(|l| serde_json::from_str(&l).ok()))
        .collect::<Option<_>>()?;
    if files.len() as u64 != header.files || dirs.len() as u64 != header.dirs {
        warn!(path = %path.display(), "truncated manifest ignored");
        return None;
    }
    let created = UNIX_EPOCH + Duration::from_millis(header.created_unix_ms);
    Some(Manifest::new(created, files, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rel: &str) -> FileMeta {
        FileMeta {
            rel: rel.into(),
            size: 1,
            version: "v".into(),
            mtime_ms: 0,
        }
    }

    #[test]
    fn manifest_lists_and_stats() {
        let m = Manifest::new(
            SystemTime::now(),
            ["a/x", "a/y", "b/c/d", "b/c/e", "b/f", "top", "a0"].map(f),
            [],
        );
        let names = |v: Vec<DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(m.list("")), ["a", "a0", "b", "top"]);
        assert_eq!(names(m.list("b")), ["c", "f"]);
        assert_eq!(names(m.list("b/c")), ["d", "e"]);
        assert_eq!(m.stat("b/c"), Some(Stat::Dir));
        assert_eq!(m.stat("top"), Some(Stat::File(f("top"))));
        assert_eq!(m.stat("b/x"), None);
        assert_eq!(m.stat("a0/x"), None);
        assert_eq!(m.walk("b").len(), 3);
        assert_eq!(m.walk("a").len(), 2);
        assert_eq!(m.walk("").len(), 7);
    }

    #[test]
    fn manifest_roundtrips_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.manifest");
        let m = Manifest::new(
            SystemTime::now(),
            ["a\nb", "c \"q\"", "d/e"].map(f),
            ["empty".to_string(), "x/y/z".to_string()],
        );
        write_manifest(&p, "s3://x", &m).unwrap();
        let back = read_manifest(&p, "s3://x").unwrap();
        assert_eq!(back.files, m.files);
        assert_eq!(back.dirs, m.dirs);
        assert_eq!(back.dirs.len(), 5, "{:?}", back.dirs);
        assert!(read_manifest(&p, "s3://other").is_none());
    }

    #[test]
    fn a_manifest_of_the_format_without_directories_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.manifest");
        let header = r#"{"uri":"s3://x","created_unix_ms":1,"files":1}"#;
        let file = serde_json::to_string(&f("a/b")).unwrap();
        std::fs::write(&p, format!("{header}\n{file}\n")).unwrap();
        assert!(read_manifest(&p, "s3://x").is_none());
    }

    #[test]
    fn manifest_keeps_empty_directories_and_a_directory_hides_a_file() {
        let m = Manifest::new(
            SystemTime::now(),
            ["train/x", "c", "c/inner", "d"].map(f),
            ["valid", "deep/er/est", "d"].map(String::from),
        );
        let names = |v: Vec<DirEntry>| {
            v.into_iter()
                .map(|e| (e.name, matches!(e.stat, Stat::Dir)))
                .collect::<Vec<_>>()
        };
        let dir = |n: &str| (n.to_string(), true);
        assert_eq!(
            names(m.list("")),
            [dir("c"), dir("d"), dir("deep"), dir("train"), dir("valid")]
        );
        assert_eq!(names(m.list("valid")), []);
        assert_eq!(names(m.list("deep")), [dir("er")]);
        assert_eq!(names(m.list("deep/er")), [dir("est")]);
        assert_eq!(names(m.list("c")), [("inner".to_string(), false)]);
        for d in ["valid", "deep", "deep/er", "deep/er/est", "c", "d"] {
            assert_eq!(m.stat(d), Some(Stat::Dir), "{d}");
        }
        assert_eq!(m.stat("valid/x"), None);
        assert_eq!(m.walk("").len(), 2, "c and d are directories, not files");
        assert!(m.walk("valid").is_empty());
    }
}
