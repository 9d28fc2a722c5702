//! `loaderctl`: the command-line client of a loaderd daemon, and the one Rust client of its
//! API ([`client`], the `loaderd-client` crate re-exported: gRPC and the zero-copy shared-memory reads) that the end-to-end tests use.
//!
//! Commands: [`status`], `ls` / `stat` / `cat` ([`cat`]), [`load`], [`mount`], `free`,
//! `invalidate`, [`bench`] (read, FUSE, pipeline and remote throughput) and `dataset gen`
//! ([`dataset`]).

mod bench;
mod cat;
mod cli;
pub use loaderd_client as client;
pub mod dataset;
mod load;
mod ls;
mod mount;
mod status;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use loaderd_proto::transport::{default_shm_socket, default_socket};
use loaderd_proto::v1 as pb;
use serde_json::json;

use crate::cat::{cat_shm, read_to};
pub use crate::cli::Cli;
use crate::cli::{BenchCmd, Command, DatasetCmd};
use crate::client::{BearerToken, Client, ShmClient, connect_tcp, connect_unix};

/// Entry point of the `loaderctl` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(run(cli)) {
        // `loaderctl cat ... | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(match &cli.addr {
        Some(addr) => {
            let token = match &cli.token_file {
                Some(path) => BearerToken::from_file(path)?,
                None => BearerToken::default(),
            };
            connect_tcp(addr, token).await?
        }
        None => connect_unix(&cli.socket.clone().unwrap_or_else(default_socket)).await?,
    })
}

/// A zero-copy connection to the local daemon, when it offers one.
pub(crate) fn connect_shm(cli_socket: Option<&PathBuf>, tcp: bool) -> Option<ShmClient> {
    if tcp {
        return None;
    }
    let socket = cli_socket.cloned().unwrap_or_else(default_socket);
    let path = default_shm_socket(&socket);
    if !path.exists() {
        return None;
    }
    match ShmClient::connect(&path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("loaderctl: shared-memory reads unavailable ({e}); using gRPC");
            None
        }
    }
}

/// A gRPC status as a readable error.
pub(crate) fn rpc_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dataset(DatasetCmd::Gen(g)) => return dataset::generate_cmd(&g),
        // It starts daemons of its own.
        Command::Bench(BenchCmd::Epochs(args)) => {
            return tokio::task::block_in_place(|| bench::epochs::run(args));
        }
        _ => {}
    }
    let mut c = connect(&cli).await?;
    let shm = || connect_shm(cli.socket.as_ref(), cli.addr.is_some());
    match cli.command {
        Command::Status { json } => status::status(&mut c, json).await,
        Command::Ls {
            recursive,
            long,
            path,
        } => ls::ls(&mut c, path, recursive, long).await,
        Command::Stat { json, path } => {
            let f = c
                .stat(pb::StatRequest {
                    path,
                    with_mode: false,
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"path": f.path, "is_dir": f.is_dir, "size": f.size,
                        "version": f.version, "mtime_unix_ms": f.mtime_unix_ms,
                        "cached_bytes": f.cached_bytes, "owners": f.owners})
                );
            } else if f.is_dir {
                println!("{}: directory", f.path);
            } else {
                println!(
                    "{}: file, {} bytes, version {}, mtime {} ms, {} bytes cached",
                    f.path, f.size, f.version, f.mtime_unix_ms, f.cached_bytes
                );
                if !f.owners.is_empty() {
                    println!("  block owners: {}", f.owners.join(" "));
                }
            }
            Ok(())
        }
        Command::Cat {
            no_cache,
            no_shm,
            offset,
            length,
            if_version,
            path,
        } => {
            let version = if_version.unwrap_or_default();
            // NO_CACHE must not fill the memory tier, so it never takes the shared-memory path;
            // a pinned version goes over gRPC, which checks it.
            if !no_cache
                && !no_shm
                && version.is_empty()
                && let Some(mut s) = shm()
            {
                let mut out = std::io::stdout().lock();
                if cat_shm(&mut s, &mut c, &path, offset, length, &mut out)? {
                    out.flush()?;
                    return Ok(());
                }
            }
            let read_type = if no_cache {
                pb::ReadType::NoCache
            } else {
                pb::ReadType::Cache
            };
            let req = pb::ReadRequest {
                path,
                offset,
                length,
                read_type: read_type as i32,
                version,
            };
            let mut out = std::io::stdout().lock();
            read_to(&mut c, req, &mut out).await?;
            out.flush()?;
            Ok(())
        }
        Command::Load {
            parallelism,
            no_progress,
            local,
            strict,
            path,
        } => load::load(&mut c, path, parallelism, no_progress, local, strict).await,
        Command::Free { path } => {
            let r = c
                .free(pb::FreeRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!(
                "freed {} blocks, {} bytes under {path}",
                r.blocks_freed, r.bytes_freed
            );
            Ok(())
        }
        Command::Invalidate { path } => {
            let r = c
                .invalidate(pb::InvalidateRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!(
                "dropped {} metadata entries under {path}",
                r.entries_dropped
            );
            Ok(())
        }
        Command::Mount(m) => mount::mount(&mut c, m).await,
        Command::Bench(BenchCmd::Read(args)) => bench::run_read(&mut c, shm, args).await,
        Command::Bench(BenchCmd::Fuse(args)) => bench::fuse::fuse(&mut c, shm, args).await,
        Command::Bench(BenchCmd::Pipeline(args)) => {
            let socket = cli.socket.clone().unwrap_or_else(default_socket);
            let rt = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                // `--gpu` reads its loaders' lines of the daemon's status.
                let mut status_of = |name: &str| -> anyhow::Result<Option<pb::LoaderStatus>> {
                    let s = rt
                        .block_on(c.status(pb::StatusRequest {}))
                        .map_err(rpc_err)?
                        .into_inner();
                    Ok(s.loaders.into_iter().find(|l| l.name == name))
                };
                bench::pipeline::run(default_shm_socket(&socket), args, &mut status_of)
            })
        }
        Command::Dataset(_) | Command::Bench(BenchCmd::Epochs(_)) => {
            unreachable!("handled before connecting")
        }
    }
}

/// Parses `KEY=VALUE` options.
pub(crate) fn parse_options(opts: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    opts.iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("option {o:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Bytes in binary units.
pub(crate) fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
