//! Test data: deterministic random bytes and files, generated JPEG datasets, digests and
//! byte comparisons, and the SSD tier's block files.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::process::{bin, clean_env};

/// Hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts two byte strings are equal, reporting sizes, digests and the first
/// differing offset instead of dumping megabytes.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual.iter().zip(expected).position(|(a, b)| a != b);
    panic!(
        "{what}: content differs: got {} bytes (sha256 {}), expected {} bytes (sha256 {}); first \
         differing offset: {:?}",
        actual.len(),
        sha256(actual),
        expected.len(),
        sha256(expected),
        first_diff
    );
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `random_bytes(len, seed)` to `path` (creating parents) and returns them.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = random_bytes(len, seed);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directory");
    }
    fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Every regular file under `root`, as (relative path with `/`, absolute path), sorted.
pub fn list_files(root: &Path) -> Vec<(String, PathBuf)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>();
                out.push((rel.join("/"), path));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Generates an ImageFolder dataset of real JPEGs with `loaderctl dataset gen`:
/// `dir/class_XXX/img_XXXX.jpg`.
pub fn gen_dataset(dir: &Path, classes: usize, per_class: usize) {
    let out = clean_env(&mut Command::new(bin("loaderctl")))
        .args(["dataset", "gen", "--out"])
        .arg(dir)
        .args([
            "--classes",
            &classes.to_string(),
            "--per-class",
            &per_class.to_string(),
        ])
        .args(["--seed", "1"])
        .output()
        .expect("run loaderctl dataset gen");
    assert!(
        out.status.success(),
        "loaderctl dataset gen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let files = list_files(dir);
    assert_eq!(
        files.len(),
        classes * per_class,
        "dataset gen wrote {} files, expected {classes} x {per_class}",
        files.len()
    );
}

/// A local directory holding a small dataset: generated JPEGs plus a few random
/// binary files sized to span several blocks.
pub struct Dataset {
    _dir: TempDir,
    /// Root of the dataset; its files are uploaded or mounted.
    pub root: PathBuf,
    /// (relative path, absolute path) of every file, sorted.
    pub files: Vec<(String, PathBuf)>,
}

impl Dataset {
    /// `classes` x `per_class` JPEGs plus `blobs/` with random files of the
    /// given sizes (seeded by their index).
    pub fn new(classes: usize, per_class: usize, blob_sizes: &[usize]) -> Dataset {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("dataset");
        if classes * per_class > 0 {
            gen_dataset(&root, classes, per_class);
        }
        for (i, size) in blob_sizes.iter().enumerate() {
            write_random_file(
                &root.join(format!("blobs/blob_{i:02}.bin")),
                *size,
                i as u64 + 1,
            );
        }
        fs::create_dir_all(&root).expect("dataset root");
        let files = list_files(&root);
        Dataset {
            _dir: dir,
            root,
            files,
        }
    }

    /// Only random files (no JPEGs), for tests about caching rather than formats.
    pub fn blobs(sizes: &[usize]) -> Dataset {
        Dataset::new(0, 0, sizes)
    }

    /// Contents of the file at `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Total size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|(_, p)| fs::metadata(p).expect("metadata").len())
            .sum()
    }
}

/// Every `.blk` file of an SSD tier directory, sorted.
pub fn ssd_block_files(ssd_dir: &Path) -> Vec<PathBuf> {
    let blocks = ssd_dir.join("blocks");
    if !blocks.is_dir() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = list_files(&blocks)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .collect();
    out.sort();
    out
}

/// Flips every bit of the byte at `offset` in `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open block file");
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read byte");
    byte[0] ^= 0xFF;
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&byte).expect("write byte");
    file.sync_all().expect("sync");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_deterministic() {
        assert_eq!(random_bytes(100, 7), random_bytes(100, 7));
        assert_ne!(random_bytes(100, 7), random_bytes(100, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
    }
}
