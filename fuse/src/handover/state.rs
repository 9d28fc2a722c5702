//! The file system's state that must survive its server: the inode table (ino → path and
//! the kernel's lookup count) and the open handles (fh → inode and the object version it
//! opened). Every change is one record in the [`StateLog`] before the reply that makes the
//! kernel rely on it, so a successor (after a handover or a crash) replays the same table.
//!
//! A request the crashed server had logged but not answered is resent by the kernel and
//! logged again: a lookup then counts twice, which only keeps an inode a little longer
//! (forgotten at unmount), never drops one the kernel still uses.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Mutex;

use super::log::{LogError, Replay, StateLog};

/// The root's inode number (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

const TAG_LOOKUP: u8 = 1;
const TAG_FORGET: u8 = 2;
const TAG_OPEN: u8 = 3;
const TAG_RELEASE: u8 = 4;
const TAG_INODE: u8 = 5;
const TAG_COUNTERS: u8 = 6;

/// One change of the state, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    /// The kernel learnt (or learnt again) `ino` for `path`: its lookup count grows by one.
    Lookup { ino: u64, path: OsString },
    /// The kernel forgot `n` lookups of `ino`.
    Forget { ino: u64, n: u64 },
    /// Handle `fh` opened `ino` at `version` (the front's object version, opaque here).
    Open { fh: u64, ino: u64, version: Vec<u8> },
    /// Handle `fh` was released.
    Release { fh: u64 },
    /// Snapshot: `ino` is `path` with `lookups` lookups.
    Inode {
        ino: u64,
        lookups: u64,
        path: OsString,
    },
    /// Snapshot: the next inode and handle numbers (never reused).
    Counters { next_ino: u64, next_fh: u64 },
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Record::Lookup { ino, path } => {
                out.push(TAG_LOOKUP);
                put_u64(&mut out, *ino);
                out.extend_from_slice(path.as_bytes());
            }
            Record::Forget { ino, n } => {
                out.push(TAG_FORGET);
                put_u64(&mut out, *ino);
                put_u64(&mut out, *n);
            }
            Record::Open { fh, ino, version } => {
                out.push(TAG_OPEN);
                put_u64(&mut out, *fh);
                put_u64(&mut out, *ino);
                out.extend_from_slice(version);
            }
            Record::Release { fh } => {
                out.push(TAG_RELEASE);
                put_u64(&mut out, *fh);
            }
            Record::Inode { ino, lookups, path } => {
                out.push(TAG_INODE);
                put_u64(&mut out, *ino);
                put_u64(&mut out, *lookups);
                out.extend_from_slice(path.as_bytes());
            }
            Record::Counters { next_ino, next_fh } => {
                out.push(TAG_COUNTERS);
                put_u64(&mut out, *next_ino);
                put_u64(&mut out, *next_fh);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let (&tag, rest) = bytes.split_first()?;
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                rest.get(8 * i..8 * i + 8)?.try_into().ok()?,
            ))
        };
        Some(match tag {
            TAG_LOOKUP => Record::Lookup {
                ino: word(0)?,
                path: OsString::from_vec(rest.get(8..)?.to_vec()),
            },
            TAG_FORGET if rest.len() == 16 => Record::Forget {
                ino: word(0)?,
                n: word(1)?,
            },
            TAG_OPEN => Record::Open {
                fh: word(0)?,
                ino: word(1)?,
                version: rest.get(16..)?.to_vec(),
            },
            TAG_RELEASE if rest.len() == 8 => Record::Release { fh: word(0)? },
            TAG_INODE => Record::Inode {
                ino: word(0)?,
                lookups: word(1)?,
                path: OsString::from_vec(rest.get(16..)?.to_vec()),
            },
            TAG_COUNTERS if rest.len() == 16 => Record::Counters {
                next_ino: word(0)?,
                next_fh: word(1)?,
            },
            _ => return None,
        })
    }
}

/// An inode the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Its path in the namespace ("" for the root).
    pub path: OsString,
    /// Lookups the kernel has not forgotten.
    pub lookups: u64,
}

/// An open file handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The inode it opened.
    pub ino: u64,
    /// The object version it opened (reads must come from this version).
    pub version: Vec<u8>,
}

#[derive(Debug, Default)]
struct Tables {
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<OsString, u64>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
}

