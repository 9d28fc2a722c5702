//! The state log: an append-only log of records in a memfd, which the supervisor holds and
//! every server maps, so that what a server appended survives its crash.
//!
//! Layout (little-endian): a 4 KiB header, then two regions of `region_len` bytes. One
//! region is active; the other receives a compacted snapshot, and one atomic store of the
//! header's `active` word switches to it, so a crash during compaction leaves the old log.
//!
//! ```text
//! header: magic u64 | layout u32 | active u32 | region_len u64 | high_water[2] u64
//! record: len u32 (payload length + 1; 0 ends the log) | crc32c(payload) u32 | payload | pad to 8
//! ```
//!
//! An append writes the payload and its checksum first and the length word last (a release
//! store), so a server killed mid-append leaves a zero length: the log ends before the torn
//! record. Replay stops at the first zero length, length out of bounds or bad checksum
//! (reported as torn), and the next writer zeroes everything past that point before it appends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use nix::sys::memfd::{MFdFlags, memfd_create};

use super::map::SharedMap;

const MAGIC: u64 = u64::from_le_bytes(*b"LDFSTATE");
const LAYOUT: u32 = 1;
const HEADER: usize = 4096;
const OFF_LAYOUT: usize = 8;
const OFF_ACTIVE: usize = 12;
const OFF_REGION_LEN: usize = 16;
const OFF_HIGH_WATER: usize = 24;
/// Length word + checksum word.
const RECORD_HEAD: usize = 8;
/// Smallest region: a few records.
pub const MIN_REGION_LEN: usize = 4096;

/// What can go wrong with the state log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("creating or sizing the state memfd: {0}")]
    Create(#[source] std::io::Error),
    #[error("mapping the state memfd: {0}")]
    Map(#[source] std::io::Error),
    #[error("the state memfd is not a state log: {0}")]
    Layout(String),
    #[error("the state log is full ({region_len} bytes per region) even after compaction")]
    Full { region_len: usize },
    #[error("a record of {0} bytes is larger than a region")]
    TooLarge(usize),
}

/// What [`StateLog::open`] found in the active region.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The valid records, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Whether replay stopped at a torn or corrupt record (rather than at the end).
    pub torn: bool,
}

/// An open state log; appends are serialised, so `&StateLog` can be shared by threads.
#[derive(Debug)]
pub struct StateLog {
    map: SharedMap,
    fd: OwnedFd,
    region_len: usize,
    /// Byte offset of the next record inside the active region.
    tail: Mutex<usize>,
}

fn padded(len: usize) -> usize {
    (RECORD_HEAD + len).next_multiple_of(8)
}

fn layout(msg: impl Into<String>) -> LogError {
    LogError::Layout(msg.into())
}

impl StateLog {
    /// A new state memfd with two regions of `region_len` bytes (rounded up to 4 KiB); only
    /// touched pages take memory. The supervisor calls this and keeps the descriptor.
    pub fn create(region_len: usize) -> Result<OwnedFd, LogError> {
        let region_len = region_len.max(MIN_REGION_LEN).next_multiple_of(4096);
        let total = region_len
            .checked_mul(2)
            .and_then(|r| r.checked_add(HEADER))
            .ok_or_else(|| layout("region length overflows"))?;
        let fd = memfd_create("loaderd-fuse-state", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| LogError::Create(e.into()))?;
        nix::unistd::ftruncate(&fd, total as i64).map_err(|e| LogError::Create(e.into()))?;
        let map = SharedMap::new(&fd, HEADER).map_err(LogError::Map)?;
        let mut head = [0u8; 24];
        head[..8].copy_from_slice(&MAGIC.to_le_bytes());
        head[8..12].copy_from_slice(&LAYOUT.to_le_bytes());
        head[16..24].copy_from_slice(&(region_len as u64).to_le_bytes());
        map.write(0, &head)
            .ok_or_else(|| layout("header out of bounds"))?;
        Ok(fd)
    }

