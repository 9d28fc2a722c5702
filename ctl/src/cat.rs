//! `loaderctl cat`: a file's bytes over shared memory where the daemon offers it, else gRPC,
//! always of one version.

use std::io::Write;

use futures::StreamExt;
use loaderd_proto::v1 as pb;
use tonic::Code;

use crate::client::{Client, Piece, ShmClient, ShmError};
use crate::rpc_err;

/// Streams a Read into `out`; retries from the start if the object changed before any byte
/// was written and the read is not pinned to a version (never mixes two versions). Returns
/// the bytes written.
pub(crate) async fn read_to(
    c: &mut Client,
    req: pb::ReadRequest,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut written = 0u64;
        let res: Result<(), tonic::Status> = async {
            let mut stream = c.read(req.clone()).await?.into_inner();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                out.write_all(&chunk.data)
                    .map_err(|e| tonic::Status::internal(format!("writing output: {e}")))?;
                written += chunk.data.len() as u64;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => return Ok(written),
            Err(s)
                if s.code() == Code::Aborted
                    && written == 0
                    && req.version.is_empty()
                    && attempts < 3 =>
            {
                continue;
            }
            Err(s) => return Err(rpc_err(s)),
        }
    }
}

/// Writes a file's bytes from the mapped memory tier, reading fallback pieces over gRPC.
/// `false` (nothing written) when the daemon refused to lease the read (a lease cap): the
/// caller then reads it over gRPC.
pub(crate) fn cat_shm(
    s: &mut ShmClient,
    c: &mut Client,
    path: &str,
    offset: u64,
    length: u64,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Handle::current();
    let res = tokio::task::block_in_place(|| {
        s.read(path, offset, length, |_, piece| match piece {
            Piece::Mapped(bytes) => out.write_all(bytes),
            Piece::Fallback {
                offset,
                len,
                version,
            } => {
                // Pinned to the version of the mapped pieces: a changed object fails the
                // read instead of splicing the new version into the old.
                let req = crate::client::pinned_read(path, offset, len, version);
                rt.block_on(read_to(c, req, out))
                    .map(drop)
                    .map_err(std::io::Error::other)
            }
        })
    });
    match res {
        Ok(_) => Ok(true),
        // Refused before any piece was handed out: nothing is written yet.
        Err(ShmError::Status {
            code: Code::ResourceExhausted,
            message,
        }) => {
            eprintln!("loaderctl: shared-memory read refused ({message}); reading over gRPC");
            Ok(false)
        }
        Err(ShmError::Io(io)) => Err(anyhow::Error::new(io)),
        Err(other) => Err(anyhow::anyhow!("{other}")),
    }
}
