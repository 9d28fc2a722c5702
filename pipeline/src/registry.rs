//! Every open loader of the daemon: the shared-memory budget they draw from, and the numbers
//! per client that `loaderctl status` and the metrics show.
//!
//! A loader is admitted only if its memory fits both the per-client and the total budget, its
//! decode threads fit the total thread budget and the client count allows it, so a client
//! asking for a huge batch × depth, many workers, or one client too many, gets a clear
//! `RESOURCE_EXHAUSTED` instead of pushing the daemon into an OOM kill. Admission is a
//! [`Reservation`] taken *before* the dataset is indexed or anything is allocated (an
//! over-budget request costs nothing), grown by the dataset index once it is known, and turned
//! into the [`Registration`] the running loader holds; dropping either gives everything back,
//! so a start that fails midway leaves no budget behind.
//!
//! A GPU loader's ring is device memory: it is not shared memory (`max_total_bytes`), but it
//! counts against the client's `max_client_bytes` like a host ring, and with the decode
//! buffers of its workers against `pipeline.max_device_bytes` of its GPU ([`DeviceCost`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{counter, gauge};

use crate::config::PipelineConfig;
use crate::gpu::Gpus;
use crate::prefetch::{PrefetchConfig, Prefetching};
use crate::spec::LoaderStatus;
use loaderd_cache::sync::lock;

mod stats;
pub use stats::{LoaderInfo, LoaderStats, Stage};

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
    #[error(
        "the loader needs {need} decode threads but only {free} of the daemon's {limit} are free \
         (pipeline.max_total_workers); ask for fewer workers"
    )]
    Workers {
        need: usize,
        free: usize,
        limit: usize,
    },
    #[error(
        "the loader needs {need} bytes of memory on CUDA device {device} (ring and decode \
         buffers) but only {free} of the {limit} loaders may use there are free \
         (pipeline.max_device_bytes); use a smaller batch or depth"
    )]
    Device {
        device: u32,
        need: u64,
        free: u64,
        limit: u64,
    },
}

/// What a GPU loader takes on its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCost {
    /// The CUDA device (the daemon's numbering).
    pub device: u32,
    /// The device ring (as allocated: rounded up to the allocation granularity); it also
    /// counts against `max_client_bytes`.
    pub ring_bytes: u64,
    /// The workers' decode buffer caps together.
    pub decode_bytes: u64,
}

impl DeviceCost {
    /// Everything the loader may take on its device.
    pub fn total(&self) -> u64 {
        self.ring_bytes.saturating_add(self.decode_bytes)
    }
}

/// What a loader about to start asks of the budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Host memory: a host ring's arena and the per-slot and batch metadata.
    pub host_bytes: u64,
    /// Decode threads.
    pub workers: usize,
    /// Device memory, for a GPU loader.
    pub device: Option<DeviceCost>,
}

#[derive(Debug, Default)]
struct Open {
    /// Memory held by loaders and reservations.
    ring_bytes: u64,
    /// Decode threads held by loaders and reservations.
    workers: usize,
    /// Reservations not yet registered (they count as clients).
    pending: usize,
    /// Device memory held by loaders and reservations, by CUDA device.
    device_bytes: BTreeMap<u32, u64>,
    loaders: BTreeMap<u64, Arc<LoaderStats>>,
    next_id: u64,
}

/// The daemon's loaders, and the GPUs they may use.
#[derive(Debug)]
pub struct Pipelines {
    config: PipelineConfig,
    gpus: Gpus,
    open: Mutex<Open>,
    /// Prefetch settings and the bytes all prefetchers hold (defaults until configured).
    prefetching: OnceLock<Arc<Prefetching>>,
}

impl Pipelines {
    /// An empty registry enforcing `config`'s budgets, with no GPU (every loader decodes on
    /// the CPU).
    pub fn new(config: PipelineConfig) -> Arc<Self> {
        Self::with_gpus(config, Gpus::none("this daemon opened no GPU"))
    }

    /// An empty registry enforcing `config`'s budgets, serving CUDA loaders on `gpus`.
    pub fn with_gpus(config: PipelineConfig, gpus: Gpus) -> Arc<Self> {
        Arc::new(Pipelines {
            config,
            gpus,
            open: Mutex::new(Open::default()),
            prefetching: OnceLock::new(),
        })
    }

