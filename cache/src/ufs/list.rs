//! Listing a UFS: files *and directories* as the source has them.
//!
//! A directory exists when the source says so, not only when a file lies below it:
//! - `file://`: every directory on disk, empty ones and nested empty ones included (training
//!   tools create an empty `valid/` and `listdir` it). A tree is walked one directory level at
//!   a time, so each directory is seen even with nothing in it.
//! - Object stores: every common prefix, and every *directory marker*: a zero-byte object whose
//!   key ends in `/` (what the S3 console and many tools write for "create folder"), including a
//!   marker with nothing under it. `object_store` reports a marker `a/b/` as a zero-byte object
//!   named `a/b`, indistinguishable from a zero-byte file `a/b`; so a recursive LIST asks once
//!   more about each zero-byte object that has nothing below it (a one-level LIST of `a/b/`,
//!   which holds the marker itself if there is one). A mount's own marker (`prefix/`) is the
//!   mount's root, never a file named "".
//!
//! Where an object store holds both a file `a` and objects below `a/`, the directory wins and the
//! file is not shown (as in mountpoint-s3): a name is never a file and a directory at once.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use tracing::warn;

use super::{FileMeta, Ufs};
use crate::error::Result;
use crate::stats;

/// How many one-level LISTs a tree walk (or a marker check) keeps in flight.
const PARALLEL_LISTS: usize = 8;

/// One directory level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirListing {
    /// The files directly in the directory (none named like one of `dirs`).
    pub files: Vec<FileMeta>,
    /// The names of its sub-directories, sorted.
    pub dirs: Vec<String>,
    /// Whether the directory itself exists: it has children, is a directory on disk, is a
    /// mount's root, or has a marker object.
    pub exists: bool,
}

/// Everything below a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeListing {
    /// Every file below it, recursively (none at a path in `dirs`).
    pub files: Vec<FileMeta>,
    /// Every directory below it, as paths relative to the mount (not the listed one itself).
    pub dirs: BTreeSet<String>,
}

/// `name` inside directory `dir` (`""`: the mount's root).
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Adds the directories that contain `path` to `dirs`, up to (not including) directory `below`
/// (`""`: the mount's root), and stops early at one already there (its own were added then).
pub(crate) fn add_parents(dirs: &mut BTreeSet<String>, path: &str, below: &str) {
    let mut cur = path;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        if parent.len() <= below.len() || !dirs.insert(parent.to_string()) {
            return;
        }
        cur = parent;
    }
}