impl Tables {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Lookup { ino, path } => {
                self.next_ino = self.next_ino.max(ino + 1);
                self.by_path.insert(path.clone(), ino);
                self.inodes
                    .entry(ino)
                    .or_insert(Inode { path, lookups: 0 })
                    .lookups += 1;
            }
            Record::Forget { ino, n } => {
                if let Some(inode) = self.inodes.get_mut(&ino) {
                    inode.lookups = inode.lookups.saturating_sub(n);
                    if inode.lookups == 0 && ino != ROOT_INO {
                        let path = inode.path.clone();
                        self.inodes.remove(&ino);
                        if self.by_path.get(&path) == Some(&ino) {
                            self.by_path.remove(&path);
                        }
                    }
                }
            }
            Record::Open { fh, ino, version } => {
                self.next_fh = self.next_fh.max(fh + 1);
                self.handles.insert(fh, Handle { ino, version });
            }
            Record::Release { fh } => {
                self.handles.remove(&fh);
            }
            Record::Inode { ino, lookups, path } => {
                self.next_ino = self.next_ino.max(ino + 1);
                self.by_path.insert(path.clone(), ino);
                self.inodes.insert(ino, Inode { path, lookups });
            }
            Record::Counters { next_ino, next_fh } => {
                self.next_ino = self.next_ino.max(next_ino);
                self.next_fh = self.next_fh.max(next_fh);
            }
        }
    }

    /// Records that rebuild these tables: the compacted log.
    fn snapshot(&self) -> Vec<Vec<u8>> {
        let inodes = self.inodes.iter().map(|(&ino, inode)| Record::Inode {
            ino,
            lookups: inode.lookups,
            path: inode.path.clone(),
        });
        let handles = self.handles.iter().map(|(&fh, h)| Record::Open {
            fh,
            ino: h.ino,
            version: h.version.clone(),
        });
        std::iter::once(Record::Counters {
            next_ino: self.next_ino,
            next_fh: self.next_fh,
        })
        .chain(inodes)
        .chain(handles)
        .map(|r| r.encode())
        .collect()
    }
}

/// What the state of a file system served through a handover can go wrong with.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("state record {index} of the log is not a record of this layout")]
    Unknown { index: usize },
    #[error("no inode {0}")]
    NoInode(u64),
}

/// The inode table and open handles of a served file system, kept in the state log.
#[derive(Debug)]
pub struct FsState {
    log: StateLog,
    tables: Mutex<Tables>,
}

impl FsState {
    /// Rebuilds the state from a replayed log (empty for a fresh mount: only the root).
    pub fn new(log: StateLog, replay: Replay) -> Result<FsState, StateError> {
        let mut tables = Tables {
            next_ino: ROOT_INO + 1,
            next_fh: 1,
            ..Tables::default()
        };
        tables.inodes.insert(
            ROOT_INO,
            Inode {
                path: OsString::new(),
                lookups: 1,
            },
        );
        tables.by_path.insert(OsString::new(), ROOT_INO);
        for (index, bytes) in replay.records.iter().enumerate() {
            let record = Record::decode(bytes).ok_or(StateError::Unknown { index })?;
            tables.apply(record);
        }
        Ok(FsState {
            log,
            tables: Mutex::new(tables),
        })
    }

