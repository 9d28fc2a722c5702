//! The memory tier: blocks in a shared-memory arena, handed out as zero-copy `Bytes`.
//!
//! Each block occupies a slot of the arena (best fit, 4 KiB granularity). A reader's `Bytes` keeps the slot
//! alive through an `Arc`, so eviction only unlinks a block from the index; its slot returns to
//! the allocator when the last reader drops its view. Accounting charges the slot size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Tier, TierStatus};
use crate::alloc::{Slot, SlotAllocator};
use crate::arena::Arena;
use crate::block::BlockId;
use crate::config::MemoryTierConfig;
use crate::error::Result;
use crate::evict::{EvictionPolicy, Occupancy, Refused};
use crate::stats;
use crate::sync::lock;

/// A live block in the arena; frees its slot on drop.
struct Region {
    arena: Arc<Arena>,
    alloc: Arc<Mutex<SlotAllocator>>,
    slot: Slot,
    len: usize,
    /// CRC32C of the bytes, computed the first time a peer asks (blocks never change).
    crc: std::sync::OnceLock<u32>,
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot belongs to this region alone until `Drop` returns it, and its bytes
        // were written once before the region was shared; nobody writes them afterwards.
        unsafe { self.arena.slice(self.slot.offset as usize, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        lock(&self.alloc).free(self.slot);
    }
}

struct Index {
    occ: Occupancy,
    blocks: HashMap<BlockId, Arc<Region>>,
}

/// Blocks in a memfd arena.
pub struct MemoryTier {
    arena: Option<Arc<Arena>>,
    alloc: Arc<Mutex<SlotAllocator>>,
    index: Mutex<Index>,
}

impl MemoryTier {
    /// An arena of `cfg.capacity` bytes (0: a tier that holds nothing) evicting by `policy`.
    /// Blocks larger than the high watermark allows, or that the policy does not admit, pass
    /// through uncached.
    pub fn new(cfg: &MemoryTierConfig, policy: Box<dyn EvictionPolicy>) -> Result<Self> {
        let slots = SlotAllocator::new(cfg.capacity.0);
        let arena = if slots.is_empty() {
            None
        } else {
            Some(Arc::new(Arena::new(
                "loaderd-memory-tier",
                slots.len() as usize,
            )?))
        };
        let occ = Occupancy::new("memory", slots.len(), cfg.watermarks, policy);
        Ok(MemoryTier {
            arena,
            alloc: Arc::new(Mutex::new(slots)),
            index: Mutex::new(Index {
                occ,
                blocks: HashMap::new(),
            }),
        })
    }

    /// The arena, for handing regions to other processes.
    pub fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena.as_ref()
    }

    /// The live region of block `id`, marked recently used.
    fn region(&self, id: BlockId) -> Option<Arc<Region>> {
        let mut idx = lock(&self.index);
        let r = idx.blocks.get(&id)?.clone();
        idx.occ.touch(id);
        Some(r)
    }

    /// The block and its CRC32C (computed once per cached block, then remembered), for
    /// serving it to peers without checksumming it again on every request.
    pub fn get_with_crc(&self, id: BlockId) -> Option<(Bytes, u32)> {
        let region = self.region(id)?;
        let crc = *region
            .crc
            .get_or_init(|| crc32c::crc32c((*region).as_ref()));
        Some((Bytes::from_owner(ArcRegion(region)), crc))
    }

    /// Pins block `id` where it is in the arena: the slot is not reused while the lease lives,
    /// so another process that mapped the arena can read `offset..offset + len` safely.
    pub fn lease(&self, id: BlockId) -> Option<Lease> {
        self.region(id).map(Lease)
    }

    /// A lease on a copy of `data` in a slot of its own, outside the tier's index: nothing
    /// else can find it, it is not charged to the tier's occupancy and it evicts nothing, and
    /// its slot goes back to the allocator when the last clone of the lease drops. This is how
    /// a block the tier does not hold (on SSD only, owned by a peer, too large for the tier
    /// right now) reaches a shared-memory client without a second read. `None` when the arena
    /// has no free slot that fits.
    pub fn transient(&self, data: &[u8]) -> Option<Lease> {
        let arena = self.arena.as_ref()?;
        let Some(slot) = lock(&self.alloc).alloc(data.len() as u64) else {
            stats::passthrough("transient_lease_no_room");
            return None;
        };
        let region = Region {
            arena: arena.clone(),
            alloc: self.alloc.clone(),
            slot,
            len: data.len(),
            crc: std::sync::OnceLock::new(),
        };
        // SAFETY: the slot was just allocated to `region` and is not shared yet; no slice of
        // it exists.
        unsafe { arena.write(slot.offset as usize, data) };
        stats::transient_lease(data.len() as u64);
        Some(Lease(Arc::new(region)))
    }

