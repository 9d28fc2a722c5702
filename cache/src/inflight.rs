//! Single flight: one computation per key at a time, shared by everyone who asks meanwhile.
//!
//! The first caller for a key starts the flight; callers that arrive while it runs join it and
//! get its result, success or error, instead of queueing to redo the work. A flight ends when
//! its [`Ticket`] is handed to [`InFlight::end`], which may store the result first ("land")
//! under the same lock, so a caller arriving meanwhile finds what was stored, never a gap.
//! Two ways to drive a flight, for the two uses in the crate:
//!
//! * [`InFlight::run`]: driven by its callers (a mount's manifest LIST). If they all go away
//!   it pauses, and the next caller resumes it; the first caller to see it end lands it.
//! * [`InFlight::join_or_start`] with a spawned task holding an [`EndOnDrop`] (block
//!   fetches): the task finishes even if every reader goes away, and the flight ends when the
//!   task does, finished or dropped, so no reader ever joins a dead flight.
//!
//! foyer's `hybrid/inflight.rs` is the model: a map from key to the one flight in progress.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;

use crate::sync::lock;

/// A flight's shared result.
pub type SharedResult<T> = Shared<BoxFuture<'static, T>>;

/// Names one flight of a key; ending a flight that already ended does nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket<K> {
    key: K,
    id: u64,
}

/// The flight a caller is in.
pub struct Flight<K, T: Clone> {
    pub ticket: Ticket<K>,
    pub result: SharedResult<T>,
    /// Whether it was already running (the caller joined) rather than started by this call.
    pub joined: bool,
}

/// At most one flight per key.
pub struct InFlight<K, T: Clone> {
    state: Mutex<State<K, T>>,
    /// Notified whenever a flight ends.
    ended: Notify,
}

struct State<K, T: Clone> {
    next_id: u64,
    running: HashMap<K, (u64, SharedResult<T>)>,
}

impl<K, T: Clone> Default for InFlight<K, T> {
    fn default() -> Self {
        InFlight {
            state: Mutex::new(State {
                next_id: 0,
                running: HashMap::new(),
            }),
            ended: Notify::new(),
        }
    }
}

impl<K, T> InFlight<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone + Send + Sync + 'static,
{
    /// Joins the flight of `key`, or starts the future `start` returns when none runs (under
    /// the lock, so no second flight of the key can start meanwhile). `start` may decline
    /// with `None` (nothing to do, or the caller will do without a flight): then no flight
    /// exists and `None` is returned. `start` must not end a flight of `self` (it holds the
    /// lock): a task that holds an [`EndOnDrop`] is spawned after this returns.
    pub fn join_or_start<F>(
        &self,
        key: &K,
        start: impl FnOnce(&Ticket<K>) -> Option<F>,
    ) -> Option<Flight<K, T>>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut s = lock(&self.state);
        if let Some((id, result)) = s.running.get(key) {
            return Some(Flight {
                ticket: Ticket {
                    key: key.clone(),
                    id: *id,
                },
                result: result.clone(),
                joined: true,
            });
        }
        let ticket = Ticket {
            key: key.clone(),
            id: s.next_id,
        };
        let result = start(&ticket)?.boxed().shared();
        s.next_id += 1;
        s.running.insert(key.clone(), (ticket.id, result.clone()));
        Some(Flight {
            ticket,
            result,
            joined: false,
        })
    }

    /// Ends the flight `ticket` names, running `land` first under the lock; `None` (and
    /// `land` not run) when that flight has ended already.
    pub fn end<R>(&self, ticket: &Ticket<K>, land: impl FnOnce() -> R) -> Option<R> {
        let mut s = lock(&self.state);
        if s.running
            .get(&ticket.key)
            .is_none_or(|(id, _)| *id != ticket.id)
        {
            return None;
        }
        let landed = land();
        s.running.remove(&ticket.key);
        drop(s);
        self.ended.notify_waiters();
        Some(landed)
    }

    /// Joins the flight of `key` or starts `start()`, driven by the callers; the first caller
    /// to see it end runs `land` on its result and returns what `land` returns, every other
    /// caller gets the flight's result.
    pub async fn run<F>(&self, key: &K, start: impl FnOnce() -> F, land: impl FnOnce(T) -> T) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let Some(flight) = self.join_or_start(key, |_| Some(start())) else {
            unreachable!("a start that never declines always gives a flight")
        };
        let out = flight.result.await;
        let mut out = Some(out);
        match self.end(&flight.ticket, || land(out.take().expect("taken once"))) {
            Some(landed) => landed,
            None => out.take().expect("not taken by land"),
        }
    }

    /// Whether a flight of `key` runs.
    pub fn contains(&self, key: &K) -> bool {
        lock(&self.state).running.contains_key(key)
    }

    /// Waits until no flight of `key` runs.
    pub async fn settled(&self, key: &K) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end between the check and the wait counts.
            notified.as_mut().enable();
            if !self.contains(key) {
                return;
            }
            notified.await;
        }
    }
}

