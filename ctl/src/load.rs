//! `loaderctl load`: warms the cache with a path's blocks, with a progress bar.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use loaderd_proto::v1 as pb;

use crate::client::Client;
use crate::rpc_err;

pub(crate) async fn load(
    c: &mut Client,
    path: String,
    parallelism: u32,
    no_progress: bool,
    local: bool,
    strict: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let show = !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )?);
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    let req_path = path.clone();
    let req = pb::LoadRequest {
        path,
        parallelism,
        local,
    };
    let last = run_load(c, req, |p| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!(
            "{}/{} files",
            p.files_done + p.files_failed,
            p.files_total
        ));
    })
    .await;
    bar.finish_and_clear();
    let last = last?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {} files, {} bytes ({} already cached) in {secs:.2}s, {:.1} MB/s; {} failed; {} bytes ({} blocks) not cached",
        last.files_done,
        last.bytes_done,
        last.bytes_cached_before,
        last.bytes_done as f64 / secs / 1e6,
        last.files_failed,
        last.bytes_not_cached,
        last.blocks_not_cached
    );
    if last.bytes_not_cached > 0 {
        let pct = 100.0 * last.bytes_not_cached as f64 / last.bytes_done.max(1) as f64;
        eprintln!(
            "warning: {} of {} loaded bytes ({pct:.0}%) are not cached (a tier or its disk is full; see `loaderctl status`)",
            last.bytes_not_cached, last.bytes_done
        );
        if strict {
            bail!(
                "load of {}: {} bytes ({} blocks) not cached (--strict)",
                req_path,
                last.bytes_not_cached,
                last.blocks_not_cached
            );
        }
    }
    Ok(())
}

/// Runs a load to its end, showing each progress message to `progress`; fails when the
/// stream ends early or any file failed.
pub(crate) async fn run_load(
    c: &mut Client,
    req: pb::LoadRequest,
    mut progress: impl FnMut(&pb::LoadProgress),
) -> anyhow::Result<pb::LoadProgress> {
    let path = req.path.clone();
    let mut stream = c.load(req).await.map_err(rpc_err)?.into_inner();
    let mut last = pb::LoadProgress::default();
    while let Some(p) = stream.next().await {
        let p = p.map_err(rpc_err)?;
        progress(&p);
        last = p;
    }
    if !last.done {
        bail!("load of {path} ended early (daemon went away?)");
    }
    if last.files_failed > 0 {
        bail!(
            "load of {path}: {} files failed; first: {}",
            last.files_failed,
            last.first_error
        );
    }
    Ok(last)
}
