//! Single flight for one slow computation (a mount's manifest LIST): callers that arrive while
//! it runs join it and share its result, success or error, instead of queueing to redo it.

use crate::sync::lock;
use std::future::Future;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// At most one computation of a `T` at a time.
pub struct Flight<T: Clone> {
    running: Mutex<Option<Shared<BoxFuture<'static, T>>>>,
}

impl<T: Clone> Default for Flight<T> {
    fn default() -> Self {
        Flight {
            running: Mutex::new(None),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flight<T> {
    /// Joins the computation in flight, or starts `start()` when none is. The first caller to
    /// see a flight end runs `land` on its result (under the flight's lock, so a caller arriving
    /// meanwhile finds what `land` stored, never a gap) and returns what `land` returns; every
    /// other caller gets the flight's result. The flight is driven by its callers: if all of
    /// them go away it pauses, and the next caller resumes it.
    pub async fn run<F>(&self, start: impl FnOnce() -> F, land: impl FnOnce(T) -> T) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let flight = {
            let mut slot = lock(&self.running);
            match slot.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let f = start().boxed().shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        let out = flight.clone().await;
        let mut slot = lock(&self.running);
        if slot.as_ref().is_some_and(|f| f.ptr_eq(&flight)) {
            let landed = land(out);
            *slot = None;
            landed
        } else {
            out
        }
    }

    /// Whether a computation is in flight.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_its_error() {
        let flight = Arc::new(Flight::<Result<u32, Arc<String>>>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let landed = Arc::new(AtomicUsize::new(0));
        let calls = (0..8).map(|_| {
            let (flight, runs, landed) = (flight.clone(), runs.clone(), landed.clone());
            async move {
                flight
                    .run(
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
            !flight.is_running(),
            "an ended flight must not be joined later"
        );
    }
}