    /// The log (its memfd goes to a successor).
    pub fn log(&self) -> &StateLog {
        &self.log
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs `record` and applies it; compacts the log first when it is full.
    fn commit(&self, tables: &mut Tables, record: Record) -> Result<(), StateError> {
        let bytes = record.encode();
        match self.log.append(&bytes) {
            Ok(()) => {}
            Err(LogError::Full { .. }) => {
                let snapshot = tables.snapshot();
                self.log.compact(snapshot.iter().map(Vec::as_slice))?;
                tracing::info!(
                    records = snapshot.len(),
                    region_len = self.log.region_len(),
                    "compacted the state log"
                );
                self.log.append(&bytes)?;
            }
            Err(e) => return Err(e.into()),
        }
        tables.apply(record);
        Ok(())
    }

    /// A lookup of `path` the kernel will be told about: its inode number (the same one
    /// while the kernel remembers it), with the lookup counted.
    pub fn lookup(&self, path: &OsStr) -> Result<u64, StateError> {
        let mut tables = self.tables();
        let ino = match tables.by_path.get(path) {
            Some(&ino) => ino,
            None => tables.next_ino,
        };
        self.commit(
            &mut tables,
            Record::Lookup {
                ino,
                path: path.to_os_string(),
            },
        )?;
        Ok(ino)
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) -> Result<(), StateError> {
        let mut tables = self.tables();
        if ino == ROOT_INO || !tables.inodes.contains_key(&ino) {
            return Ok(());
        }
        self.commit(&mut tables, Record::Forget { ino, n })
    }

    /// The inode `ino`, if the kernel knows it.
    pub fn inode(&self, ino: u64) -> Option<Inode> {
        self.tables().inodes.get(&ino).cloned()
    }

    /// The inode number of `path`, if the kernel knows it (for directory listings; not a
    /// lookup, so not counted).
    pub fn ino_of(&self, path: &OsStr) -> Option<u64> {
        self.tables().by_path.get(path).copied()
    }

    /// Opens a handle on `ino` at `version`.
    pub fn open(&self, ino: u64, version: &[u8]) -> Result<u64, StateError> {
        let mut tables = self.tables();
        if !tables.inodes.contains_key(&ino) {
            return Err(StateError::NoInode(ino));
        }
        let fh = tables.next_fh;
        self.commit(
            &mut tables,
            Record::Open {
                fh,
                ino,
                version: version.to_vec(),
            },
        )?;
        Ok(fh)
    }

    /// The handle `fh`, if open.
    pub fn handle(&self, fh: u64) -> Option<Handle> {
        self.tables().handles.get(&fh).cloned()
    }

    /// Releases handle `fh`.
    pub fn release(&self, fh: u64) -> Result<(), StateError> {
        let mut tables = self.tables();
        if !tables.handles.contains_key(&fh) {
            return Ok(());
        }
        self.commit(&mut tables, Record::Release { fh })
    }

    /// Inodes known and handles open (for logs and tests).
    pub fn counts(&self) -> (usize, usize) {
        let tables = self.tables();
        (tables.inodes.len(), tables.handles.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::log::MIN_REGION_LEN;

    fn fresh(region: usize) -> FsState {
        let (log, replay) =
            StateLog::open(StateLog::create(region).expect("create")).expect("open");
        FsState::new(log, replay).expect("state")
    }

    fn successor(state: FsState) -> FsState {
        let fd = state.log().fd().try_clone_to_owned().expect("dup");
        drop(state);
        let (log, replay) = StateLog::open(fd).expect("open");
        assert!(!replay.torn);
        FsState::new(log, replay).expect("state")
    }

    #[test]
    fn records_round_trip() {
        for r in [
            Record::Lookup {
                ino: 7,
                path: "a/b".into(),
            },
            Record::Forget { ino: 7, n: 3 },
            Record::Open {
                fh: 9,
                ino: 7,
                version: b"etag-1".to_vec(),
            },
            Record::Release { fh: 9 },
            Record::Inode {
                ino: 8,
                lookups: 2,
                path: "".into(),
            },
            Record::Counters {
                next_ino: 10,
                next_fh: 11,
            },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[TAG_FORGET, 1, 2]), None);
        assert_eq!(Record::decode(&[99]), None);
        assert_eq!(Record::decode(&[]), None);
    }

    #[test]
    fn a_successor_sees_the_same_inodes_counts_and_handles() {
        let state = fresh(1 << 16);
        let a = state.lookup(OsStr::new("dir/a")).expect("lookup");
        assert_eq!(
            state.lookup(OsStr::new("dir/a")).expect("lookup"),
            a,
            "stable ino"
        );
        let b = state.lookup(OsStr::new("dir/b")).expect("lookup");
        assert_ne!(a, b);
        let fh = state.open(a, b"v1").expect("open");
        let gone = state.open(b, b"v2").expect("open");
        state.release(gone).expect("release");
        state.forget(b, 1).expect("forget");
        state.forget(a, 1).expect("forget");
        let state = successor(state);
        assert_eq!(
            state.inode(a),
            Some(Inode {
                path: "dir/a".into(),
                lookups: 1
            })
        );
        assert_eq!(state.inode(b), None, "forgotten");
        assert_eq!(
            state.handle(fh),
            Some(Handle {
                ino: a,
                version: b"v1".to_vec()
            })
        );
        assert_eq!(state.handle(gone), None);
        // Numbers are not reused after a handover.
        let c = state.lookup(OsStr::new("dir/c")).expect("lookup");
        assert!(c > b, "{c} reuses a number");
        assert!(state.open(c, b"v3").expect("open") > gone);
        assert!(matches!(
            state.open(12345, b""),
            Err(StateError::NoInode(12345))
        ));
    }

    #[test]
    fn a_full_log_is_compacted_and_nothing_is_lost() {
        let state = fresh(MIN_REGION_LEN);
        let keep = state.lookup(OsStr::new("kept")).expect("lookup");
        let fh = state.open(keep, b"kept-version").expect("open");
        // Far more records than a 4 KiB region holds: churn on other paths.
        let mut last = 0;
        for i in 0..2000 {
            let ino = state
                .lookup(OsStr::new(&format!("churn/{}", i % 50)))
                .expect("lookup");
            state.forget(ino, 1).expect("forget");
            last = last.max(ino);
        }
        state.lookup(OsStr::new("kept")).expect("second lookup");
        let state = successor(state);
        assert_eq!(
            state.inode(keep),
            Some(Inode {
                path: "kept".into(),
                lookups: 2
            })
        );
        assert_eq!(
            state.handle(fh).map(|h| h.version),
            Some(b"kept-version".to_vec())
        );
        assert_eq!(state.counts(), (2, 1), "root and kept; one handle");
        assert!(state.lookup(OsStr::new("new")).expect("lookup") > last);
    }

    #[test]
    fn a_log_of_another_layout_is_refused() {
        let (log, _) =
            StateLog::open(StateLog::create(MIN_REGION_LEN).expect("create")).expect("open");
        log.append(&[42, 0, 0]).expect("append");
        let fd = log.fd().try_clone_to_owned().expect("dup");
        drop(log);
        let (log, replay) = StateLog::open(fd).expect("open");
        assert!(matches!(
            FsState::new(log, replay),
            Err(StateError::Unknown { index: 0 })
        ));
    }
}
