//! `loaderctl bench pipeline`: one epoch of training batches from the daemon's pipeline into
//! this process's shared-memory ring — img/s and MB/s delivered, samples skipped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use loaderd_proto::v1 as pb;
use serde_json::json;

use crate::shm::client::BatchClient;

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
    #[arg(long, default_value = "nhwc_u8")]
    layout: String,
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
    /// Write the sample keys, one per line in delivery order, to this file.
    #[arg(long)]
    keys_out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
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
        layout: a.layout.clone(),
        depth: a.depth,
        drop_last: a.drop_last,
        workers: a.workers,
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
    while let Some(b) = client.next_batch()? {
        batches += 1;
        samples += b.labels.len() as u64;
        bytes += b.data.len() as u64;
        // Touch the batch as a trainer's copy would (one byte per page is enough to fault it in).
        checksum = b
            .data
            .iter()
            .step_by(4096)
            .fold(checksum, |s, &x| s.wrapping_add(u64::from(x)));
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
    if a.json {
        println!(
            "{}",
            json!({"dataset": a.dataset, "batches": batches, "samples": samples,
                "expected_batches": opened.batches, "dataset_len": opened.dataset_len,
                "bytes": bytes, "secs": secs, "images_per_s": samples as f64 / secs,
                "mb_per_s": bytes as f64 / secs / 1e6, "skipped": skipped,
                "sample_shape": opened.sample_shape, "dtype": opened.dtype, "checksum": checksum})
        );
    } else {
        println!(
            "{samples} samples in {batches} batches ({} dataset samples, shape {:?} {}) in {secs:.2}s: {:.0} img/s, {:.1} MB/s into shared memory; {} skipped",
            opened.dataset_len,
            opened.sample_shape,
            opened.dtype,
            samples as f64 / secs,
            bytes as f64 / secs / 1e6,
            skipped.len()
        );
        for k in skipped.iter().take(10) {
            println!("  skipped {k}");
        }
    }
    Ok(())
}
