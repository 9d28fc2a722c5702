use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::*;
use crate::config::{ByteSize, Secs};
use crate::placement::Member;

/// Every sample `i` reads block `i`; the built index holds `BYTES`.
struct Linear {
    len: u64,
    positions: Vec<Vec<u32>>,
    ids: Vec<BlockId>,
}

impl PositionIndex for Linear {
    fn epoch_len(&self) -> u64 {
        self.len
    }
    fn positions(&self, id: BlockId) -> &[u32] {
        self.positions.get(id.0 as usize).map_or(&[], Vec::as_slice)
    }
    fn blocks_at(&self, p: u64) -> &[BlockId] {
        self.ids
            .get((p % self.len) as usize)
            .map_or(&[], std::slice::from_ref)
    }
    fn heap_bytes(&self) -> u64 {
        BYTES
    }
}

const BYTES: u64 = 1000;

/// Builds [`Linear`] (the identity order) unless the listing hash is `BAD`; counts builds.
#[derive(Default)]
struct Fake {
    builds: AtomicU64,
}

const BAD: u64 = 666;

impl IndexBuilder for Fake {
    fn estimate(&self, a: &Announcement) -> u64 {
        a.block_reads
    }
    fn build(
        &self,
        a: Announcement,
        _owns: Owns,
    ) -> BoxFuture<'static, Result<Arc<dyn PositionIndex>, Ignored>> {
        self.builds.fetch_add(1, Ordering::Relaxed);
        async move {
            if a.listing.hash == BAD {
                return Err(Ignored::Unavailable("listing differs".into()));
            }
            let len = a.listing.count;
            let positions = (0..len as u32).map(|p| vec![p, p + len as u32]).collect();
            let ids = (0..len as u128).map(BlockId).collect();
            Ok(Arc::new(Linear {
                len,
                positions,
                ids,
            }) as Arc<dyn PositionIndex>)
        }
        .boxed()
    }
}

fn store(cfg: RemoteScheduleConfig) -> (Arc<RemoteSchedules>, Arc<NextUseOracle>, Arc<Fake>) {
    let members = [("a", "x:1"), ("b", "x:2")].map(|(id, addr)| Member {
        id: id.into(),
        addr: addr.into(),
    });
    let (tx, view) = watch::channel(Arc::new(Placement::new(members)));
    std::mem::forget(tx);
    let s = RemoteSchedules::new(cfg, "b".into(), 1, view);
    let oracle = NextUseOracle::new();
    let fake = Arc::new(Fake::default());
    s.attach_oracle(oracle.clone());
    s.set_builder(fake.clone());
    (s, oracle, fake)
}

fn announcement(peer: &str, loader: u64, rank: u64) -> Announcement {
    Announcement {
        peer: peer.into(),
        loader,
        job: "job".into(),
        dataset: "/ds".into(),
        shuffle: true,
        drop_last: false,
        listing: Listing {
            count: 100,
            hash: 7,
        },
        seed: 1,
        epoch: 0,
        world: 2,
        rank,
        batch: 4,
        consumed: 0,
        delivered: 0,
        ns_per_sample: 1_000_000,
        block_reads: 500,
    }
}

/// Waits (bounded) until `oracle` has `n` sources.
async fn registered(s: &RemoteSchedules, n: usize) {
    for _ in 0..500 {
        if s.registered().len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} registered, expected {n}", s.registered().len());
}

