//! Block identity and block arithmetic.
//!
//! A block id is a 128-bit hash of (UFS URI, object path, object version, block size, index):
//! a changed object gets new ids and can never alias its old bytes, and the id does not depend
//! on where the UFS is mounted in the namespace.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use crate::ufs::FileMeta;

/// Identity of one cached block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u128);

impl BlockId {
    /// The id of block `index` of `file` in the UFS at `uri`, with blocks of `block_size`.
    pub fn new(uri: &str, file: &FileMeta, block_size: u64, index: u64) -> Self {
        let mut h = Xxh3::new();
        for part in [uri.as_bytes(), file.rel.as_bytes(), file.version.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&block_size.to_le_bytes());
        h.update(&index.to_le_bytes());
        BlockId(h.digest128())
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses [`BlockId::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<Self> {
        (s.len() == 32)
            .then(|| u128::from_str_radix(s, 16).ok().map(BlockId))
            .flatten()
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", self.to_hex())
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One block of a file: its id and the byte range of the file it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    pub id: BlockId,
    pub index: u64,
    pub range: Range<u64>,
}

impl BlockRef {
    /// The block's length in bytes.
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// Whether the block holds no bytes (never: files of 0 bytes have no blocks).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The part of this block that a read of file bytes `read` needs, as offsets into the
    /// block (empty when the read does not touch it).
    pub fn part(&self, read: &Range<u64>) -> Range<u64> {
        let from = read.start.clamp(self.range.start, self.range.end) - self.range.start;
        let to = read.end.clamp(self.range.start, self.range.end) - self.range.start;
        from..to.max(from)
    }

    /// The bytes of this block's `data` that a read of file bytes `read` needs.
    pub fn slice(&self, data: &Bytes, read: &Range<u64>) -> Bytes {
        let part = self.part(read);
        data.slice(part.start as usize..part.end as usize)
    }
}

/// The blocks covering bytes `range` of `file`, in order.
pub fn blocks_for(uri: &str, file: &FileMeta, block_size: u64, range: Range<u64>) -> Vec<BlockRef> {
    let end = range.end.min(file.size);
    if range.start >= end {
        return Vec::new();
    }
    let first = range.start / block_size;
    let last = (end - 1) / block_size;
    (first..=last)
        .map(|index| {
            let start = index * block_size;
            BlockRef {
                id: BlockId::new(uri, file, block_size, index),
                index,
                range: start..(start + block_size).min(file.size),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, version: &str) -> FileMeta {
        FileMeta {
            rel: "a/b".into(),
            size,
            version: version.into(),
            mtime_ms: 0,
        }
    }

    #[test]
    fn ids_change_with_version_and_index() {
        let a = BlockId::new("s3://b", &file(10, "v1"), 4, 0);
        assert_eq!(a, BlockId::new("s3://b", &file(10, "v1"), 4, 0));
        assert_ne!(a, BlockId::new("s3://b", &file(10, "v2"), 4, 0));
        assert_ne!(a, BlockId::new("s3://b", &file(10, "v1"), 4, 1));
        assert_ne!(a, BlockId::new("s3://c", &file(10, "v1"), 4, 0));
        assert_eq!(BlockId::from_hex(&a.to_hex()), Some(a));
    }

    #[test]
    fn covers_ranges() {
        let f = file(10, "v");
        let b = blocks_for("u", &f, 4, 0..10);
        assert_eq!(
            b.iter().map(|b| b.range.clone()).collect::<Vec<_>>(),
            [0..4, 4..8, 8..10]
        );
        let b = blocks_for("u", &f, 4, 5..6);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].index, 1);
        assert!(blocks_for("u", &f, 4, 10..12).is_empty());
        assert!(blocks_for("u", &file(0, "v"), 4, 0..0).is_empty());
    }

    #[test]
    fn a_read_needs_the_part_of_each_block_it_overlaps() {
        let f = file(10, "v");
        let b = blocks_for("u", &f, 4, 0..10);
        assert_eq!(b.iter().map(BlockRef::len).collect::<Vec<_>>(), [4, 4, 2]);
        let read = 3..9;
        assert_eq!(
            b.iter().map(|b| b.part(&read)).collect::<Vec<_>>(),
            [3..4, 0..4, 0..1]
        );
        assert_eq!(b[0].part(&(5..7)), 4..4, "no overlap: empty");
        let data = Bytes::from_static(b"4567");
        assert_eq!(b[1].slice(&data, &(5..7)), Bytes::from_static(b"56"));
    }
}
