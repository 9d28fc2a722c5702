//! Logical paths as the file system handles them: absolute, `/`-separated, normalised (no
//! empty, `.` or `..` segments; `/` is the root). Names the kernel sends are checked here
//! before they are joined, so no path the view builds can climb out of its directory.

use crate::inode::ROOT_PATH;

/// `parent` joined with one directory-entry `name`; `None` for a name no entry can have
/// (empty, `.`, `..`, or holding `/`, a backslash or a NUL byte).
pub fn join(parent: &str, name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return None;
    }
    Some(if parent == ROOT_PATH {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    })
}

/// The directory holding `path` (the root for the root and its children).
pub fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => parent,
        _ => ROOT_PATH,
    }
}

/// The last segment of `path` ("" for the root).
pub fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_names_and_joins() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(name("/a/b.jpg"), "b.jpg");
        assert_eq!(name("/"), "");
        assert_eq!(join("/", "a").as_deref(), Some("/a"));
        assert_eq!(join("/a", "b c").as_deref(), Some("/a/b c"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert_eq!(join("/a", bad), None, "{bad:?}");
        }
    }
}
