//! `loaderctl bench pipeline`: one epoch of training batches from the daemon's pipeline into
//! this process's shared-memory ring — img/s and MB/s delivered, samples skipped.
//!
//! With `--predecoded` every sample is a copy of one decoded image, so the run measures the
//! handoff itself: the daemon's copy of each sample into the ring (the one copy a decoded
//! batch needs), in-order delivery and the client's wake-up. Its rate from the first batch
//! on is compared with `memcpy` of the same samples into a buffer the size of the ring,
//! measured in this process in the same run.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use loaderd_proto::v1 as pb;
use serde_json::json;

use crate::client::shm::BatchClient;

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

pub fn run(shm_socket: PathBuf, a: PipelineArgs) -> anyhow::Result<()> {
    let req = pb::OpenLoader {
        dataset: a.dataset.clone(),
        batch_size: a.batch_size,
        rank: a.rank,
        world_size: a.world_size,
        seed: a.seed,
        epoch: a.epoch,
        train: !a.val,
        size: a.size,
        layout: a.layout as i32,
        depth: a.depth,
        drop_last: a.drop_last,
        workers: a.workers,
        on_error: a.on_error.unwrap_or(pb::OnSampleError::Unspecified) as i32,
        name: "loaderctl bench pipeline".into(),
        predecoded: a.predecoded,
        ..Default::default()
    };
    let started = Instant::now();
    let mut client = BatchClient::open(&shm_socket, req).with_context(|| {
        format!(
            "opening a loader on {} via {}",
            a.dataset,
            shm_socket.display()
        )
    })?;
    let opened = client.opened().clone();
    let mut keys_out = match &a.keys_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let (mut batches, mut samples, mut bytes, mut skipped) = (0u64, 0u64, 0u64, Vec::new());
    let mut checksum = 0u64;
    let copy = a.copy;
    // Steady state starts when the first batch is in (loader start-up excluded).
    let mut first: Option<(Instant, u64)> = None;
    let mut staging = vec![0u8; if copy { opened.slot_bytes as usize } else { 0 }];
    while let Some(b) = client.next_batch()? {
        if first.is_none() {
            first = Some((Instant::now(), b.data.len() as u64));
        }
        batches += 1;
        samples += b.labels.len() as u64;
        bytes += b.data.len() as u64;
        if copy {
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
        if let Some(w) = keys_out.as_mut() {
            for k in &b.keys {
                writeln!(w, "{k}")?;
            }
        }
        skipped.extend(b.skipped);
    }
    if let Some(mut w) = keys_out {
        w.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(client);
    let steady_mb_s =
        first.map(|(t, b)| bytes.saturating_sub(b) as f64 / t.elapsed().as_secs_f64() / 1e6);
    let memcpy_mb_s = a.predecoded.then(|| {
        memcpy_mb_per_s(
            opened.sample_bytes as usize,
            (opened.slot_bytes * u64::from(opened.depth)) as usize,
            bytes,
        )
    });
    let of_memcpy = memcpy_mb_s.zip(steady_mb_s).map(|(m, s)| s / m);
    if a.json {
        println!(
            "{}",
            json!({"dataset": a.dataset, "batches": batches, "samples": samples,
                "expected_batches": opened.batches, "dataset_len": opened.dataset_len,
                "bytes": bytes, "secs": secs, "images_per_s": samples as f64 / secs,
                "mb_per_s": bytes as f64 / secs / 1e6, "skipped": skipped,
                "sample_shape": opened.sample_shape, "dtype": dtype_name(opened.dtype), "checksum": checksum,
                "predecoded": a.predecoded, "steady_mb_per_s": steady_mb_s,
                "memcpy_mb_per_s": memcpy_mb_s, "of_memcpy": of_memcpy})
        );
    } else {
        println!(
            "{samples} samples in {batches} batches ({} dataset samples, shape {:?} {}) in {secs:.2}s: {:.0} img/s, {:.1} MB/s into shared memory; {} skipped",
            opened.dataset_len,
            opened.sample_shape,
            dtype_name(opened.dtype),
            samples as f64 / secs,
            bytes as f64 / secs / 1e6,
            skipped.len()
        );
        for k in skipped.iter().take(10) {
            println!("  skipped {k}");
        }
        if let (Some(m), Some(s), Some(f)) = (memcpy_mb_s, steady_mb_s, of_memcpy) {
            println!(
                "steady delivery {s:.1} MB/s; memcpy of the same samples in this process {m:.1} MB/s; delivery reached {f:.2} of it"
            );
        }
    }
    Ok(())
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
