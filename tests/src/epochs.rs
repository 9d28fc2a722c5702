//! Shuffled epochs over small datasets: one-block images, a loader's epoch through
//! `loaderctl bench pipeline`, and the offline optimum (Belady's MIN) of a block trace.

use std::path::Path;
use std::process::Command;

use loaderd_cache::evict::offline::min_hits;

use crate::daemon::Daemon;
use crate::data::list_files;
use crate::process::{bin, clean_env};

/// `classes x per_class` small JPEGs (40x40) in ImageFolder layout, each at most `block`
/// bytes (one block); their relative paths in ImageFolder's sample order (classes sorted,
/// then paths sorted: the sorted relative paths).
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
    files.into_iter().map(|(rel, _)| rel).collect()
}

/// One epoch of one loader of `batch` on `d` over `dataset` (one decode worker, so blocks
/// are read in the order delivered); the keys it delivered, in order.
pub fn bench_epoch(d: &Daemon, dataset: &str, seed: u64, epoch: u64, batch: usize) -> Vec<String> {
    let out = d.dir().join(format!("keys-{epoch}"));
    d.ctl_ok(&[
        "bench",
        "pipeline",
        "--dataset",
        dataset,
        "--batch-size",
        &batch.to_string(),
        "--size",
        "16",
        "--workers",
        "1",
        "--depth",
        "2",
        "--seed",
        &seed.to_string(),
        "--epoch",
        &epoch.to_string(),
        "--keys-out",
        out.to_str().expect("utf-8 path"),
        "--json",
    ]);
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
