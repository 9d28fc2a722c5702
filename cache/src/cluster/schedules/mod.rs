//! Schedules of other nodes' loaders, held by this node for the blocks it owns.
//!
//! A loader's schedule is a few numbers ([`Announcement`]): its node sends them to every
//! other member when it opens and about once a second after (`AnnounceSchedule`, peer API),
//! and withdraws them when it closes. Each owner rebuilds the positions at which the blocks
//! it owns are read from the dataset, seed and epoch ([`IndexBuilder`]: the pipeline lists
//! the dataset; in the background, at most `build_concurrency` at once) and registers one
//! [`RankSchedule`] per announcing rank with its next-use oracle, so its clairvoyant
//! eviction knows every rank's reads. Indexes are shared by the ranks of one job and epoch.
//!
//! Bounded: schedules per announcing node and in total, and the bytes of their indexes
//! (estimated from the announcement before a build) are capped; an announcement over a cap
//! is refused ([`Refusal`]). A schedule not refreshed within `expiry` is dropped (its loader
//! or node died, or stopped consuming); one whose listing differs from this node's is
//! ignored, with a warning and a counter.

mod announcement;
mod rank;
mod send;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use loaderd_proto::v1 as pb;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::block::BlockId;
use crate::config::RemoteScheduleConfig;
use crate::evict::{NextUseOracle, Registration, clock};
use crate::placement::Placement;
use crate::sync::lock;

pub use announcement::{
    Ack, Announcement, Ignored, IndexBuilder, Listing, Owns, Refusal, job_key, job_name,
};
pub use rank::{Anchor, MAX_MARKS, NS_PER_SAMPLE_BOUNDS, PositionIndex, RankSchedule, Ranks};

/// An index and the bytes it holds against the cap, given back when the last rank drops it.
struct Held {
    index: Arc<dyn PositionIndex>,
    bytes: u64,
    total: Arc<AtomicU64>,
    /// The membership its blocks were chosen by (also keeps the key's pointer unique).
    placement: Arc<Placement>,
    /// The epoch at positions `0..len`.
    epoch: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Ranks of one job at one epoch, over one membership, share an index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IndexKey {
    job: String,
    dataset: String,
    listing: Listing,
    epoch: u64,
    placement: usize,
}

impl IndexKey {
    fn of(a: &Announcement, placement: &Arc<Placement>) -> Self {
        IndexKey {
            job: a.job.clone(),
            dataset: a.dataset.clone(),
            listing: a.listing,
            epoch: a.epoch,
            placement: Arc::as_ptr(placement) as usize,
        }
    }
}

/// A registered rank.
struct Ready {
    schedule: Arc<RankSchedule>,
    held: Arc<Held>,
    epoch: u64,
    _registration: Registration,
}

/// One announcing rank: (peer, loader).
struct Entry {
    latest: Announcement,
    deadline: Instant,
    ready: Option<Ready>,
    /// The epoch of a build under way.
    building: Option<u64>,
    /// Set once its build was ignored: refreshes are answered with the reason.
    ignored: Option<String>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, u64), Entry>,
    indexes: HashMap<IndexKey, Weak<Held>>,
}

/// The remote schedules of this node (see the module header).
pub struct RemoteSchedules {
    cfg: RemoteScheduleConfig,
    me: String,
    replication: usize,
    view: watch::Receiver<Arc<Placement>>,
    oracle: OnceLock<Arc<NextUseOracle>>,
    builder: OnceLock<Arc<dyn IndexBuilder>>,
    inner: Mutex<Inner>,
    bytes: Arc<AtomicU64>,
    builds: Arc<Semaphore>,
    refused: AtomicU64,
    ignored: AtomicU64,
    expired: AtomicU64,
}

impl RemoteSchedules {
    /// The store of node `me`, owners chosen from `view` with `replication`.
    pub fn new(
        cfg: RemoteScheduleConfig,
        me: String,
        replication: usize,
        view: watch::Receiver<Arc<Placement>>,
    ) -> Arc<Self> {
        Arc::new(RemoteSchedules {
            builds: Arc::new(Semaphore::new(cfg.build_concurrency.max(1))),
            cfg,
            me,
            replication,
            view,
            oracle: OnceLock::new(),
            builder: OnceLock::new(),
            inner: Mutex::default(),
            bytes: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        })
    }

