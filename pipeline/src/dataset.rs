//! Datasets: which samples a logical path holds, and their labels.
//!
//! Two layouts, recognised by what the path contains:
//! * **ImageFolder** (torchvision): one sub-directory per class; labels are the indices of the
//!   class names in sorted order; samples are the image files below each class directory
//!   (torchvision's extensions), in sorted path order.
//! * **WebDataset** tar shards: every file under the path ends in `.tar`; members sharing a key
//!   (the member path up to the first `.` of its file name) form one sample: the image member
//!   (`key.jpg`, `.jpeg`, `.png`, ...) and the label member `key.cls` (a decimal integer).
//!   Shards are read once through the cache (which also warms it) and indexed to (shard,
//!   offset, length) per image, so a sample is later one ranged read of cached blocks.
//!
//! An index is a pure function of the listing and the shard bytes: every node builds the same
//! one, so sample `i` means the same file everywhere.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use loaderd_cache::ufs::FileMeta;
use loaderd_cache::{Cache, LogicalPath, ReadType, Stat};

/// Image extensions of torchvision's `ImageFolder`.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// Where a sample's encoded bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A whole file, of the size and version the listing found (the version is what its
    /// block ids are derived from; a read takes whatever version is current).
    File {
        path: LogicalPath,
        size: u64,
        version: String,
    },
    /// A member of a tar shard, at the offset the shard's index found in version `version`:
    /// read from that version only (a rewritten shard has other offsets).
    TarMember {
        shard: LogicalPath,
        offset: u64,
        len: u64,
        version: String,
    },
}

impl Source {
    /// The file this source reads, the version it is pinned to (empty: whatever is current)
    /// and the bytes of it it reads (a whole file by its listed size).
    pub fn span(&self) -> (&LogicalPath, &str, std::ops::Range<u64>) {
        match self {
            Source::File { path, size, .. } => (path, "", 0..*size),
            Source::TarMember {
                shard,
                offset,
                len,
                version,
            } => (shard, version, *offset..offset.saturating_add(*len)),
        }
    }
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Stable name: the file's path below the dataset root, or the shard member key.
    pub key: String,
    pub label: i64,
    pub source: Source,
}

/// The layout found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    ImageFolder,
    WebDataset,
}

/// An indexed dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: LogicalPath,
    pub layout: Layout,
    /// Class names by label (ImageFolder); empty for WebDataset.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// Why a path is not a usable dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Cache(#[from] loaderd_cache::Error),
    #[error("{path} is a file, not a dataset directory")]
    NotADirectory { path: String },
    #[error(
        "{path} holds no samples (ImageFolder needs class directories of images; WebDataset needs .tar shards)"
    )]
    Empty { path: String },
    #[error("{path} mixes .tar shards with other files")]
    Mixed { path: String },
    #[error("shard {shard}: {reason}")]
    BadShard { shard: String, reason: String },
}

