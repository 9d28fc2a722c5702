//! A loader's schedule, built after its open reply.
//!
//! Building a schedule sorts every block read of two epochs (about 0.2 s per 200,000 samples):
//! work an open need not wait for. [`start`] holds the schedule's memory in the loader's
//! reservation first (a loader whose budget cannot hold it runs without one, as before), then
//! builds it on a blocking thread while the loader answers and runs. Until it is ready the
//! loader runs without a schedule: its workers' marks and deliveries go nowhere, the cache's
//! clairvoyant policy treats its blocks as no schedule's (the `stable` order), and nothing is
//! prefetched. Once ready, the schedule is registered with the cache's oracle, catches up with
//! the loader's position at its next delivery, and the loader's prefetcher and its
//! announcements to the block owners (in a cluster) start.
//!
//! The [`Slot`] is shared by the session and its workers; the builder holds it weakly, so a
//! loader that closes while its schedule is being built drops it (and its registration) as
//! soon as the build ends, and no prefetcher starts.

use std::sync::{Arc, OnceLock};

use loaderd_cache::Cache;
use tokio::runtime::Handle;
use tracing::info_span;

use crate::announce::{self, Announcer};
use crate::dataset::Dataset;
use crate::prefetch::{LoaderPrefetch, Prefetcher, Prefetching};
use crate::registry::Reservation;
use crate::schedule::{self, Plan, Registered};
use crate::spec::LoaderSpec;

/// A loader's schedule once it is built, and the prefetcher following it.
#[derive(Default)]
pub struct Slot {
    registered: OnceLock<Arc<Registered>>,
    prefetcher: OnceLock<Prefetcher>,
    /// Its announcements to the block owners (in a cluster); withdrawn when the slot drops.
    announcer: OnceLock<Announcer>,
}

impl Slot {
    /// The schedule, once built.
    pub fn get(&self) -> Option<&Arc<Registered>> {
        self.registered.get()
    }

    /// Whether a prefetcher follows the schedule.
    pub fn prefetching(&self) -> bool {
        self.prefetcher.get().is_some()
    }
}

/// What the builder starts once the schedule is ready.
pub(crate) struct Then {
    /// Prefetch settings and budget, when prefetch is on.
    pub prefetch: Option<Arc<Prefetching>>,
    pub stats: Arc<LoaderPrefetch>,
    /// The loader's request, announced to the block owners in a cluster.
    pub announce: LoaderSpec,
}

/// Holds the memory of `dataset`'s schedule in `reservation` (see
/// [`schedule::reserve`]); `None` when the loader runs without one.
pub(crate) fn reserve(
    cache: &Cache,
    dataset: &Dataset,
    reservation: &mut Reservation,
) -> Option<Arc<Slot>> {
    schedule::reserve(cache, dataset, reservation).then(Arc::default)
}

/// Builds the schedule of `slot` on a blocking thread of `rt`, then starts what `then` says.
pub(crate) fn start(
    slot: &Arc<Slot>,
    cache: &Arc<Cache>,
    rt: &Handle,
    dataset: &Arc<Dataset>,
    plan: Plan,
    then: Then,
) {
    let weak = Arc::downgrade(slot);
    let (cache, dataset, handle) = (cache.clone(), dataset.clone(), rt.clone());
    let span = info_span!("schedule_build", samples = dataset.len());
    rt.spawn_blocking(move || {
        let _span = span.enter();
        let registered = schedule::build(&cache, &dataset, &plan);
        // The loader closed meanwhile: the schedule (and its registration) drops here.
        let Some(slot) = weak.upgrade() else {
            return;
        };
        if let Some(shared) = then.prefetch {
            let prefetcher = Prefetcher::start(
                &cache,
                &handle,
                &dataset,
                registered.clone(),
                &shared,
                then.stats,
            );
            let _ = slot.prefetcher.set(prefetcher);
        }
        if let Some(announcer) =
            announce::start(&cache, &handle, &then.announce, &plan, &registered)
        {
            let _ = slot.announcer.set(announcer);
        }
        let _ = slot.registered.set(registered);
    });
}