    /// Bytes of the arena not in any slot (cached, leased or transient).
    pub fn free_bytes(&self) -> u64 {
        lock(&self.alloc).free_bytes()
    }

    /// Reserves a slot for `len` bytes under `id`, evicting as needed.
    fn reserve(&self, id: BlockId, len: usize, arena: &Arc<Arena>) -> Option<Region> {
        let mut idx = lock(&self.index);
        let charged = SlotAllocator::slot_size(len as u64);
        let victims = match idx.occ.admit(id, charged) {
            Ok(victims) => victims,
            Err(Refused::NotAdmitted) => {
                stats::passthrough("memory_not_admitted");
                return None;
            }
            Err(Refused::Disabled | Refused::TooLarge) => return None,
        };
        for v in victims {
            idx.blocks.remove(&v);
        }
        let slot = loop {
            if let Some(slot) = lock(&self.alloc).alloc(len as u64) {
                break Some(slot);
            }
            // Fragmented (or slots still held by readers): evict more until a slot fits.
            match idx.occ.evict_one() {
                Some(v) if v != id => {
                    idx.blocks.remove(&v);
                }
                _ => break None,
            }
        };
        let Some(slot) = slot else {
            idx.occ.remove(id);
            stats::passthrough("memory_full");
            return None;
        };
        Some(Region {
            arena: arena.clone(),
            alloc: self.alloc.clone(),
            slot,
            len,
            crc: std::sync::OnceLock::new(),
        })
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, id: BlockId) -> Option<Bytes> {
        self.region(id)
            .map(|region| Bytes::from_owner(ArcRegion(region)))
    }

    fn put(&self, id: BlockId, data: &Bytes) -> bool {
        let Some(arena) = &self.arena else {
            return false;
        };
        if lock(&self.index).blocks.contains_key(&id) {
            return true;
        }
        let Some(region) = self.reserve(id, data.len(), arena) else {
            return false;
        };
        // SAFETY: the slot was just allocated to `region` and is not shared yet; no slice of
        // it exists.
        unsafe { arena.write(region.slot.offset as usize, data) };
        let mut idx = lock(&self.index);
        if !idx.occ.contains(id) {
            // Evicted while we copied; the region frees itself.
            return false;
        }
        idx.blocks.insert(id, Arc::new(region));
        true
    }

    fn remove(&self, id: BlockId) -> bool {
        let mut idx = lock(&self.index);
        idx.occ.remove(id);
        idx.blocks.remove(&id).is_some()
    }

    fn contains(&self, id: BlockId) -> bool {
        lock(&self.index).blocks.contains_key(&id)
    }

    fn would_admit(&self, id: BlockId, len: u64) -> bool {
        self.arena.is_some()
            && lock(&self.index)
                .occ
                .would_admit(id, SlotAllocator::slot_size(len))
    }

    fn status(&self) -> TierStatus {
        let idx = lock(&self.index);
        TierStatus {
            name: "memory",
            capacity: idx.occ.capacity(),
            used: idx.occ.used(),
            blocks: idx.blocks.len() as u64,
            evictions: idx.occ.evictions(),
            evictions_by_reason: idx.occ.evictions_by_reason(),
            watermarks: idx.occ.watermarks(),
            location: "memfd".into(),
            fs: None,
        }
    }
}

/// A block pinned in the arena (see [`MemoryTier::lease`]).
#[derive(Clone)]
pub struct Lease(Arc<Region>);

impl Lease {
    /// Where the block starts in the arena.
    pub fn offset(&self) -> u64 {
        self.0.slot.offset
    }

    /// The block's length.
    pub fn len(&self) -> u64 {
        self.0.len as u64
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({}+{})", self.offset(), self.len())
    }
}

