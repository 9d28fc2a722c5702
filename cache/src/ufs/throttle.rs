//! A cap on the bytes per second read from the UFS (`cache.ufs.max_bandwidth`).
//!
//! One [`Throttle`] is shared by every mount of a daemon, so the cap holds for the node's
//! link to its object stores as a whole: a cost or fairness limit on egress in production,
//! and the way `loaderctl bench epochs` makes a miss cost what it costs against a real store
//! on a machine whose local disk is far faster than any bucket.
//!
//! It is a virtual clock: each GET takes the next `bytes / rate` slot of the link and
//! completes when its slot ends, as a transfer through a link of that bandwidth would. The
//! wait comes before the request, outside its deadline, so a long queue of misses never turns
//! into timeouts; concurrent GETs share the bandwidth in arrival order.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A shared bandwidth cap; see the module docs.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    /// When the link is next free.
    free_at: Mutex<Instant>,
}

impl Throttle {
    /// A cap of `bytes_per_sec`; `None` for 0 (no cap).
    pub fn new(bytes_per_sec: u64) -> Option<Self> {
        (bytes_per_sec > 0).then(|| Throttle {
            bytes_per_sec,
            free_at: Mutex::new(Instant::now()),
        })
    }

    /// The cap in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// How long `bytes` take at the cap.
    fn duration_of(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Waits until `bytes` have passed the link: the end of the next free slot of their size.
    pub async fn pass(&self, bytes: u64) {
        let done = {
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*free_at).max(Instant::now());
            *free_at = start + self.duration_of(bytes);
            *free_at
        };
        tokio::time::sleep_until(done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_no_cap() {
        assert!(Throttle::new(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_transfers_share_the_link() {
        let t = std::sync::Arc::new(Throttle::new(1 << 20).expect("a cap"));
        let start = Instant::now();
        // Four transfers of 256 KiB at 1 MiB/s: the last ends after one second, the first
        // after a quarter of it.
        let mut ends = Vec::new();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    t.pass(256 << 10).await;
                    Instant::now()
                })
            })
            .collect();
        for task in tasks {
            ends.push(task.await.expect("transfer") - start);
        }
        ends.sort();
        assert_eq!(ends[0], Duration::from_millis(250));
        assert_eq!(ends[3], Duration::from_secs(1));
        // An idle link does not bank bandwidth: a transfer after a pause takes its full time.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = Instant::now();
        t.pass(512 << 10).await;
        assert_eq!(Instant::now() - before, Duration::from_millis(500));
    }
}
