use loaderd_cache::block::blocks_for;
use loaderd_cache::ufs::FileMeta;

use loaderd_cache::evict::idle::IDLE_SAMPLES;

use super::*;
use crate::sampler::SplitMix64;

fn id(n: u128) -> BlockId {
    BlockId(n)
}

/// `samples` samples reading 1..=3 of `blocks` blocks each, chosen at random.
fn random_blocks(samples: u64, blocks: u64, seed: u64) -> SampleBlocks {
    let mut rng = SplitMix64::new(seed);
    SampleBlocks::new((0..samples).map(|_| {
        let n = 1 + rng.below(3);
        let mut v: Vec<BlockId> = (0..n).map(|_| id(rng.below(blocks).into())).collect();
        v.sort();
        v.dedup();
        v
    }))
}

/// The first position at or after `from` of `order` whose sample reads `b`, by scanning.
fn scan(blocks: &SampleBlocks, order: &[u64], b: BlockId, from: u64) -> Option<u64> {
    (from..order.len() as u64).find(|&p| blocks.of(order[p as usize]).contains(&b))
}

#[test]
fn next_use_equals_a_scan_of_the_order() {
    for seed in 0..20 {
        let len = 5 + seed * 7;
        let blocks = random_blocks(len, len / 2 + 1, seed);
        let this = order(len, seed, 3, true);
        let next = order(len, seed, 4, true);
        let both: Vec<u64> = this.iter().chain(&next).copied().collect();
        let start = seed % len;
        let s = Schedule::new(&blocks, &this, &next, start);
        for step in [0, 1, len / 3, len, len + 2, 2 * len - 1, 2 * len] {
            let pos = (start + step).min(2 * len);
            s.advance_to(pos);
            assert_eq!(s.position(), pos);
            for b in 0..=(len / 2 + 2) {
                let want = scan(&blocks, &both, id(b.into()), pos);
                let got = s.next_use(id(b.into()));
                assert_eq!(
                    got.map(|t| s.position_of(t)),
                    want,
                    "seed {seed} pos {pos} block {b}"
                );
                if let Some(t) = got {
                    assert!(t >= s.now(), "answers are at or after now");
                }
            }
        }
    }
}

#[test]
fn the_next_epoch_extends_the_window_and_nothing_lies_beyond() {
    // Sample i reads block i. Block b's next use after this epoch's read is its position in
    // the next epoch's order, len + that index.
    let len = 50;
    let blocks = SampleBlocks::new((0..len).map(|i| vec![id(i.into())]));
    let this = order(len, 9, 0, true);
    let next = order(len, 9, 1, true);
    let s = Schedule::new(&blocks, &this, &next, 0);
    let first = this[0];
    let in_next = next.iter().position(|&x| x == first).unwrap() as u64;
    assert_eq!(s.position_of(s.next_use(id(first.into())).unwrap()), 0);
    s.advance_to(1);
    assert_eq!(
        s.position_of(s.next_use(id(first.into())).unwrap()),
        len + in_next,
        "read again in the next epoch"
    );
    s.advance_to(len + in_next + 1);
    assert_eq!(s.next_use(id(first.into())), None, "no third epoch");
    assert_eq!(
        s.next_use(id(u128::from(len) + 7)),
        None,
        "not in the dataset"
    );
    // Unshuffled, the order is the dataset's.
    assert_eq!(order(4, 9, 0, false), vec![0, 1, 2, 3]);
}

#[test]
fn tar_members_sharing_a_block_need_it_at_the_earliest_of_their_positions() {
    let shard = FileMeta {
        rel: "shard-0.tar".into(),
        size: 10_000,
        version: "v1".into(),
        mtime_ms: 0,
    };
    let bs = 4096;
    // Members at their (offset, len): the first two share block 0, the second spans 0..=1,
    // the third lies in block 2 alone.
    let members = [(512u64, 1000u64), (2048, 3000), (9000, 500)];
    let blocks = SampleBlocks::new(members.iter().map(|&(o, l)| {
        blocks_for("s3://b", &shard, bs, o..o + l)
            .iter()
            .map(|b| b.id)
            .collect()
    }));
    let b0 = BlockId::new("s3://b", &shard, bs, 0);
    let b1 = BlockId::new("s3://b", &shard, bs, 1);
    assert_eq!(blocks.of(0), &[b0][..]);
    assert_eq!(blocks.of(1), &[b0, b1][..]);
    // Order: member 2, member 1, member 0.
    let this = vec![2, 1, 0];
    let next = vec![0, 1, 2];
    let s = Schedule::new(&blocks, &this, &next, 0);
    let at = |b| s.next_use(b).map(|t| s.position_of(t));
    assert_eq!(at(b0), Some(1), "member 1 reads it first");
    assert_eq!(at(b1), Some(1));
    s.advance_to(2);
    assert_eq!(at(b0), Some(2), "then member 0");
    assert_eq!(at(b1), Some(4), "member 1 again, next epoch");
    s.advance_to(3);
    assert_eq!(at(b0), Some(3), "member 0 first in the next epoch");
    assert_eq!(s.index.ids.len(), 3, "one entry per block, not per member");
}