    /// The settings (the announcing side's refresh period is one of them).
    pub fn config(&self) -> &RemoteScheduleConfig {
        &self.cfg
    }

    /// Schedules register with `oracle` (the cache's, when it evicts by schedule).
    pub fn attach_oracle(&self, oracle: Arc<NextUseOracle>) {
        let _ = self.oracle.set(oracle);
    }

    /// Indexes are built by `builder` (the daemon installs the pipeline's).
    pub fn set_builder(&self, builder: Arc<dyn IndexBuilder>) {
        let _ = self.builder.set(builder);
    }

    /// Drift of a rank's predicted ticks tolerated before it re-anchors: two refreshes.
    fn drift(&self) -> u64 {
        u64::try_from(self.cfg.refresh.0.as_nanos() * 2).unwrap_or(u64::MAX)
    }

    fn ignore(&self, a: &Announcement, why: &str) -> Ack {
        self.ignored.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("loaderd_remote_schedule_announcements_total", "result" => "ignored")
            .increment(1);
        warn!(peer = %a.peer, dataset = %a.dataset, reason = why, "remote schedule ignored");
        Ack::Ignored(why.to_string())
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("loaderd_remote_schedule_announcements_total", "result" => "refused")
            .increment(1);
        warn!(reason = %r, "remote schedule refused");
        r
    }

    /// A rank's schedule, new or refreshed.
    pub fn announce(self: &Arc<Self>, a: Announcement) -> Result<Ack, Refusal> {
        let (Some(_), Some(_)) = (self.oracle.get(), self.builder.get()) else {
            // A configuration, not an event: answered, not counted or logged at every refresh.
            return Ok(Ack::Ignored(
                "this node does not evict by schedule (cache.eviction is not clairvoyant)".into(),
            ));
        };
        let placement = self.view.borrow().clone();
        let mut inner = lock(&self.inner);
        let key = (a.peer.clone(), a.loader);
        let deadline = Instant::now() + self.cfg.expiry.0;
        if let Some(e) = inner.entries.get_mut(&key) {
            e.deadline = deadline;
            if let Some(why) = &e.ignored {
                return Ok(Ack::Ignored(why.clone()));
            }
            let rebuild = self.refresh(e, &a, &placement);
            e.latest = a;
            if rebuild && e.building.is_none() {
                let started = self.start_build(&mut inner, &key, &placement);
                if let Err(r) = started {
                    warn!(reason = %r, "remote schedule kept at its old epoch");
                }
            }
            metrics::counter!("loaderd_remote_schedule_announcements_total", "result" => "refreshed")
                .increment(1);
            return Ok(Ack::Accepted);
        }
        let per_peer = inner.entries.keys().filter(|(p, _)| *p == a.peer).count();
        if per_peer >= self.cfg.max_per_peer {
            return Err(self.refuse(Refusal::OverCap {
                what: "schedules of this peer",
                held: per_peer as u64,
                cap: self.cfg.max_per_peer as u64,
                key: "cluster.schedules.max_per_peer",
            }));
        }
        if inner.entries.len() >= self.cfg.max_total {
            return Err(self.refuse(Refusal::OverCap {
                what: "remote schedules",
                held: inner.entries.len() as u64,
                cap: self.cfg.max_total as u64,
                key: "cluster.schedules.max_total",
            }));
        }
        info!(peer = %a.peer, dataset = %a.dataset, rank = a.rank, world = a.world, epoch = a.epoch, "remote schedule announced");
        inner.entries.insert(
            key.clone(),
            Entry {
                latest: a,
                deadline,
                ready: None,
                building: None,
                ignored: None,
            },
        );
        if let Err(r) = self.start_build(&mut inner, &key, &placement) {
            inner.entries.remove(&key);
            return Err(self.refuse(r));
        }
        metrics::counter!("loaderd_remote_schedule_announcements_total", "result" => "accepted")
            .increment(1);
        self.publish(&inner);
        Ok(Ack::Accepted)
    }

