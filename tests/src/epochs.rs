//! Shuffled epochs over a dataset larger than the memory tier: the dataset (one-block
//! images), the daemon's config for it, one epoch of a loader, the UFS GETs an offline MIN
//! predicts for the same trace, and the check of a run against it and against LRU.

use std::path::Path;
use std::process::Command;

use loaderd_cache::evict::offline::min_hits;

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

/// One epoch of one loader over `dataset` (`bench pipeline --json`, one worker, batch
/// `batch`): its report, with the keys it delivered written to `keys_out` when given.
pub fn epoch(
    d: &Daemon,
    dataset: &str,
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
        dataset,
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

/// [`epoch`], returning the keys it delivered, in order.
pub fn bench_epoch(d: &Daemon, dataset: &str, seed: u64, n: u64, batch: usize) -> Vec<String> {
    let out = d.dir().join(format!("keys-{n}"));
    epoch(d, dataset, seed, n, batch, Some(&out));
    let delivered = std::fs::read_to_string(&out).expect("keys file");
    delivered.lines().map(str::to_string).collect()
}

/// Misses per epoch of Belady's MIN (with bypass: a block needed later than every resident
/// is not kept) over `trace`, `per_epoch` reads an epoch, in a cache of `capacity` blocks.
pub fn min_misses(trace: &[usize], per_epoch: usize, capacity: usize) -> Vec<u64> {
    let ids: Vec<u64> = trace.iter().map(|b| *b as u64).collect();
    let mut misses = vec![0u64; trace.len().div_ceil(per_epoch)];
    for (i, hit) in min_hits(&ids, capacity).into_iter().enumerate() {
        misses[i / per_epoch] += u64::from(!hit);
    }
    misses
}

/// Asserts UFS GETs per epoch of a clairvoyant run against MIN's `predicted` and an LRU run
/// of the same trace, `reads` block reads an epoch: the first epoch is cold (every block
/// once) for both; after it, each epoch is within `tolerance` of MIN and no better overall
/// (MIN is optimal), with at least twice LRU's hits and under 0.9 of its GETs.
#[track_caller]
pub fn assert_min_and_below_lru(
    clairvoyant: &[u64],
    lru: &[u64],
    predicted: &[u64],
    reads: u64,
    tolerance: u64,
) {
    assert_eq!(clairvoyant[0], reads, "{clairvoyant:?}");
    assert_eq!(lru[0], reads, "{lru:?}");
    for e in 1..clairvoyant.len() {
        assert!(
            clairvoyant[e].abs_diff(predicted[e]) <= tolerance,
            "epoch {e}: {} GETs, MIN predicts {} (all: {clairvoyant:?} vs {predicted:?})",
            clairvoyant[e],
            predicted[e]
        );
    }
    let after = |v: &[u64]| v[1..].iter().sum::<u64>();
    assert!(after(clairvoyant) >= after(predicted), "{clairvoyant:?}");
    let all = reads * (clairvoyant.len() as u64 - 1);
    let (hits, lru_hits) = (all - after(clairvoyant), all - after(lru));
    assert!(
        hits >= 2 * lru_hits && after(clairvoyant) * 10 <= after(lru) * 9,
        "clairvoyant {clairvoyant:?} ({hits} hits) vs lru {lru:?} ({lru_hits} hits)"
    );
}