/// Ends a flight when dropped: held by a spawned task, so that its flight ends when the task
/// does, whether it finished or was dropped (cancelled with its runtime, or panicked).
pub struct EndOnDrop<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone + Send + Sync + 'static,
{
    flights: Arc<InFlight<K, T>>,
    ticket: Ticket<K>,
}

impl<K, T> EndOnDrop<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone + Send + Sync + 'static,
{
    pub fn new(flights: Arc<InFlight<K, T>>, ticket: &Ticket<K>) -> Self {
        EndOnDrop {
            flights,
            ticket: ticket.clone(),
        }
    }
}

impl<K, T> Drop for EndOnDrop<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.flights.end(&self.ticket, || ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_its_error() {
        let flights = Arc::new(InFlight::<(), Result<u32, Arc<String>>>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let landed = Arc::new(AtomicUsize::new(0));
        let calls = (0..8).map(|_| {
            let (flights, runs, landed) = (flights.clone(), runs.clone(), landed.clone());
            async move {
                flights
                    .run(
                        &(),
                        move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err(Arc::new("hung".to_string()))
                        },
                        |r| {
                            landed.fetch_add(1, Ordering::SeqCst);
                            r
                        },
                    )
                    .await
            }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.is_err()));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "each waiter redid the work");
        assert_eq!(landed.load(Ordering::SeqCst), 1);
        assert!(
            !flights.contains(&()),
            "an ended flight must not be joined later"
        );
    }

    #[tokio::test]
    async fn keys_fly_apart_and_a_declined_start_leaves_no_flight() {
        let flights = InFlight::<u32, u32>::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = flights
            .join_or_start(&1, |_| Some(rx.map(|_| 1)))
            .expect("started");
        assert!(!a.joined);
        let b = flights
            .join_or_start(&1, |_| -> Option<futures::future::Ready<u32>> {
                panic!("a second flight of one key")
            })
            .expect("joined");
        assert!(b.joined && b.ticket == a.ticket);
        assert!(
            flights
                .join_or_start(&2, |_| None::<futures::future::Ready<u32>>)
                .is_none()
        );
        assert!(!flights.contains(&2), "declined: no flight");
        tx.send(()).unwrap();
        assert_eq!(b.result.await, 1);
        assert_eq!(flights.end(&a.ticket, || "landed"), Some("landed"));
        assert_eq!(flights.end(&a.ticket, || "twice"), None, "ended once");
        flights.settled(&1).await;
    }

    #[tokio::test]
    async fn a_dropped_task_ends_its_flight() {
        let flights = Arc::new(InFlight::<u32, Option<u32>>::default());
        let f = flights
            .join_or_start(&7, |ticket| {
                let guard = EndOnDrop::new(flights.clone(), ticket);
                let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    let _tx = tx;
                    std::future::pending::<()>().await;
                });
                task.abort();
                Some(rx.map(Result::ok))
            })
            .expect("started");
        assert_eq!(f.result.await, None, "the sender went with the task");
        tokio::time::timeout(Duration::from_secs(10), flights.settled(&7))
            .await
            .expect("the aborted task ended its flight");
    }
}