    /// Moves a registered rank to `a`'s position; whether its index must be rebuilt (a new
    /// epoch, or the membership changed).
    fn refresh(&self, e: &Entry, a: &Announcement, placement: &Arc<Placement>) -> bool {
        let Some(r) = &e.ready else {
            return e.building.is_none_or(|epoch| epoch != a.epoch);
        };
        let len = r.schedule.index().epoch_len();
        let position = if a.epoch == r.epoch {
            a.position()
        } else if a.epoch == r.epoch + 1 {
            // The old window's second half is this epoch: it serves until the new one is built.
            a.position().saturating_add(len)
        } else {
            return true;
        };
        r.schedule
            .refresh(position, clock(), a.ns_per_sample, self.drift());
        a.epoch != r.epoch || !Arc::ptr_eq(&r.held.placement, placement)
    }

    /// Starts building (or reuses) the index of entry `key`'s latest announcement.
    fn start_build(
        self: &Arc<Self>,
        inner: &mut Inner,
        key: &(String, u64),
        placement: &Arc<Placement>,
    ) -> Result<(), Refusal> {
        let Some(e) = inner.entries.get(key) else {
            return Ok(());
        };
        let a = e.latest.clone();
        let ikey = IndexKey::of(&a, placement);
        if let Some(held) = inner.indexes.get(&ikey).and_then(Weak::upgrade) {
            self.make_ready(inner, key, held);
            return Ok(());
        }
        let Some(builder) = self.builder.get().cloned() else {
            return Ok(());
        };
        let estimate = builder.estimate(&a);
        let held = self.bytes.load(Ordering::Acquire);
        if held.saturating_add(estimate) > self.cfg.max_bytes.0 {
            return Err(Refusal::OverBytes {
                held,
                need: estimate,
                cap: self.cfg.max_bytes.0,
            });
        }
        self.bytes.fetch_add(estimate, Ordering::AcqRel);
        if let Some(e) = inner.entries.get_mut(key) {
            e.building = Some(a.epoch);
        }
        let (me, replication) = (self.me.clone(), self.replication);
        let view = placement.clone();
        let owns: Owns = Arc::new(move |id| view.is_owner(&me, id, replication));
        let (this, key, placement) = (self.clone(), key.clone(), placement.clone());
        let span = info_span!("remote_schedule_build", peer = %a.peer, dataset = %a.dataset, epoch = a.epoch);
        tokio::spawn(
            async move {
                let built = match this.builds.clone().acquire_owned().await {
                    Ok(_permit) => builder.build(a.clone(), owns).await,
                    Err(_) => Err(Ignored::Unavailable("shutting down".into())),
                };
                this.built(&key, &a, estimate, placement, built);
            }
            .instrument(span),
        );
        Ok(())
    }

    /// A build ended: the reservation goes back; the index registers its rank (and stays
    /// available to the job's other ranks), or the entry is marked ignored.
    fn built(
        &self,
        key: &(String, u64),
        a: &Announcement,
        reserved: u64,
        placement: Arc<Placement>,
        built: Result<Arc<dyn PositionIndex>, Ignored>,
    ) {
        self.bytes.fetch_sub(reserved, Ordering::AcqRel);
        let mut inner = lock(&self.inner);
        match built {
            Ok(index) => {
                let bytes = index.heap_bytes();
                self.bytes.fetch_add(bytes, Ordering::AcqRel);
                let ikey = IndexKey::of(a, &placement);
                let held = Arc::new(Held {
                    index,
                    bytes,
                    total: self.bytes.clone(),
                    placement,
                    epoch: a.epoch,
                });
                inner.indexes.retain(|_, w| w.strong_count() > 0);
                inner.indexes.insert(ikey, Arc::downgrade(&held));
                if let Some(e) = inner.entries.get_mut(key) {
                    e.building = None;
                    info!(peer = %a.peer, dataset = %a.dataset, bytes, "remote schedule registered");
                    self.make_ready(&mut inner, key, held);
                }
            }
            Err(why) => {
                let why = why.to_string();
                if let Some(e) = inner.entries.get_mut(key) {
                    e.building = None;
                    e.ignored = Some(why.clone());
                    self.ignore(a, &why);
                }
            }
        }
        self.publish(&inner);
    }