#[test]
fn advancing_keeps_ticks_absolute_until_the_rate_is_measured() {
    let len = 5000;
    let blocks = SampleBlocks::new((0..len).map(|i| vec![id(i.into())]));
    let this: Vec<u64> = (0..len).collect();
    let s = Schedule::new(&blocks, &this, &this, 0);
    let far = s.next_use(id(4000)).unwrap();
    assert_eq!(s.next_use(id(1)).unwrap() - s.now(), DEFAULT_NS_PER_SAMPLE);
    // Too few samples to measure: the plan holds, the far block's tick does not move.
    s.advance_to(RATE_MIN_SAMPLES - 1);
    assert_eq!(s.generation(), 0);
    assert_eq!(s.next_use(id(4000)), Some(far));
    assert_eq!(
        s.now(),
        s.next_use(id(u128::from(RATE_MIN_SAMPLES) - 1)).unwrap()
    );
    // 3000 samples in far less than the 3 s the default rate predicts: re-anchored at the
    // position with the measured (bounded) rate, generation bumped, ticks never back.
    let before = s.now();
    s.advance_to(3000);
    assert_eq!(s.generation(), 1);
    assert!(s.ns_per_sample() < DEFAULT_NS_PER_SAMPLE / 2);
    assert!(s.ns_per_sample() >= NS_PER_SAMPLE_BOUNDS.0);
    assert!(s.now() >= before);
    assert_eq!(s.position_of(s.next_use(id(4000)).unwrap()), 4000);
    assert!(
        s.next_use(id(4000)).unwrap() < far,
        "sooner at the faster rate"
    );
    // Never back, and capped at the window.
    s.advance_to(10);
    assert_eq!(s.position(), 3000);
    s.advance_to(1 << 40);
    assert_eq!(s.position(), 2 * len);
    assert_eq!(s.next_use(id(1)), None);
}

#[test]
fn a_loader_that_stops_consuming_needs_nothing_until_it_moves_again() {
    let len = 100;
    let blocks = SampleBlocks::new((0..len).map(|i| vec![id(i.into())]));
    let this: Vec<u64> = (0..len).collect();
    let s = Schedule::new(&blocks, &this, &this, 0).idle_after(Duration::from_millis(50));
    assert!(s.next_use(id(10)).is_some());
    let g = s.generation();
    // At least IDLE_SAMPLES samples' time at the default rate (1 ms a sample) passes.
    std::thread::sleep(Duration::from_millis(IDLE_SAMPLES + 100));
    assert_eq!(s.generation(), g + 1, "going idle changes every answer");
    assert_eq!(s.next_use(id(10)), None);
    assert_eq!(s.generation(), g + 1, "once");
    // Moving again: needed again, predicted from now, not from before the stall.
    let resumed = clock();
    s.advance_to(5);
    assert_eq!(s.generation(), g + 2);
    let tick = s.next_use(id(10)).expect("needed again");
    assert!(
        tick >= resumed + 5 * s.ns_per_sample(),
        "{tick} vs {resumed}"
    );
}

#[test]
fn memory_is_known_before_building() {
    let blocks = random_blocks(200, 80, 1);
    let this = order(200, 1, 0, true);
    let next = order(200, 1, 1, true);
    let s = Schedule::new(&blocks, &this, &next, 0);
    assert!(s.heap_bytes() <= Schedule::bytes_for(blocks.len() as u64, blocks.reads(), 2));
    assert!(s.heap_bytes() > 0);
}