    /// Sets the prefetch settings, once, before the first loader opens; `false` if they were
    /// set (or used) already.
    pub fn configure_prefetch(&self, config: PrefetchConfig) -> bool {
        self.prefetching.set(Prefetching::new(config)).is_ok()
    }

    /// The prefetch settings in force and the total prefetch budget.
    pub fn prefetching(&self) -> &Arc<Prefetching> {
        self.prefetching
            .get_or_init(|| Prefetching::new(PrefetchConfig::default()))
    }

    /// The GPUs loaders may ask for.
    pub fn gpus(&self) -> &Gpus {
        &self.gpus
    }

    /// The pipeline settings in force.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Reserves `bytes` of memory and `workers` decode threads for a loader about to start,
    /// or says which budget it exceeds.
    pub fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        workers: usize,
    ) -> Result<Reservation, BudgetError> {
        self.reserve_cost(Cost {
            host_bytes: bytes,
            workers,
            device: None,
        })
    }

    /// Reserves everything `cost` asks for, or says which budget it exceeds.
    pub fn reserve_cost(self: &Arc<Self>, cost: Cost) -> Result<Reservation, BudgetError> {
        let Cost {
            host_bytes: bytes,
            workers,
            device,
        } = cost;
        let mut open = lock(&self.open);
        if open.loaders.len() + open.pending >= self.config.max_clients {
            return Err(refused(BudgetError::Clients {
                open: open.loaders.len() + open.pending,
            }));
        }
        let free_workers = self.config.max_total_workers.saturating_sub(open.workers);
        if workers > free_workers {
            return Err(refused(BudgetError::Workers {
                need: workers,
                free: free_workers,
                limit: self.config.max_total_workers,
            }));
        }
        let device_ring = device.map_or(0, |d| d.ring_bytes);
        self.check_client(bytes.saturating_add(device_ring))?;
        self.check_bytes(&open, bytes)?;
        if let Some(d) = device {
            self.check_device(&open, d)?;
            *open.device_bytes.entry(d.device).or_default() += d.total();
        }
        open.ring_bytes += bytes;
        open.workers += workers;
        open.pending += 1;
        publish_gauges(&open);
        Ok(Reservation {
            pipelines: self.clone(),
            bytes,
            workers,
            device,
            pending: true,
        })
    }

    /// Whether one client may hold `need` bytes (host and device ring together).
    fn check_client(&self, need: u64) -> Result<(), BudgetError> {
        let limit = self.config.max_client_bytes.0;
        if need > limit {
            return Err(refused(BudgetError::Client { need, limit }));
        }
        Ok(())
    }

    /// Whether `cost` fits beside what the loaders hold on its device.
    fn check_device(&self, open: &Open, cost: DeviceCost) -> Result<(), BudgetError> {
        let limit = self.config.max_device_bytes.0;
        let used = open.device_bytes.get(&cost.device).copied().unwrap_or(0);
        let free = limit.saturating_sub(used);
        if cost.total() > free {
            return Err(refused(BudgetError::Device {
                device: cost.device,
                need: cost.total(),
                free,
                limit,
            }));
        }
        Ok(())
    }

    /// Device memory the loaders hold on CUDA device `device`.
    pub fn device_bytes(&self, device: u32) -> u64 {
        lock(&self.open)
            .device_bytes
            .get(&device)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `more` bytes of host memory fit beside what `open` holds.
    fn check_bytes(&self, open: &Open, more: u64) -> Result<(), BudgetError> {
        let total_limit = self.config.max_total_bytes.0;
        self.check_client(more)?;
        let free = total_limit.saturating_sub(open.ring_bytes);
        if more > free {
            return Err(refused(BudgetError::Total {
                need: more,
                free,
                limit: total_limit,
            }));
        }
        Ok(())
    }

    /// Status of every open loader, and the ring bytes in use.
    pub fn status(&self) -> (Vec<LoaderStatus>, u64) {
        let open = lock(&self.open);
        (
            open.loaders.values().map(|s| s.status()).collect(),
            open.ring_bytes,
        )
    }
}

fn publish_gauges(open: &Open) {
    gauge!("loaderd_pipeline_clients").set(open.loaders.len() as f64);
    gauge!("loaderd_pipeline_device_bytes").set(open.device_bytes.values().sum::<u64>() as f64);
    gauge!("loaderd_pipeline_ring_bytes").set(open.ring_bytes as f64);
    gauge!("loaderd_pipeline_workers").set(open.workers as f64);
}

