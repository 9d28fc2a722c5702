//! The in-flight fetch budget, shared by the mounts so that no store can take all of it.
//!
//! Every UFS fetch holds bytes of `cache.ufs.max_inflight_bytes` until its data is stored, so a
//! burst of misses waits instead of growing memory without bound. One pool for everything let
//! a hung store hold the whole budget with GETs that never answer, and a cold read on a healthy
//! mount then waited for those GETs to time out. So each mount has a *reserve*
//! (`cache.ufs.mount_reserved_bytes`, at most an equal share of the budget): a grant to one
//! mount must leave free what every other mount has not used of its reserve. A busy mount can
//! use all the rest, a single mount the whole budget; any number of hung stores leave every
//! other mount its reserve.
//!
//! Waiters queue per mount and are served in order, so a large request of one mount is not
//! starved by small ones of the same mount, and no queue head of one mount blocks another.

use crate::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Which mount a grant is charged to (the mount's address: unique while the mount lives, and
/// every [`BudgetPermit`] keeps its mount alive).
type MountKey = usize;

/// The budget of all mounts.
#[derive(Debug)]
pub struct InflightBudget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    capacity: u64,
    reserve: u64,
    used: u64,
    next_waiter: u64,
    mounts: HashMap<MountKey, Share>,
}

#[derive(Debug, Default)]
struct Share {
    used: u64,
    /// Still in the mount table (a removed mount keeps its entry until its grants return).
    live: bool,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    bytes: u64,
    tx: oneshot::Sender<()>,
}

/// Bytes of the budget held; returned on drop.
pub struct BudgetPermit {
    budget: Arc<InflightBudget>,
    key: MountKey,
    bytes: u64,
    _mount: Arc<dyn Send + Sync>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.release(self.key, self.bytes);
    }
}

impl InflightBudget {
    /// `capacity` bytes in all; each live mount is guaranteed `reserve` of them (at most an
    /// equal share); 0 turns the guarantees off (one pool).
    pub fn new(capacity: u64, reserve: u64) -> Arc<Self> {
        Arc::new(InflightBudget {
            state: Mutex::new(State {
                capacity,
                reserve,
                used: 0,
                next_waiter: 0,
                mounts: HashMap::new(),
            }),
        })
    }

    /// Gives `mount` its reserve (from now on other mounts leave it free).
    pub fn add_mount<M: Send + Sync + 'static>(&self, mount: &Arc<M>) {
        let mut s = lock(&self.state);
        s.mounts.entry(key_of(mount)).or_default().live = true;
        s.dispatch();
    }

    /// Drops `mount`'s reserve; its grants still in flight return to the pool.
    pub fn remove_mount<M: Send + Sync + 'static>(&self, mount: &Arc<M>) {
        let mut s = lock(&self.state);
        let key = key_of(mount);
        if let Some(share) = s.mounts.get_mut(&key) {
            share.live = false;
            if share.used == 0 && share.waiters.is_empty() {
                s.mounts.remove(&key);
            }
        }
        s.dispatch();
    }

    /// Waits until `bytes` can be charged to `mount`. Cancel-safe: a waiter that goes away
    /// leaves the queue, and a grant made as it went away is returned.
    pub async fn acquire<M: Send + Sync + 'static>(
        self: &Arc<Self>,
        mount: &Arc<M>,
        bytes: u64,
    ) -> BudgetPermit {
        let key = key_of(mount);
        let permit = BudgetPermit {
            budget: self.clone(),
            key,
            bytes,
            _mount: mount.clone(),
        };
        let (id, rx) = {
            let mut s = lock(&self.state);
            let idle = s.mounts.get(&key).is_none_or(|m| m.waiters.is_empty());
            if idle && s.fits(key, bytes) {
                s.grant(key, bytes);
                return permit;
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_waiter;
            s.next_waiter += 1;
            s.mounts
                .entry(key)
                .or_default()
                .waiters
                .push_back(Waiter { id, bytes, tx });
            (id, rx)
        };
        // Until the grant arrives, dropping this future must undo the wait, not the charge.
        let waiting = Waiting {
            budget: self,
            key,
            id,
            permit: Some(permit),
        };
        let _ = rx.await;
        waiting.granted()
    }

    /// (bytes held, capacity).
    pub fn usage(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.used, s.capacity)
    }

    fn release(&self, key: MountKey, bytes: u64) {
        let mut s = lock(&self.state);
        s.used = s.used.saturating_sub(bytes);
        if let Some(share) = s.mounts.get_mut(&key) {
            share.used = share.used.saturating_sub(bytes);
            if !share.live && share.used == 0 && share.waiters.is_empty() {
                s.mounts.remove(&key);
            }
        }
        s.dispatch();
    }
}

