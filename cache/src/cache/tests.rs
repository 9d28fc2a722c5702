//! The read path against a real file mount.

use std::sync::Arc;

use super::*;
use crate::config::ByteSize;
use crate::tier::Tier;

const BLOCK: u64 = 128 << 10;

/// A cache over a temp dir holding `f.bin` (three blocks, the last one short).
fn cache(dir: &std::path::Path) -> (Arc<Cache>, Vec<u8>) {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(dir.join("f.bin"), &bytes).unwrap();
    let cfg = CacheConfig {
        block_size: ByteSize(BLOCK),
        ..CacheConfig::default()
    };
    let spec = MountSpec {
        path: "/ds".into(),
        uri: format!("file://{}", dir.display()),
        options: Default::default(),
    };
    (Cache::open(cfg, vec![spec]).unwrap(), bytes)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// [`cache`] with a runtime and `f.bin` open.
fn opened(dir: &std::path::Path) -> (Arc<Cache>, tokio::runtime::Runtime, FileHandle) {
    let (cache, _) = cache(dir);
    let rt = runtime();
    let fh = rt
        .block_on(cache.open_file(&LogicalPath::parse("/ds/f.bin").unwrap()))
        .unwrap();
    (cache, rt, fh)
}

#[test]
fn a_dropped_fetch_is_unavailable_and_the_next_read_fetches_again() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, bytes) = cache(dir.path());
    let first = runtime();
    let path = LogicalPath::parse("/ds/f.bin").unwrap();
    let (fh, permit) = first.block_on(async {
        let fh = cache.open_file(&path).await.unwrap();
        // The whole budget held: the fetch spawned below waits for it.
        let all = cache.cfg.ufs.max_inflight_bytes.0;
        let permit = cache.budget.acquire(&fh.mount, all).await;
        (fh, permit)
    });
    let b = cache.blocks(&fh, 0..1)[0].clone();
    let mut read = Box::pin(cache.get_block(&fh, &b, ReadType::Cache));
    first.block_on(async { assert!(futures::poll!(read.as_mut()).is_pending()) });
    // The runtime goes away with the fetch task still waiting: the task is dropped.
    drop(first);
    drop(permit);
    let second = runtime();
    let err = second.block_on(read).unwrap_err();
    assert!(matches!(err.root(), Error::FetchDropped), "{err:?}");
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable, "{err}");
    // The dropped fetch left the in-flight map: the next read fetches anew.
    let data = second
        .block_on(cache.get_block(&fh, &b, ReadType::Cache))
        .expect("a read after a dropped fetch");
    assert_eq!(&data[..], &bytes[..BLOCK as usize]);
}

#[test]
fn an_offset_past_the_end_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _rt, fh) = opened(dir.path());
    assert_eq!(fh.span(10, 0).unwrap(), 10..300_000);
    assert_eq!(fh.span(299_990, 100).unwrap(), 299_990..300_000);
    assert_eq!(
        fh.span(300_000, 0).unwrap(),
        300_000..300_000,
        "empty at the end"
    );
    for err in [
        fh.span(300_001, 0).unwrap_err(),
        cache
            .read(fh.clone(), 300_001..300_002, ReadType::Cache, 1)
            .err()
            .unwrap(),
    ] {
        assert_eq!(err.kind(), crate::ErrorKind::OutOfRange, "{err}");
    }
}

#[test]
fn a_fetch_started_as_its_runtime_shuts_down_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, rt, fh) = opened(dir.path());
    let handle = rt.handle().clone();
    rt.shutdown_background();
    // A task spawned now is dropped at once; its flight must end without the read hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _in_runtime = handle.enter();
        let b = cache.blocks(&fh, 0..1)[0].clone();
        let res = futures::executor::block_on(cache.get_block(&fh, &b, ReadType::Cache));
        let _ = tx.send(res.map(drop).map_err(|e| e.kind()));
    });
    let res = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the read answered");
    assert_eq!(res, Err(crate::ErrorKind::Unavailable));
}

