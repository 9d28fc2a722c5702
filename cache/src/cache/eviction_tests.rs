//! `cache.eviction` through the read path: each tier keeps what its configured policy says.
//!
//! Two traces over a file of 64 KiB blocks, through a tier of 8 blocks, tell the policies
//! apart: a loop over 16 blocks (LRU keeps nothing it will use; a fixed resident set hits on
//! half) and a switch to a new working set of 6 blocks (LRU follows it; a fixed resident set
//! does not). Only the clairvoyant policy with the schedule registered gets both right.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{ByteSize, Eviction, SsdTierConfig, Watermarks};
use crate::evict::traces::TraceSource;

const BLOCK: u64 = 64 << 10;
const BLOCKS: u64 = 32;
/// The tier under test holds this many blocks.
const HELD: u64 = 8;

#[derive(Debug, Clone, Copy)]
enum Under {
    Memory,
    Ssd,
}

struct Setup {
    cache: Arc<Cache>,
    rt: tokio::runtime::Runtime,
    fh: FileHandle,
    bytes: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn setup(eviction: Eviction, under: Under) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..BLOCKS * BLOCK).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.path().join("f.bin"), &bytes).unwrap();
    let watermarks = Watermarks {
        high: 1.0,
        low: 0.9,
    };
    let mut cfg = CacheConfig {
        block_size: ByteSize(BLOCK),
        eviction,
        ..CacheConfig::default()
    };
    cfg.memory.watermarks = watermarks;
    match under {
        Under::Memory => cfg.memory.capacity = ByteSize(HELD * BLOCK),
        Under::Ssd => {
            cfg.memory.capacity = ByteSize(0);
            cfg.ssd = Some(SsdTierConfig {
                dir: dir.path().join("ssd"),
                // Each block file has a 40-byte header.
                capacity: ByteSize(HELD * (BLOCK + 40)),
                watermarks,
            });
        }
    }
    let spec = MountSpec {
        path: "/ds".into(),
        uri: format!("file://{}", dir.path().display()),
        options: Default::default(),
    };
    let cache = Cache::open(cfg, vec![spec]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fh = rt
        .block_on(cache.open_file(&LogicalPath::parse("/ds/f.bin").unwrap()))
        .unwrap();
    Setup {
        cache,
        rt,
        fh,
        bytes,
        _dir: dir,
    }
}

impl Setup {
    fn block(&self, i: u64) -> BlockRef {
        self.cache.blocks(&self.fh, i * BLOCK..i * BLOCK + 1)[0].clone()
    }

    /// Reads blocks `order` (the schedule, if any, advanced before each read); the hits.
    fn play(&self, order: &[u64], schedule: Option<&TraceSource>) -> usize {
        let mut hits = 0;
        for (pos, &i) in order.iter().enumerate() {
            if let Some(s) = schedule {
                s.advance(pos as u64 + 1);
            }
            let b = self.block(i);
            hits += usize::from(self.cache.is_cached(b.id));
            let got = self
                .rt
                .block_on(self.cache.get_block(&self.fh, &b, ReadType::Cache))
                .unwrap();
            let want = &self.bytes[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize];
            assert!(got[..] == *want, "block {i} reads back");
            // The SSD write follows the answer; the fetch ends when it is done.
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.cache.fetches.contains(&b.id) {
                assert!(Instant::now() < deadline, "fetch of block {i} never ended");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let st = &self.cache.status().tiers;
        let tier = st.iter().find(|t| t.capacity > 0).expect("a tier");
        assert!(tier.used <= tier.capacity, "{tier:?}");
        hits
    }

    /// Plays `order` with its own schedule registered.
    fn play_scheduled(&self, order: &[u64]) -> usize {
        let ids: Vec<BlockId> = order.iter().map(|&i| self.block(i).id).collect();
        let schedule = TraceSource::reading(&ids, |_| true);
        let _reg = self.cache.next_use().register(schedule.clone());
        self.play(order, Some(&schedule))
    }
}

fn loop_trace() -> Vec<u64> {
    (0..2).flat_map(|_| 0..16).collect()
}

fn switch_trace() -> Vec<u64> {
    (16..24).chain(24..30).chain(24..30).collect()
}

fn hits(eviction: Eviction, under: Under, scheduled: bool) -> (usize, usize) {
    let run = |order: Vec<u64>| {
        let s = setup(eviction, under);
        if scheduled {
            s.play_scheduled(&order)
        } else {
            s.play(&order, None)
        }
    };
    (run(loop_trace()), run(switch_trace()))
}

#[test]
fn each_tier_evicts_by_the_configured_policy() {
    for under in [Under::Memory, Under::Ssd] {
        assert_eq!(hits(Eviction::Lru, under, false), (0, 6), "lru, {under:?}");
        assert_eq!(
            hits(Eviction::Stable, under, false),
            (8, 0),
            "stable, {under:?}"
        );
        assert_eq!(
            hits(Eviction::Clairvoyant, under, true),
            (8, 6),
            "clairvoyant with the schedule, {under:?}"
        );
        assert_eq!(
            hits(Eviction::Clairvoyant, under, false),
            (8, 0),
            "clairvoyant without a schedule is stable, {under:?}"
        );
    }
}

#[test]
fn a_block_not_admitted_still_reads_and_passes_through() {
    let s = setup(Eviction::Stable, Under::Memory);
    s.play(&(0..HELD).collect::<Vec<_>>(), None);
    let b = s.block(HELD);
    assert_eq!(s.play(&[HELD], None), 0);
    assert!(
        !s.cache.is_cached(b.id),
        "a full stable tier keeps its residents"
    );
    assert_eq!(s.cache.status().tiers[0].blocks, HELD);
}
