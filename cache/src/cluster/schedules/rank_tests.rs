use super::*;

/// Block `b` is read at the positions listed for it; sample `p` reads block `p`'s id.
struct Fixed {
    len: u64,
    reads: Vec<(BlockId, Vec<u32>)>,
}

impl PositionIndex for Fixed {
    fn epoch_len(&self) -> u64 {
        self.len
    }
    fn positions(&self, id: BlockId) -> &[u32] {
        self.reads
            .iter()
            .find(|(b, _)| *b == id)
            .map_or(&[], |(_, p)| p.as_slice())
    }
    fn blocks_at(&self, position: u64) -> &[BlockId] {
        self.reads
            .iter()
            .find(|(_, p)| p.contains(&(position as u32)))
            .map_or(&[], |(b, _)| std::slice::from_ref(b))
    }
    fn heap_bytes(&self) -> u64 {
        0
    }
}

const RANKS: Ranks = Ranks {
    len: 20,
    consumed: 6,
    rank: 1,
    world: 3,
};

#[test]
fn a_rank_reads_its_own_positions_in_this_epoch_and_the_next() {
    // This epoch from consumed 6: 7, 10, 13, 16, 19; the next from 0: 21, 24, ..., 39.
    let own: Vec<u64> = (0..40).filter(|&p| RANKS.own_index(p).is_some()).collect();
    assert_eq!(own, [7, 10, 13, 16, 19, 21, 24, 27, 30, 33, 36, 39]);
    for (i, &p) in own.iter().enumerate() {
        assert_eq!(RANKS.own_index(p), Some(i as u64), "position {p}");
        assert_eq!(RANKS.position(i as u64), p);
    }
    // Positions of other ranks, before the loader's start, and past the window: none.
    for p in [0, 4, 6, 8, 9, 20, 22, 40, 43] {
        assert_eq!(RANKS.own_index(p), None, "position {p}");
    }
    // One rank: every position from consumed on.
    let solo = Ranks {
        len: 5,
        consumed: 2,
        rank: 0,
        world: 1,
    };
    let own: Vec<Option<u64>> = (0..10).map(|p| solo.own_index(p)).collect();
    assert_eq!(
        own,
        [
            None,
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(7)
        ]
    );
}

fn schedule(now: Tick, ns: u64) -> RankSchedule {
    let index = Fixed {
        len: 20,
        reads: vec![
            (BlockId(1), vec![10, 11, 27]),
            (BlockId(2), vec![8, 22]),
            (BlockId(3), vec![19]),
        ],
    };
    RankSchedule::new(Arc::new(index), RANKS, 7, now, ns)
}

#[test]
fn ticks_are_the_owners_clock_from_the_announced_position_and_rate() {
    // The rank's next read (position 7, own 0) is at the owner's tick 5 s, one own sample
    // per 2 ms after.
    let (now, ns) = (5_000_000_000, 2_000_000);
    let s = schedule(now, ns);
    assert_eq!(s.now(), now);
    // Block 1: position 10 is own sample 1 (11 is another rank's).
    assert_eq!(s.next_use(BlockId(1)), Some(now + ns));
    // Block 2: position 8 is another rank's; 22 is not this rank's either (21, 24, ...).
    assert_eq!(s.next_use(BlockId(2)), None);
    // Block 3: position 19, own sample 4.
    assert_eq!(s.next_use(BlockId(3)), Some(now + 4 * ns));
    assert_eq!(s.next_use(BlockId(9)), None);

    // A refresh on time at the same rate keeps every tick (they are absolute).
    s.refresh(10, now + ns, ns, 1_000_000);
    assert_eq!(s.generation(), 0);
    assert_eq!(s.next_use(BlockId(1)), Some(now + ns));
    // Past position 10: block 1's next read is 27 (own 7), block 3 still at 19.
    s.refresh(13, now + 2 * ns, ns, 1_000_000);
    assert_eq!(s.next_use(BlockId(1)), Some(now + 7 * ns));
    assert_eq!(s.next_use(BlockId(3)), Some(now + 4 * ns));

    // The rank slowed down fourfold: re-anchored at the refresh, the generation bumped.
    let later = now + 100 * ns;
    s.refresh(16, later, 4 * ns, 1_000_000);
    assert_eq!(s.generation(), 1);
    assert_eq!(s.now(), later);
    assert_eq!(s.next_use(BlockId(3)), Some(later + 4 * ns));
    // Positions never move back.
    s.refresh(7, later, 4 * ns, 1_000_000);
    assert_eq!(s.position(), 16);
}

#[test]
fn an_absurd_rate_gets_the_bound_and_a_late_rank_re_anchors() {
    let a = Anchor {
        tick: 1_000,
        own: 0,
        ns_per_sample: 1_000_000,
    };
    let fast = a.refreshed(1_000, 0, 1, 10).expect("a new rate");
    assert_eq!(fast.ns_per_sample, NS_PER_SAMPLE_BOUNDS.0);
    let slow = a.refreshed(1_000, 0, u64::MAX, 10).expect("a new rate");
    assert_eq!(slow.ns_per_sample, NS_PER_SAMPLE_BOUNDS.1);
    // Same rate, but the rank is 5 samples behind the prediction: more than the drift.
    let late = a.refreshed(1_000 + 9_000_000, 4, 1_000_000, 1_000_000);
    assert_eq!(
        late,
        Some(Anchor {
            tick: 9_001_000,
            own: 4,
            ns_per_sample: 1_000_000
        })
    );
    assert_eq!(a.refreshed(5_001_000, 5, 1_000_000, 1_000_000), None);
}

#[test]
fn a_read_seen_by_the_owner_moves_the_block_on_to_its_following_read() {
    let (now, ns) = (1_000_000, 1_000);
    let s = schedule(now, ns);
    let (tick, p) = s.upcoming_read(BlockId(1)).expect("block 1 is read");
    assert_eq!((tick, p), (now + ns, 10));
    assert!(s.read(p));
    assert_eq!(s.upcoming_read(BlockId(1)), Some((now + 7 * ns, 27)));
    // The mark is dropped once the announced position passes it.
    s.refresh(13, now + 2 * ns, ns, u64::MAX);
    assert!(lock(&s.read).is_empty());
    assert!(!s.read(10), "a position behind the rank is not marked");
    // The blocks of its next reads, for a prefetcher: positions 13, 16, 19, 21, 24, 27.
    assert_eq!(s.upcoming(6), [BlockId(3), BlockId(1)]);
}

#[test]
fn a_rank_refreshed_at_the_same_position_goes_idle_until_it_moves() {
    let (now, ns) = (5_000_000_000, 1_000);
    let ms = 1_000_000;
    let s = schedule(now, ns).idle_after(std::time::Duration::from_millis(100));
    assert!(s.next_use(BlockId(1)).is_some());
    s.refresh(7, now + 50 * ms, ns, 0);
    assert!(
        s.next_use(BlockId(1)).is_some(),
        "still within the idle time"
    );
    let g = s.generation();
    // A stalled trainer: its node keeps announcing the same position.
    s.refresh(7, now + 200 * ms, ns, 0);
    assert_eq!(s.next_use(BlockId(1)), None, "idle: needs nothing");
    assert_eq!(s.generation(), g + 1);
    // It moves again: needed again, predicted from that refresh.
    s.refresh(10, now + 300 * ms, ns, 0);
    assert!(s.generation() > g + 1);
    assert!(s.next_use(BlockId(3)).is_some_and(|t| t >= now + 300 * ms));
}