#[test]
fn a_block_being_read_is_judged_by_its_following_read() {
    // Sample i reads block i % 3: block 0 at positions 0, 3, then the next epoch.
    let len: u64 = 6;
    let blocks = SampleBlocks::new((0..len).map(|i| vec![id((i % 3).into())]));
    let this: Vec<u64> = (0..len).collect();
    let s = Schedule::new(&blocks, &this, &this, 0);
    let at = |b| s.next_use(id(b)).map(|t| s.position_of(t));
    assert_eq!(at(0), Some(0));
    // Workers run ahead of delivery: positions 0..=3 being read, none delivered yet.
    for p in 0..4 {
        s.reading(p);
    }
    assert_eq!(
        at(0),
        Some(6),
        "both reads of this epoch began: the next epoch's"
    );
    assert_eq!(at(1), Some(4));
    assert_eq!(s.now(), s.next_use(id(0)).unwrap() - 6 * s.ns_per_sample());
    // A rank's i-th sample is at start + i * world + rank.
    let blocks = SampleBlocks::new((0..8u64).map(|i| vec![id(i.into())]));
    let this: Vec<u64> = (0..8u64).collect();
    let s = Arc::new(Schedule::new(&blocks, &this, &this, 2));
    let r = Registered {
        schedule: s.clone(),
        _registration: loaderd_cache::evict::NextUseOracle::new().register(s.clone()),
        order: (0..16u32).map(|p| p % 8).collect(),
        frontier: AtomicU64::new(2),
        moved: Notify::new(),
        start: 2,
        step: 2 * 2,
        rank: 1,
        world: 2,
        listing: Listing::default(),
        reads: blocks.reads(),
    };
    r.reading(0..2); // positions 3 and 5
    let at = |b| s.next_use(id(b)).map(|t| s.position_of(t));
    assert_eq!(
        (at(2), at(3), at(4), at(5)),
        (Some(2), Some(11), Some(4), Some(13))
    );
    // Both ranks read in step: the step of positions 2..6 has begun.
    assert_eq!(r.frontier(), 6);
    assert_eq!((r.end(), r.step(), r.sample(9)), (16, 4, Some(1)));
    r.delivered(1);
    assert_eq!(s.position(), 6);
    r.delivered(2);
    assert_eq!(r.frontier(), 10, "never behind the position");
}

/// The block lists built from the index alone are the ones the readers' open files give,
/// for plain files of one and several blocks and for tar members (sharing and spanning
/// blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn block_lists_from_the_index_are_the_readers_blocks() {
    use crate::dataset::tests::shard;
    use loaderd_cache::{ByteSize, CacheConfig, LogicalPath, MountSpec};
    let (files, tars) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (class, sizes) in [("a", [10usize, 5000, 20000]), ("b", [4096, 1, 8193])] {
        std::fs::create_dir(files.path().join(class)).unwrap();
        for (i, n) in sizes.iter().enumerate() {
            std::fs::write(files.path().join(format!("{class}/{i}.jpg")), vec![1u8; *n]).unwrap();
        }
    }
    let big = vec![2u8; 9000];
    let s = shard(&[
        ("x.jpg", b"tiny"),
        ("x.cls", b"1"),
        ("y.jpg", &big),
        ("y.cls", b"2"),
    ]);
    std::fs::write(tars.path().join("s0.tar"), s).unwrap();
    let mount = |path: &str, dir: &std::path::Path| MountSpec {
        path: path.into(),
        uri: format!("file://{}", dir.display()),
        options: Default::default(),
    };
    let cfg = CacheConfig {
        block_size: ByteSize(4096),
        ..CacheConfig::default()
    };
    let specs = vec![mount("/f", files.path()), mount("/t", tars.path())];
    let cache = Cache::open(cfg, specs).unwrap();
    for root in ["/f", "/t"] {
        let ds = Dataset::index(&cache, &LogicalPath::parse(root).unwrap())
            .await
            .unwrap();
        let from_index = sample_blocks(&cache, &ds);
        assert_eq!(from_index.len(), ds.len());
        assert_eq!(
            block_reads(&cache, &ds),
            from_index.reads(),
            "counted before building"
        );
        for (i, sample) in ds.samples.iter().enumerate() {
            let (path, version, range) = sample.source.span();
            let fh = cache.open_file_at(path, version).await.unwrap();
            let want: Vec<BlockId> = cache.blocks(&fh, range).iter().map(|b| b.id).collect();
            assert!(!want.is_empty());
            assert_eq!(
                from_index.of(i as u64),
                &want[..],
                "{root} sample {}",
                sample.key
            );
        }
    }
}