/// `Bytes::from_owner` needs an owner that is `AsRef<[u8]>`.
struct ArcRegion(Arc<Region>);

impl AsRef<[u8]> for ArcRegion {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, Watermarks};
    use crate::evict::Lru;

    fn tier(cap: u64) -> MemoryTier {
        let cfg = MemoryTierConfig {
            capacity: ByteSize(cap),
            watermarks: Watermarks {
                high: 0.9,
                low: 0.7,
            },
        };
        MemoryTier::new(&cfg, Box::new(Lru::default())).unwrap()
    }

    #[test]
    fn conformance() {
        super::super::conformance::run(&tier(1 << 20));
    }

    #[test]
    fn readers_keep_evicted_bytes_valid() {
        let t = tier(1 << 20);
        let data = Bytes::from(vec![7u8; 60 << 10]);
        assert!(t.put(BlockId(1), &data));
        let held = t.get(BlockId(1)).unwrap();
        for i in 2..100 {
            t.put(BlockId(i), &Bytes::from(vec![i as u8; 60 << 10]));
        }
        assert!(!t.contains(BlockId(1)), "evicted");
        assert_eq!(held, data, "a reader's view survives eviction");
    }

    #[test]
    fn leases_pin_slots_across_eviction() {
        let t = tier(1 << 20);
        let data = Bytes::from(vec![9u8; 60 << 10]);
        assert!(t.put(BlockId(1), &data));
        let lease = t.lease(BlockId(1)).unwrap();
        assert_eq!(lease.len(), 60 << 10);
        for i in 2..100 {
            t.put(BlockId(i), &Bytes::from(vec![i as u8; 60 << 10]));
        }
        assert!(t.lease(BlockId(1)).is_none(), "evicted from the index");
        let arena = t.arena().unwrap();
        // SAFETY: the lease keeps the slot from being reallocated; nothing writes it.
        let bytes = unsafe { arena.slice(lease.offset() as usize, lease.len() as usize) };
        assert_eq!(bytes, &data[..], "a leased slot is never reused");
    }

    #[test]
    fn a_transient_lease_is_outside_the_index_and_freed_on_release() {
        let t = tier(1 << 20);
        let free = t.free_bytes();
        let data = Bytes::from((0..70_000u32).map(|i| (i * 13) as u8).collect::<Vec<_>>());
        let lease = t.transient(&data).expect("room for a transient lease");
        let copy = lease.clone();
        assert_eq!(lease.len(), data.len() as u64);
        assert_eq!(t.free_bytes(), free - SlotAllocator::slot_size(70_000));
        let st = t.status();
        assert_eq!(
            (st.blocks, st.used),
            (0, 0),
            "not cached, not charged: {st:?}"
        );
        let arena = t.arena().unwrap();
        // SAFETY: the lease keeps the slot allocated; nothing writes it while it lives.
        let bytes = unsafe { arena.slice(lease.offset() as usize, lease.len() as usize) };
        assert_eq!(bytes, &data[..]);
        drop(lease);
        assert!(t.free_bytes() < free, "a clone still holds the slot");
        drop(copy);
        assert_eq!(t.free_bytes(), free, "released: the slot is back");
    }

    #[test]
    fn a_transient_lease_without_room_is_none() {
        let t = tier(64 << 10);
        let held = t.transient(&vec![1u8; 60 << 10]).expect("fits once");
        assert!(t.transient(&vec![2u8; 60 << 10]).is_none(), "no room left");
        drop(held);
        assert!(t.transient(&vec![2u8; 60 << 10]).is_some());
        assert!(tier(0).transient(b"x").is_none(), "no arena");
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let t = tier(0);
        assert!(!t.put(BlockId(1), &Bytes::from_static(b"x")));
        assert_eq!(t.status().capacity, 0);
    }

    #[test]
    fn the_crc_served_to_peers_is_the_blocks() {
        let t = tier(1 << 20);
        let data = Bytes::from((0..10_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        assert!(t.get_with_crc(BlockId(1)).is_none());
        assert!(t.put(BlockId(1), &data));
        for _ in 0..2 {
            let (got, crc) = t.get_with_crc(BlockId(1)).unwrap();
            assert_eq!(got, data);
            assert_eq!(crc, crc32c::crc32c(&data));
        }
    }
}
