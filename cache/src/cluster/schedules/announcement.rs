//! What an announcement says and what an owner answers: the wire message checked into plain
//! types, the refusals and the reasons to ignore one, and the builder of an owner's index.

use std::sync::Arc;

use futures::future::BoxFuture;
use loaderd_proto::v1 as pb;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::rank::{PositionIndex, Ranks};
use crate::block::BlockId;
use crate::evict::Job;

/// A listing's fingerprint: its samples, and a hash of every sample's (path, version, size)
/// and blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Listing {
    pub count: u64,
    pub hash: u64,
}

/// The job a rank belongs to: what every rank of one training job shares, whatever the
/// epoch (the `job` of its announcements).
pub fn job_name(
    dataset: &str,
    shuffle: bool,
    drop_last: bool,
    seed: u64,
    world: u64,
    listing: &Listing,
) -> String {
    let mut h = Xxh3::new();
    h.update(dataset.as_bytes());
    for n in [seed, world, u64::from(shuffle), u64::from(drop_last)] {
        h.update(&n.to_le_bytes());
    }
    h.update(&listing.hash.to_le_bytes());
    format!("{:016x}", h.digest())
}

/// The job a [`job_name`] names, as the next-use oracle groups sources: every rank of one
/// job, local or announced, registers under the same one, and shares one fair share.
pub fn job_key(name: &str) -> Job {
    xxh3_64(name.as_bytes())
}

/// One rank's schedule as announced (the wire message, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing node's member id, and its loader.
    pub peer: String,
    pub loader: u64,
    pub job: String,
    pub dataset: String,
    pub shuffle: bool,
    pub drop_last: bool,
    pub listing: Listing,
    pub seed: u64,
    pub epoch: u64,
    pub world: u64,
    pub rank: u64,
    pub batch: u64,
    /// Global position of the loader's first sample.
    pub consumed: u64,
    /// This rank's samples delivered since.
    pub delivered: u64,
    /// This rank's time per own sample.
    pub ns_per_sample: u64,
    /// Block reads of one pass over the dataset.
    pub block_reads: u64,
}

impl Announcement {
    /// Checks a wire announcement.
    pub fn from_wire(a: pb::ScheduleAnnouncement) -> Result<Self, Refusal> {
        let bad = |why: &str| Err(Refusal::Invalid(why.to_string()));
        if a.node_id.is_empty() || a.dataset.is_empty() {
            return bad("node_id and dataset are required");
        }
        if a.world_size == 0 || a.rank >= a.world_size {
            return bad("rank must be below world_size");
        }
        if a.consumed > a.listing_count {
            return bad("consumed is past the end of the listing");
        }
        Ok(Announcement {
            peer: a.node_id,
            loader: a.loader_id,
            job: a.job,
            dataset: a.dataset,
            shuffle: a.shuffle,
            drop_last: a.drop_last,
            listing: Listing {
                count: a.listing_count,
                hash: a.listing_hash,
            },
            seed: a.seed,
            epoch: a.epoch,
            world: u64::from(a.world_size),
            rank: u64::from(a.rank),
            batch: u64::from(a.batch_size),
            consumed: a.consumed,
            delivered: a.delivered,
            ns_per_sample: a.ns_per_sample,
            block_reads: a.block_reads,
        })
    }

    /// The wire message.
    pub fn to_wire(&self) -> pb::ScheduleAnnouncement {
        pb::ScheduleAnnouncement {
            node_id: self.peer.clone(),
            loader_id: self.loader,
            job: self.job.clone(),
            dataset: self.dataset.clone(),
            shuffle: self.shuffle,
            drop_last: self.drop_last,
            listing_count: self.listing.count,
            listing_hash: self.listing.hash,
            seed: self.seed,
            epoch: self.epoch,
            world_size: u32::try_from(self.world).unwrap_or(u32::MAX),
            rank: u32::try_from(self.rank).unwrap_or(u32::MAX),
            batch_size: u32::try_from(self.batch).unwrap_or(u32::MAX),
            consumed: self.consumed,
            delivered: self.delivered,
            ns_per_sample: self.ns_per_sample,
            block_reads: self.block_reads,
        }
    }

    /// The rank's positions in a window over this announcement's epoch.
    pub fn ranks(&self) -> Ranks {
        Ranks {
            len: self.listing.count,
            consumed: self.consumed,
            rank: self.rank,
            world: self.world,
        }
    }

    /// The global position of the rank's next read in its epoch.
    pub fn position(&self) -> u64 {
        self.consumed
            .saturating_add(self.delivered.saturating_mul(self.world))
            .saturating_add(self.rank)
    }
}

/// Why an announcement is refused (a status to the sender).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("invalid schedule announcement: {0}")]
    Invalid(String),
    #[error(
        "this node holds {held} of {cap} {what} ({key}): the schedule is not held; \
         eviction here ignores it"
    )]
    OverCap {
        what: &'static str,
        held: u64,
        cap: u64,
        key: &'static str,
    },
    #[error(
        "remote schedules hold {held} of {cap} bytes (cluster.schedules.max_bytes) and this \
         one needs up to {need}: the schedule is not held; eviction here ignores it"
    )]
    OverBytes { held: u64, need: u64, cap: u64 },
}

/// Why an owner ignores an announcement (a warning and a counter; the sender carries on).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Ignored {
    #[error(
        "the listing of {dataset} differs here: {here} samples (hash {here_hash:016x}) \
         against {there} (hash {there_hash:016x}) on the announcing node"
    )]
    Listing {
        dataset: String,
        here: u64,
        here_hash: u64,
        there: u64,
        there_hash: u64,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// Which blocks this node owns (at the membership a build started with).
pub type Owns = Arc<dyn Fn(BlockId) -> bool + Send + Sync>;

/// Builds an owner's [`PositionIndex`] from an announcement: lists the dataset, checks the
/// listing's fingerprint and keeps the blocks `owns` accepts. The pipeline implements it.
pub trait IndexBuilder: Send + Sync {
    /// The most bytes an index of `a` can take (known before it is built).
    fn estimate(&self, a: &Announcement) -> u64;
    /// The index of `a`'s dataset over this epoch and the next.
    fn build(
        &self,
        a: Announcement,
        owns: Owns,
    ) -> BoxFuture<'static, Result<Arc<dyn PositionIndex>, Ignored>>;
}

/// What an accepted or ignored announcement is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Accepted,
    Ignored(String),
}

impl Ack {
    /// The wire reply.
    pub fn to_wire(&self) -> pb::ScheduleAck {
        match self {
            Ack::Accepted => pb::ScheduleAck {
                accepted: true,
                reason: String::new(),
            },
            Ack::Ignored(r) => pb::ScheduleAck {
                accepted: false,
                reason: r.clone(),
            },
        }
    }
}
