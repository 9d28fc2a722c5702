//! What the benches share: the files a bench reads, timed phases, read requests, and the
//! readers (gRPC, shared memory, a file system) that count the bytes they read.
//!
//! Every other bench module imports from here; nothing here imports a bench.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use loaderd_cache::config::UfsConfig;
use loaderd_cache::ufs::{FileMeta, Ufs};
use loaderd_proto::v1 as pb;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use crate::cat::read_to;
use crate::client::{Client, Piece, ShmClient};
use crate::{parse_options, rpc_err};

/// The files of a read bench: every file below a logical directory, the UFS they are
/// mounted from (read directly as the baseline), and how many are read at a time.
pub(super) struct Corpus {
    /// The logical directory, without a trailing `/`.
    pub root: String,
    /// Every file below `root`, paths relative to it.
    pub files: Vec<FileMeta>,
    /// The UFS mounted at `root`, opened by this process.
    pub ufs: Ufs,
    /// Files read concurrently (at least 1).
    pub concurrency: usize,
}

impl Corpus {
    /// Lists `path` through the daemon and opens `ufs_uri` with backend `options`.
    pub async fn open(
        c: &mut Client,
        path: &str,
        ufs_uri: &str,
        options: &[String],
        concurrency: usize,
    ) -> anyhow::Result<Corpus> {
        let root = path.trim_end_matches('/').to_string();
        let files = list_files(c, &root).await?;
        let ufs = Ufs::open(ufs_uri, &parse_options(options)?, &UfsConfig::default())?;
        Ok(Corpus {
            root,
            files,
            ufs,
            concurrency: concurrency.max(1),
        })
    }
}

/// A timed phase of a bench: what it read, and how long that took.
pub(super) struct Phase {
    pub name: &'static str,
    pub bytes: u64,
    pub secs: f64,
}

impl Phase {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// The baseline phase: `files` read straight from the UFS, `n` at a time.
pub(super) async fn ufs_direct(ufs: &Ufs, files: &[FileMeta], n: usize) -> anyhow::Result<Phase> {
    let t = Instant::now();
    let bytes: u64 = futures::stream::iter(files.iter())
        .map(|f| async { ufs.get_range(f, 0..f.size).await.map(|b| b.len() as u64) })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
        .context("reading the UFS directly")?;
    Ok(Phase {
        name: "ufs-direct",
        bytes,
        secs: t.elapsed().as_secs_f64(),
    })
}
/// Every file below logical directory `root` (recursively), paths relative to it.
pub(super) async fn list_files(c: &mut Client, root: &str) -> anyhow::Result<Vec<FileMeta>> {
    let listing = crate::client::list_all(c, root, true)
        .await
        .map_err(rpc_err)?;
    let files: Vec<FileMeta> = listing
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| FileMeta {
            rel: e
                .path
                .strip_prefix(&format!("{root}/"))
                .unwrap_or(&e.path)
                .to_string(),
            size: e.size,
            version: e.version.clone(),
            mtime_ms: e.mtime_unix_ms,
        })
        .collect();
    if files.is_empty() {
        bail!("no files under {root}");
    }
    Ok(files)
}

/// One read: a path (logical, or local/FUSE), an offset and a length (0: to the end).
#[derive(Debug, Clone)]
pub(super) struct ReadReq<P> {
    pub path: P,
    pub offset: u64,
    pub length: u64,
}

/// Whole-file reads of `files` by logical path.
pub(super) fn whole_files(root: &str, files: &[FileMeta]) -> Vec<ReadReq<String>> {
    files
        .iter()
        .map(|f| ReadReq {
            path: format!("{root}/{}", f.rel),
            offset: 0,
            length: 0,
        })
        .collect()
}

/// Whole-file reads of `files` under a local (or FUSE) directory.
pub(super) fn local_files(dir: &Path, files: &[FileMeta]) -> Vec<ReadReq<PathBuf>> {
    files
        .iter()
        .map(|f| ReadReq {
            path: dir.join(&f.rel),
            offset: 0,
            length: 0,
        })
        .collect()
}

/// Reads over gRPC, `n` at a time; returns the bytes read.
pub(super) async fn grpc_reads(
    c: &Client,
    reqs: &[ReadReq<String>],
    n: usize,
) -> anyhow::Result<u64> {
    futures::stream::iter(reqs.iter())
        .map(|r| {
            let mut c = c.clone();
            let req = pb::ReadRequest {
                path: r.path.clone(),
                offset: r.offset,
                length: r.length,
                ..Default::default()
            };
            async move { read_to(&mut c, req, &mut std::io::sink()).await }
        })
        .buffer_unordered(n)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
}

/// Runs `f` over `items` on `n` threads taking the next item as they go; sums the results.
pub(super) fn par_sum<T: Sync, S: Send>(
    items: &[T],
    states: &mut [S],
    f: impl Fn(&mut S, &T) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<u64> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = states
            .iter_mut()
            .map(|state| {
                let (next, f) = (&next, &f);
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut total = 0u64;
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        total += f(state, item)?;
                    }
                    Ok(total)
                })
            })
            .collect();
        workers.into_iter().try_fold(0, |acc, w| {
            let n = w
                .join()
                .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
            Ok(acc + n)
        })
    })
}

/// "N files, X MB (Y KB avg), concurrency C": the first line of every bench's report.
pub(super) fn summary_line(files: usize, total: u64, concurrency: usize) -> String {
    format!(
        "{files} files, {:.1} MB ({:.0} KB avg), concurrency {concurrency}",
        total as f64 / 1e6,
        total as f64 / files.max(1) as f64 / 1e3
    )
}

/// Reads through shared memory, one client per thread, copying each read into the thread's
/// buffer (as `read(2)` into a buffer does, so the comparison with the page cache is fair).
pub(super) fn shm_reads(
    clients: &mut [ShmClient],
    reqs: &[ReadReq<String>],
) -> anyhow::Result<u64> {
    let mut states: Vec<(&mut ShmClient, Vec<u8>)> =
        clients.iter_mut().map(|c| (c, Vec::new())).collect();
    par_sum(reqs, &mut states, |(client, buf), r| {
        buf.clear();
        client.read(&r.path, r.offset, r.length, |_, piece| match piece {
            Piece::Mapped(b) => {
                buf.extend_from_slice(b);
                Ok(())
            }
            Piece::Fallback { .. } => Err(std::io::Error::other(
                "not in the memory tier (is it large enough for the files?)",
            )),
        })?;
        Ok(buf.len() as u64)
    })
}

/// Reads files of a file system (local, or a FUSE mount) on `n` threads, each read with
/// its own open; `random` tells the kernel not to read ahead.
pub(super) fn fs_reads(reqs: &[ReadReq<PathBuf>], n: usize, random: bool) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut states: Vec<Vec<u8>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    par_sum(reqs, &mut states, |buf, r| {
        let f = std::fs::File::open(&r.path)
            .with_context(|| format!("opening {}", r.path.display()))?;
        if random {
            let _ = posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
        }
        if r.length == 0 {
            buf.clear();
            let mut f = f;
            f.read_to_end(buf)
                .with_context(|| format!("reading {}", r.path.display()))?;
            return Ok(buf.len() as u64);
        }
        buf.resize(r.length as usize, 0);
        f.read_exact_at(buf, r.offset)
            .with_context(|| format!("reading {}", r.path.display()))?;
        Ok(r.length)
    })
}
