//! A client's batch ring: `depth` fixed-size slots in one memfd arena.
//!
//! Workers fill slots in place (decode and augment write straight into the arena), publish
//! them with the batch's sequence number, and the sender hands them to the client strictly in
//! sequence order, however the workers finish. A slot cycles Free → Filling → Ready →
//! Delivered → Free; the client's release of a delivered slot is what frees it, so the ring's
//! depth is the prefetch bound and a slow trainer applies backpressure to the workers. The
//! client maps the arena read-only, so only the daemon ever writes it.

use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use loaderd_cache::arena::Arena;

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
    #[error(transparent)]
    Arena(#[from] loaderd_cache::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Filling,
    Ready(u64),
    Delivered,
}

/// The slots of one client.
pub struct BatchRing {
    arena: Arena,
    slot_bytes: usize,
    states: Mutex<Vec<State>>,
    changed: Condvar,
}

impl BatchRing {
    /// A ring of `depth` slots of `slot_bytes` each.
    pub fn new(name: &str, depth: usize, slot_bytes: usize) -> Result<Self, RingError> {
        if depth == 0 || slot_bytes == 0 {
            return Err(RingError::Empty);
        }
        let len = depth
            .checked_mul(slot_bytes)
            .ok_or(RingError::TooLarge { depth, slot_bytes })?;
        let arena = Arena::new(name, len)?;
        Ok(BatchRing {
            arena,
            slot_bytes,
            states: Mutex::new(vec![State::Free; depth]),
            changed: Condvar::new(),
        })
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

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Number of slots.
    pub fn depth(&self) -> usize {
        self.lock().len()
    }

    /// A read-only descriptor of the arena for the client.
    pub fn read_only_fd(&self) -> Result<OwnedFd, loaderd_cache::Error> {
        self.arena.read_only_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for a free slot to fill.
    pub fn acquire(&self, timeout: Duration) -> Option<SlotWriter<'_>> {
        let guard = self.lock();
        let (mut states, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| !s.contains(&State::Free))
            .unwrap_or_else(|p| p.into_inner());
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
        let guard = self.lock();
        let (mut states, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| !s.contains(&State::Ready(seq)))
            .unwrap_or_else(|p| p.into_inner());
        let index = states.iter().position(|s| *s == State::Ready(seq))?;
        states[index] = State::Delivered;
        Some(index)
    }

    /// The client is done with a delivered slot.
    pub fn release(&self, index: usize) -> Result<(), RingError> {
        let mut states = self.lock();
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

/// Exclusive access to one slot being filled; dropping it unpublished frees the slot.
pub struct SlotWriter<'a> {
    ring: &'a BatchRing,
    index: usize,
    published: bool,
}

impl SlotWriter<'_> {
    /// The slot's index in the ring.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The slot's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        let (off, len) = (self.index * self.ring.slot_bytes, self.ring.slot_bytes);
        // SAFETY: the slot is in state Filling, which only this writer holds: no other writer
        // gets it and the client is not given it before `publish`; `&mut self` keeps the
        // slice unique within this process.
        unsafe { self.ring.arena.slice_mut(off, len) }
    }

    /// Marks the slot ready as batch `seq`.
    pub fn publish(mut self, seq: u64) {
        let mut states = self.ring.lock();
        states[self.index] = State::Ready(seq);
        self.published = true;
        self.ring.changed.notify_all();
    }
}

impl Drop for SlotWriter<'_> {
    fn drop(&mut self) {
        if !self.published {
            let mut states = self.ring.lock();
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
}
