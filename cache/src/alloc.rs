//! Slot allocation over the arena's offsets: best fit over free extents, 4 KiB granularity.
//!
//! Blocks vary from a few KiB (small files) to the block size, so slots are sized to the
//! block rounded up to 4 KiB (at most 4 KiB lost per block; a power-of-two scheme lost ~40 %
//! on ImageNet-like JPEGs). Free space is kept as extents indexed by offset (for merging with
//! neighbours on free) and by size (for best fit). When no extent fits, the memory tier evicts
//! more blocks and tries again, so fragmentation costs extra evictions, never correctness.

use std::collections::{BTreeMap, BTreeSet};

/// Allocation granularity.
pub const PAGE: u64 = 4096;

/// Offsets into an arena of fixed length.
#[derive(Debug)]
pub struct SlotAllocator {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    len: u64,
}

/// An allocated region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub size: u64,
}

impl SlotAllocator {
    /// Manages `len` bytes (rounded down to whole pages).
    pub fn new(len: u64) -> Self {
        let len = len / PAGE * PAGE;
        let mut a = SlotAllocator {
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            len,
        };
        if len > 0 {
            a.insert(0, len);
        }
        a
    }

    /// Bytes under management.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing can ever be allocated.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot size a request of `size` bytes takes.
    pub fn slot_size(size: u64) -> u64 {
        size.max(1).div_ceil(PAGE) * PAGE
    }

    /// Allocates a slot for `size` bytes, or `None` if no free extent is large enough.
    pub fn alloc(&mut self, size: u64) -> Option<Slot> {
        let need = Self::slot_size(size);
        let &(have, offset) = self.by_size.range((need, 0)..).next()?;
        self.remove(offset, have);
        if have > need {
            self.insert(offset + need, have - need);
        }
        Some(Slot { offset, size: need })
    }

    /// Returns a slot, merging it with free neighbours.
    pub fn free(&mut self, slot: Slot) {
        let (mut offset, mut size) = (slot.offset, slot.size);
        if let Some((&prev, &prev_len)) = self.by_offset.range(..offset).next_back()
            && prev + prev_len == offset
        {
            self.remove(prev, prev_len);
            offset = prev;
            size += prev_len;
        }
        if let Some(&next_len) = self.by_offset.get(&(offset + size)) {
            self.remove(offset + size, next_len);
            size += next_len;
        }
        self.insert(offset, size);
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.by_offset.values().sum()
    }

    fn insert(&mut self, offset: u64, size: u64) {
        self.by_offset.insert(offset, size);
        self.by_size.insert((size, offset));
    }

    fn remove(&mut self, offset: u64, size: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(size, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_merge() {
        let mut a = SlotAllocator::new(1 << 20);
        let s: Vec<Slot> = (0..4).map(|_| a.alloc(100_000).unwrap()).collect();
        assert_eq!(s[0].size, 102_400, "rounded to pages only");
        assert_eq!(s[1].offset, 102_400);
        // Free the 2nd: a smaller request takes that hole (best fit), not the big tail.
        a.free(s[1]);
        let small = a.alloc(50_000).unwrap();
        assert_eq!(small.offset, 102_400);
        a.free(small);
        for x in [s[0], s[2], s[3]] {
            a.free(x);
        }
        assert_eq!(a.free_bytes(), 1 << 20);
        assert_eq!(
            a.alloc(1 << 20).unwrap().offset,
            0,
            "everything merged back"
        );
    }

    #[test]
    fn refuses_when_full() {
        let mut a = SlotAllocator::new(10 * PAGE + 5);
        assert_eq!(a.len(), 10 * PAGE);
        let x = a.alloc(6 * PAGE).unwrap();
        assert!(a.alloc(5 * PAGE).is_none());
        a.free(x);
        assert!(a.alloc(10 * PAGE).is_some());
        assert_eq!(SlotAllocator::slot_size(5000), 8192);
        assert_eq!(SlotAllocator::slot_size(0), PAGE);
    }

    #[test]
    fn random_churn_keeps_extents_consistent() {
        let mut a = SlotAllocator::new(64 * PAGE);
        let mut live: Vec<Slot> = Vec::new();
        let mut seed = 7u64;
        for _ in 0..5000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed >> 63 == 0 || live.is_empty() {
                if let Some(s) = a.alloc((seed >> 40) % (8 * PAGE) + 1) {
                    assert!(live.iter().all(|l| s.offset + s.size <= l.offset
                        || l.offset + l.size <= s.offset), "overlap");
                    live.push(s);
                }
            } else {
                let i = (seed >> 20) as usize % live.len();
                a.free(live.swap_remove(i));
            }
            let used: u64 = live.iter().map(|s| s.size).sum();
            assert_eq!(used + a.free_bytes(), a.len());
        }
    }
}