impl Dataset {
    /// Indexes the dataset at `root`.
    pub async fn index(cache: &Arc<Cache>, root: &LogicalPath) -> Result<Self, DatasetError> {
        if let Stat::File(_) = cache.stat(root).await? {
            return Err(DatasetError::NotADirectory {
                path: root.to_string(),
            });
        }
        let files: Vec<(LogicalPath, FileMeta)> = cache
            .list(root, true)
            .await?
            .into_iter()
            .filter_map(|(p, s)| match s {
                Stat::File(f) => Some((p, f)),
                Stat::Dir => None,
            })
            .filter(|(p, _)| !is_hidden(rel(root, p)))
            .collect();
        let shards = files
            .iter()
            .filter(|(p, _)| p.as_str().ends_with(".tar"))
            .count();
        let dataset = if shards > 0 {
            if shards != files.len() {
                return Err(DatasetError::Mixed {
                    path: root.to_string(),
                });
            }
            let mut samples = Vec::new();
            for (shard, _) in &files {
                let fh = cache.open_file(shard).await?;
                let version = fh.meta.version.clone();
                let bytes = read_fh(cache, fh, None).await?;
                samples.extend(index_shard(shard, &version, &bytes)?);
            }
            Dataset {
                root: root.clone(),
                layout: Layout::WebDataset,
                classes: Vec::new(),
                samples,
            }
        } else {
            image_folder(root, &files)
        };
        if dataset.samples.is_empty() {
            return Err(DatasetError::Empty {
                path: root.to_string(),
            });
        }
        Ok(dataset)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Heap bytes the index takes (counted in its loader's memory budget).
    pub fn heap_bytes(&self) -> u64 {
        let strings: usize = self
            .samples
            .iter()
            .map(|s| {
                s.key.len()
                    + match &s.source {
                        Source::File { path, version, .. } => path.as_str().len() + version.len(),
                        Source::TarMember { shard, version, .. } => {
                            shard.as_str().len() + version.len()
                        }
                    }
            })
            .chain(
                self.classes
                    .iter()
                    .map(|c| c.len() + std::mem::size_of::<String>()),
            )
            .sum();
        (self.samples.len() * std::mem::size_of::<Sample>() + strings) as u64
    }

    /// Whether there are no samples (never, for an indexed dataset).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn rel<'a>(root: &LogicalPath, p: &'a LogicalPath) -> &'a str {
    p.strip_prefix(root).unwrap_or(p.as_str())
}

fn is_hidden(rel: &str) -> bool {
    rel.split('/').any(|s| s.starts_with('.'))
}

fn extension(name: &str) -> Option<String> {
    let file = name.rsplit('/').next()?;
    let (_, ext) = file.rsplit_once('.')?;
    Some(ext.to_ascii_lowercase())
}

fn image_folder(root: &LogicalPath, files: &[(LogicalPath, FileMeta)]) -> Dataset {
    // Classes: first-level directories that hold at least one file, sorted (as torchvision).
    let mut by_class: BTreeMap<&str, Vec<(&str, &LogicalPath, &FileMeta)>> = BTreeMap::new();
    for (p, meta) in files {
        let r = rel(root, p);
        let Some((class, _)) = r.split_once('/') else {
            continue; // files directly under the root belong to no class
        };
        if extension(r).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            by_class.entry(class).or_default().push((r, p, meta));
        }
    }
    let classes: Vec<String> = by_class.keys().map(|c| c.to_string()).collect();
    let samples = by_class
        .into_values()
        .enumerate()
        .flat_map(|(label, mut members)| {
            members.sort_by(|a, b| a.0.cmp(b.0));
            members.into_iter().map(move |(r, p, meta)| Sample {
                key: r.to_string(),
                label: label as i64,
                source: Source::File {
                    path: p.clone(),
                    size: meta.size,
                    version: meta.version.clone(),
                },
            })
        })
        .collect();
    Dataset {
        root: root.clone(),
        layout: Layout::ImageFolder,
        classes,
        samples,
    }
}

/// Reads a whole file through the cache.
async fn read_all(cache: &Arc<Cache>, path: &LogicalPath) -> Result<Bytes, loaderd_cache::Error> {
    read_fh(cache, cache.open_file(path).await?, None).await
}

/// Bytes `range` of open file `fh` (all of it for `None`) through the cache: one version.
async fn read_fh(
    cache: &Arc<Cache>,
    fh: loaderd_cache::FileHandle,
    range: Option<std::ops::Range<u64>>,
) -> Result<Bytes, loaderd_cache::Error> {
    let range = range.unwrap_or(0..fh.meta.size);
    let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
    let mut chunks = cache.read(fh, range, ReadType::Cache, 4)?;
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(&chunk?.1);
    }
    Ok(out.freeze())
}

