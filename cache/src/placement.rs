//! Placement: which nodes own a block, computed locally by every node.
//!
//! Rendezvous (highest-random-weight) hashing: each live member scores every block with a hash
//! of (member id, block id) and the highest scores own it. Every node computes the same owners
//! from the same member list without asking anyone, so no master sits on the read path; when a
//! member leaves, only the blocks it owned move (each to its next-highest scorer), and a
//! joining member takes about 1/n of the blocks from the others.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::block::BlockId;

/// A cluster member as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// Stable identity (survives restarts: a restarted node owns its old blocks again).
    pub id: String,
    /// Where its peer API listens.
    pub addr: String,
}

/// Owners of blocks over one membership view.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    members: Vec<(u64, Member)>,
}

impl Placement {
    /// A view over `members` (order and duplicates do not matter).
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut members: Vec<(u64, Member)> = members
            .into_iter()
            .map(|m| (xxh3_64_with_seed(m.id.as_bytes(), 0x6c6f_6164_6572_6421), m))
            .collect();
        members.sort();
        members.dedup_by(|a, b| a.1.id == b.1.id);
        Placement { members }
    }

    /// Members, sorted by id hash.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|(_, m)| m)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// All members in preference order for `block`: the first `replication` are its owners,
    /// the rest are the fallbacks in order.
    pub fn ranked(&self, block: BlockId) -> Vec<&Member> {
        let mut scored: Vec<(u64, &Member)> = self
            .members
            .iter()
            .map(|(seed, m)| (score(*seed, block), m))
            .collect();
        // Highest score first; ties (astronomically rare) broken by id for determinism.
        scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        scored.into_iter().map(|(_, m)| m).collect()
    }

    /// The `replication` owners of `block` (fewer if the cluster is smaller).
    pub fn owners(&self, block: BlockId, replication: usize) -> Vec<&Member> {
        let mut r = self.ranked(block);
        r.truncate(replication.max(1));
        r
    }

    /// Whether member `id` owns `block`.
    pub fn is_owner(&self, id: &str, block: BlockId, replication: usize) -> bool {
        self.owners(block, replication).iter().any(|m| m.id == id)
    }
}

fn score(member_seed: u64, block: BlockId) -> u64 {
    xxh3_64_with_seed(&block.0.to_le_bytes(), member_seed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("node-{i}"),
                addr: format!("10.0.0.{i}:7070"),
            })
            .collect()
    }

    fn blocks(n: u128) -> impl Iterator<Item = BlockId> {
        (0..n).map(|i| BlockId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
    }

    #[test]
    fn same_owner_everywhere_regardless_of_order() {
        let a = Placement::new(members(5));
        let mut shuffled = members(5);
        shuffled.reverse();
        shuffled.push(shuffled[0].clone());
        let b = Placement::new(shuffled);
        assert_eq!(b.len(), 5, "duplicates collapse");
        for blk in blocks(1000) {
            assert_eq!(a.owners(blk, 2), b.owners(blk, 2));
        }
    }

    #[test]
    fn balanced_across_members() {
        let p = Placement::new(members(4));
        let mut count: HashMap<&str, usize> = HashMap::new();
        for blk in blocks(40_000) {
            *count.entry(p.owners(blk, 1)[0].id.as_str()).or_default() += 1;
        }
        for (id, c) in count {
            assert!((9_000..11_000).contains(&c), "{id} owns {c} of 40000");
        }
    }

    #[test]
    fn a_leaving_member_moves_only_its_blocks_to_the_next_ranked() {
        let before = Placement::new(members(5));
        let after = Placement::new(members(5).into_iter().filter(|m| m.id != "node-2"));
        for blk in blocks(5000) {
            let ranked = before.ranked(blk);
            let new_owner = &after.owners(blk, 1)[0].id;
            if ranked[0].id == "node-2" {
                assert_eq!(new_owner, &ranked[1].id, "fallback is the next ranked");
            } else {
                assert_eq!(new_owner, &ranked[0].id, "others keep their blocks");
            }
        }
    }

    #[test]
    fn replication_and_small_clusters() {
        let p = Placement::new(members(2));
        let blk = BlockId(42);
        assert_eq!(p.owners(blk, 3).len(), 2);
        assert_eq!(p.owners(blk, 0).len(), 1);
        assert!(p.is_owner(&p.owners(blk, 1)[0].id.clone(), blk, 1));
        assert!(Placement::new(Vec::new()).owners(blk, 1).is_empty());
    }
}
