//! Locks that ignore poisoning, in one place.
//!
//! Every lock of this crate guards state that stays consistent between statements (maps,
//! counters, slot lists): a thread that panicked while holding one left nothing half-done
//! that a later holder could trip over, so the guard is taken back instead of panicking
//! every later caller in turn.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Locks `m`, through poisoning.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, through poisoning.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, through poisoning.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` while `condition` holds, at most `timeout`, through poisoning; the guard
/// comes back either way.
pub fn wait_timeout_while<'a, T>(
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

    #[test]
    fn a_poisoned_lock_is_taken_back() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(2));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            let _w = write(&l2);
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 3));
    }

    #[test]
    fn waits_on_a_poisoned_lock_still_wait_and_wake() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = lock(&held);
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        let cv = std::sync::Arc::new(Condvar::new());
        let (m2, cv2) = (m.clone(), cv.clone());
        let waiter = std::thread::spawn(move || {
            let g = wait_timeout_while(&cv2, lock(&m2), Duration::from_secs(30), |v| v.len() < 2);
            g.len()
        });
        std::thread::sleep(Duration::from_millis(20));
        lock(&m).push(2);
        cv.notify_all();
        assert_eq!(waiter.join().unwrap(), 2);
        // Timing out hands the guard back too.
        let g = wait_timeout_while(&cv, lock(&m), Duration::from_millis(1), |_| true);
        assert_eq!(g.len(), 2);
    }
}
