//! A client's batch ring: `depth` fixed-size slots in one block of memory, a memfd arena
//! (host rings) or an exportable CUDA allocation (device rings, [`crate::gpu`]).
//!
//! Workers fill slots in place (decode and augment write straight into the arena), publish
//! them with the batch's sequence number, and the sender hands them to the client strictly in
//! sequence order, however the workers finish. A slot cycles Free → Filling → Ready →
//! Delivered → Free; the client's release of a delivered slot is what frees it, so the ring's
//! depth is the prefetch bound and a slow trainer applies backpressure to the workers. The
//! client maps the arena read-only, so only the daemon ever writes it.
//!
//! The state machine is the same whatever the memory: [`BatchRing`] is generic over its
//! [`SlotMemory`], which says how long the memory is and gives the client's descriptor; how
//! a worker writes a slot is the memory's own (host bytes here, a device slice for a CUDA
//! ring). The client's side, delivery and release, is the object-safe [`Delivery`], so a
//! session holds either kind of ring alike.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use loaderd_cache::arena::Arena;

use loaderd_cache::sync::{lock, wait_timeout_while};

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("slot {0} does not exist")]
    NoSuchSlot(usize),
    #[error("slot {0} was not delivered, so it cannot be released")]
    NotDelivered(usize),
    #[error("a batch ring needs at least one slot of at least one byte")]
    Empty,
    #[error("a batch ring of {depth} slots of {slot_bytes} bytes is too large")]
    TooLarge { depth: usize, slot_bytes: usize },
    #[error("ring memory of {len} bytes is smaller than {depth} slots of {slot_bytes} bytes")]
    TooSmall {
        len: usize,
        depth: usize,
        slot_bytes: usize,
    },
    #[error(transparent)]
    Arena(#[from] loaderd_cache::Error),
    #[error(transparent)]
    Gpu(#[from] loaderd_gpu::GpuError),
}

/// The memory under a ring's slots.
pub trait SlotMemory: Send + Sync {
    /// Bytes of memory (at least `depth × slot_bytes`).
    fn len(&self) -> usize;
    /// True when there is no memory at all (a ring refuses it).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A new descriptor of the memory for the client (read-only where the memory allows it).
    fn descriptor(&self) -> Result<OwnedFd, RingError>;
}

impl SlotMemory for Arena {
    fn len(&self) -> usize {
        Arena::len(self)
    }

    fn descriptor(&self) -> Result<OwnedFd, RingError> {
        Ok(self.read_only_fd()?)
    }
}

/// What a session does with its ring, whatever its memory: hand batches to the client in
/// order, take its releases back, and give the descriptor the client maps.
pub trait Delivery: Send + Sync {
    /// See [`BatchRing::deliver`].
    fn deliver(&self, seq: u64, timeout: Duration) -> Option<usize>;
    /// See [`BatchRing::release`].
    fn release(&self, index: usize) -> Result<(), RingError>;
    /// A new descriptor of the ring's memory for the client.
    fn descriptor(&self) -> Result<OwnedFd, RingError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Filling,
    Ready(u64),
    Delivered,
}

/// Bytes `depth` slots of `slot_bytes` take, or why such a ring cannot be made.
pub fn ring_len(depth: usize, slot_bytes: usize) -> Result<usize, RingError> {
    if depth == 0 || slot_bytes == 0 {
        return Err(RingError::Empty);
    }
    depth
        .checked_mul(slot_bytes)
        .ok_or(RingError::TooLarge { depth, slot_bytes })
}

/// The slots of one client, in memory `M`.
pub struct BatchRing<M = Arena> {
    memory: M,
    slot_bytes: usize,
    states: Mutex<Vec<State>>,
    changed: Condvar,
}

impl BatchRing<Arena> {
    /// A host ring of `depth` slots of `slot_bytes` each, in a new memfd arena.
    pub fn new(name: &str, depth: usize, slot_bytes: usize) -> Result<Self, RingError> {
        let arena = Arena::new(name, ring_len(depth, slot_bytes)?)?;
        Self::with_memory(arena, depth, slot_bytes)
    }

    /// A read-only descriptor of the arena for the client.
    pub fn read_only_fd(&self) -> Result<OwnedFd, loaderd_cache::Error> {
        self.memory.read_only_fd()
    }

    /// Memory a ring of `depth` slots of `slot_bytes` takes: its arena in whole pages and
    /// its per-slot state (a ring of many tiny slots is mostly state, not arena).
    pub fn footprint(depth: usize, slot_bytes: usize) -> u64 {
        const PAGE: u64 = 4096;
        let arena = (depth as u64).saturating_mul(slot_bytes as u64);
        let state = (depth as u64).saturating_mul(std::mem::size_of::<State>() as u64);
        arena
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .saturating_add(state)
    }
}

impl<M: SlotMemory> BatchRing<M> {
    /// A ring of `depth` slots of `slot_bytes` each in `memory`, which must hold them all
    /// (slot `k` at `k × slot_bytes`).
    pub fn with_memory(memory: M, depth: usize, slot_bytes: usize) -> Result<Self, RingError> {
        let len = ring_len(depth, slot_bytes)?;
        if memory.len() < len {
            return Err(RingError::TooSmall {
                len: memory.len(),
                depth,
                slot_bytes,
            });
        }
        Ok(BatchRing {
            memory,
            slot_bytes,
            states: Mutex::new(vec![State::Free; depth]),
            changed: Condvar::new(),
        })
    }

    /// The memory under the slots.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Number of slots.
    pub fn depth(&self) -> usize {
        lock(&self.states).len()
    }

    /// Waits up to `timeout` for a free slot to fill.
    pub fn acquire(&self, timeout: Duration) -> Option<SlotWriter<'_, M>> {
        let mut states = wait_timeout_while(&self.changed, lock(&self.states), timeout, |s| {
            !s.contains(&State::Free)
        });
        let index = states.iter().position(|s| *s == State::Free)?;
        states[index] = State::Filling;
        Some(SlotWriter {
            ring: self,
            index,
            published: false,
        })
    }

    /// Waits up to `timeout` for the batch with sequence number `seq`; marks it delivered and
    /// returns its slot.
    pub fn deliver(&self, seq: u64, timeout: Duration) -> Option<usize> {
        let mut states = wait_timeout_while(&self.changed, lock(&self.states), timeout, |s| {
            !s.contains(&State::Ready(seq))
        });
        let index = states.iter().position(|s| *s == State::Ready(seq))?;
        states[index] = State::Delivered;
        Some(index)
    }

    /// The client is done with a delivered slot.
    pub fn release(&self, index: usize) -> Result<(), RingError> {
        let mut states = lock(&self.states);
        match states.get(index) {
            None => Err(RingError::NoSuchSlot(index)),
            Some(State::Delivered) => {
                states[index] = State::Free;
                self.changed.notify_all();
                Ok(())
            }
            Some(_) => Err(RingError::NotDelivered(index)),
        }
    }
}

