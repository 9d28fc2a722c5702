//! The shared-memory socket as the tests drive it: `loaderctl bench pipeline` runs of a small
//! epoch, and zero-copy reads split into mapped and fallback bytes.

/// `loaderctl bench pipeline` over `/ds` in batches of 4 images of 32x32, then `extra`: an
/// epoch that is quick to decode.
pub fn small_epoch<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "bench",
        "pipeline",
        "--dataset",
        "/ds",
        "--batch-size",
        "4",
        "--size",
        "32",
    ];
    a.extend_from_slice(extra);
    a
}

/// A shared-memory read of all of `path` through `c`: the bytes of its mapped pieces, and how
/// many bytes the daemon answered as fallback extents (to be read over gRPC) instead.
pub fn shm_read_mapped(c: &mut loaderctl::client::shm::ShmClient, path: &str) -> (Vec<u8>, u64) {
    use loaderctl::client::shm::Piece;
    let (mut mapped, mut fallback) = (Vec::new(), 0);
    c.read(path, 0, 0, |_, piece| {
        match piece {
            Piece::Mapped(b) => mapped.extend_from_slice(b),
            Piece::Fallback { len, .. } => fallback += len,
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("shared-memory read of {path}: {e}"));
    (mapped, fallback)
}