    /// Maps the log in `fd`, replays its active region and makes it ready for appends.
    pub fn open(fd: OwnedFd) -> Result<(StateLog, Replay), LogError> {
        let size = nix::sys::stat::fstat(&fd)
            .map_err(|e| LogError::Map(e.into()))?
            .st_size;
        let size = usize::try_from(size).map_err(|_| layout("negative size"))?;
        if size < HEADER + 2 * MIN_REGION_LEN {
            return Err(layout(format!("{size} bytes is too small")));
        }
        let map = SharedMap::new(&fd, size).map_err(LogError::Map)?;
        let mut head = [0u8; 24];
        map.read(0, &mut head)
            .ok_or_else(|| layout("header out of bounds"))?;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        if word(0) != MAGIC {
            return Err(layout("bad magic"));
        }
        let version = u32::from_le_bytes(
            head[OFF_LAYOUT..OFF_LAYOUT + 4]
                .try_into()
                .unwrap_or_default(),
        );
        if version != LAYOUT {
            return Err(layout(format!(
                "layout {version}, this build reads {LAYOUT}"
            )));
        }
        let region_len = usize::try_from(word(OFF_REGION_LEN)).unwrap_or(usize::MAX);
        if region_len < MIN_REGION_LEN
            || region_len
                .checked_mul(2)
                .and_then(|r| r.checked_add(HEADER))
                != Some(size)
        {
            return Err(layout(format!(
                "region length {region_len} does not fit a {size}-byte file"
            )));
        }
        let log = StateLog {
            map,
            fd,
            region_len,
            tail: Mutex::new(0),
        };
        let active = log.active()?;
        let (replay, end) = log.replay_region(active);
        log.clear_from(active, end)?;
        *log.tail.lock().unwrap_or_else(|p| p.into_inner()) = end;
        Ok((log, replay))
    }

    /// The memfd (to pass on to a successor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes per region.
    pub fn region_len(&self) -> usize {
        self.region_len
    }

    fn active(&self) -> Result<usize, LogError> {
        let word = self
            .map
            .atomic_u32(OFF_ACTIVE)
            .ok_or_else(|| layout("header out of bounds"))?;
        match word.load(Ordering::Acquire) {
            a @ (0 | 1) => Ok(a as usize),
            other => Err(layout(format!("active region {other}"))),
        }
    }

    fn region_start(&self, region: usize) -> usize {
        HEADER + region * self.region_len
    }

    fn high_water(&self, region: usize) -> Result<&std::sync::atomic::AtomicU64, LogError> {
        self.map
            .atomic_u64(OFF_HIGH_WATER + 8 * region)
            .ok_or_else(|| layout("header out of bounds"))
    }

    /// The valid records of `region` and the offset where they end.
    fn replay_region(&self, region: usize) -> (Replay, usize) {
        let base = self.region_start(region);
        let mut replay = Replay::default();
        let mut at = 0;
        while at + RECORD_HEAD <= self.region_len {
            let Some(len_word) = self.map.atomic_u32(base + at) else {
                replay.torn = true;
                break;
            };
            let len = len_word.load(Ordering::Acquire) as usize;
            if len == 0 {
                break;
            }
            let payload_len = len - 1;
            if at + padded(payload_len) > self.region_len {
                replay.torn = true;
                break;
            }
            let mut crc = [0u8; 4];
            let mut payload = vec![0u8; payload_len];
            if self.map.read(base + at + 4, &mut crc).is_none()
                || self
                    .map
                    .read(base + at + RECORD_HEAD, &mut payload)
                    .is_none()
                || crc32c::crc32c(&payload) != u32::from_le_bytes(crc)
            {
                replay.torn = true;
                break;
            }
            replay.records.push(payload);
            at += padded(payload_len);
        }
        (replay, at)
    }

    /// Zeroes `region` from `from` up to everything ever written there.
    fn clear_from(&self, region: usize, from: usize) -> Result<(), LogError> {
        let high = self.high_water(region)?;
        let written = (high.load(Ordering::Acquire) as usize).min(self.region_len);
        if written > from {
            self.map
                .zero(self.region_start(region) + from, written - from)
                .ok_or_else(|| layout("region out of bounds"))?;
        }
        high.store(from as u64, Ordering::Release);
        Ok(())
    }

