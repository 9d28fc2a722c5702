//! A buddy allocator over the arena's offsets.
//!
//! The arena is cut into chunks of `max_size` (the block size rounded up to a power of two),
//! each managed as a buddy tree down to 4 KiB. Small files (ImageNet JPEGs are ~110 KiB) take
//! a power-of-two slot instead of a whole block, so a 1 GiB tier holds thousands of them;
//! freed buddies merge back so large blocks find room again.

use std::collections::BTreeSet;

const MIN_ORDER: u32 = 12;

/// Offsets into an arena of fixed length.
#[derive(Debug)]
pub struct Buddy {
    max_order: u32,
    /// Free offsets per order, index 0 = `MIN_ORDER`.
    free: Vec<BTreeSet<u64>>,
    len: u64,
}

/// An allocated region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub order: u32,
}

impl Slot {
    /// Bytes the slot occupies.
    pub fn size(&self) -> u64 {
        1 << self.order
    }
}

impl Buddy {
    /// Manages `len` bytes (rounded down to whole chunks) with allocations up to `max_size`.
    pub fn new(len: u64, max_size: u64) -> Self {
        let max_order = order_for(max_size.max(1 << MIN_ORDER));
        let chunk = 1u64 << max_order;
        let chunks = len / chunk;
        let mut free = vec![BTreeSet::new(); (max_order - MIN_ORDER + 1) as usize];
        free[(max_order - MIN_ORDER) as usize] = (0..chunks).map(|c| c * chunk).collect();
        Buddy {
            max_order,
            free,
            len: chunks * chunk,
        }
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
        1 << order_for(size.max(1))
    }

    /// Allocates `size` bytes, or `None` if no free region is large enough.
    pub fn alloc(&mut self, size: u64) -> Option<Slot> {
        let want = order_for(size.max(1));
        if want > self.max_order {
            return None;
        }
        let have = (want..=self.max_order).find(|o| !self.list(*o).is_empty())?;
        let offset = self.list_mut(have).pop_first()?;
        for o in (want..have).rev() {
            self.list_mut(o).insert(offset + (1 << o));
        }
        Some(Slot {
            offset,
            order: want,
        })
    }

    /// Returns a slot, merging it with free buddies.
    pub fn free(&mut self, slot: Slot) {
        let (mut off, mut order) = (slot.offset, slot.order);
        while order < self.max_order {
            let buddy = off ^ (1 << order);
            if !self.list_mut(order).remove(&buddy) {
                break;
            }
            off = off.min(buddy);
            order += 1;
        }
        self.list_mut(order).insert(off);
    }

    fn list(&self, order: u32) -> &BTreeSet<u64> {
        &self.free[(order - MIN_ORDER) as usize]
    }

    fn list_mut(&mut self, order: u32) -> &mut BTreeSet<u64> {
        &mut self.free[(order - MIN_ORDER) as usize]
    }
}

fn order_for(size: u64) -> u32 {
    size.next_power_of_two().trailing_zeros().max(MIN_ORDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_merges() {
        let mut b = Buddy::new(3 << 20, 1 << 20);
        assert_eq!(b.len(), 3 << 20);
        let small: Vec<Slot> = (0..256).map(|_| b.alloc(4096).unwrap()).collect();
        assert_eq!(small[0].size(), 4096);
        // One chunk is fully split; two whole chunks remain.
        let big1 = b.alloc(1 << 20).unwrap();
        let big2 = b.alloc(1 << 20).unwrap();
        assert!(b.alloc(1 << 20).is_none());
        for s in small {
            b.free(s);
        }
        let big3 = b.alloc(1 << 20).expect("freed small slots merge back");
        let mut offs = [big1.offset, big2.offset, big3.offset];
        offs.sort();
        assert_eq!(offs, [0, 1 << 20, 2 << 20]);
    }

    #[test]
    fn rounds_up_and_refuses_oversized() {
        let mut b = Buddy::new(1 << 20, 1 << 20);
        assert_eq!(b.alloc(110_000).unwrap().size(), 131_072);
        assert!(b.alloc((1 << 20) + 1).is_none());
        assert_eq!(Buddy::slot_size(5000), 8192);
    }
}
