//! The SSD tier: one file per block under `<dir>/blocks/<2 hex>/<32 hex>.blk`.
//!
//! Each file starts with a 40-byte header (magic, block id, length, CRC32C of the data). The
//! checksum is verified on every read; a mismatch deletes the file, counts a corrupt block and
//! reports a miss, so the caller refetches instead of returning wrong bytes. Files are written
//! to a temporary name and renamed, and the index is rebuilt from the headers on start, so a
//! restarted daemon keeps its SSD data (oldest modification time first in LRU order); a file
//! found broken then (truncated, junk appended, another block's id) is deleted and counted in
//! `corrupt_blocks` and `loaderd_ssd_dropped_at_start_total{reason}`.
//!
//! The capacity in force is the configured one, lowered to what the file system still has room
//! for (statvfs, checked on every write and status): a shared or small disk makes the tier
//! evict instead of failing writes. Write failures that still happen are logged once per
//! [`WARN_EVERY`] with the number not logged, never once per block.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::{FsSpace, Tier, TierStatus};
use crate::block::BlockId;
use crate::config::SsdTierConfig;
use crate::error::{Error, Result};
use crate::evict::{EvictionPolicy, Occupancy, Refused};
use crate::stats;
use crate::sync::lock;

const MAGIC: &[u8; 8] = b"LDBLK\0\0\x01";
const HEADER: usize = 40;
/// At most one warning about failed SSD writes per this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Blocks as checksummed files.
pub struct SsdTier {
    root: PathBuf,
    occ: Mutex<Occupancy>,
    tmp_seq: AtomicU64,
    configured: u64,
    /// When the last write-failure warning was logged, and failures since then not logged.
    warned: Mutex<(Option<Instant>, u64)>,
}

/// Why a block file found at start is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// A temporary file of a write cut short by a crash: not a block yet, not counted.
    Partial,
    Unreadable,
    BadName,
    BadHeader,
    Truncated,
    JunkAppended,
    WrongId,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Dropped::Partial => "partial_write",
            Dropped::Unreadable => "unreadable",
            Dropped::BadName => "bad_name",
            Dropped::BadHeader => "bad_header",
            Dropped::Truncated => "truncated",
            Dropped::JunkAppended => "junk_appended",
            Dropped::WrongId => "wrong_id",
        }
    }
}

impl SsdTier {
    /// Opens (creating) the tier, evicting by `policy`, and rebuilds its index from the
    /// files present.
    pub fn open(cfg: &SsdTierConfig, policy: Box<dyn EvictionPolicy>) -> Result<Self> {
        let root = cfg.dir.join("blocks");
        fs::create_dir_all(&root).map_err(|e| Error::io("creating SSD tier", &root, e))?;
        let mut found = Vec::new();
        let mut dropped = 0u64;
        for sub in read_dir(&root)? {
            if !sub.is_dir() {
                continue;
            }
            for file in read_dir(&sub)? {
                match scan(&file) {
                    Ok((id, len, mtime)) => found.push((mtime, id, len)),
                    Err(why) => {
                        if why != Dropped::Partial {
                            dropped += 1;
                            warn!(path = %file.display(), why = why.reason(), "SSD block file dropped at start");
                            stats::ssd_dropped_at_start(why.reason());
                        }
                        let _ = fs::remove_file(&file);
                    }
                }
            }
        }
        found.sort();
        let mut occ = Occupancy::new("ssd", cfg.capacity.0, cfg.watermarks, policy);
        let mut unwanted = Vec::new();
        for (_, id, len) in found {
            match occ.admit(id, len + HEADER as u64) {
                Ok(victims) => unwanted.extend(victims),
                Err(_) => unwanted.push(id),
            }
        }
        info!(dir = %cfg.dir.display(), blocks = occ.blocks(), bytes = occ.used(), dropped, "SSD tier index rebuilt");
        let tier = SsdTier {
            root,
            occ: Mutex::new(occ),
            tmp_seq: AtomicU64::new(0),
            configured: cfg.capacity.0,
            warned: Mutex::new((None, 0)),
        };
        unwanted.into_iter().for_each(|id| tier.delete(id));
        Ok(tier)
    }

