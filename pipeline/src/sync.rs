//! The pipeline's one way to take a lock: a poisoned lock is used as it is.
//!
//! A panic while a lock is held (a bug in one loader's worker, say) must not take down every
//! other loader of the daemon with it. What the pipeline keeps behind its locks (slot states,
//! the registry's reservations, batch metadata) is changed in short sections that call no
//! outside code and do no I/O: counters and states are assigned after every check has passed,
//! so a holder that panics leaves the data as consistent as it found it, and everyone else
//! keeps using it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`Condvar::wait_timeout_while`], ignoring poisoning; the caller checks the condition again.
pub(crate) fn wait_timeout_while<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout_while(guard, timeout, condition) {
        Ok((guard, _)) => guard,
        Err(p) => p.into_inner().0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poisoned() -> Arc<Mutex<Vec<u32>>> {
        let m = Arc::new(Mutex::new(vec![1]));
        let held = Arc::clone(&m);
        let r = std::thread::spawn(move || {
            let mut v = held.lock().unwrap();
            v.push(2);
            panic!("a holder panics");
        })
        .join();
        assert!(r.is_err() && m.is_poisoned());
        m
    }

    #[test]
    fn a_poisoned_lock_is_used_as_it_is() {
        let m = poisoned();
        assert_eq!(*lock(&m), [1, 2]);
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }

    #[test]
    fn waits_on_a_poisoned_lock_still_wait_and_wake() {
        let m = poisoned();
        let cv = Arc::new(Condvar::new());
        let (m2, cv2) = (Arc::clone(&m), Arc::clone(&cv));
        let waiter = std::thread::spawn(move || {
            let g = wait_timeout_while(&cv2, lock(&m2), Duration::from_secs(30), |v| v.len() < 3);
            g.len()
        });
        std::thread::sleep(Duration::from_millis(20));
        lock(&m).push(3);
        cv.notify_all();
        assert_eq!(waiter.join().unwrap(), 3);
        // Timing out hands the guard back too.
        let g = wait_timeout_while(&cv, lock(&m), Duration::from_millis(1), |_| true);
        assert_eq!(g.len(), 3);
    }
}
