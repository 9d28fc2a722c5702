//! Logical paths of the unified namespace.
//!
//! Clients only ever see logical paths (`/imagenet/train/x.JPEG`). A logical path is absolute,
//! uses `/` separators and is normalized here once: empty and `.` segments are dropped, and `..`
//! is refused rather than resolved, so nothing can climb out of its mount into the rest of a
//! bucket or file system.

use std::fmt;

use crate::error::{Error, Result};

/// A normalized absolute logical path. `/` is the root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogicalPath(String);

impl LogicalPath {
    /// Normalizes `raw`, refusing `..`, NUL bytes and backslashes.
    pub fn parse(raw: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPath {
            path: raw.to_string(),
            reason,
        };
        if raw.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if raw.contains('\\') {
            return Err(invalid("contains a backslash"));
        }
        let mut out = String::with_capacity(raw.len() + 1);
        for seg in raw.split('/') {
            match seg {
                "" | "." => {}
                ".." => return Err(invalid("`..` is not allowed")),
                s => {
                    out.push('/');
                    out.push_str(s);
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(LogicalPath(out))
    }

    /// The root path `/`.
    pub fn root() -> Self {
        LogicalPath("/".to_string())
    }

    /// The path as a string, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Segments, without the leading empty one.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// `self` joined with a relative `/`-separated suffix (already validated segments).
    pub fn join(&self, rel: &str) -> Result<Self> {
        if self.is_root() {
            Self::parse(rel)
        } else {
            Self::parse(&format!("{}/{}", self.0, rel))
        }
    }

    /// If `self` is `prefix` or below it, the remainder without a leading `/` ("" when equal).
    pub fn strip_prefix(&self, prefix: &LogicalPath) -> Option<&str> {
        if prefix.is_root() {
            return Some(self.0.trim_start_matches('/'));
        }
        let rest = self.0.strip_prefix(prefix.as_str())?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }
}

impl fmt::Display for LogicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LogicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(LogicalPath::parse("").unwrap().as_str(), "/");
        assert_eq!(LogicalPath::parse("//a/./b//").unwrap().as_str(), "/a/b");
        assert_eq!(LogicalPath::parse("a/b").unwrap().as_str(), "/a/b");
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["/a/../b", "..", "/a/..", "a\\b", "a\0"] {
            assert!(
                matches!(LogicalPath::parse(bad), Err(Error::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn strip_prefix_respects_segments() {
        let p = LogicalPath::parse("/data/x").unwrap();
        assert_eq!(
            p.strip_prefix(&LogicalPath::parse("/data").unwrap()),
            Some("x")
        );
        assert_eq!(p.strip_prefix(&LogicalPath::parse("/dat").unwrap()), None);
        assert_eq!(p.strip_prefix(&LogicalPath::root()), Some("data/x"));
        assert_eq!(p.strip_prefix(&p), Some(""));
    }
}