    fn path_of(&self, id: BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.blk"))
    }

    fn delete(&self, id: BlockId) {
        let p = self.path_of(id);
        if let Err(e) = fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %p.display(), error = %e, "could not delete SSD block");
        }
    }

    /// Lowers the capacity in force to what the file system has room for (never above the
    /// configured one); the file system's space, if statvfs answers.
    fn fit_capacity(&self, occ: &mut Occupancy) -> Option<FsSpace> {
        let st = nix::sys::statvfs::statvfs(&self.root).ok()?;
        let unit = st.fragment_size() as u64;
        let space = FsSpace {
            free: (st.blocks_available() as u64).saturating_mul(unit),
            total: (st.blocks() as u64).saturating_mul(unit),
            configured_capacity: self.configured,
        };
        occ.set_capacity(self.configured.min(occ.used().saturating_add(space.free)));
        Some(space)
    }

    /// Logs a failed write now, or counts it for the next warning (one per [`WARN_EVERY`]).
    fn write_failed(&self, id: BlockId, e: &std::io::Error) {
        let mut w = lock(&self.warned);
        if w.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            w.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut w.1);
        w.0 = Some(Instant::now());
        drop(w);
        warn!(block = %id, error = %e, suppressed, every_secs = WARN_EVERY.as_secs(),
            "SSD tier write failed; serving uncached (one warning per interval; `suppressed` counts the failures not logged since the last one)");
    }

    fn drop_corrupt(&self, id: BlockId, why: &str) {
        warn!(block = %id, why, "corrupt SSD block dropped; it will be refetched");
        stats::corrupt_block();
        lock(&self.occ).remove(id);
        self.delete(id);
    }

    fn write_file(&self, id: BlockId, data: &[u8]) -> std::io::Result<()> {
        let path = self.path_of(id);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&id.0.to_le_bytes());
        header[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[32..36].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(data)?;
            fs::rename(&tmp, &path)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

impl Tier for SsdTier {
    fn name(&self) -> &'static str {
        "ssd"
    }

    fn get(&self, id: BlockId) -> Option<Bytes> {
        if !lock(&self.occ).contains(id) {
            return None;
        }
        let path = self.path_of(id);
        let mut buf = Vec::new();
        if let Err(e) = fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
            self.drop_corrupt(id, &format!("unreadable: {e}"));
            return None;
        }
        if buf.len() < HEADER || &buf[..8] != MAGIC {
            self.drop_corrupt(id, "bad header");
            return None;
        }
        let hid = u128::from_le_bytes(buf[8..24].try_into().ok()?);
        let len = u64::from_le_bytes(buf[24..32].try_into().ok()?);
        let crc = u32::from_le_bytes(buf[32..36].try_into().ok()?);
        if hid != id.0 || len != (buf.len() - HEADER) as u64 {
            self.drop_corrupt(id, "header does not match");
            return None;
        }
        if crc32c::crc32c(&buf[HEADER..]) != crc {
            self.drop_corrupt(id, "checksum mismatch");
            return None;
        }
        lock(&self.occ).touch(id);
        Some(Bytes::from(buf).slice(HEADER..))
    }

    fn put(&self, id: BlockId, data: &Bytes) -> bool {
        let (admitted, shrunk) = {
            let mut occ = lock(&self.occ);
            self.fit_capacity(&mut occ);
            let shrunk = occ.shrink();
            let res = occ.admit(id, data.len() as u64 + HEADER as u64);
            match res {
                Err(Refused::NotAdmitted) => stats::passthrough("ssd_not_admitted"),
                Err(_) if occ.capacity() < self.configured => stats::passthrough("ssd_fs_full"),
                _ => {}
            }
            (res, shrunk)
        };
        shrunk.into_iter().for_each(|v| self.delete(v));
        let Ok(victims) = admitted else {
            return false;
        };
        for v in victims {
            self.delete(v);
        }
        if self.path_of(id).exists() {
            return true;
        }
        match self.write_file(id, data) {
            Ok(()) => true,
            Err(e) => {
                self.write_failed(id, &e);
                stats::passthrough("ssd_write_failed");
                lock(&self.occ).remove(id);
                false
            }
        }
    }

    fn remove(&self, id: BlockId) -> bool {
        let present = lock(&self.occ).remove(id).is_some();
        if present {
            self.delete(id);
        }
        present
    }

    fn contains(&self, id: BlockId) -> bool {
        lock(&self.occ).contains(id)
    }

    fn would_admit(&self, id: BlockId, len: u64) -> bool {
        lock(&self.occ).would_admit(id, len + HEADER as u64)
    }

    fn status(&self) -> TierStatus {
        let mut occ = lock(&self.occ);
        let fs = self.fit_capacity(&mut occ);
        TierStatus {
            name: "ssd",
            capacity: occ.capacity(),
            used: occ.used(),
            blocks: occ.blocks(),
            evictions: occ.evictions(),
            evictions_by_reason: occ.evictions_by_reason(),
            watermarks: occ.watermarks(),
            location: self
                .root
                .parent()
                .unwrap_or(&self.root)
                .display()
                .to_string(),
            fs,
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io("reading SSD tier", dir, e))?;
    Ok(rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

/// Reads a block file's header: (id, data length, mtime) if the file looks whole, else why
/// it is dropped.
fn scan(path: &Path) -> Result<(BlockId, u64, std::time::SystemTime), Dropped> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(Dropped::BadName)?;
    if name.starts_with(".tmp-") {
        return Err(Dropped::Partial);
    }
    let id = name
        .strip_suffix(".blk")
        .and_then(BlockId::from_hex)
        .ok_or(Dropped::BadName)?;
    let mut f = fs::File::open(path).map_err(|_| Dropped::Unreadable)?;
    let meta = f.metadata().map_err(|_| Dropped::Unreadable)?;
    let mut h = [0u8; HEADER];
    if meta.len() < HEADER as u64 {
        return Err(Dropped::Truncated);
    }
    f.read_exact(&mut h).map_err(|_| Dropped::Unreadable)?;
    let mut le = [0u8; 16];
    le.copy_from_slice(&h[8..24]);
    let hid = u128::from_le_bytes(le);
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[24..32]);
    let len = u64::from_le_bytes(len);
    if &h[..8] != MAGIC {
        return Err(Dropped::BadHeader);
    }
    if hid != id.0 {
        return Err(Dropped::WrongId);
    }
    match meta.len().cmp(&len.saturating_add(HEADER as u64)) {
        std::cmp::Ordering::Less => Err(Dropped::Truncated),
        std::cmp::Ordering::Greater => Err(Dropped::JunkAppended),
        std::cmp::Ordering::Equal => {
            Ok((id, len, meta.modified().unwrap_or(std::time::UNIX_EPOCH)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, Watermarks};
    use crate::evict::{Lru, Stable};

    fn open(cfg: &SsdTierConfig) -> SsdTier {
        SsdTier::open(cfg, Box::new(Lru::default())).unwrap()
    }

    fn cfg(dir: &Path, cap: u64) -> SsdTierConfig {
        SsdTierConfig {
            dir: dir.to_path_buf(),
            capacity: ByteSize(cap),
            watermarks: Watermarks {
                high: 0.9,
                low: 0.7,
            },
        }
    }

    #[test]
    fn conformance() {
        let d = tempfile::tempdir().unwrap();
        super::super::conformance::run(&open(&cfg(d.path(), 1 << 20)));
    }

    #[test]
    fn reopen_keeps_blocks_and_drops_torn_files() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 5000])).collect();
        {
            let t = open(&cfg(d.path(), 1 << 20));
            for (i, b) in data.iter().enumerate() {
                assert!(t.put(BlockId(i as u128), b));
            }
        }
        // Truncate one file: a torn write must not survive the restart.
        let torn = open(&cfg(d.path(), 1 << 20)).path_of(BlockId(3));
        let f = fs::OpenOptions::new().write(true).open(&torn).unwrap();
        f.set_len(100).unwrap();
        let t = open(&cfg(d.path(), 1 << 20));
        assert_eq!(t.status().blocks, 9);
        for (i, b) in data.iter().enumerate() {
            let got = t.get(BlockId(i as u128));
            if i == 3 {
                assert!(got.is_none());
            } else {
                assert_eq!(got.as_ref(), Some(b));
            }
        }
    }

    #[test]
    fn broken_files_at_open_are_dropped_by_reason() {
        let d = tempfile::tempdir().unwrap();
        let t = open(&cfg(d.path(), 1 << 20));
        for i in 0..4u128 {
            assert!(t.put(BlockId(i), &Bytes::from(vec![7u8; 3000])));
        }
        let path = |i| t.path_of(BlockId(i));
        let mut raw = fs::read(path(0)).unwrap();
        raw.truncate(HEADER - 1);
        fs::write(path(0), &raw).unwrap();
        let mut raw = fs::read(path(1)).unwrap();
        raw.extend_from_slice(b"junk");
        fs::write(path(1), &raw).unwrap();
        let moved = t.path_of(BlockId(99));
        fs::create_dir_all(moved.parent().unwrap()).unwrap();
        fs::rename(path(2), &moved).unwrap();
        let partial = path(3).with_file_name(".tmp-1-1");
        fs::write(&partial, b"a write cut short").unwrap();

        assert_eq!(scan(&path(0)), Err(Dropped::Truncated));
        assert_eq!(scan(&path(1)), Err(Dropped::JunkAppended));
        assert_eq!(scan(&moved), Err(Dropped::WrongId));
        assert_eq!(scan(&partial), Err(Dropped::Partial));
        assert!(scan(&path(3)).is_ok());
        let before = stats::snapshot().corrupt_blocks;
        let reopened = open(&cfg(d.path(), 1 << 20));
        assert_eq!(reopened.status().blocks, 1);
        // The three broken files count; the partial write does not (other tests may add).
        assert!(stats::snapshot().corrupt_blocks >= before + 3);
        for p in [path(0), path(1), moved, partial] {
            assert!(!p.exists(), "{} kept", p.display());
        }
    }

    /// Unmounts a test's tmpfs on drop.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        /// A tmpfs of `size` at `dir`, or `None` where mounting needs privileges we lack.
        fn mount(dir: &Path, size: &str) -> Option<Self> {
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .output();
            match out {
                Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
                other => {
                    eprintln!("skipping: cannot mount a tmpfs (needs root): {other:?}");
                    None
                }
            }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_disk_filled_by_others_makes_a_stable_tier_give_room_back() {
        let d = tempfile::tempdir().unwrap();
        let Some(_fs) = Tmpfs::mount(d.path(), "1m") else {
            return;
        };
        let t = SsdTier::open(&cfg(d.path(), 64 << 20), Box::new(Stable::default())).unwrap();
        let block = Bytes::from(vec![3u8; 60 << 10]);
        for i in 0..6 {
            assert!(t.put(BlockId(i), &block));
        }
        assert_eq!((t.status().blocks, t.status().evictions), (6, 0));
        // Another writer takes the rest of the disk.
        let mut filler = fs::File::create(d.path().join("filler")).unwrap();
        while filler.write_all(&[0u8; 16 << 10]).is_ok() {}
        drop(filler);
        // A stable tier admits almost nothing once full, but the room the file system lost
        // is given back on the next write all the same.
        t.put(BlockId(100), &block);
        let st = t.status();
        assert!(st.evictions > 0, "{st:?}");
        assert!(
            st.used as f64 <= st.capacity as f64 * st.watermarks.high,
            "{st:?}"
        );
    }

    #[test]
    fn corrupt_block_is_a_miss_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let t = open(&cfg(d.path(), 1 << 20));
        assert!(t.put(BlockId(9), &Bytes::from(vec![1u8; 4096])));
        let p = t.path_of(BlockId(9));
        let mut raw = fs::read(&p).unwrap();
        raw[HEADER + 100] ^= 0xff;
        fs::write(&p, raw).unwrap();
        let before = stats::snapshot().corrupt_blocks;
        assert!(t.get(BlockId(9)).is_none());
        assert!(!p.exists());
        assert!(!t.contains(BlockId(9)));
        assert!(stats::snapshot().corrupt_blocks > before);
    }
}
