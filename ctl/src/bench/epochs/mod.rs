//! `loaderctl bench epochs`: a dataset larger than the memory tier, read for several shuffled
//! epochs under each eviction policy, each in a daemon of its own, against the offline optimum
//! of the same trace.
//!
//! The bench generates the dataset (small ImageNet-like JPEGs, each one block), then for each
//! tier layout (`memory`: a memory tier of `--memory-fraction` of the dataset and no SSD;
//! `ssd`: the same memory tier over an SSD tier twice the dataset) and each policy starts a
//! `loaderd` with `cache.ufs.max_bandwidth` capping its reads of the store, so a miss costs
//! time as against a real bucket, and runs `--epochs` epochs of one loader. A training step
//! of `batch / --train-rate` seconds follows each batch, as a GPU would consume it.
//!
//! Per epoch it reports: the byte hit ratio (1 − UFS bytes / bytes read), UFS bytes, img/s,
//! and the starved share (time the trainer waited for a batch after the first, over the
//! epoch). The optimum is Belady's MIN with bypass ([`loaderd_cache::evict::offline`]) over
//! the blocks in the order the loader delivered them, its capacity the tiers' bytes at the
//! high watermark over the mean block slot (blocks take 4 KiB-rounded slots).

mod daemon;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use loaderd_cache::config::ByteSize;
use loaderd_proto::v1 as pb;

use crate::client::shm::BatchClient;
use crate::dataset::{DatasetSpec, generate};
use daemon::{BenchDaemon, DaemonConfig};
use report::{EpochRow, Report};

/// The memory tier's high watermark (the daemon's default), for the optimum's capacity.
const HIGH_WATERMARK: f64 = 0.95;
/// Slots of the memory tier are multiples of this.
const SLOT: u64 = 4096;

#[derive(Args, Debug)]
pub struct EpochsArgs {
    /// The daemon binary (default: `loaderd` next to this executable).
    #[arg(long)]
    loaderd: Option<PathBuf>,
    /// Scratch directory for the dataset and the daemons (default: under the temp dir,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Images in the dataset.
    #[arg(long, default_value_t = 2048)]
    files: usize,
    /// Mean image width and height (sizes vary by ±20 %).
    #[arg(long, default_value_t = 160)]
    width: u32,
    #[arg(long, default_value_t = 120)]
    height: u32,
    /// Memory tier capacity as a fraction of the dataset's bytes.
    #[arg(long, default_value_t = 0.5)]
    memory_fraction: f64,
    /// Tier layouts to run: `memory` (no SSD tier) and/or `ssd` (SSD tier twice the dataset).
    #[arg(long, value_delimiter = ',', default_value = "memory,ssd")]
    tiers: Vec<String>,
    /// Eviction policies to run.
    #[arg(long, value_delimiter = ',', default_value = "lru,stable,clairvoyant")]
    policies: Vec<String>,
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Decode threads of the loader (0: the daemon's default).
    #[arg(long, default_value_t = 0)]
    workers: u32,
    /// UFS read bandwidth (`cache.ufs.max_bandwidth`), e.g. `10MiB` per second; 0: no cap.
    #[arg(long, default_value = "10MiB")]
    ufs_bandwidth: ByteSize,
    /// The trainer's speed in images per second (a step of batch/rate seconds after each
    /// batch); 0: no step, the loader runs flat out.
    #[arg(long, default_value_t = 1000.0)]
    train_rate: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the daemons with `prefetch.enabled = false` (eviction alone).
    #[arg(long)]
    no_prefetch: bool,
    #[arg(long)]
    json: bool,
}

/// The generated dataset: each file's size by its key (path below the dataset root).
struct Dataset {
    dir: PathBuf,
    sizes: HashMap<String, u64>,
    bytes: u64,
}

pub fn run(a: EpochsArgs) -> anyhow::Result<()> {
    if a.epochs == 0 || a.files == 0 || a.batch_size == 0 {
        bail!("--epochs, --files and --batch-size must be positive");
    }
    if !(a.memory_fraction > 0.0 && a.memory_fraction <= 4.0) {
        bail!("--memory-fraction must be in (0, 4]");
    }
    if let Some(t) = a
        .tiers
        .iter()
        .find(|t| !matches!(t.as_str(), "memory" | "ssd"))
    {
        bail!("unknown tier layout {t:?}: memory or ssd");
    }
    let loaderd = match &a.loaderd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("loaderd"),
    };
    let (scratch, owned) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("loaderd-bench-epochs-{}", std::process::id())),
            true,
        ),
    };
    let res = run_in(&a, &loaderd, &scratch);
    if owned {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    res
}

