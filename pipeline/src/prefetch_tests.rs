//! A prefetcher over a real cache and file mount, following a schedule the test moves.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use loaderd_cache::{CacheConfig, LogicalPath, MountSpec};

use super::*;
use crate::dataset::{Layout, Sample, Source};

const BLOCK: u64 = 4096;
const FILES: u64 = 64;

/// A schedule the test moves by hand: the order is the dataset order.
struct Manual {
    position: AtomicU64,
    step: u64,
    ns_per_sample: u64,
    moved: Notify,
}

impl Manual {
    /// One sample a second: a window of one step whatever the fetch latency.
    fn new(position: u64, step: u64) -> Arc<Self> {
        Self::at(position, step, 1_000_000_000)
    }

    fn at(position: u64, step: u64, ns_per_sample: u64) -> Arc<Self> {
        Arc::new(Manual {
            position: AtomicU64::new(position),
            step,
            ns_per_sample,
            moved: Notify::new(),
        })
    }

    fn advance(&self, position: u64) {
        self.position.store(position, Ordering::Release);
        self.moved.notify_one();
    }
}

impl Ahead for Manual {
    fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }
    fn frontier(&self) -> u64 {
        self.position()
    }
    fn end(&self) -> u64 {
        FILES
    }
    fn ns_per_sample(&self) -> u64 {
        self.ns_per_sample
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn sample(&self, position: u64) -> Option<u64> {
        (position < FILES).then_some(position)
    }
    fn moved(&self) -> &Notify {
        &self.moved
    }
}

/// A cache over `FILES` one-block files, a dataset of them, and a runtime.
fn setup(dir: &std::path::Path) -> (Arc<Cache>, tokio::runtime::Runtime, Arc<Dataset>) {
    setup_capped(dir, 0)
}

/// [`setup`] with the UFS capped at `bandwidth` bytes a second (0: no cap).
fn setup_capped(
    dir: &std::path::Path,
    bandwidth: u64,
) -> (Arc<Cache>, tokio::runtime::Runtime, Arc<Dataset>) {
    setup_with(dir, |cfg| cfg.ufs.max_bandwidth = ByteSize(bandwidth))
}

/// [`setup`] with the cache's config changed by `change`.
fn setup_with(
    dir: &std::path::Path,
    change: impl FnOnce(&mut CacheConfig),
) -> (Arc<Cache>, tokio::runtime::Runtime, Arc<Dataset>) {
    for i in 0..FILES {
        std::fs::write(
            dir.join(format!("{i:03}.bin")),
            vec![i as u8; BLOCK as usize],
        )
        .unwrap();
    }
    let mut cfg = CacheConfig {
        block_size: ByteSize(BLOCK),
        ..CacheConfig::default()
    };
    change(&mut cfg);
    let spec = MountSpec {
        path: "/ds".into(),
        uri: format!("file://{}", dir.display()),
        options: Default::default(),
    };
    let cache = Cache::open(cfg, vec![spec]).unwrap();
    let samples = (0..FILES)
        .map(|i| Sample {
            key: format!("{i:03}"),
            label: 0,
            source: Source::File {
                path: LogicalPath::parse(&format!("/ds/{i:03}.bin")).unwrap(),
                size: BLOCK,
                version: String::new(),
            },
        })
        .collect();
    let dataset = Arc::new(Dataset {
        root: LogicalPath::parse("/ds").unwrap(),
        layout: Layout::ImageFolder,
        classes: Vec::new(),
        samples,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (cache, rt, dataset)
}

/// Waits (generously) until `done` holds.
fn until(what: &str, done: impl Fn() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn resident(cache: &Cache, range: std::ops::Range<u64>) -> Vec<u64> {
    let memory = cache.memory();
    range
        .filter(|i| {
            let path = LogicalPath::parse(&format!("/ds/{i:03}.bin")).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let fh = rt.block_on(cache.open_file(&path)).unwrap();
            cache
                .blocks(&fh, 0..BLOCK)
                .iter()
                .all(|b| memory.contains(b.id))
        })
        .collect()
}

#[test]
fn a_stuck_position_stops_the_prefetcher_at_its_window_and_a_moving_one_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, rt, dataset) = setup(dir.path());
    let ahead = Manual::new(0, 4);
    let shared = Prefetching::new(PrefetchConfig::default());
    let stats = Arc::new(LoaderPrefetch::default());
    let p = Prefetcher::start(
        &cache,
        rt.handle(),
        &dataset,
        ahead.clone(),
        &shared,
        stats.clone(),
    );
    until("the first window", || {
        stats.blocks.load(Ordering::Relaxed) == 4
    });
    // Nothing consumed: it stays at one step ahead.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        stats.blocks.load(Ordering::Relaxed),
        4,
        "not past the window"
    );
    assert_eq!(resident(&cache, 0..FILES), [0, 1, 2, 3]);
    assert_eq!(stats.ahead_bytes.load(Ordering::Relaxed), 4 * BLOCK);
    ahead.advance(4);
    until("the next window", || {
        stats.blocks.load(Ordering::Relaxed) == 8
    });
    assert_eq!(resident(&cache, 4..FILES), [4, 5, 6, 7]);
    until("the consumed samples' bytes back", || {
        shared.total.used() == 4 * BLOCK
    });
    drop(p);
    until("everything back on drop", || {
        shared.total.used() == 0 && cache.prefetch_ledger().is_empty()
    });
    assert_eq!(stats.ahead_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn the_byte_caps_hold_the_window_back() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, rt, dataset) = setup(dir.path());
    // A step of 16 samples, but room for two blocks in total.
    let ahead = Manual::new(0, 16);
    let cfg = PrefetchConfig {
        max_bytes: ByteSize(2 * BLOCK),
        max_bytes_per_loader: ByteSize(2 * BLOCK),
        ..PrefetchConfig::default()
    };
    let shared = Prefetching::new(cfg);
    let stats = Arc::new(LoaderPrefetch::default());
    let _p = Prefetcher::start(
        &cache,
        rt.handle(),
        &dataset,
        ahead.clone(),
        &shared,
        stats.clone(),
    );
    until("two blocks", || stats.blocks.load(Ordering::Relaxed) == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        stats.blocks.load(Ordering::Relaxed),
        2,
        "the cap holds the rest"
    );
    assert!(shared.total.used() <= 2 * BLOCK);
    let (_, peak) = cache.prefetch_inflight();
    assert!(peak <= 2 * BLOCK, "in flight at most the cap: {peak}");
    // A second loader finds the total budget taken: it prefetches nothing.
    let other = Arc::new(LoaderPrefetch::default());
    let behind = Manual::new(32, 4);
    let _q = Prefetcher::start(
        &cache,
        rt.handle(),
        &dataset,
        behind,
        &shared,
        other.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        other.blocks.load(Ordering::Relaxed),
        0,
        "no room in the total"
    );
}

