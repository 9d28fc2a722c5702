//! Whether a schedule's reader stopped consuming.
//!
//! A schedule predicts its reads from its position and rate. When its loader stops (a
//! stalled trainer, a long validation pass, a loader kept open and not read), the predicted
//! reads fall into the past and, taken at their word, would hold the loader's blocks above
//! every other reader's for as long as it stays open. So a schedule whose position has not
//! moved for [`IDLE_AFTER`] (or [`IDLE_SAMPLES`] samples' time at its rate, if that is
//! longer) needs nothing until it moves again; both changes bump its generation, so the
//! policies re-ask every block once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::Tick;

/// See the module header.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);
/// See the module header.
pub const IDLE_SAMPLES: u64 = 1024;

/// When a schedule's position last moved, and whether it has gone idle since.
#[derive(Debug)]
pub struct Idle {
    moved_at: AtomicU64,
    idle: AtomicBool,
    after: Duration,
}

impl Idle {
    /// A schedule that moved at `now`.
    pub fn new(now: Tick) -> Self {
        Idle {
            moved_at: AtomicU64::new(now),
            idle: AtomicBool::new(false),
            after: IDLE_AFTER,
        }
    }

    /// Idle after `after` without a move instead of [`IDLE_AFTER`] (tests).
    pub fn after(mut self, after: Duration) -> Self {
        self.after = after;
        self
    }

    /// The position moved at `now`. Returns whether the schedule was idle (its caller
    /// predicts from `now` again); `generation` is bumped then.
    pub fn moved(&self, now: Tick, generation: &AtomicU64) -> bool {
        self.moved_at.store(now, Ordering::Release);
        let was = self.idle.swap(false, Ordering::AcqRel);
        if was {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        was
    }

    /// Whether the schedule was found idle (by [`Idle::check`]) and has not moved since.
    pub fn is(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    /// Whether the schedule is idle at `now`, for a rate of `ns_per_sample`; the first time
    /// it is, `generation` is bumped.
    pub fn check(&self, now: Tick, ns_per_sample: u64, generation: &AtomicU64) -> bool {
        if self.idle.load(Ordering::Acquire) {
            return true;
        }
        let still = now.saturating_sub(self.moved_at.load(Ordering::Acquire));
        let after = u64::try_from(self.after.as_nanos())
            .unwrap_or(u64::MAX)
            .max(IDLE_SAMPLES.saturating_mul(ns_per_sample));
        if still <= after {
            return false;
        }
        if !self.idle.swap(true, Ordering::AcqRel) {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_after_the_longer_of_the_time_and_the_samples() {
        let g = AtomicU64::new(0);
        let ms = 1_000_000;
        let idle = Idle::new(0).after(Duration::from_millis(10));
        assert!(!idle.check(10 * ms, 1_000, &g), "not past 10 ms");
        assert!(idle.check(11 * ms, 1_000, &g));
        assert!(idle.check(12 * ms, 1_000, &g));
        assert_eq!(g.load(Ordering::Acquire), 1, "bumped once");
        assert!(idle.moved(20 * ms, &g), "was idle");
        assert_eq!(g.load(Ordering::Acquire), 2);
        assert!(!idle.moved(21 * ms, &g));
        // A slow reader (1 ms a sample) is idle only after 1024 samples' time.
        assert!(!idle.check(21 * ms + 1000 * ms, ms, &g));
        assert!(idle.check(21 * ms + 1025 * ms, ms, &g));
    }
}