#[tokio::test]
async fn ranks_of_a_job_register_over_one_shared_index_and_withdraw() {
    let (s, oracle, fake) = store(RemoteScheduleConfig::default());
    assert_eq!(s.announce(announcement("a", 1, 0)).unwrap(), Ack::Accepted);
    registered(&s, 1).await;
    // Rank 0 of 2 reads the even positions: block 4 at position 4 (its own sample 2); block
    // 5 is read by rank 1 only, which has not announced.
    let now = oracle.now();
    assert_eq!(oracle.next_use(BlockId(4)), Some(now + 2 * 1_000_000));
    assert_eq!(oracle.next_use(BlockId(5)), None);
    // The second rank shares the index: no second build, its bytes counted once.
    assert_eq!(s.announce(announcement("a", 2, 1)).unwrap(), Ack::Accepted);
    registered(&s, 2).await;
    assert!(
        oracle.next_use(BlockId(5)).is_some(),
        "rank 1 reads block 5"
    );
    assert_eq!(fake.builds.load(Ordering::Relaxed), 1);
    let st = s.status();
    assert_eq!((st.held, st.bytes), (2, BYTES));
    assert_eq!(st.by_peer.get("a"), Some(&2));
    // A refresh keeps both; a withdrawal drops one; the last gives the bytes back.
    let mut a = announcement("a", 1, 0);
    a.delivered = 3;
    assert_eq!(s.announce(a).unwrap(), Ack::Accepted);
    assert_eq!(s.registered().iter().map(|r| r.position()).max(), Some(6));
    assert!(s.withdraw("a", 1));
    assert!(s.withdraw("a", 2));
    assert!(!s.withdraw("a", 2));
    assert!(oracle.is_empty());
    assert_eq!(s.status().bytes, 0);
}

#[tokio::test]
async fn announcements_over_a_cap_are_refused_naming_it() {
    let cfg = RemoteScheduleConfig {
        max_per_peer: 2,
        max_total: 3,
        max_bytes: ByteSize(2000),
        ..RemoteScheduleConfig::default()
    };
    let (s, _, _) = store(cfg);
    s.announce(announcement("a", 1, 0)).unwrap();
    s.announce(announcement("a", 2, 1)).unwrap();
    let e = s.announce(announcement("a", 3, 0)).unwrap_err().to_string();
    assert!(e.contains("cluster.schedules.max_per_peer"), "{e}");
    s.announce(announcement("c", 1, 0)).unwrap();
    let e = s.announce(announcement("d", 1, 0)).unwrap_err().to_string();
    assert!(e.contains("cluster.schedules.max_total"), "{e}");
    s.withdraw("c", 1);
    let mut big = announcement("d", 1, 0);
    big.block_reads = 5000;
    let e = s.announce(big).unwrap_err().to_string();
    assert!(e.contains("cluster.schedules.max_bytes"), "{e}");
    assert_eq!(s.status().refused, 3);
    assert_eq!(s.status().held, 2);
}

#[tokio::test]
async fn a_schedule_not_refreshed_expires_and_a_differing_listing_is_ignored() {
    let cfg = RemoteScheduleConfig {
        refresh: Secs(Duration::from_millis(50)),
        expiry: Secs(Duration::from_millis(200)),
        ..RemoteScheduleConfig::default()
    };
    let (s, oracle, _) = store(cfg);
    let _reaper = s.spawn_reaper();
    s.announce(announcement("a", 1, 0)).unwrap();
    registered(&s, 1).await;
    for _ in 0..500 {
        if s.status().expired == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.status().expired, 1);
    assert!(oracle.is_empty());

    let mut bad = announcement("a", 2, 0);
    bad.listing.hash = BAD;
    assert_eq!(s.announce(bad.clone()).unwrap(), Ack::Accepted);
    for _ in 0..500 {
        if s.status().ignored == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = s.status();
    assert_eq!((st.ignored, st.held), (1, 0));
    assert!(matches!(s.announce(bad).unwrap(), Ack::Ignored(_)));
    assert!(oracle.is_empty());
}

#[tokio::test]
async fn a_new_epoch_is_served_by_the_old_window_until_its_own_index_is_built() {
    let (s, _, fake) = store(RemoteScheduleConfig::default());
    let mut a = announcement("a", 1, 0);
    a.delivered = 10;
    s.announce(a.clone()).unwrap();
    registered(&s, 1).await;
    assert_eq!(s.registered()[0].position(), 20);
    // The next epoch: its position 4 is the old window's 104, until the rebuild lands.
    a.epoch = 1;
    a.delivered = 2;
    s.announce(a).unwrap();
    // (The build is spawned on this test's one thread: it has not run yet.)
    assert_eq!(s.registered()[0].position(), 104);
    for _ in 0..500 {
        if fake.builds.load(Ordering::Relaxed) == 2 && s.registered()[0].position() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.builds.load(Ordering::Relaxed), 2);
    let r = &s.registered()[0];
    assert_eq!((r.position(), r.index().epoch_len()), (4, 100));
    assert_eq!(s.status().bytes, BYTES, "the old index was given back");
}
