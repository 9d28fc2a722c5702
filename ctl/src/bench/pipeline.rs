//! `loaderctl bench pipeline`: one epoch of training batches from the daemon's pipeline into
//! this process's shared-memory ring — img/s and MB/s delivered, samples skipped.
//!
//! With `--predecoded` every sample is a copy of one decoded image, so the run measures the
//! handoff itself: the daemon's copy of each sample into the ring (the one copy a decoded
//! batch needs), in-order delivery and the client's wake-up. Its rate from the first batch
//! on is compared with `memcpy` of the same samples into a buffer the size of the ring,
//! measured in this process in the same run.
//!
//! With `--gpu` the same epoch then runs through a loader on a CUDA device ([`super::gpu`]
//! reports where it was served and compares the two runs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use loaderd_proto::v1 as pb;
use serde_json::json;

use super::gpu::{self, Served};
use crate::client::shm::BatchClient;

/// A loader's line of the daemon's status, by loader name (the bench names its loaders).
pub type StatusOf<'a> = dyn FnMut(&str) -> anyhow::Result<Option<pb::LoaderStatus>> + 'a;

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Logical path of the dataset (ImageFolder directory or WebDataset shards).
    #[arg(long)]
    dataset: String,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// Decode threads in the daemon for this loader.
    #[arg(long, default_value_t = 0)]
    workers: u32,
    /// Batches prepared ahead.
    #[arg(long, default_value_t = 0)]
    depth: u32,
    /// Validation transforms (resize + centre crop) instead of training ones.
    #[arg(long)]
    val: bool,
    /// Output side.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// nhwc_u8, nchw_f32 or nchw_f16.
    #[arg(long, default_value = "nhwc_u8", value_parser = parse_layout)]
    layout: pb::SampleLayout,
    #[arg(long, default_value_t = 0)]
    rank: u32,
    #[arg(long, default_value_t = 1)]
    world_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    #[arg(long)]
    drop_last: bool,
    /// What an undecodable sample does: skip or fail (default: the daemon's `pipeline.on_error`).
    #[arg(long, value_parser = parse_on_error)]
    on_error: Option<pb::OnSampleError>,
    /// Measure delivery alone: every sample is a copy of one decoded image; also measures
    /// memcpy of the same samples as the baseline (steady state, from the first batch on).
    #[arg(long)]
    predecoded: bool,
    /// Copy every batch out of shared memory (as a trainer's host-to-device copy reads it)
    /// instead of touching one byte per page.
    #[arg(long)]
    copy: bool,
    /// Write the sample keys, one per line in delivery order, to this file.
    #[arg(long)]
    keys_out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Then the same epoch (same files, seed and transforms) through a loader on a CUDA
    /// device, decoded by nvJPEG into device memory; reports both and their ratio, and fails
    /// when the daemon serves that loader from the CPU (see `--allow-cpu`).
    #[arg(long)]
    gpu: bool,
    /// The CUDA device of `--gpu`, as the daemon numbers its devices.
    #[arg(long, default_value_t = 0, requires = "gpu")]
    device: u32,
    /// With `--gpu`: measure the run even when the daemon serves it from the CPU (its reason
    /// is printed).
    #[arg(long, requires = "gpu")]
    allow_cpu: bool,
}

/// `nhwc_u8` → `SAMPLE_LAYOUT_NHWC_U8`, and so on.
fn parse_layout(s: &str) -> Result<pb::SampleLayout, String> {
    pb::SampleLayout::from_str_name(&format!("SAMPLE_LAYOUT_{}", s.to_uppercase()))
        .filter(|l| *l != pb::SampleLayout::Unspecified)
        .ok_or_else(|| format!("unknown layout {s:?}: nhwc_u8, nchw_f32 or nchw_f16"))
}

/// The element type as numpy and torch name it.
fn dtype_name(dtype: i32) -> &'static str {
    match pb::Dtype::try_from(dtype) {
        Ok(pb::Dtype::Uint8) => "uint8",
        Ok(pb::Dtype::Float32) => "float32",
        Ok(pb::Dtype::Float16) => "float16",
        _ => "unknown",
    }
}

fn parse_on_error(s: &str) -> Result<pb::OnSampleError, String> {
    pb::OnSampleError::from_str_name(&format!("ON_SAMPLE_ERROR_{}", s.to_uppercase()))
        .filter(|e| *e != pb::OnSampleError::Unspecified)
        .ok_or_else(|| format!("unknown on_error {s:?}: skip or fail"))
}