impl<M: SlotMemory> Delivery for BatchRing<M> {
    fn deliver(&self, seq: u64, timeout: Duration) -> Option<usize> {
        BatchRing::deliver(self, seq, timeout)
    }

    fn release(&self, index: usize) -> Result<(), RingError> {
        BatchRing::release(self, index)
    }

    fn descriptor(&self) -> Result<OwnedFd, RingError> {
        self.memory.descriptor()
    }
}

/// Exclusive access to one slot being filled; dropping it unpublished frees the slot.
pub struct SlotWriter<'a, M: SlotMemory = Arena> {
    ring: &'a BatchRing<M>,
    index: usize,
    published: bool,
}

impl<M: SlotMemory> SlotWriter<'_, M> {
    /// The slot's index in the ring.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The slot's bytes in the ring's memory. Only this writer has the slot (state Filling)
    /// until it publishes, which is what makes a mutable view of this range sound.
    pub fn range(&self) -> Range<usize> {
        let off = self.index * self.ring.slot_bytes;
        off..off + self.ring.slot_bytes
    }

    /// The ring's memory (the slot is [`Self::range`] of it).
    pub fn memory(&self) -> &M {
        &self.ring.memory
    }

    /// Marks the slot ready as batch `seq`.
    pub fn publish(mut self, seq: u64) {
        let mut states = lock(&self.ring.states);
        states[self.index] = State::Ready(seq);
        self.published = true;
        self.ring.changed.notify_all();
    }
}