/// A reader arriving while a prefetch of its block is in flight joins it: one fetch.
#[test]
fn a_reader_joins_a_prefetch_in_flight_and_the_block_is_fetched_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, rt, fh) = opened(dir.path());
    let b = cache.blocks(&fh, 0..1)[0].clone();
    // The whole budget held: the prefetch's fetch waits for it, in flight.
    let all = cache.cfg.ufs.max_inflight_bytes.0;
    let permit = rt.block_on(cache.budget.acquire(&fh.mount, all));
    let prefetch = {
        let (cache, fh, b) = (cache.clone(), fh.clone(), b.clone());
        rt.spawn(async move { cache.prefetch_block(&fh, &b).await })
    };
    rt.block_on(async {
        while !cache.fetches.contains(&b.id) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let read = {
        let (cache, fh, b) = (cache.clone(), fh.clone(), b.clone());
        rt.spawn(async move { cache.fetch_block(&fh, &b, ReadType::Cache).await })
    };
    std::thread::sleep(Duration::from_millis(50));
    drop(permit);
    let (data, served) = rt.block_on(read).unwrap().unwrap();
    assert_eq!(served, Served::Joined, "the reader joined the prefetch");
    assert_eq!(data.len() as u64, BLOCK);
    assert_eq!(rt.block_on(prefetch).unwrap().unwrap(), Prefetched::Fetched);
    assert!(cache.memory().contains(b.id));
    assert_eq!(
        rt.block_on(cache.prefetch_block(&fh, &b)).unwrap(),
        Prefetched::Resident
    );
}

/// A block on the SSD tier only is promoted into memory; a prefetched block's first read
/// is a prefetch hit and is counted in the reader's tally as served from a tier.
#[test]
fn a_block_on_ssd_is_promoted_and_its_read_is_a_prefetch_hit() {
    let dir = tempfile::tempdir().unwrap();
    let ssd = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), vec![7u8; 3 * BLOCK as usize]).unwrap();
    let cfg = CacheConfig {
        block_size: ByteSize(BLOCK),
        ssd: Some(crate::config::SsdTierConfig {
            dir: ssd.path().to_path_buf(),
            capacity: ByteSize(16 << 20),
            watermarks: Default::default(),
        }),
        ..CacheConfig::default()
    };
    let spec = MountSpec {
        path: "/ds".into(),
        uri: format!("file://{}", dir.path().display()),
        options: Default::default(),
    };
    let cache = Cache::open(cfg, vec![spec]).unwrap();
    let rt = runtime();
    let fh = rt
        .block_on(cache.open_file(&LogicalPath::parse("/ds/f.bin").unwrap()))
        .unwrap();
    let b = cache.blocks(&fh, 0..1)[0].clone();
    rt.block_on(
        cache
            .tiers
            .put_lower(b.id, &Bytes::from(vec![7u8; BLOCK as usize])),
    );
    assert!(!cache.memory().contains(b.id));
    let ledger = cache.prefetch_ledger();
    let owner = ledger.owner();
    assert!(ledger.plan(owner, b.id) && ledger.start(owner, b.id));
    let done = rt.block_on(cache.prefetch_block(&fh, &b)).unwrap();
    assert_eq!(done, Prefetched::Promoted);
    assert!(cache.memory().contains(b.id), "promoted into memory");
    ledger.landed(owner, b.id);
    let hits = stats::snapshot().prefetch_hits;
    let tally = Arc::new(crate::prefetch::ReadTally::default());
    let data = rt
        .block_on(crate::prefetch::tallied(
            tally.clone(),
            cache.get_block(&fh, &b, ReadType::Cache),
        ))
        .unwrap();
    assert_eq!(&data[..], &[7u8; BLOCK as usize][..]);
    assert_eq!(tally.get(), (1, 0), "served from a tier");
    assert!(stats::snapshot().prefetch_hits > hits, "a prefetch hit");
    assert!(ledger.is_empty(), "the mark went with the read");
}
