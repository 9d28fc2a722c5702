//! `loaderctl ls`: prints a listing page by page as the daemon streams it.

use std::io::{BufWriter, Write};

use loaderd_proto::v1 as pb;

use crate::client::Client;
use crate::rpc_err;

/// Lists `path` (every file below it with `recursive`), with sizes when `long`. Each page is
/// written out as it arrives, so the first lines of a million-file listing show at once.
pub(super) async fn ls(
    c: &mut Client,
    path: String,
    recursive: bool,
    long: bool,
) -> anyhow::Result<()> {
    let mut pages = c
        .list(pb::ListRequest {
            path,
            recursive,
            page_size: 0,
            with_mode: false,
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    let mut out = BufWriter::new(std::io::stdout().lock());
    while let Some(page) = pages.message().await.map_err(rpc_err)? {
        for e in page.entries {
            let suffix = if e.is_dir { "/" } else { "" };
            if long {
                writeln!(out, "{:>12} {}{suffix}", e.size, e.path)?;
            } else {
                writeln!(out, "{}{suffix}", e.path)?;
            }
        }
        out.flush()?;
    }
    Ok(())
}