    /// Writes one record at `at` of `region` (length word last); the new end.
    fn put(&self, region: usize, at: usize, payload: &[u8]) -> Result<usize, LogError> {
        let end = at + padded(payload.len());
        if end > self.region_len {
            return Err(LogError::Full {
                region_len: self.region_len,
            });
        }
        let base = self.region_start(region) + at;
        let out = || layout("record out of bounds");
        let high = self.high_water(region)?;
        high.fetch_max(end as u64, Ordering::AcqRel);
        self.map
            .write(base + RECORD_HEAD, payload)
            .ok_or_else(out)?;
        self.map
            .write(base + 4, &crc32c::crc32c(payload).to_le_bytes())
            .ok_or_else(out)?;
        let len =
            u32::try_from(payload.len() + 1).map_err(|_| LogError::TooLarge(payload.len()))?;
        self.map
            .atomic_u32(base)
            .ok_or_else(out)?
            .store(len, Ordering::Release);
        Ok(end)
    }

    /// Appends one record. `Err(Full)` when the active region has no room: compact.
    pub fn append(&self, payload: &[u8]) -> Result<(), LogError> {
        if padded(payload.len()) > self.region_len {
            return Err(LogError::TooLarge(payload.len()));
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.active()?;
        *tail = self.put(active, *tail, payload)?;
        Ok(())
    }

    /// Replaces the log with `records` (a snapshot of the state): they are written to the
    /// other region, which then becomes active in one atomic store.
    pub fn compact<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Result<(), LogError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let next = 1 - self.active()?;
        self.clear_from(next, 0)?;
        let mut at = 0;
        for record in records {
            at = self.put(next, at, record)?;
        }
        self.map
            .atomic_u32(OFF_ACTIVE)
            .ok_or_else(|| layout("header out of bounds"))?
            .store(next as u32, Ordering::Release);
        *tail = at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(log: StateLog) -> (StateLog, Replay) {
        let fd = log.fd.try_clone().expect("dup");
        drop(log);
        StateLog::open(fd).expect("reopen")
    }

    fn pwrite(log: &StateLog, off: usize, data: &[u8]) {
        let file = std::fs::File::from(log.fd.try_clone().expect("dup"));
        std::os::unix::fs::FileExt::write_all_at(&file, data, off as u64).expect("pwrite");
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("record {i} {}", "x".repeat(i % 13)).into_bytes())
            .collect()
    }

    #[test]
    fn appended_records_replay_in_order_across_processes_views() {
        let (log, replay) =
            StateLog::open(StateLog::create(1 << 16).expect("create")).expect("open");
        assert_eq!(replay, Replay::default());
        let want = records(100);
        for r in &want {
            log.append(r).expect("append");
        }
        log.append(b"").expect("an empty record is a record");
        let (log, replay) = reopen(log);
        assert!(!replay.torn);
        assert_eq!(replay.records.len(), 101);
        assert_eq!(&replay.records[..100], &want[..]);
        assert!(replay.records[100].is_empty());
        // Appends continue after the replayed records.
        log.append(b"after").expect("append");
        let (_log, replay) = reopen(log);
        assert_eq!(
            replay.records.last().map(Vec::as_slice),
            Some(&b"after"[..])
        );
        assert_eq!(replay.records.len(), 102);
    }