    /// Registers entry `key`'s rank over `held` with the oracle (replacing an older one).
    fn make_ready(&self, inner: &mut Inner, key: &(String, u64), held: Arc<Held>) {
        let (Some(oracle), Some(e)) = (self.oracle.get(), inner.entries.get_mut(key)) else {
            return;
        };
        let a = &e.latest;
        // Built for the epoch before the one announced since: its second half serves.
        let position = match a.epoch.checked_sub(held.epoch) {
            Some(0) => a.position(),
            Some(1) => a.position().saturating_add(held.index.epoch_len()),
            _ => return,
        };
        let mut ranks = a.ranks();
        if a.epoch != held.epoch {
            ranks.consumed = 0;
        }
        let schedule = Arc::new(RankSchedule::new(
            held.index.clone(),
            ranks,
            position,
            clock(),
            a.ns_per_sample,
        ));
        let registration = oracle.register_job(schedule.clone(), job_key(&a.job));
        e.ready = Some(Ready {
            schedule,
            epoch: held.epoch,
            held,
            _registration: registration,
        });
    }

    /// A rank's loader closed.
    pub fn withdraw(&self, peer: &str, loader: u64) -> bool {
        let mut inner = lock(&self.inner);
        let gone = inner.entries.remove(&(peer.to_string(), loader)).is_some();
        if gone {
            info!(peer, loader, "remote schedule withdrawn");
            self.publish(&inner);
        }
        gone
    }

    /// Drops schedules whose refresh is overdue; how many.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let before = inner.entries.len();
        inner.entries.retain(|(peer, loader), e| {
            let keep = e.deadline > now;
            if !keep {
                warn!(peer = %peer, loader, dataset = %e.latest.dataset, "remote schedule expired: no refresh within cluster.schedules.expiry");
            }
            keep
        });
        let n = before - inner.entries.len();
        if n > 0 {
            self.expired.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!("loaderd_remote_schedules_expired_total").increment(n as u64);
            self.publish(&inner);
        }
        n
    }

    /// Block `id` was read by a peer from this node: the rank that reads it soonest moves
    /// on to its following read.
    pub fn read(&self, id: BlockId) {
        let inner = lock(&self.inner);
        let first = inner
            .entries
            .values()
            .filter_map(|e| e.ready.as_ref())
            .filter_map(|r| r.schedule.upcoming_read(id).map(|(t, p)| (t, p, r)))
            .min_by_key(|(t, _, _)| *t);
        if let Some((_, p, r)) = first {
            r.schedule.read(p);
        }
    }

    fn publish(&self, inner: &Inner) {
        metrics::gauge!("loaderd_remote_schedules").set(inner.entries.len() as f64);
        metrics::gauge!("loaderd_remote_schedule_bytes")
            .set(self.bytes.load(Ordering::Acquire) as f64);
    }

    /// The status section.
    pub fn status(&self) -> pb::RemoteSchedulesStatus {
        let inner = lock(&self.inner);
        let mut by_peer: HashMap<String, u64> = HashMap::new();
        let mut held = 0;
        for ((peer, _), e) in &inner.entries {
            if e.ignored.is_none() {
                *by_peer.entry(peer.clone()).or_default() += 1;
                held += 1;
            }
        }
        pb::RemoteSchedulesStatus {
            held,
            by_peer,
            bytes: self.bytes.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// The rank schedules registered now (tests and a prefetcher at the owner).
    pub fn registered(&self) -> Vec<Arc<RankSchedule>> {
        lock(&self.inner)
            .entries
            .values()
            .filter_map(|e| e.ready.as_ref().map(|r| r.schedule.clone()))
            .collect()
    }

    /// Expires overdue schedules every refresh period while the store lives.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let period = self.cfg.refresh.0.max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match weak.upgrade() {
                    Some(s) => {
                        s.expire();
                    }
                    None => return,
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