/// The bytes a prefetcher plans at first, with its position held at 0 and the link at
/// `bandwidth` against a read every 10 ms.
fn first_plan(bandwidth: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (cache, rt, dataset) = setup_capped(dir.path(), bandwidth);
    let ahead = Manual::at(0, 1, 10_000_000);
    let shared = Prefetching::new(PrefetchConfig::default());
    let stats = Arc::new(LoaderPrefetch::default());
    let _p = Prefetcher::start(&cache, rt.handle(), &dataset, ahead, &shared, stats.clone());
    until("a plan", || stats.ahead_bytes.load(Ordering::Relaxed) > 0);
    stats.ahead_bytes.load(Ordering::Relaxed)
}

#[test]
fn a_link_slower_than_the_reads_plans_every_miss_it_must_start_now() {
    // 64 KiB/s: a block takes 62.5 ms of link and a read comes every 10 ms. Fetched in
    // order, the last of the 64 must start by 577.5 ms and each one before 62.5 ms earlier,
    // so the first 54 (those due by now) are planned at once, before any fetch has told the
    // time window how slow the link is.
    assert_eq!(first_plan(64 << 10), 54 * BLOCK);
    // 64 MiB/s: a block takes 61 µs, no miss is due before its step: one step planned.
    assert_eq!(first_plan(64 << 20), BLOCK);
}

#[test]
fn blocks_on_the_ssd_tier_are_not_misses_of_the_link() {
    let (dir, ssd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tiers = |cfg: &mut CacheConfig| {
        cfg.memory.capacity = ByteSize(16 * BLOCK);
        cfg.ssd = Some(loaderd_cache::config::SsdTierConfig {
            dir: ssd.path().to_path_buf(),
            capacity: ByteSize(4 * FILES * BLOCK),
            watermarks: Default::default(),
        });
    };
    // Every block read once: all of them on the SSD tier, which a restart keeps.
    {
        let (cache, rt, _) = setup_with(dir.path(), tiers);
        rt.block_on(async {
            for i in 0..FILES {
                let path = LogicalPath::parse(&format!("/ds/{i:03}.bin")).unwrap();
                let fh = cache.open_file(&path).await.unwrap();
                for b in cache.blocks(&fh, 0..BLOCK) {
                    let read = cache.get_block(&fh, &b, loaderd_cache::ReadType::Cache);
                    read.await.unwrap();
                }
            }
        });
    }
    // Restarted with an empty memory tier behind the slow link of `first_plan`: the blocks
    // are promoted from the SSD tier, not fetched, so none is due on the link and only the
    // time window (one step: one block) is planned, not a cap's worth (8 blocks).
    let (cache, rt, dataset) = setup_with(dir.path(), |cfg| {
        tiers(cfg);
        cfg.ufs.max_bandwidth = ByteSize(64 << 10);
    });
    let ahead = Manual::at(0, 1, 10_000_000);
    let shared = Prefetching::new(PrefetchConfig::default());
    let stats = Arc::new(LoaderPrefetch::default());
    let _p = Prefetcher::start(&cache, rt.handle(), &dataset, ahead, &shared, stats.clone());
    until("a plan", || stats.ahead_bytes.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.ahead_bytes.load(Ordering::Relaxed), BLOCK);
}
