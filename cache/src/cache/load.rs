//! `load`: warming the cache with everything under a path, and reporting what it could not
//! keep.
//!
//! A load that reads every byte can still leave most of them uncached (a disk tier on a full
//! file system, a tier smaller than the data), so the final progress message says how many
//! blocks and bytes of the loaded files are not held after it, next to the files that failed.
//! Each block's fetch is waited on to its end, SSD write included, before it is checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Cache, FileHandle, Keep, ReadType};
use crate::block::BlockRef;
use crate::error::Result;
use crate::path::LogicalPath;

/// Progress of a `load`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadProgress {
    pub files_total: u64,
    pub files_done: u64,
    pub files_failed: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_cached_before: u64,
    pub done: bool,
    pub first_error: Option<String>,
    /// Blocks of the files loaded that no tier of this node holds after the load (in the
    /// final message; blocks other nodes own are not counted, they are cached there).
    pub blocks_not_cached: u64,
    pub bytes_not_cached: u64,
}

impl Cache {
    /// Warms the cache with every file under `path`, `parallelism` files at a time; progress
    /// arrives on the returned channel, the last message with `done` set.
    ///
    /// In a cluster each block is warmed on its owner (a non-owner only asks the owner to
    /// cache it, so warming N nodes costs one copy of UFS egress); `local` also keeps a copy
    /// of every block here, for this node's own trainers.
    pub async fn load(
        self: &Arc<Self>,
        path: &LogicalPath,
        parallelism: usize,
        local: bool,
    ) -> Result<mpsc::Receiver<LoadProgress>> {
        let files = self.files_under(path).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut p = LoadProgress {
                files_total: files.len() as u64,
                bytes_total: files.iter().map(|f| f.meta.size).sum(),
                ..LoadProgress::default()
            };
            p.bytes_cached_before = files.iter().map(|f| this.cached_bytes(f)).sum();
            let _ = tx.send(p.clone()).await;
            let mut results = futures::stream::iter(files)
                .map(|fh| {
                    let this = this.clone();
                    async move {
                        let mut res = Ok(());
                        for b in this.blocks(&fh, 0..fh.meta.size) {
                            if let Err(e) = this.warm_block(&fh, &b, local).await {
                                res = Err(format!("{}: {e}", fh.path));
                                break;
                            }
                        }
                        (fh, res)
                    }
                })
                .buffer_unordered(parallelism.max(1));
            let mut loaded = Vec::new();
            let mut last_sent = Instant::now();
            while let Some((fh, res)) = results.next().await {
                match res {
                    Ok(()) => {
                        p.files_done += 1;
                        p.bytes_done += fh.meta.size;
                        loaded.push(fh);
                    }
                    Err(e) => {
                        p.files_failed += 1;
                        p.first_error.get_or_insert(e);
                    }
                }
                if last_sent.elapsed() > Duration::from_millis(100) {
                    last_sent = Instant::now();
                    if tx.send(p.clone()).await.is_err() {
                        // Nobody watches; keep loading anyway (the cache still benefits).
                    }
                }
            }
            for fh in &loaded {
                for b in this.blocks(fh, 0..fh.meta.size) {
                    if this.kept_here(&b, local) && !this.is_cached(b.id) {
                        p.blocks_not_cached += 1;
                        p.bytes_not_cached += b.len();
                    }
                }
            }
            p.done = true;
            let _ = tx.send(p).await;
        });
        Ok(rx)
    }

    /// Whether a load caches block `b` on this node (outside a cluster: every block).
    fn kept_here(&self, b: &BlockRef, local: bool) -> bool {
        local || self.cluster().is_none_or(|c| c.owns(b.id))
    }

    /// Makes sure block `b` is cached where it belongs (see [`Cache::load`]), its fetch
    /// finished (SSD write included).
    async fn warm_block(&self, fh: &FileHandle, b: &BlockRef, local: bool) -> Result<()> {
        if self.is_cached(b.id) {
            return Ok(());
        }
        match self.cluster() {
            Some(c) if !c.owns(b.id) => {
                let keep = if local { Keep::Local } else { Keep::Discard };
                self.fetch_remote(c, fh, b, ReadType::Cache, keep).await?;
            }
            _ => {
                self.get_block(fh, b, ReadType::Cache).await?;
            }
        }
        self.settled(b).await;
        Ok(())
    }

    /// Waits until no fetch of `b` is in flight (its tier writes are done).
    pub(super) async fn settled(&self, b: &BlockRef) {
        self.fetches.settled(&b.id).await;
    }
}