/// A queued acquire; on drop before its grant it leaves the queue, after it the charge stays
/// with the permit it hands out (or returns with it).
struct Waiting<'a> {
    budget: &'a Arc<InflightBudget>,
    key: MountKey,
    id: u64,
    permit: Option<BudgetPermit>,
}

impl Waiting<'_> {
    fn granted(mut self) -> BudgetPermit {
        self.permit
            .take()
            .unwrap_or_else(|| unreachable!("taken once"))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut permit) = self.permit.take() else {
            return;
        };
        let mut s = lock(&self.budget.state);
        let queued = s.mounts.get_mut(&self.key).and_then(|share| {
            let at = share.waiters.iter().position(|w| w.id == self.id)?;
            share.waiters.remove(at)
        });
        drop(s);
        if queued.is_some() {
            // Never granted: nothing to return.
            permit.bytes = 0;
        }
        // Otherwise the grant was made: dropping the permit returns it.
    }
}

impl State {
    /// The reserve each live mount is guaranteed now.
    fn reserve_each(&self) -> u64 {
        let live = self.mounts.values().filter(|m| m.live).count().max(1) as u64;
        self.reserve.min(self.capacity / live)
    }

    /// Whether `bytes` more for `key` fit the budget and leave every other live mount its
    /// unused reserve. A mount with nothing in flight only needs the bytes to be free, so a
    /// block larger than a reserve can never wait forever.
    fn fits(&self, key: MountKey, bytes: u64) -> bool {
        if self.used + bytes > self.capacity {
            return false;
        }
        if self.mounts.get(&key).is_none_or(|m| m.used == 0) {
            return true;
        }
        let reserve = self.reserve_each();
        let kept: u64 = self
            .mounts
            .iter()
            .filter(|(k, m)| **k != key && m.live)
            .map(|(_, m)| reserve.saturating_sub(m.used))
            .sum();
        self.capacity - self.used - bytes >= kept
    }

    fn grant(&mut self, key: MountKey, bytes: u64) {
        self.used += bytes;
        self.mounts.entry(key).or_default().used += bytes;
    }

    /// Serves queue heads that fit now, mount by mount.
    fn dispatch(&mut self) {
        let keys: Vec<MountKey> = self
            .mounts
            .iter()
            .filter(|(_, m)| !m.waiters.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            while let Some(head) = self.mounts.get(&key).and_then(|m| m.waiters.front()) {
                let bytes = head.bytes;
                if !head.tx.is_closed() && !self.fits(key, bytes) {
                    break;
                }
                let Some(w) = self
                    .mounts
                    .get_mut(&key)
                    .and_then(|m| m.waiters.pop_front())
                else {
                    break;
                };
                // A waiter that went away is skipped; its drop finds itself dequeued only if
                // the grant was sent, and then returns it.
                if w.tx.send(()).is_ok() {
                    self.grant(key, bytes);
                }
            }
        }
    }
}

fn key_of<M>(mount: &Arc<M>) -> MountKey {
    Arc::as_ptr(mount) as *const () as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn pending<F: std::future::Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_full_mount_leaves_others_their_reserve() {
        let budget = InflightBudget::new(100, 20);
        let (hung, healthy) = (Arc::new(1u8), Arc::new(2u8));
        budget.add_mount(&hung);
        budget.add_mount(&healthy);
        let held: Vec<_> =
            futures::future::join_all((0..8).map(|_| budget.acquire(&hung, 10))).await;
        assert_eq!(budget.usage().0, 80);
        assert!(
            pending(budget.acquire(&hung, 10)).await,
            "hung mount took the reserve"
        );
        let other = budget.acquire(&healthy, 20).await;
        assert_eq!(budget.usage().0, 100);
        drop(other);
        drop(held);
        assert_eq!(budget.usage().0, 0);
        // Alone, a mount has the whole budget.
        budget.remove_mount(&healthy);
        let all = budget.acquire(&hung, 100).await;
        assert_eq!(budget.usage().0, 100);
        drop(all);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_and_cancel_cleanly() {
        let budget = InflightBudget::new(10, 0);
        let m = Arc::new(0u8);
        budget.add_mount(&m);
        let first = budget.acquire(&m, 10).await;
        assert!(pending(budget.acquire(&m, 5)).await);
        let b2 = budget.clone();
        let m2 = m.clone();
        let big = tokio::spawn(async move { b2.acquire(&m2, 10).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let big = big.await.unwrap();
        assert_eq!(budget.usage().0, 10);
        drop(big);
        assert_eq!(budget.usage().0, 0, "a cancelled waiter kept bytes");
    }
}
