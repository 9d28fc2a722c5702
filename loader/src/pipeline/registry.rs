//! Every open loader of the daemon: the shared-memory budget they draw from, and the numbers
//! per client that `loaderctl status` and the metrics show.
//!
//! A loader is admitted only if its ring fits both the per-client and the total budget and
//! the client count allows it, so a client asking for a huge batch × depth, or one client too
//! many, gets a clear `RESOURCE_EXHAUSTED` instead of pushing the daemon into an OOM kill. The
//! [`Registration`] returned gives the budget back when the loader is dropped (client gone).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use loaderd_proto::v1 as pb;
use metrics::{counter, gauge};

use crate::config::PipelineConfig;

/// Why a loader was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the batch ring needs {need} bytes (batch size x depth x sample size); one client may use \
         {limit} (pipeline.max_client_bytes): use a smaller batch or depth"
    )]
    Client { need: u64, limit: u64 },
    #[error(
        "the batch ring needs {need} bytes but only {free} of the daemon's {limit} are free \
         (pipeline.max_total_bytes); other loaders hold the rest"
    )]
    Total { need: u64, free: u64, limit: u64 },
    #[error("{open} loaders are open, the most this daemon serves (pipeline.max_clients)")]
    Clients { open: usize },
}

/// A pipeline stage, for busy-time accounting.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Reading a sample's bytes through the cache.
    Fetch,
    /// JPEG/PNG decode of the crop's region.
    Decode,
    /// Resize, flip, normalize and layout into the slot.
    Augment,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Augment => "augment",
        }
    }
}

/// What a loader was opened with (fixed for its life).
#[derive(Debug, Clone, Default)]
pub struct LoaderInfo {
    pub name: String,
    pub dataset: String,
    pub rank: u32,
    pub world_size: u32,
    pub epoch: u64,
    pub batches: u64,
    pub depth: u32,
    pub ring_bytes: u64,
    pub workers: u32,
}