impl PipelineArgs {
    /// The loader request of this bench; `cuda_device` for the GPU run.
    fn request(&self, cuda_device: Option<u32>, name: String) -> pb::OpenLoader {
        pb::OpenLoader {
            dataset: self.dataset.clone(),
            batch_size: self.batch_size,
            rank: self.rank,
            world_size: self.world_size,
            seed: self.seed,
            epoch: self.epoch,
            train: !self.val,
            size: self.size,
            layout: self.layout as i32,
            depth: self.depth,
            drop_last: self.drop_last,
            workers: self.workers,
            on_error: self.on_error.unwrap_or(pb::OnSampleError::Unspecified) as i32,
            name,
            predecoded: self.predecoded,
            cuda_device,
            ..Default::default()
        }
    }
}

/// The name of this process's loader of one kind, for finding it in status.
fn loader_name(kind: &str) -> String {
    format!("loaderctl bench pipeline {kind} {}", std::process::id())
}

/// One epoch as the client saw it.
pub(super) struct Epoch {
    pub opened: pb::LoaderOpened,
    pub batches: u64,
    pub samples: u64,
    pub bytes: u64,
    pub skipped: Vec<String>,
    pub checksum: u64,
    /// From the open to the end.
    pub secs: f64,
    /// From the first batch in to the end, and the samples and bytes after it.
    pub steady: Option<(f64, u64, u64)>,
    /// Keys and labels in delivery order, hashed: equal for equal orders.
    pub order_digest: u64,
    /// The loader's status line after its last batch (when asked for).
    pub status: Option<pb::LoaderStatus>,
}

impl Epoch {
    pub fn images_per_s(&self) -> f64 {
        self.samples as f64 / self.secs
    }

    pub fn steady_images_per_s(&self) -> Option<f64> {
        self.steady.map(|(secs, samples, _)| samples as f64 / secs)
    }
}

/// What the epoch loop does with each batch besides counting it.
struct EpochOptions<'a, 'b> {
    copy: bool,
    keys_out: Option<&'a mut dyn Write>,
    status: Option<(&'a mut StatusOf<'b>, String)>,
}

/// Runs one epoch of `client`'s loader. A batch in a host ring is touched (one byte a page)
/// or copied out; one in a CUDA ring is counted and timed only (this process does not map
/// device memory).
fn epoch(
    mut client: BatchClient,
    started: Instant,
    mut o: EpochOptions<'_, '_>,
) -> anyhow::Result<Epoch> {
    use std::hash::Hasher;
    let opened = client.opened().clone();
    let (mut batches, mut samples, mut bytes, mut skipped) = (0u64, 0u64, 0u64, Vec::new());
    let mut checksum = 0u64;
    let mut order = std::collections::hash_map::DefaultHasher::new();
    // Steady state starts when the first batch is in (loader start-up excluded).
    let mut first: Option<(Instant, u64, u64)> = None;
    let mut staging = vec![
        0u8;
        if o.copy {
            opened.slot_bytes as usize
        } else {
            0
        }
    ];
    while let Some(b) = client.next_batch()? {
        if first.is_none() {
            first = Some((Instant::now(), b.labels.len() as u64, b.len()));
        }
        batches += 1;
        samples += b.labels.len() as u64;
        bytes += b.len();
        if o.copy && b.device.is_none() {
            staging[..b.data.len()].copy_from_slice(b.data);
            checksum = checksum.wrapping_add(u64::from(staging[b.data.len() / 2]));
        } else {
            // Touch the batch (one byte per page is enough to fault it in).
            checksum = b
                .data
                .iter()
                .step_by(4096)
                .fold(checksum, |s, &x| s.wrapping_add(u64::from(x)));
        }
        for (k, l) in b.keys.iter().zip(&b.labels) {
            order.write(k.as_bytes());
            order.write_i64(*l);
        }
        if let Some(w) = o.keys_out.as_mut() {
            for k in &b.keys {
                writeln!(w, "{k}")?;
            }
        }
        skipped.extend(b.skipped);
    }
    let end = Instant::now();
    if let Some(w) = o.keys_out.as_mut() {
        w.flush()?;
    }
    // The loader is still open: its status line holds the whole epoch's numbers.
    let status = match o.status.as_mut() {
        Some((status_of, name)) => status_of(name)?,
        None => None,
    };
    drop(client);
    Ok(Epoch {
        opened,
        batches,
        samples,
        bytes,
        skipped,
        checksum,
        secs: (end - started).as_secs_f64(),
        steady: first.map(|(t, s, b)| {
            (
                (end - t).as_secs_f64(),
                samples.saturating_sub(s),
                bytes.saturating_sub(b),
            )
        }),
        order_digest: order.finish(),
        status,
    })
}

