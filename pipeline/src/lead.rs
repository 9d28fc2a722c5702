//! How far ahead a prefetcher must start so that a link of known bandwidth delivers every
//! upcoming miss before its reader asks for it.
//!
//! A schedule's misses are not spread evenly: Belady's MIN keeps the blocks needed soonest, so
//! an epoch's hits come first and its misses bunch towards its end, at a rate the link may not
//! carry although it carries the epoch's average. A window of fixed time (fetch latency ×
//! rate) then starts each miss too late. [`lead`] computes the latest start of every upcoming
//! miss on a link that fetches in order at `bytes_per_sec`, backwards from the reads' times
//! (each miss must have arrived by its read and before the next miss's latest start), and
//! tells how many positions must be planned now: up to the last miss whose latest start is
//! already due. Planning no earlier than that keeps prefetched blocks in memory for as short
//! a time as the link allows, which is what keeps the hit ratio at MIN's.

/// The positions, counted from the first in `misses`, to plan now: one past the last miss
/// whose latest start is within `due_ns` from now. `misses[i]` is the bytes sample `i` needs
/// fetched (0 when resident); readers begin a `step` of samples at once, so sample `i` is
/// read `(i + 1 - step) × ns_per_sample` from now (the first step now). With no bandwidth
/// known, nothing is due.
pub fn lead(
    misses: &[u64],
    ns_per_sample: u64,
    step: u64,
    bytes_per_sec: u64,
    due_ns: u64,
) -> usize {
    if bytes_per_sec == 0 {
        return 0;
    }
    let per_sample = i128::from(ns_per_sample);
    let rate = i128::from(bytes_per_sec);
    // The latest time the link may start the miss after the current one.
    let mut next_start = i128::MAX;
    let mut last_due = 0;
    for (i, &bytes) in misses.iter().enumerate().rev() {
        if bytes == 0 {
            continue;
        }
        let read_at = (i as i128 + 1 - i128::from(step)).max(0) * per_sample;
        let fetch = i128::from(bytes) * 1_000_000_000 / rate;
        let start = read_at.min(next_start) - fetch;
        next_start = start;
        if last_due == 0 && start <= i128::from(due_ns) {
            last_due = i + 1;
        }
    }
    last_due
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn evenly_spread_misses_the_link_carries_start_only_when_due() {
        // 1 ms a sample, every sample a 1 KB miss, 10 MB/s: a fetch takes 0.1 ms. Nothing has
        // to start before its read is 0.1 ms away; with 2 ms due, the first two.
        let misses = vec![1_000; 100];
        assert_eq!(lead(&misses, MS, 0, 10_000_000, 0), 0);
        assert_eq!(lead(&misses, MS, 0, 10_000_000, 2 * MS), 2);
    }

    #[test]
    fn a_bunch_beyond_the_link_pulls_its_start_forward() {
        // Samples 0..50 hit; 50..100 each miss 20 KB, 1 ms a sample, at 10 MB/s (2 ms a
        // fetch): the 50 misses need 100 ms of link and their reads span 50 ms, so the first
        // must start 50 ms before its read at 51 ms, i.e. now: all of it is due.
        let mut misses = vec![0; 50];
        misses.extend(vec![20_000; 50]);
        let n = lead(&misses, MS, 0, 10_000_000, 0);
        assert!(n >= 51, "the bunch's first miss is due now: {n}");
        // With twice the bandwidth the link keeps up: nothing is due yet.
        assert_eq!(lead(&misses, MS, 0, 20_000_000, 0), 0);
    }

    #[test]
    fn only_the_misses_the_link_cannot_reach_in_time_are_due() {
        // A miss of 50 ms of link time read at 100 ms, behind a hit stretch: not due at 10 ms,
        // due at 50 ms and later.
        let mut misses = vec![0; 99];
        misses.push(500_000);
        assert_eq!(lead(&misses, MS, 0, 10_000_000, 10 * MS), 0);
        assert_eq!(lead(&misses, MS, 0, 10_000_000, 50 * MS), 100);
    }

    #[test]
    fn nothing_is_due_without_a_bandwidth_or_misses() {
        assert_eq!(lead(&[1_000; 8], MS, 0, 0, u64::MAX), 0);
        assert_eq!(lead(&[0; 8], MS, 0, 1, u64::MAX), 0);
        assert_eq!(lead(&[], MS, 0, 1, u64::MAX), 0);
    }

    #[test]
    fn a_step_is_read_at_once() {
        // Readers begin 4 samples at once: the first four are read now, so each miss among
        // them is due however fast the link; the fifth is read 1 ms from now.
        assert_eq!(lead(&[1_000; 8], MS, 4, 10_000_000, 0), 4);
        assert_eq!(lead(&[1_000; 8], MS, 4, 10_000_000, MS), 5);
    }
}