/// The encoded bytes of a sample.
pub async fn fetch(cache: &Arc<Cache>, source: &Source) -> Result<Bytes, loaderd_cache::Error> {
    match source {
        Source::File { path, .. } => read_all(cache, path).await,
        Source::TarMember {
            shard,
            offset,
            len,
            version,
        } => {
            let fh = cache.open_file_at(shard, version).await?;
            read_fh(cache, fh, Some(*offset..offset + len)).await
        }
    }
}

/// (key, image member, label) of one shard, in member order.
fn index_shard(
    shard: &LogicalPath,
    version: &str,
    bytes: &[u8],
) -> Result<Vec<Sample>, DatasetError> {
    let bad = |reason: String| DatasetError::BadShard {
        shard: shard.to_string(),
        reason,
    };
    let mut images: BTreeMap<String, (u64, u64, usize)> = BTreeMap::new();
    let mut labels: BTreeMap<String, i64> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for (order, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let file = name.rsplit('/').next().unwrap_or(&name);
        let Some((stem, _)) = file.split_once('.') else {
            continue;
        };
        let dir = &name[..name.len() - file.len()];
        let key = format!("{dir}{stem}");
        let Some(ext) = file.split_once('.').map(|(_, e)| e.to_ascii_lowercase()) else {
            continue;
        };
        if ext == "cls" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            let label = text
                .trim()
                .parse()
                .map_err(|_| bad(format!("{name}: label {:?} is not an integer", text.trim())))?;
            labels.insert(key, label);
        } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            let offset = entry.raw_file_position();
            let len = entry.size();
            if offset + len > bytes.len() as u64 {
                return Err(bad(format!("{name} runs past the end of the shard")));
            }
            images.insert(key, (offset, len, order));
        }
    }
    let mut out: Vec<(usize, Sample)> = Vec::with_capacity(images.len());
    for (key, (offset, len, order)) in images {
        let label = *labels
            .get(&key)
            .ok_or_else(|| bad(format!("sample {key} has no .cls label")))?;
        out.push((
            order,
            Sample {
                key,
                label,
                source: Source::TarMember {
                    shard: shard.clone(),
                    offset,
                    len,
                    version: version.to_string(),
                },
            },
        ));
    }
    out.sort_by_key(|(order, _)| *order);
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use loaderd_cache::{CacheConfig, MountSpec};

    use super::*;

    fn cache(dir: &Path) -> std::sync::Arc<Cache> {
        let spec = MountSpec {
            path: "/d".into(),
            uri: format!("file://{}", dir.display()),
            options: Default::default(),
        };
        let cfg = CacheConfig {
            memory: loaderd_cache::config::MemoryTierConfig {
                capacity: loaderd_cache::ByteSize(16 << 20),
                ..Default::default()
            },
            ..CacheConfig::default()
        };
        Cache::open(cfg, vec![spec]).unwrap()
    }

    fn write(dir: &Path, rel: &str, data: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[tokio::test]
    async fn image_folder_labels_by_sorted_class_name() {
        let d = tempfile::tempdir().unwrap();
        for rel in [
            "train/zebra/b.jpg",
            "train/zebra/a.JPEG",
            "train/ant/x/1.png",
            "train/ant/2.jpg",
            "train/ant/notes.txt",
            "train/readme.jpg",
            "train/.hidden/3.jpg",
            "train/empty_class/.keep",
        ] {
            write(d.path(), rel, rel.as_bytes());
        }
        let c = cache(d.path());
        let ds = Dataset::index(&c, &LogicalPath::parse("/d/train").unwrap())
            .await
            .unwrap();
        assert_eq!(ds.layout, Layout::ImageFolder);
        assert_eq!(ds.classes, ["ant", "zebra"]);
        let got: Vec<(&str, i64)> = ds
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label))
            .collect();
        assert_eq!(
            got,
            [
                ("ant/2.jpg", 0),
                ("ant/x/1.png", 0),
                ("zebra/a.JPEG", 1),
                ("zebra/b.jpg", 1)
            ]
        );
        assert!(matches!(
            &ds.samples[0].source,
            Source::File { path, size, version } if path.as_str() == "/d/train/ant/2.jpg"
                && *size == 15 && !version.is_empty()
        ));
    }

    pub(crate) fn shard(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn webdataset_shards_index_images_with_labels() {
        let d = tempfile::tempdir().unwrap();
        let long = format!("{}/s3", "deep/".repeat(30)); // longer than ustar's 100 bytes
        let s0 = shard(&[
            ("s1.jpg", b"JPEG-1"),
            ("s1.cls", b"7\n"),
            ("s2.png", b"PNG-2"),
            ("s2.cls", b"3"),
            (&format!("{long}.jpg"), b"JPEG-3"),
            (&format!("{long}.cls"), b"1"),
        ]);
        write(d.path(), "wds/shard-000.tar", &s0);
        let s1 = shard(&[
            ("t1.cls", b"0"),
            ("t1.jpeg", b"JPEG-t1"),
            ("t1.json", b"{}"),
        ]);
        write(d.path(), "wds/shard-001.tar", &s1);
        let c = cache(d.path());
        let ds = Dataset::index(&c, &LogicalPath::parse("/d/wds").unwrap())
            .await
            .unwrap();
        assert_eq!(ds.layout, Layout::WebDataset);
        let keys: Vec<(&str, i64)> = ds
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label))
            .collect();
        assert_eq!(keys, [("s1", 7), ("s2", 3), (long.as_str(), 1), ("t1", 0)]);
        // Offsets point at the member bytes inside the shard.
        for (s, want) in ds
            .samples
            .iter()
            .zip([&b"JPEG-1"[..], b"PNG-2", b"JPEG-3", b"JPEG-t1"])
        {
            let Source::TarMember {
                shard, offset, len, ..
            } = &s.source
            else {
                panic!()
            };
            let raw = std::fs::read(d.path().join(&shard.as_str()[3..])).unwrap();
            assert_eq!(&raw[*offset as usize..(*offset + *len) as usize], want);
        }
    }

    #[tokio::test]
    async fn bad_datasets_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "mixed/a.tar",
            &shard(&[("x.jpg", b"1"), ("x.cls", b"1")]),
        );
        write(d.path(), "mixed/b.jpg", b"2");
        write(d.path(), "nolabel/a.tar", &shard(&[("x.jpg", b"1")]));
        write(
            d.path(),
            "badlabel/a.tar",
            &shard(&[("x.jpg", b"1"), ("x.cls", b"cat")]),
        );
        write(
            d.path(),
            "trunc/a.tar",
            &shard(&[("x.jpg", &[7u8; 2000]), ("x.cls", b"1")])[..700],
        );
        write(d.path(), "flat/a.jpg", b"1");
        write(d.path(), "file.jpg", b"1");
        let c = cache(d.path());
        let idx = |p: &str| {
            let c = c.clone();
            let p = LogicalPath::parse(p).unwrap();
            async move { Dataset::index(&c, &p).await }
        };
        assert!(matches!(
            idx("/d/mixed").await,
            Err(DatasetError::Mixed { .. })
        ));
        let e = idx("/d/nolabel").await.unwrap_err().to_string();
        assert!(e.contains("no .cls label"), "{e}");
        let e = idx("/d/badlabel").await.unwrap_err().to_string();
        assert!(e.contains("not an integer"), "{e}");
        assert!(matches!(
            idx("/d/trunc").await,
            Err(DatasetError::BadShard { .. })
        ));
        assert!(matches!(
            idx("/d/flat").await,
            Err(DatasetError::Empty { .. })
        ));
        assert!(matches!(
            idx("/d/file.jpg").await,
            Err(DatasetError::NotADirectory { .. })
        ));
        assert!(matches!(idx("/d/nope").await, Err(DatasetError::Cache(_))));
    }
}