/// Opens a loader for `req`, naming the dataset and socket on failure.
fn open(shm_socket: &Path, dataset: &str, req: pb::OpenLoader) -> anyhow::Result<BatchClient> {
    BatchClient::open(shm_socket, req)
        .with_context(|| format!("opening a loader on {dataset} via {}", shm_socket.display()))
}

pub fn run(
    shm_socket: PathBuf,
    a: PipelineArgs,
    status_of: &mut StatusOf<'_>,
) -> anyhow::Result<()> {
    if a.gpu {
        // Ask first whether the daemon serves a CUDA loader: fail before measuring anything.
        let probe = open(
            &shm_socket,
            &a.dataset,
            a.request(Some(a.device), loader_name("gpu-probe")),
        )?;
        gpu::check_served(&Served::of(&probe), a.device, a.allow_cpu)?;
    }
    let mut keys_out = match &a.keys_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let started = Instant::now();
    let client = open(&shm_socket, &a.dataset, a.request(None, loader_name("cpu")))?;
    let cpu = epoch(
        client,
        started,
        EpochOptions {
            copy: a.copy,
            keys_out: keys_out.as_mut().map(|w| w as &mut dyn Write),
            // Its line of the status: its hit ratio, and for `--gpu` the CPU side's numbers.
            status: Some((&mut *status_of, loader_name("cpu"))),
        },
    )?;
    let gpu = if a.gpu {
        let started = Instant::now();
        let client = open(
            &shm_socket,
            &a.dataset,
            a.request(Some(a.device), loader_name("gpu")),
        )?;
        let served = Served::of(&client);
        let run = epoch(
            client,
            started,
            EpochOptions {
                copy: a.copy,
                keys_out: None,
                status: Some((status_of, loader_name("gpu"))),
            },
        )?;
        Some((served, run))
    } else {
        None
    };
    let memcpy_mb_s = a.predecoded.then(|| {
        memcpy_mb_per_s(
            cpu.opened.sample_bytes as usize,
            (cpu.opened.slot_bytes * u64::from(cpu.opened.depth)) as usize,
            cpu.bytes,
        )
    });
    if a.json {
        let mut report = epoch_json(&a.dataset, &cpu, a.predecoded, memcpy_mb_s);
        if let Some((served, g)) = &gpu {
            report["gpu"] = gpu::json(served, g, &cpu);
        }
        println!("{report}");
    } else {
        // With --gpu, each run's line says which one it is.
        let tag = |t: &'static str| if gpu.is_some() { t } else { "" };
        print!("{}{}", tag("cpu: "), epoch_text(&cpu, memcpy_mb_s));
        if let Some((served, g)) = &gpu {
            print!("{}{}", tag("gpu: "), epoch_text(g, None));
            print!("{}", gpu::text(served, g, &cpu));
        }
    }
    if let Some((served, _)) = &gpu {
        // The daemon may have answered the probe and the measured loader differently.
        gpu::check_served(served, a.device, a.allow_cpu)?;
    }
    Ok(())
}