/// One loader's live counters, shared by its decode threads and its connection thread.
#[derive(Debug)]
pub struct LoaderStats {
    info: LoaderInfo,
    first_request: OnceLock<Instant>,
    delivered: AtomicU64,
    samples: AtomicU64,
    skipped: AtomicU64,
    ready: AtomicU64,
    wait_ns: AtomicU64,
    stage_ns: [AtomicU64; 3],
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LoaderStats {
    fn new(info: LoaderInfo) -> Self {
        LoaderStats {
            info,
            first_request: OnceLock::new(),
            delivered: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            stage_ns: Default::default(),
        }
    }

    /// What the loader was opened with.
    pub fn info(&self) -> &LoaderInfo {
        &self.info
    }

    /// Busy time of one stage for one sample.
    pub fn record(&self, stage: Stage, took: Duration) {
        self.stage_ns[stage as usize].fetch_add(nanos(took), Ordering::Relaxed);
        counter!("loaderd_pipeline_stage_items_total", "stage" => stage.name()).increment(1);
        // Busy time in microseconds (sub-second times would round away in whole seconds).
        counter!("loaderd_pipeline_stage_micros_total", "stage" => stage.name())
            .increment(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// A decode thread finished a batch of `samples` good and `skipped` bad samples.
    pub fn batch_ready(&self, samples: usize, skipped: usize) {
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
        self.skipped.fetch_add(skipped as u64, Ordering::Relaxed);
        self.ready.fetch_add(1, Ordering::Relaxed);
        counter!("loaderd_pipeline_samples_total").increment(samples as u64);
        counter!("loaderd_pipeline_skipped_total").increment(skipped as u64);
        counter!("loaderd_pipeline_batches_total").increment(1);
    }

    /// The client asked for a batch (the trainer's clock starts at its first request).
    pub fn requested(&self) {
        self.first_request.get_or_init(Instant::now);
    }

    /// A batch went to the client after it waited `waited` for it.
    pub fn delivered(&self, waited: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .ready
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1));
        self.wait_ns.fetch_add(nanos(waited), Ordering::Relaxed);
        counter!("loaderd_pipeline_delivered_batches_total").increment(1);
        counter!("loaderd_pipeline_client_wait_micros_total")
            .increment(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
    }

    /// Status of this loader now.
    pub fn status(&self) -> pb::LoaderStatus {
        let elapsed = self
            .first_request
            .get()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let secs = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
        let samples = self.samples.load(Ordering::Relaxed);
        let waited = secs(&self.wait_ns);
        let info = &self.info;
        pb::LoaderStatus {
            name: info.name.clone(),
            dataset: info.dataset.clone(),
            rank: info.rank,
            world_size: info.world_size,
            epoch: info.epoch,
            batches_delivered: self.delivered.load(Ordering::Relaxed),
            batches_total: info.batches,
            samples,
            skipped: self.skipped.load(Ordering::Relaxed),
            elapsed_secs: elapsed,
            samples_per_sec: if elapsed > 0.0 {
                samples as f64 / elapsed
            } else {
                0.0
            },
            starved_percent: if elapsed > 0.0 {
                (100.0 * waited / elapsed).min(100.0)
            } else {
                0.0
            },
            fetch_secs: secs(&self.stage_ns[Stage::Fetch as usize]),
            decode_secs: secs(&self.stage_ns[Stage::Decode as usize]),
            augment_secs: secs(&self.stage_ns[Stage::Augment as usize]),
            ready_batches: u32::try_from(self.ready.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            depth: info.depth,
            ring_bytes: info.ring_bytes,
            workers: info.workers,
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    ring_bytes: u64,
    loaders: BTreeMap<u64, Arc<LoaderStats>>,
    next_id: u64,
}

/// The daemon's loaders.
#[derive(Debug)]
pub struct Pipelines {
    config: PipelineConfig,
    open: Mutex<Open>,
}

impl Pipelines {
    /// An empty registry enforcing `config`'s budgets.
    pub fn new(config: PipelineConfig) -> Arc<Self> {
        Arc::new(Pipelines {
            config,
            open: Mutex::new(Open::default()),
        })
    }

    /// The pipeline settings in force.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a loader whose ring takes `info.ring_bytes`, or says which budget it exceeds.
    pub fn admit(self: &Arc<Self>, info: LoaderInfo) -> Result<Registration, BudgetError> {
        let need = info.ring_bytes;
        let (client_limit, total_limit) = (
            self.config.max_client_bytes.0,
            self.config.max_total_bytes.0,
        );
        if need > client_limit {
            return Err(BudgetError::Client {
                need,
                limit: client_limit,
            });
        }
        let mut open = self.lock();
        if open.loaders.len() >= self.config.max_clients {
            return Err(BudgetError::Clients {
                open: open.loaders.len(),
            });
        }
        let free = total_limit.saturating_sub(open.ring_bytes);
        if need > free {
            return Err(BudgetError::Total {
                need,
                free,
                limit: total_limit,
            });
        }
        let id = open.next_id;
        open.next_id += 1;
        open.ring_bytes += need;
        let stats = Arc::new(LoaderStats::new(info));
        open.loaders.insert(id, stats.clone());
        publish_gauges(&open);
        Ok(Registration {
            pipelines: self.clone(),
            id,
            stats,
        })
    }

    /// Status of every open loader, and the ring bytes in use.
    pub fn status(&self) -> (Vec<pb::LoaderStatus>, u64) {
        let open = self.lock();
        (
            open.loaders.values().map(|s| s.status()).collect(),
            open.ring_bytes,
        )
    }
}

fn publish_gauges(open: &Open) {
    gauge!("loaderd_pipeline_clients").set(open.loaders.len() as f64);
    gauge!("loaderd_pipeline_ring_bytes").set(open.ring_bytes as f64);
}

/// An admitted loader's hold on the budget; dropping it gives the budget back.
#[derive(Debug)]
pub struct Registration {
    pipelines: Arc<Pipelines>,
    id: u64,
    stats: Arc<LoaderStats>,
}

impl Registration {
    /// The loader's counters.
    pub fn stats(&self) -> &Arc<LoaderStats> {
        &self.stats
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.pipelines.lock();
        if open.loaders.remove(&self.id).is_some() {
            open.ring_bytes = open.ring_bytes.saturating_sub(self.stats.info.ring_bytes);
        }
        publish_gauges(&open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loaderd_cache::ByteSize;

    fn pipelines(client: u64, total: u64, clients: usize) -> Arc<Pipelines> {
        Pipelines::new(PipelineConfig {
            max_client_bytes: ByteSize(client),
            max_total_bytes: ByteSize(total),
            max_clients: clients,
            ..PipelineConfig::default()
        })
    }

    fn ring(bytes: u64) -> LoaderInfo {
        LoaderInfo {
            ring_bytes: bytes,
            ..LoaderInfo::default()
        }
    }

    #[test]
    fn budgets_are_enforced_and_given_back() {
        let p = pipelines(100, 150, 8);
        assert!(matches!(
            p.admit(ring(101)),
            Err(BudgetError::Client {
                need: 101,
                limit: 100
            })
        ));
        let a = p.admit(ring(100)).unwrap();
        assert!(matches!(
            p.admit(ring(60)),
            Err(BudgetError::Total { free: 50, .. })
        ));
        let b = p.admit(ring(50)).unwrap();
        assert_eq!(p.status().1, 150);
        drop(a);
        assert_eq!(p.status().1, 50);
        let _c = p.admit(ring(60)).unwrap();
        drop(b);
        assert_eq!(p.status().0.len(), 1);
    }

    #[test]
    fn the_client_count_is_bounded() {
        let p = pipelines(10, 100, 2);
        let _a = p.admit(ring(1)).unwrap();
        let b = p.admit(ring(1)).unwrap();
        assert!(matches!(
            p.admit(ring(1)),
            Err(BudgetError::Clients { open: 2 })
        ));
        drop(b);
        assert!(p.admit(ring(1)).is_ok());
    }

    #[test]
    fn starvation_is_the_share_of_time_spent_waiting() {
        let p = pipelines(10, 100, 2);
        let r = p.admit(ring(1)).unwrap();
        let s = r.stats();
        s.requested();
        std::thread::sleep(Duration::from_millis(40));
        s.batch_ready(4, 1);
        s.delivered(Duration::from_millis(20));
        let st = s.status();
        assert_eq!((st.samples, st.skipped, st.batches_delivered), (4, 1, 1));
        assert_eq!(st.ready_batches, 0);
        assert!(
            st.starved_percent > 20.0 && st.starved_percent <= 50.0,
            "{}",
            st.starved_percent
        );
    }
}
