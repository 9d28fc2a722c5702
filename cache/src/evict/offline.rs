//! Belady's MIN computed offline over a whole trace: the optimum the policies are measured
//! against (their tests, and `loaderctl bench epochs` on the trace a loader really read).
//!
//! MIN with bypass: on a miss with the cache full, the block (resident or incoming) whose
//! next reference is farthest is not kept, so an incoming block needed later than everything
//! resident is read and not cached. Capacity counts blocks.

use std::collections::{BTreeSet, HashMap};

/// Which reads of `trace` hit under MIN with room for `cap` blocks: `hits[i]` for `trace[i]`.
/// O(n log n).
pub fn min_hits(trace: &[u64], cap: usize) -> Vec<bool> {
    // next[i]: where trace[i] is read again (usize::MAX: never).
    let mut next = vec![usize::MAX; trace.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, b) in trace.iter().enumerate().rev() {
        if let Some(j) = last.insert(*b, i) {
            next[i] = j;
        }
    }
    let mut resident: HashMap<u64, usize> = HashMap::new();
    // (next read, block) of every resident block; the last is the farthest.
    let mut by_next: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut hits = vec![false; trace.len()];
    for (i, &b) in trace.iter().enumerate() {
        if let Some(n) = resident.get_mut(&b) {
            hits[i] = true;
            by_next.remove(&(*n, b));
            *n = next[i];
            by_next.insert((next[i], b));
            continue;
        }
        if cap == 0 {
            continue;
        }
        if resident.len() >= cap {
            match by_next.last().copied() {
                Some((far_next, far)) if far_next > next[i] => {
                    by_next.remove(&(far_next, far));
                    resident.remove(&far);
                }
                _ => continue,
            }
        }
        resident.insert(b, next[i]);
        by_next.insert((next[i], b));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(trace: &[u64], cap: usize) -> usize {
        min_hits(trace, cap).iter().filter(|h| **h).count()
    }

    /// No room keeps nothing; room for everything misses first reads only.
    #[test]
    fn extremes() {
        let t = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5];
        assert_eq!(count(&t, 0), 0);
        assert_eq!(t.len() - count(&t, 5), 5);
    }

    /// A block read once is never kept over one read again.
    #[test]
    fn bypasses_blocks_needed_later_than_everything_resident() {
        let t = [1, 2, 9, 1, 2];
        assert_eq!(min_hits(&t, 2), vec![false, false, false, true, true]);
    }
}