    #[test]
    fn a_torn_record_ends_the_log_and_is_overwritten_by_the_next_append() {
        let (log, _) = StateLog::open(StateLog::create(1 << 16).expect("create")).expect("open");
        for r in records(3) {
            log.append(&r).expect("append");
        }
        let end = *log.tail.lock().expect("tail");
        // A crash mid-append: payload and checksum written, length word not yet.
        pwrite(
            &log,
            HEADER + end + 4,
            &[0xde, 0xad, 0xbe, 0xef, b'g', b'a', b'r', b'b'],
        );
        let (log, replay) = reopen(log);
        assert_eq!(
            replay.records,
            records(3),
            "the torn record is not replayed"
        );
        assert!(!replay.torn, "a zero length word is a clean end");
        // A corrupt record (bad checksum) stops replay and is reported.
        log.append(b"fourth").expect("append");
        let fourth = end;
        pwrite(&log, HEADER + fourth + RECORD_HEAD, b"FOURTH");
        let (log, replay) = reopen(log);
        assert!(replay.torn);
        assert_eq!(replay.records, records(3));
        // The next append replaces the corrupt record, and nothing of it is left behind.
        log.append(b"5").expect("append");
        let (_log, replay) = reopen(log);
        assert!(!replay.torn);
        assert_eq!(replay.records.len(), 4);
        assert_eq!(replay.records[3], b"5");
    }

    #[test]
    fn lengths_out_of_bounds_are_torn_not_read() {
        let (log, _) =
            StateLog::open(StateLog::create(MIN_REGION_LEN).expect("create")).expect("open");
        log.append(b"ok").expect("append");
        let at = *log.tail.lock().expect("tail");
        pwrite(&log, HEADER + at, &u32::MAX.to_le_bytes());
        let (log, replay) = reopen(log);
        assert!(replay.torn);
        assert_eq!(replay.records, vec![b"ok".to_vec()]);
        // A record larger than a region is refused, and a full region says so.
        assert!(matches!(
            log.append(&vec![0; MIN_REGION_LEN]),
            Err(LogError::TooLarge(_))
        ));
        let chunk = vec![7u8; 1000];
        let full = (0..10).map(|_| log.append(&chunk)).find_map(Result::err);
        assert!(matches!(full, Some(LogError::Full { .. })), "{full:?}");
    }

    #[test]
    fn compaction_switches_regions_atomically() {
        let (log, _) =
            StateLog::open(StateLog::create(MIN_REGION_LEN).expect("create")).expect("open");
        for r in records(20) {
            log.append(&r).expect("append");
        }
        let snapshot = [b"snap-1".as_slice(), b"snap-2".as_slice()];
        log.compact(snapshot).expect("compact");
        log.append(b"after").expect("append");
        let (log, replay) = reopen(log);
        assert_eq!(
            replay.records,
            vec![b"snap-1".to_vec(), b"snap-2".to_vec(), b"after".to_vec()]
        );
        // Compacting back into the first region clears what was there before.
        log.compact([b"only".as_slice()]).expect("compact");
        let (log, replay) = reopen(log);
        assert_eq!(replay.records, vec![b"only".to_vec()]);
        // A crash during compaction (records half written into the other region, the
        // active word not switched) leaves the old log.
        let other = 1 - log.active().expect("active");
        pwrite(&log, HEADER + other * log.region_len + RECORD_HEAD, b"half");
        let (_log, replay) = reopen(log);
        assert_eq!(replay.records, vec![b"only".to_vec()]);
    }

    #[test]
    fn foreign_files_are_refused() {
        let fd = memfd_create("x", MFdFlags::MFD_CLOEXEC).expect("memfd");
        nix::unistd::ftruncate(&fd, (HEADER + 2 * MIN_REGION_LEN) as i64).expect("size");
        assert!(matches!(StateLog::open(fd), Err(LogError::Layout(_))));
        let fd = StateLog::create(MIN_REGION_LEN).expect("create");
        nix::unistd::ftruncate(&fd, HEADER as i64).expect("shrink");
        assert!(StateLog::open(fd).is_err());
        let fd = StateLog::create(MIN_REGION_LEN).expect("create");
        let file = std::fs::File::from(fd.try_clone().expect("dup"));
        std::os::unix::fs::FileExt::write_all_at(&file, &9u32.to_le_bytes(), OFF_ACTIVE as u64)
            .expect("pwrite");
        assert!(matches!(StateLog::open(fd), Err(LogError::Layout(_))));
    }
}