impl SlotWriter<'_, Arena> {
    /// The slot's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        let range = self.range();
        // SAFETY: the slot is in state Filling, which only this writer holds: no other writer
        // gets it and the client is not given it before `publish`; `&mut self` keeps the
        // slice unique within this process.
        unsafe { self.ring.memory.slice_mut(range.start, range.len()) }
    }
}

impl<M: SlotMemory> Drop for SlotWriter<'_, M> {
    fn drop(&mut self) {
        if !self.published {
            let mut states = lock(&self.ring.states);
            states[self.index] = State::Free;
            self.ring.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(50);

    #[test]
    fn delivers_in_sequence_order_and_applies_backpressure() {
        let ring = BatchRing::new("test-ring", 2, 16).unwrap();
        let mut a = ring.acquire(T).unwrap();
        let mut b = ring.acquire(T).unwrap();
        assert!(ring.acquire(T).is_none(), "full ring: the producer waits");
        a.bytes().fill(1);
        b.bytes().fill(2);
        let (ia, ib) = (a.index(), b.index());
        b.publish(0);
        a.publish(1);
        assert!(ring.deliver(2, T).is_none());
        assert_eq!(ring.deliver(0, T), Some(ib));
        assert_eq!(ring.deliver(1, T), Some(ia));
        assert!(
            ring.acquire(T).is_none(),
            "delivered slots stay taken until released"
        );
        ring.release(ia).unwrap();
        assert!(matches!(ring.release(ia), Err(RingError::NotDelivered(i)) if i == ia));
        assert!(matches!(ring.release(9), Err(RingError::NoSuchSlot(9))));
        let mut c = ring.acquire(T).unwrap();
        assert_eq!(c.index(), ia);
        assert_eq!(c.bytes()[0], 1, "slot memory is reused, not cleared");
    }

    #[test]
    fn a_dropped_writer_frees_its_slot() {
        let ring = BatchRing::new("test-ring", 1, 8).unwrap();
        drop(ring.acquire(T).unwrap());
        assert!(ring.acquire(T).is_some());
    }

    #[test]
    fn a_release_wakes_a_waiting_producer() {
        let ring = std::sync::Arc::new(BatchRing::new("test-ring", 1, 8).unwrap());
        ring.acquire(T).unwrap().publish(0);
        let slot = ring.deliver(0, T).unwrap();
        let r = ring.clone();
        let waiter = std::thread::spawn(move || r.acquire(Duration::from_secs(5)).is_some());
        std::thread::sleep(Duration::from_millis(20));
        ring.release(slot).unwrap();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn empty_rings_are_refused() {
        assert!(matches!(BatchRing::new("x", 0, 8), Err(RingError::Empty)));
    }

    /// Memory that is only a length: the state machine does not care what it is.
    struct Opaque(usize);

    impl SlotMemory for Opaque {
        fn len(&self) -> usize {
            self.0
        }
        fn descriptor(&self) -> Result<OwnedFd, RingError> {
            Err(RingError::Empty)
        }
    }

    #[test]
    fn any_memory_large_enough_carries_the_same_slots() {
        assert!(matches!(
            BatchRing::with_memory(Opaque(47), 3, 16),
            Err(RingError::TooSmall { len: 47, .. })
        ));
        // Rounded up (a device allocation's granularity): the slots are still k × slot_bytes.
        let ring = BatchRing::with_memory(Opaque(1 << 21), 3, 16).unwrap();
        let a = ring.acquire(T).unwrap();
        let b = ring.acquire(T).unwrap();
        assert_eq!((a.range(), b.range()), (0..16, 16..32));
        b.publish(0);
        drop(a);
        let ring: &dyn Delivery = &ring;
        assert_eq!(ring.deliver(0, T), Some(1));
        ring.release(1).unwrap();
        assert!(matches!(ring.release(1), Err(RingError::NotDelivered(1))));
    }
}