/// The `--json` report of one epoch (the CPU run's fields stay at the top level).
fn epoch_json(
    dataset: &str,
    e: &Epoch,
    predecoded: bool,
    memcpy_mb_s: Option<f64>,
) -> serde_json::Value {
    let steady_mb_s = e.steady.map(|(secs, _, bytes)| bytes as f64 / secs / 1e6);
    let of_memcpy = memcpy_mb_s.zip(steady_mb_s).map(|(m, s)| s / m);
    json!({"dataset": dataset, "batches": e.batches, "samples": e.samples,
        "expected_batches": e.opened.batches, "dataset_len": e.opened.dataset_len,
        "bytes": e.bytes, "secs": e.secs, "images_per_s": e.images_per_s(),
        "steady_images_per_s": e.steady_images_per_s(),
        "mb_per_s": e.bytes as f64 / e.secs / 1e6, "skipped": e.skipped,
        "sample_shape": e.opened.sample_shape, "dtype": dtype_name(e.opened.dtype),
        "checksum": e.checksum, "predecoded": predecoded, "steady_mb_per_s": steady_mb_s,
        "memcpy_mb_per_s": memcpy_mb_s, "of_memcpy": of_memcpy,
        "hit_ratio": e.status.as_ref().map(|s| s.hit_ratio),
        "block_reads_cached": e.status.as_ref().map(|s| s.block_reads_cached),
        "block_reads_uncached": e.status.as_ref().map(|s| s.block_reads_uncached),
        "prefetched_blocks": e.status.as_ref().map(|s| s.prefetched_blocks)})
}

/// The text report of one epoch.
fn epoch_text(e: &Epoch, memcpy_mb_s: Option<f64>) -> String {
    let into = if e.opened.memory == pb::BatchMemory::Cuda as i32 {
        format!("device memory of cuda:{}", e.opened.cuda_device)
    } else {
        "shared memory".to_string()
    };
    let mut out = format!(
        "{} samples in {} batches ({} dataset samples, shape {:?} {}) in {:.2}s: {:.0} img/s, {:.1} MB/s into {into}; {} skipped\n",
        e.samples,
        e.batches,
        e.opened.dataset_len,
        e.opened.sample_shape,
        dtype_name(e.opened.dtype),
        e.secs,
        e.images_per_s(),
        e.bytes as f64 / e.secs / 1e6,
        e.skipped.len()
    );
    for k in e.skipped.iter().take(10) {
        out.push_str(&format!("  skipped {k}\n"));
    }
    let steady_mb_s = e.steady.map(|(secs, _, bytes)| bytes as f64 / secs / 1e6);
    if let (Some(m), Some(s)) = (memcpy_mb_s, steady_mb_s) {
        out.push_str(&format!(
            "steady delivery {s:.1} MB/s; memcpy of the same samples in this process {m:.1} MB/s; delivery reached {:.2} of it\n",
            s / m
        ));
    }
    if let Some(st) = e.status.as_ref() {
        let reads = st.block_reads_cached + st.block_reads_uncached;
        if reads > 0 {
            out.push_str(&format!(
                "block reads from this node's cache {:.1}% ({} of {reads}), {} blocks prefetched\n",
                100.0 * st.hit_ratio,
                st.block_reads_cached,
                st.prefetched_blocks
            ));
        }
    }
    out
}

/// memcpy bandwidth for `total` bytes: one `sample`-sized source copied into consecutive
/// sample places of a `ring`-sized destination (faulted in first), as the daemon fills a
/// ring, on one thread.
fn memcpy_mb_per_s(sample: usize, ring: usize, total: u64) -> f64 {
    let sample = sample.max(1);
    let places = (ring / sample).max(1);
    let src = vec![1u8; sample];
    let mut dst = vec![0u8; places * sample];
    let rounds = (total / sample as u64).max(64);
    let started = Instant::now();
    for i in 0..rounds as usize {
        let at = (i % places) * sample;
        dst[at..at + sample].copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    }
    (rounds * sample as u64) as f64 / started.elapsed().as_secs_f64() / 1e6
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{BenchCmd, Cli, Command};

    fn parse(extra: &[&str]) -> Result<PipelineArgs, clap::Error> {
        let mut argv = vec!["loaderctl", "bench", "pipeline", "--dataset", "/ds"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Bench(BenchCmd::Pipeline(a)) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn gpu_flags_parse_and_need_gpu() {
        let a = parse(&[]).expect("no flags");
        assert!(!a.gpu && !a.allow_cpu);
        assert_eq!(a.device, 0);
        let a = parse(&["--gpu", "--device", "3", "--allow-cpu"]).expect("gpu flags");
        assert!(a.gpu && a.allow_cpu);
        assert_eq!(a.device, 3);
        assert_eq!(a.request(Some(a.device), "n".into()).cuda_device, Some(3));
        assert_eq!(a.request(None, "n".into()).cuda_device, None);
        for alone in [&["--device", "1"][..], &["--allow-cpu"]] {
            let err = parse(alone).expect_err("needs --gpu").to_string();
            assert!(err.contains("--gpu"), "{err}");
        }
    }
}