fn run_in(a: &EpochsArgs, loaderd: &Path, scratch: &Path) -> anyhow::Result<()> {
    let data = make_dataset(a, &scratch.join("data"))?;
    let max = data.sizes.values().copied().max().unwrap_or(0);
    // One block per image, so the trace is one block per sample.
    let block_size = max.next_power_of_two().max(64 << 10);
    let mean_slot = data
        .sizes
        .values()
        .map(|s| s.div_ceil(SLOT) * SLOT)
        .sum::<u64>() as f64
        / data.sizes.len() as f64;
    let memory = ((data.bytes as f64 * a.memory_fraction) as u64).div_ceil(SLOT) * SLOT;
    let mut report = Report::new(
        data.sizes.len(),
        data.bytes,
        memory,
        a.ufs_bandwidth.0,
        a.train_rate,
        !a.no_prefetch,
    );
    for tiers in &a.tiers {
        let ssd = (tiers == "ssd").then_some(2 * data.bytes.div_ceil(SLOT) * SLOT);
        let cap_bytes = (memory + ssd.unwrap_or(0)) as f64 * HIGH_WATERMARK;
        let cap_blocks = (cap_bytes / mean_slot) as usize;
        for policy in &a.policies {
            let dir = scratch.join(format!("{tiers}-{policy}"));
            std::fs::create_dir_all(&dir)?;
            let cfg = DaemonConfig {
                dir: &dir,
                data: &data.dir,
                policy,
                block_size,
                memory,
                ssd,
                ufs_bandwidth: a.ufs_bandwidth.0,
                prefetch: !a.no_prefetch,
            };
            let d = BenchDaemon::start(loaderd, &cfg)?;
            let rows = run_epochs(a, &d, &data, policy)
                .with_context(|| format!("{tiers}/{policy}; daemon log:\n{}", d.log_tail()))?;
            drop(d);
            report.add(tiers, policy, rows, cap_blocks, &data.sizes);
            if !a.json {
                eprintln!("bench epochs: {tiers}/{policy} done");
            }
        }
    }
    report.print(a.json);
    Ok(())
}

fn make_dataset(a: &EpochsArgs, dir: &Path) -> anyhow::Result<Dataset> {
    let classes = 8.min(a.files);
    let spec = DatasetSpec {
        out: dir.to_path_buf(),
        classes,
        per_class: a.files.div_ceil(classes),
        width: a.width,
        height: a.height,
        seed: a.seed,
        ..DatasetSpec::default()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    generate(&spec, threads).context("generating the dataset")?;
    let mut sizes = HashMap::new();
    for class in std::fs::read_dir(dir)? {
        let class = class?;
        for f in std::fs::read_dir(class.path())? {
            let f = f?;
            let key = format!(
                "{}/{}",
                class.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            sizes.insert(key, f.metadata()?.len());
        }
    }
    let bytes = sizes.values().sum();
    Ok(Dataset {
        dir: dir.to_path_buf(),
        sizes,
        bytes,
    })
}

/// The epochs of one policy: what each delivered, and the daemon's counters over it.
fn run_epochs(
    a: &EpochsArgs,
    d: &BenchDaemon,
    data: &Dataset,
    policy: &str,
) -> anyhow::Result<Vec<EpochRow>> {
    let mut rows = Vec::new();
    for epoch in 0..a.epochs {
        let before = d.metrics()?;
        let started = Instant::now();
        let req = pb::OpenLoader {
            dataset: "/bench".into(),
            batch_size: a.batch_size,
            world_size: 1,
            seed: a.seed,
            epoch,
            train: true,
            size: 64,
            workers: a.workers,
            name: format!("bench-epochs-{policy}"),
            ..Default::default()
        };
        let mut client = BatchClient::open(&d.shm_socket(), req)?;
        let mut keys = Vec::with_capacity(data.sizes.len());
        let mut waited = Duration::ZERO;
        let mut first: Option<Instant> = None;
        loop {
            let asked = Instant::now();
            let Some(batch) = client.next_batch()? else {
                break;
            };
            if first.is_some() {
                waited += asked.elapsed();
            } else {
                first = Some(Instant::now());
            }
            let n = batch.keys.len();
            if !batch.skipped.is_empty() {
                bail!("samples skipped: {:?}", batch.skipped);
            }
            keys.extend(batch.keys.iter().cloned());
            if a.train_rate > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / a.train_rate));
            }
        }
        let wall = started.elapsed();
        let steady = first.map_or(Duration::ZERO, |f| f.elapsed());
        drop(client);
        let m = d.metrics()?.since(&before);
        rows.push(EpochRow {
            epoch,
            keys,
            ufs_bytes: m.sum("loaderd_ufs_bytes_total", &[]) as u64,
            memory_hits: m.sum("loaderd_cache_hits_total", &["tier=\"memory\""]) as u64,
            ssd_hits: m.sum("loaderd_cache_hits_total", &["tier=\"ssd\""]) as u64,
            prefetched: m.sum("loaderd_prefetch_blocks_total", &[]) as u64,
            late: m.sum("loaderd_prefetch_late_total", &[]) as u64,
            secs: wall.as_secs_f64(),
            starved: if steady.is_zero() {
                0.0
            } else {
                waited.as_secs_f64() / steady.as_secs_f64()
            },
        });
    }
    Ok(rows)
}
