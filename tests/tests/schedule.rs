//! An open loader's schedule drives eviction: over a dataset twice the memory tier (SSD tier
//! off), three shuffled epochs of one loader read from the UFS, after the first epoch, what an
//! offline MIN over the same block trace predicts, and well below the same run under LRU.
//!
//! Before the loader opens, another reader (`loaderctl cat` of a file outside the dataset)
//! fills the memory tier with blocks no schedule needs. MIN evicts those first; without the
//! schedule the clairvoyant policy is `stable`, which keeps that resident set and misses
//! nearly every read, so the test fails if the loader's schedule is not registered or wrong.
//!
//! The trace is recomputed here from the sampler the daemon uses
//! (`loaderd_pipeline::sampler::order`), and checked against the keys each epoch delivered.

use std::path::Path;

use loaderd_pipeline::sampler::order;
use loaderd_tests::epochs::{
    BATCH, BLOCK, CLASSES, EPOCHS, MEMORY_BLOCKS, PER_CLASS, assert_min_and_below_lru, bench_epoch,
    cache_toml, min_misses, one_block_images,
};
use loaderd_tests::{Daemon, config_file_args, file_mount_args, write_random_file};

const SEED: u64 = 11;

/// UFS GETs per epoch, and the keys each epoch delivered, of three epochs of one loader on a
/// daemon evicting by `eviction`, its memory tier first filled by a read of `junk` (a file the
/// size of the tier).
fn run(data: &Path, junk: &Path, eviction: &str) -> (Vec<u64>, Vec<Vec<String>>) {
    let conf = tempfile::tempdir().expect("tempdir");
    // Eviction alone: prefetch (tests/tests/prefetch.rs) moves fetches earlier, and a
    // prefetched block whose read begins while it is in flight may be refused at admission
    // and read again (one GET in a few hundred), which the exact counts below would see.
    let toml = cache_toml(BLOCK, MEMORY_BLOCKS, eviction) + "[prefetch]\nenabled = false\n";
    let mut args = config_file_args(conf.path(), &toml);
    args.extend(file_mount_args("/ds", data));
    args.extend(file_mount_args("/other", junk));
    let d = Daemon::start(&args);
    let gets = || d.metric("loaderd_ufs_requests_total{op=\"get\"}") as u64;
    d.cat("/other/blob");
    assert_eq!(gets(), MEMORY_BLOCKS as u64, "the other reader's blocks");
    let (mut per_epoch, mut keys) = (Vec::new(), Vec::new());
    for epoch in 0..EPOCHS {
        let before = gets();
        keys.push(bench_epoch(&d, "/ds", SEED, epoch, BATCH));
        per_epoch.push(gets() - before);
    }
    (per_epoch, keys)
}

#[test]
fn a_loaders_schedule_reads_what_min_predicts_and_far_less_than_lru() {
    let data = tempfile::tempdir().expect("tempdir");
    let files = one_block_images(data.path(), CLASSES, PER_CLASS, BLOCK);
    let len = files.len() as u64;
    let orders: Vec<Vec<u64>> = (0..EPOCHS).map(|e| order(len, SEED, e, true)).collect();
    let trace: Vec<usize> = orders.concat().into_iter().map(|i| i as usize).collect();
    let predicted = min_misses(&trace, files.len(), MEMORY_BLOCKS);

    let junk = tempfile::tempdir().expect("tempdir");
    write_random_file(&junk.path().join("blob"), MEMORY_BLOCKS * BLOCK as usize, 5);

    let (clairvoyant, keys) = run(data.path(), junk.path(), "clairvoyant");
    for (e, delivered) in keys.iter().enumerate() {
        let want: Vec<&String> = orders[e].iter().map(|&i| &files[i as usize]).collect();
        assert_eq!(
            delivered.iter().collect::<Vec<_>>(),
            want,
            "epoch {e}: the daemon read the order the test simulates"
        );
    }
    let (lru, _) = run(data.path(), junk.path(), "lru");
    eprintln!("UFS GETs per epoch: MIN {predicted:?}, clairvoyant {clairvoyant:?}, lru {lru:?}");

    // The first epoch is cold: every block once. After it, MIN's count, within a few
    // blocks. The trace is block-exact here (one block per image, one decode worker reading
    // in order, every block charged one 4 KiB slot), so what remains is the rate estimate:
    // when it re-anchors, every key is re-asked, and a block of the batch in flight (marked
    // as being read, not yet read) may then be taken as a victim by its following read: at
    // most BATCH - 1 misses per re-anchor, a few re-anchors per epoch. And well below LRU,
    // whose hits all but vanish on a shuffled order twice its size.
    assert_min_and_below_lru(&clairvoyant, &lru, &predicted, len, 4 * BATCH as u64);
}