impl Ufs {
    /// One directory level below `rel`.
    pub async fn list_dir(&self, rel: &str) -> Result<DirListing> {
        let loc = self.location(rel)?;
        let prefix = (!loc.as_ref().is_empty()).then_some(&loc);
        let res = self
            .retrying("list", rel, || self.store.list_with_delimiter(prefix))
            .await?;
        stats::ufs_list();
        let dirs: BTreeSet<String> = res
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| self.escapes(&join(rel, name)).is_none())
            .collect();
        let (files, own_marker) = self.files_of(res.objects, rel, |f| {
            dirs.contains(f.rel.rsplit('/').next().unwrap_or(&f.rel))
        });
        let exists = rel.is_empty()
            || own_marker
            || !files.is_empty()
            || !dirs.is_empty()
            || self.is_local_dir(rel);
        Ok(DirListing {
            files,
            dirs: dirs.into_iter().collect(),
            exists,
        })
    }

    /// Every file and directory below `rel`.
    pub async fn list_tree(&self, rel: &str) -> Result<TreeListing> {
        if self.local_root.is_some() {
            self.walk_levels(rel).await
        } else {
            self.list_flat(rel).await
        }
    }

    /// The objects of a LIST below `rel` as files, less the directory's own marker (whether
    /// there was one is the second value), objects the confinement refuses, and those
    /// `shadowed` (named like a directory).
    fn files_of(
        &self,
        objects: Vec<ObjectMeta>,
        rel: &str,
        shadowed: impl Fn(&FileMeta) -> bool,
    ) -> (Vec<FileMeta>, bool) {
        let mut own_marker = false;
        let mut files = Vec::with_capacity(objects.len());
        for m in objects {
            // Only the prefix's own marker (`prefix/`) falls outside the prefix.
            let Some(f) = self.to_meta(m) else {
                own_marker = true;
                continue;
            };
            if f.rel == rel {
                own_marker = true;
            } else if shadowed(&f) {
                warn!(uri = %self.uri_of(&f.rel), "object hidden by a directory of the same name");
            } else if self.escapes(&f.rel).is_none() {
                files.push(f);
            }
        }
        (files, own_marker)
    }

    /// `file://`: one level at a time, so empty directories are seen too. Symlinked
    /// directories are followed, as a recursive LIST of the store does; a symlink loop fails
    /// the walk (the store's own loop check, or the kernel's `ELOOP`), never spins.
    async fn walk_levels(&self, rel: &str) -> Result<TreeListing> {
        let mut out = TreeListing::default();
        let mut level = vec![rel.to_string()];
        while !level.is_empty() {
            let listed: Vec<(String, DirListing)> = futures::stream::iter(level.drain(..))
                .map(|dir| async move { self.list_dir(&dir).await.map(|l| (dir, l)) })
                .buffered(PARALLEL_LISTS)
                .try_collect()
                .await?;
            for (dir, l) in listed {
                out.files.extend(l.files);
                for name in l.dirs {
                    let child = join(&dir, &name);
                    level.push(child.clone());
                    out.dirs.insert(child);
                }
            }
        }
        Ok(out)
    }

    /// Object stores: one recursive LIST (all pages), then a one-level LIST of each zero-byte
    /// object with nothing below it, to tell a directory marker from an empty file.
    async fn list_flat(&self, rel: &str) -> Result<TreeListing> {
        let loc = self.location(rel)?;
        let prefix = (!loc.as_ref().is_empty()).then_some(&loc);
        let metas: Vec<ObjectMeta> = self
            .retrying("list", rel, || self.store.list(prefix).try_collect())
            .await?;
        stats::ufs_list();
        let (files, _) = self.files_of(metas, rel, |_| false);
        let mut dirs = BTreeSet::new();
        for f in &files {
            add_parents(&mut dirs, &f.rel, rel);
        }
        let maybe_markers: Vec<String> = files
            .iter()
            .filter(|f| f.size == 0 && !dirs.contains(&f.rel))
            .map(|f| f.rel.clone())
            .collect();
        let markers: Vec<String> = futures::stream::iter(maybe_markers)
            .map(|path| async move {
                let l = self.list_dir(&path).await?;
                Ok::<_, crate::Error>(l.exists.then_some(path))
            })
            .buffer_unordered(PARALLEL_LISTS)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        dirs.extend(markers);
        let files = files
            .into_iter()
            .filter(|f| {
                let hidden = dirs.contains(&f.rel);
                if hidden && f.size > 0 {
                    warn!(uri = %self.uri_of(&f.rel), "object hidden by a directory of the same name");
                }
                !hidden
            })
            .collect();
        Ok(TreeListing { files, dirs })
    }

    /// Whether `rel` is a directory on disk (`file://` mounts, inside the confinement).
    fn is_local_dir(&self, rel: &str) -> bool {
        self.local_root.as_ref().is_some_and(|root| {
            self.escapes(rel).is_none()
                && std::fs::metadata(root.join(rel)).is_ok_and(|m| m.is_dir())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::UfsConfig;

    fn local(dir: &std::path::Path) -> Ufs {
        let uri = format!("file://{}", dir.display());
        Ufs::open(&uri, &BTreeMap::new(), &UfsConfig::default()).unwrap()
    }

    #[test]
    fn parents_stop_below_the_listed_directory() {
        let mut dirs = BTreeSet::new();
        add_parents(&mut dirs, "a/b/c/f", "");
        assert_eq!(
            dirs,
            BTreeSet::from(["a".into(), "a/b".into(), "a/b/c".into()])
        );
        let mut dirs = BTreeSet::new();
        add_parents(&mut dirs, "a/b/c/f", "a");
        assert_eq!(dirs, BTreeSet::from(["a/b".into(), "a/b/c".into()]));
        add_parents(&mut dirs, "top", "");
        assert_eq!(dirs.len(), 2);
    }

    #[tokio::test]
    async fn local_trees_keep_empty_and_nested_empty_directories() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["train/a", "valid", "deep/er/est", "deep/side"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        std::fs::write(d.path().join("train/a/x.bin"), b"xyz").unwrap();
        std::fs::write(d.path().join("deep/side/empty"), b"").unwrap();
        let ufs = local(d.path());

        let tree = ufs.list_tree("").await.unwrap();
        let dirs: Vec<&str> = tree.dirs.iter().map(String::as_str).collect();
        assert_eq!(
            dirs,
            [
                "deep",
                "deep/er",
                "deep/er/est",
                "deep/side",
                "train",
                "train/a",
                "valid"
            ]
        );
        let mut files: Vec<(&str, u64)> = tree
            .files
            .iter()
            .map(|f| (f.rel.as_str(), f.size))
            .collect();
        files.sort();
        assert_eq!(files, [("deep/side/empty", 0), ("train/a/x.bin", 3)]);

        let below = ufs.list_tree("deep").await.unwrap();
        assert_eq!(
            below.dirs.into_iter().collect::<Vec<_>>(),
            ["deep/er", "deep/er/est", "deep/side"]
        );

        let valid = ufs.list_dir("valid").await.unwrap();
        assert_eq!(
            valid,
            DirListing {
                exists: true,
                ..DirListing::default()
            }
        );
        assert!(!ufs.list_dir("nope").await.unwrap().exists);
        let top = ufs.list_dir("").await.unwrap();
        assert_eq!(top.dirs, ["deep", "train", "valid"]);
        assert!(top.files.is_empty());
    }

    #[tokio::test]
    async fn symlinked_directories_are_followed_and_a_loop_fails() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/empty")).unwrap();
        std::fs::write(d.path().join("a/f"), b"1").unwrap();
        std::os::unix::fs::symlink(d.path().join("a"), d.path().join("link")).unwrap();
        let tree = local(d.path()).list_tree("").await.unwrap();
        let dirs: Vec<&str> = tree.dirs.iter().map(String::as_str).collect();
        assert_eq!(dirs, ["a", "a/empty", "link", "link/empty"]);
        assert_eq!(tree.files.len(), 2, "{:?}", tree.files);

        std::os::unix::fs::symlink(d.path(), d.path().join("a/up")).unwrap();
        assert!(local(d.path()).list_tree("").await.is_err());
    }
}
