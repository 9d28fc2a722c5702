//! Shuffled epochs over a dataset larger than the memory tier: the dataset (one-block
//! images), the daemon's config for it, one epoch of a loader, and the UFS GETs an offline
//! MIN predicts for the same trace.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use crate::daemon::Daemon;
use crate::data::list_files;
use crate::process::{bin, clean_env};

/// The setup both epoch tests share. Block size, and what every block is charged in the
/// memory tier (slots are rounded up to 4 KiB, and every image is one block): the tier holds
/// exactly `MEMORY_BLOCKS` blocks, half of the `CLASSES x PER_CLASS` images; three epochs of
/// batches of `BATCH`.
pub const BLOCK: u64 = 4096;
pub const MEMORY_BLOCKS: usize = 256;
pub const CLASSES: usize = 4;
pub const PER_CLASS: usize = 128;
pub const EPOCHS: u64 = 3;
pub const BATCH: usize = 4;

/// `classes x per_class` small JPEGs (40x40, each at most `block` bytes, so one block each),
/// by their relative paths in ImageFolder's sample order (sorted).
pub fn one_block_images(dir: &Path, classes: usize, per_class: usize, block: u64) -> Vec<String> {
    let out = clean_env(&mut Command::new(bin("loaderctl")))
        .args(["dataset", "gen", "--out"])
        .arg(dir)
        .args(["--classes", &classes.to_string()])
        .args(["--per-class", &per_class.to_string()])
        .args(["--width", "40", "--height", "40", "--seed", "3"])
        .output()
        .expect("run loaderctl dataset gen");
    assert!(out.status.success(), "dataset gen: {out:?}");
    let files = list_files(dir);
    assert_eq!(files.len(), classes * per_class);
    for (rel, path) in &files {
        let size = std::fs::metadata(path).expect("stat image").len();
        assert!(size <= block, "{rel} is {size} bytes: more than one block");
    }
    // ImageFolder's sample order: classes sorted, then paths sorted, which is the sorted
    // relative paths here.
    files.into_iter().map(|(rel, _)| rel).collect()
}

/// The `[cache]` of a daemon with `block`-byte blocks, a memory tier of exactly `blocks`
/// blocks (every image is charged one 4 KiB slot), no SSD tier, evicting by `eviction`.
pub fn cache_toml(block: u64, blocks: usize, eviction: &str) -> String {
    format!(
        "[cache]\nblock_size = \"{block}\"\neviction = \"{eviction}\"\n\
         memory = {{ capacity = \"{}\", watermarks = {{ high = 1.0, low = 0.8 }} }}\n",
        blocks as u64 * block
    )
}

/// One epoch of one loader over `/ds` (`bench pipeline --json`, one worker, batch `batch`):
/// its report, with the keys it delivered written to `keys_out` when given.
pub fn epoch(
    d: &Daemon,
    seed: u64,
    epoch: u64,
    batch: usize,
    keys_out: Option<&Path>,
) -> serde_json::Value {
    let (seed, epoch, batch) = (seed.to_string(), epoch.to_string(), batch.to_string());
    let mut args = vec![
        "bench",
        "pipeline",
        "--dataset",
        "/ds",
        "--batch-size",
        &batch,
        "--size",
        "16",
        "--workers",
        "1",
        "--depth",
        "2",
        "--seed",
        &seed,
        "--epoch",
        &epoch,
        "--json",
    ];
    let out = keys_out.map(|p| p.to_str().expect("utf-8 path").to_string());
    if let Some(out) = &out {
        args.extend(["--keys-out", out]);
    }
    serde_json::from_str(&d.ctl_ok(&args)).expect("bench pipeline --json")
}

/// Misses per epoch of Belady's MIN (with bypass: a block needed later than every resident
/// is not kept) over `trace`, `per_epoch` reads an epoch, in a cache of `capacity` blocks.
pub fn min_misses(trace: &[usize], per_epoch: usize, capacity: usize) -> Vec<u64> {
    let mut next = vec![usize::MAX; trace.len()];
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (i, b) in trace.iter().enumerate().rev() {
        next[i] = seen.insert(*b, i).unwrap_or(usize::MAX);
    }
    let mut resident: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut key: HashMap<usize, usize> = HashMap::new();
    let mut misses = vec![0u64; trace.len().div_ceil(per_epoch)];
    for (i, &b) in trace.iter().enumerate() {
        if let Some(k) = key.remove(&b) {
            resident.remove(&(k, b));
        } else {
            misses[i / per_epoch] += 1;
            if resident.len() >= capacity {
                let &(far, victim) = resident.last().expect("a full cache holds blocks");
                if next[i] >= far {
                    continue; // bypass: the incoming block is the farthest
                }
                resident.remove(&(far, victim));
                key.remove(&victim);
            }
        }
        resident.insert((next[i], b));
        key.insert(b, next[i]);
    }
    misses
}
