//! An open loader's schedule, sent to the other members of the cluster: the blocks its
//! samples read are owned by them (rendezvous placement), and their eviction needs it too.
//!
//! The schedule is a few numbers (the cache's `Announcement`: the dataset fields, the
//! listing's fingerprint, seed, epoch, world size, rank, batch size, this rank's position
//! and its time per sample), sent when the loader opens and every `cluster.schedules.refresh`
//! after, and withdrawn when the loader closes. Each rank announces its own position (its
//! next read is at `consumed + delivered * world + rank`), so an owner knows where every
//! rank of a job really is. An owner over its caps refuses with a status; the next refresh
//! asks again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use loaderd_cache::Cache;
use loaderd_cache::cluster::schedules::{Ack, Announcement, job_name};
use loaderd_cache::placement::Member;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info_span, warn};

use crate::schedule::{Plan, Registered, Schedule};
use crate::spec::LoaderSpec;

/// Own samples delivered before this rank's time per sample is measured (until then the
/// schedule's estimate is sent).
const RATE_MIN_SAMPLES: u64 = 8;

/// Sends a loader's schedule to the other members while it lives; withdraws it on drop.
pub struct Announcer {
    /// Dropped with the announcer: the task sends the withdrawal after any announcement in
    /// flight (so a late refresh cannot bring the schedule back), then ends.
    _stop: oneshot::Sender<()>,
    loader: u64,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("loader", &self.loader)
            .finish()
    }
}

/// A loader id unique to this daemon process (the pid tells incarnations apart).
fn loader_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What this rank's announcements say, less its position and rate.
fn template(me: &str, req: &LoaderSpec, plan: &Plan, registered: &Registered) -> Announcement {
    let (listing, block_reads) = registered.listing();
    let mut a = Announcement {
        peer: me.to_string(),
        loader: loader_id(),
        job: String::new(),
        dataset: req.dataset.clone(),
        shuffle: req.shuffle,
        drop_last: req.drop_last,
        listing,
        seed: plan.seed,
        epoch: plan.epoch,
        world: plan.world.max(1),
        rank: plan.rank,
        batch: plan.batch,
        consumed: plan.consumed,
        delivered: 0,
        ns_per_sample: 0,
        block_reads,
    };
    a.job = job_name(
        &a.dataset,
        a.shuffle,
        a.drop_last,
        a.seed,
        a.world,
        &a.listing,
    );
    a
}

/// This rank's samples delivered and its time per own sample, from the schedule (which
/// counts global positions: all ranks in step) and the time since `opened`.
pub fn progress(schedule: &Schedule, a: &Announcement, opened: Instant) -> (u64, u64) {
    let delivered = schedule.position().saturating_sub(a.consumed) / a.world;
    let ns = if delivered >= RATE_MIN_SAMPLES {
        u64::try_from(opened.elapsed().as_nanos() / u128::from(delivered)).unwrap_or(u64::MAX)
    } else {
        schedule.ns_per_sample().saturating_mul(a.world)
    };
    (delivered, ns)
}

/// Starts announcing `registered`'s schedule when this node is in a cluster.
pub(crate) fn start(
    cache: &Arc<Cache>,
    rt: &Handle,
    req: &LoaderSpec,
    plan: &Plan,
    registered: &Arc<Registered>,
) -> Option<Announcer> {
    let cluster = cache.cluster()?.clone();
    let template = template(&cluster.me().id, req, plan, registered);
    let loader = template.loader;
    let schedule = registered.schedule().clone();
    let refresh = cluster.schedules().config().refresh.0;
    let span = info_span!("announce", dataset = %template.dataset, rank = template.rank, loader);
    let (stop, mut stopped) = oneshot::channel::<()>();
    rt.spawn(
        async move {
            let opened = Instant::now();
            // Members whose last announcement failed: warned once, until one goes through.
            let mut failing: HashSet<String> = HashSet::new();
            loop {
                let mut a = template.clone();
                (a.delivered, a.ns_per_sample) = progress(&schedule, &a, opened);
                for (m, res) in cluster.announce(&a).await {
                    report(&m, res, &mut failing);
                }
                tokio::select! {
                    _ = tokio::time::sleep(refresh) => {}
                    _ = &mut stopped => break,
                }
            }
            cluster.withdraw(loader).await;
        }
        .instrument(span),
    );
    Some(Announcer {
        _stop: stop,
        loader,
    })
}

/// Logs an announcement's outcome (a failing member once, until it recovers) and counts it.
fn report(m: &Member, res: loaderd_cache::Result<Ack>, failing: &mut HashSet<String>) {
    let result = match &res {
        Ok(Ack::Accepted) => "accepted",
        Ok(Ack::Ignored(_)) => "ignored",
        Err(_) => "error",
    };
    metrics::counter!("loaderd_schedule_announcements_sent_total", "result" => result).increment(1);
    let why = match res {
        Ok(Ack::Accepted) => {
            failing.remove(&m.id);
            return;
        }
        Ok(Ack::Ignored(why)) => why,
        Err(e) => e.to_string(),
    };
    if failing.insert(m.id.clone()) {
        warn!(peer = %m.id, reason = %why, "schedule not held by peer");
    } else {
        debug!(peer = %m.id, reason = %why, "schedule still not held by peer");
    }
}
