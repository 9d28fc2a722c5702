use loaderd_cache::LogicalPath;

use super::*;
use crate::dataset::{Layout, Sample};

/// Sample `i` of `len` reads blocks `i % 7` and `(i * 3) % 11 + 7`.
fn blocks(len: u64) -> SampleBlocks {
    SampleBlocks::new((0..len).map(|i| {
        vec![
            BlockId(u128::from(i % 7)),
            BlockId(u128::from((i * 3) % 11 + 7)),
        ]
    }))
}

#[test]
fn an_owned_index_holds_the_owned_blocks_at_every_position_that_reads_them() {
    let len = 40;
    let all = blocks(len);
    let owns = |id: BlockId| id.0.is_multiple_of(2);
    let owned = SampleBlocks::new((0..len).map(|i| {
        all.of(i)
            .iter()
            .copied()
            .filter(|b| owns(*b))
            .collect::<Vec<_>>()
    }));
    let (this, next) = (order(len, 5, 0, true), order(len, 5, 1, true));
    let index = OwnedIndex::new(owned, &this, &next);
    let both: Vec<u64> = this.iter().chain(&next).copied().collect();
    assert_eq!(index.epoch_len(), len);
    for b in 0..18u128 {
        let id = BlockId(b);
        let want: Vec<u32> = (0..both.len())
            .filter(|&p| owns(id) && all.of(both[p]).contains(&id))
            .map(|p| p as u32)
            .collect();
        assert_eq!(index.positions(id), want.as_slice(), "block {b}");
    }
    for (p, &s) in both.iter().enumerate() {
        let want: Vec<BlockId> = all.of(s).iter().copied().filter(|b| owns(*b)).collect();
        assert_eq!(index.blocks_at(p as u64), want.as_slice(), "position {p}");
    }
    assert_eq!(index.blocks_at(2 * len), &[] as &[BlockId]);
    assert!(index.heap_bytes() <= OwnedIndex::bytes_for(len, all.reads()));
}

fn dataset(sizes: &[u64]) -> Dataset {
    let samples = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| Sample {
            key: format!("c/{i}.jpg"),
            label: 0,
            source: Source::File {
                path: LogicalPath::parse(&format!("/ds/c/{i}.jpg")).expect("path"),
                size,
                version: format!("v{size}"),
            },
        })
        .collect();
    Dataset {
        root: LogicalPath::parse("/ds").expect("path"),
        layout: Layout::ImageFolder,
        classes: vec!["c".into()],
        samples,
    }
}

#[test]
fn the_listing_fingerprint_changes_with_a_file_or_its_blocks() {
    let base = listing(&dataset(&[10, 20, 30]), &blocks(3));
    assert_eq!(base, listing(&dataset(&[10, 20, 30]), &blocks(3)));
    assert_eq!(base.count, 3);
    // Another size, another file, other blocks (another version): another fingerprint.
    assert_ne!(base.hash, listing(&dataset(&[10, 21, 30]), &blocks(3)).hash);
    assert_ne!(base, listing(&dataset(&[10, 20, 30, 40]), &blocks(4)));
    let other = SampleBlocks::new([vec![BlockId(0)], vec![BlockId(9)], vec![BlockId(2)]]);
    assert_ne!(base.hash, listing(&dataset(&[10, 20, 30]), &other).hash);
}