fn refused(e: BudgetError) -> BudgetError {
    let reason = match e {
        BudgetError::Client { .. } => "max_client_bytes",
        BudgetError::Total { .. } => "max_total_bytes",
        BudgetError::Clients { .. } => "max_clients",
        BudgetError::Workers { .. } => "max_total_workers",
        BudgetError::Device { .. } => "max_device_bytes",
    };
    counter!("loaderd_pipeline_open_refusals_total", "reason" => reason).increment(1);
    e
}

/// Memory and threads held for a loader that is starting; dropped unregistered, it gives
/// them back.
#[derive(Debug)]
pub struct Reservation {
    pipelines: Arc<Pipelines>,
    bytes: u64,
    workers: usize,
    device: Option<DeviceCost>,
    pending: bool,
}

impl Reservation {
    /// Holds `more` bytes as well (the dataset index, known once indexed), or refuses and
    /// keeps what it held.
    pub fn grow(&mut self, more: u64) -> Result<(), BudgetError> {
        let mut open = lock(&self.pipelines.open);
        let need = self.bytes.saturating_add(more);
        let device_ring = self.device.map_or(0, |d| d.ring_bytes);
        self.pipelines
            .check_client(need.saturating_add(device_ring))?;
        self.pipelines.check_bytes(&open, more)?;
        open.ring_bytes += more;
        self.bytes = need;
        publish_gauges(&open);
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The registry this reservation is in.
    pub fn pipelines(&self) -> &Arc<Pipelines> {
        &self.pipelines
    }

    /// The device memory held, for a GPU loader.
    pub fn device(&self) -> Option<DeviceCost> {
        self.device
    }

    /// The loader started: `info` (its `ring_bytes`, `workers` and `device_bytes` set from
    /// this reservation) is shown in status until the registration drops.
    pub fn register(mut self, mut info: LoaderInfo) -> Registration {
        info.ring_bytes = self.bytes;
        info.workers = self.workers as u32;
        info.device_bytes = self.device.map_or(0, |d| d.total());
        let pipelines = self.pipelines.clone();
        let mut open = lock(&pipelines.open);
        self.pending = false;
        open.pending -= 1;
        let id = open.next_id;
        open.next_id += 1;
        let stats = Arc::new(LoaderStats::new(info));
        open.loaders.insert(id, stats.clone());
        publish_gauges(&open);
        drop(open);
        // The registration gives the bytes, threads and device memory back from now on.
        self.bytes = 0;
        self.workers = 0;
        let device = self.device.take();
        Registration {
            pipelines,
            id,
            stats,
            device,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut open = lock(&self.pipelines.open);
        open.ring_bytes = open.ring_bytes.saturating_sub(self.bytes);
        open.workers = open.workers.saturating_sub(self.workers);
        if let Some(d) = self.device {
            give_back_device(&mut open, d);
        }
        if self.pending {
            open.pending -= 1;
        }
        publish_gauges(&open);
    }
}

/// An admitted loader's hold on the budget; dropping it gives the budget back.
#[derive(Debug)]
pub struct Registration {
    pipelines: Arc<Pipelines>,
    id: u64,
    stats: Arc<LoaderStats>,
    device: Option<DeviceCost>,
}

impl Registration {
    /// The loader's counters.
    pub fn stats(&self) -> &Arc<LoaderStats> {
        &self.stats
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = lock(&self.pipelines.open);
        if open.loaders.remove(&self.id).is_some() {
            let info = self.stats.info();
            open.ring_bytes = open.ring_bytes.saturating_sub(info.ring_bytes);
            open.workers = open.workers.saturating_sub(info.workers as usize);
            if let Some(d) = self.device {
                give_back_device(&mut open, d);
            }
        }
        publish_gauges(&open);
    }
}

fn give_back_device(open: &mut Open, d: DeviceCost) {
    if let Some(used) = open.device_bytes.get_mut(&d.device) {
        *used = used.saturating_sub(d.total());
        if *used == 0 {
            open.device_bytes.remove(&d.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loaderd_cache::ByteSize;
    use std::time::Duration;

    fn pipelines(client: u64, total: u64, clients: usize) -> Arc<Pipelines> {
        Pipelines::new(PipelineConfig {
            max_client_bytes: ByteSize(client),
            max_total_bytes: ByteSize(total),
            max_clients: clients,
            max_total_workers: 8,
            ..PipelineConfig::default()
        })
    }

    impl Pipelines {
        fn admit(self: &Arc<Self>, bytes: u64) -> Result<Registration, BudgetError> {
            Ok(self.reserve(bytes, 1)?.register(LoaderInfo::default()))
        }
    }

    fn ring(bytes: u64) -> u64 {
        bytes
    }

    #[test]
    fn threads_and_reservations_are_budgeted_and_given_back() {
        let p = pipelines(100, 150, 8);
        let a = p.reserve(10, 5).unwrap();
        assert!(matches!(
            p.reserve(10, 4),
            Err(BudgetError::Workers {
                need: 4,
                free: 3,
                limit: 8
            })
        ));
        let mut b = p.reserve(10, 3).unwrap();
        assert!(matches!(
            b.grow(95),
            Err(BudgetError::Client { need: 105, .. })
        ));
        b.grow(80).unwrap();
        assert_eq!(p.status().1, 100);
        drop(b);
        let r = a.register(LoaderInfo::default());
        assert_eq!(r.stats().info().workers, 5);
        assert_eq!(p.status().1, 10);
        drop(r);
        assert_eq!(p.status().1, 0);
        assert!(p.reserve(0, 8).is_ok(), "every thread was given back");
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

    fn gpu_cost(device: u32, ring_bytes: u64, decode_bytes: u64) -> Cost {
        Cost {
            host_bytes: 1,
            workers: 1,
            device: Some(DeviceCost {
                device,
                ring_bytes,
                decode_bytes,
            }),
        }
    }

    #[test]
    fn device_memory_is_budgeted_per_gpu_and_given_back() {
        let p = Pipelines::new(PipelineConfig {
            max_client_bytes: ByteSize(100),
            max_total_bytes: ByteSize(150),
            max_device_bytes: ByteSize(200),
            max_total_workers: 8,
            ..PipelineConfig::default()
        });
        // The device ring counts against the client's budget, the decode buffers do not.
        assert!(matches!(
            p.reserve_cost(gpu_cost(0, 100, 0)),
            Err(BudgetError::Client { need: 101, .. })
        ));
        let a = p.reserve_cost(gpu_cost(0, 90, 60)).unwrap();
        assert_eq!(p.device_bytes(0), 150);
        // Device memory is not shared memory: the host budget only sees the host bytes.
        assert_eq!(p.status().1, 1);
        let err = p.reserve_cost(gpu_cost(0, 40, 20)).unwrap_err();
        assert!(
            matches!(
                err,
                BudgetError::Device {
                    device: 0,
                    need: 60,
                    free: 50,
                    limit: 200
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("pipeline.max_device_bytes"),
            "{err}"
        );
        // Another GPU has its own budget.
        let b = p.reserve_cost(gpu_cost(1, 40, 20)).unwrap();
        assert_eq!((p.device_bytes(0), p.device_bytes(1)), (150, 60));
        drop(b);
        assert_eq!(p.device_bytes(1), 0, "a dropped reservation gives it back");
        let r = a.register(LoaderInfo::default());
        assert_eq!(r.stats().status().device_bytes, 150);
        assert_eq!(p.device_bytes(0), 150, "the registration holds it");
        drop(r);
        assert_eq!(p.device_bytes(0), 0, "a closed loader gives it back");
        assert!(p.reserve_cost(gpu_cost(0, 90, 110)).is_ok());
    }

    #[test]
    fn gpu_counters_reach_status() {
        let p = pipelines(10, 100, 2);
        let r = p.reserve(1, 1).unwrap().register(LoaderInfo {
            device: "cuda:0".into(),
            ..LoaderInfo::default()
        });
        let s = r.stats();
        s.gpu_batch(6, 2, Duration::from_millis(250));
        s.gpu_batch(3, 0, Duration::from_millis(250));
        let st = s.status();
        assert_eq!(st.device, "cuda:0");
        assert_eq!((st.gpu_samples, st.cpu_fallback_samples), (9, 2));
        assert!((st.gpu_secs - 0.5).abs() < 1e-9, "{}", st.gpu_secs);
        let cpu = p.admit(ring(1)).unwrap();
        assert_eq!(cpu.stats().status().device, "cpu");
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
