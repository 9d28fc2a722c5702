//! Directories as the source has them: empty and nested empty directories of a `file://`
//! mount, and S3 directory markers (zero-byte objects whose key ends in `/`, with or without
//! anything under them), through `loaderctl ls` (gRPC List), `loaderctl stat`, and a real FUSE
//! mount read with std::fs and Python's `os.listdir`/`os.walk` (as DLIO lists its `valid/`).
//! Both with manifests (the default) and with per-path metadata (`--no-manifest`). The FUSE
//! checks skip, with the reason printed, where a FUSE mount cannot be made. Each test runs
//! with the daemon's own mount (`in_daemon::`) and with the thin front (`front::`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use loaderd_tests::{
    Daemon, FuseDaemon, FuseServer, S3Sandbox, args, assert_bytes_eq, file_mount_args,
    fuse_unavailable, random_bytes,
};

/// Directories and files below a root, as relative paths.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tree {
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

/// A daemon, with its FUSE view where this machine can mount one.
enum Served {
    Fuse(FuseDaemon),
    Plain(Daemon),
}

impl Served {
    fn start(server: FuseServer, mut a: Vec<String>, extra: &[&str]) -> Served {
        a.extend(args(extra));
        if let Some(reason) = fuse_unavailable() {
            eprintln!("skipping the FUSE checks: {reason}");
            return Served::Plain(Daemon::start(&a));
        }
        let mut with_fuse = a.clone();
        with_fuse.extend(args(&[
            "--fuse-entry-timeout",
            "1s",
            "--fuse-attr-timeout",
            "1s",
        ]));
        match FuseDaemon::start_with(server, &with_fuse) {
            Ok(d) => Served::Fuse(d),
            Err(reason) => {
                eprintln!("skipping the FUSE checks: {reason}");
                Served::Plain(Daemon::start(&a))
            }
        }
    }

    fn daemon(&self) -> &Daemon {
        match self {
            Served::Fuse(d) => d,
            Served::Plain(d) => d,
        }
    }

    /// Where `point` (a logical path such as `/data`) is on the FUSE mount.
    fn mounted(&self, point: &str) -> Option<PathBuf> {
        match self {
            Served::Fuse(d) => Some(d.path(point.trim_start_matches('/'))),
            Served::Plain(_) => None,
        }
    }
}

/// The tree below `root` on a local file system (or a FUSE mount): every directory, empty
/// ones included, and every file; anything else fails the test.
fn fs_tree(root: &Path) -> Tree {
    let mut t = Tree::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.expect("dir entry");
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            let ft = e.file_type().expect("file type");
            // The entry's type as readdir gave it must agree with a stat (lookup) of it.
            let md = fs::metadata(e.path()).expect("stat entry");
            assert_eq!(ft.is_dir(), md.is_dir(), "{rel}: readdir vs stat");
            if ft.is_dir() {
                stack.push(e.path());
                assert!(t.dirs.insert(rel), "listed twice");
            } else {
                assert!(ft.is_file(), "{rel} is neither file nor directory");
                assert!(t.files.insert(rel), "listed twice");
            }
        }
    }
    t
}

/// The tree below logical `point` as `loaderctl ls` shows it, one level at a time.
fn ls_tree(d: &Daemon, point: &str) -> Tree {
    let mut t = Tree::default();
    let mut pending = vec![point.to_string()];
    while let Some(dir) = pending.pop() {
        for line in d.ctl_ok(&["ls", &dir]).lines() {
            let rel = line
                .strip_prefix(&format!("{point}/"))
                .unwrap_or_else(|| panic!("ls {dir}: {line:?} is not below {point}"));
            assert!(
                !rel.is_empty() && !rel.contains("//") && rel != "/",
                "ls {dir}: an entry without a name: {line:?}"
            );
            match rel.strip_suffix('/') {
                Some(sub) => {
                    assert!(t.dirs.insert(sub.to_string()), "{sub} listed twice");
                    pending.push(format!("{point}/{sub}"));
                }
                None => assert!(t.files.insert(rel.to_string()), "{rel} listed twice"),
            }
        }
    }
    t
}

/// The tree below `root` as Python's `os.walk` sees it, and `os.listdir` of each of `dirs`.
fn python_tree(root: &Path, dirs: &[&str]) -> (Tree, Vec<Vec<String>>) {
    let script = "import json, os, sys\n\
        root = sys.argv[1]\n\
        dirs, files = [], []\n\
        for top, ds, fs in os.walk(root, onerror=lambda e: sys.exit(str(e))):\n\
        \x20   rel = os.path.relpath(top, root)\n\
        \x20   pre = '' if rel == '.' else rel + '/'\n\
        \x20   dirs += [pre + d for d in ds]\n\
        \x20   files += [pre + f for f in fs]\n\
        lists = [sorted(os.listdir(os.path.join(root, d))) for d in sys.argv[2:]]\n\
        print(json.dumps({'dirs': dirs, 'files': files, 'lists': lists}))\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root)
        .args(dirs)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 os.walk/os.listdir of {} failed: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("python's JSON");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    let tree = Tree {
        dirs: strings(&v["dirs"]).into_iter().collect(),
        files: strings(&v["files"]).into_iter().collect(),
    };
    let lists = v["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .map(strings)
        .collect();
    (tree, lists)
}

/// `want` below logical `point`, through gRPC and (where mounted) FUSE and Python; `empty`
/// are directories that must list as `[]`.
fn assert_tree(s: &Served, point: &str, want: &Tree, empty: &[&str], what: &str) {
    let d = s.daemon();
    assert_eq!(&ls_tree(d, point), want, "{what}: loaderctl ls");
    for dir in &want.dirs {
        let st = d.stat_json(&format!("{point}/{dir}"));
        assert_eq!(st["is_dir"], true, "{what}: stat {dir}: {st}");
    }
    for dir in empty {
        let st = d.stat_json(&format!("{point}/{dir}"));
        assert_eq!(st["is_dir"], true, "{what}: stat {dir}: {st}");
        let listing = d.ctl_ok(&["ls", &format!("{point}/{dir}")]);
        assert_eq!(listing, "", "{what}: ls of empty {dir}");
    }
    let Some(root) = s.mounted(point) else { return };
    assert_eq!(&fs_tree(&root), want, "{what}: the FUSE view");
    let (py, lists) = python_tree(&root, empty);
    assert_eq!(&py, want, "{what}: os.walk through the FUSE view");
    for (dir, list) in empty.iter().zip(lists) {
        assert!(list.is_empty(), "{what}: os.listdir({dir}) = {list:?}");
        assert!(fs::metadata(root.join(dir)).expect("stat").is_dir());
    }
}

/// A source tree in `root` with an empty directory, a nested empty one, a directory whose only
/// child is an empty directory, and files; returns one file's bytes.
fn make_source(root: &Path) -> Vec<u8> {
    for dir in ["train/a", "valid", "deep/er/est", "deep/side"] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    let bytes = random_bytes(150_000, 3);
    fs::write(root.join("train/a/x.bin"), &bytes).expect("write");
    fs::write(root.join("deep/side/empty.bin"), b"").expect("write");
    bytes
}

fn file_mounts_show_empty_and_nested_empty_directories(server: FuseServer) {
    for mode in [&[][..], &["--no-manifest"][..]] {
        let src = tempfile::tempdir().expect("tempdir");
        let bytes = make_source(src.path());
        let mut extra = vec!["--metadata-ttl", "3s"];
        extra.extend_from_slice(mode);
        let s = Served::start(server, file_mount_args("/data", src.path()), &extra);
        let what = format!("file:// {mode:?}");

        let want = fs_tree(src.path());
        assert!(want.dirs.contains("valid") && want.dirs.contains("deep/er/est"));
        assert_tree(&s, "/data", &want, &["valid", "deep/er/est"], &what);
        assert_bytes_eq(&s.daemon().cat("/data/train/a/x.bin"), &bytes, "cat");
        if let Some(root) = s.mounted("/data") {
            assert_bytes_eq(
                &fs::read(root.join("train/a/x.bin")).unwrap(),
                &bytes,
                "read",
            );
            assert_eq!(
                fs::metadata(root.join("deep/side/empty.bin"))
                    .unwrap()
                    .len(),
                0
            );
        }

        // A directory removed from the source leaves the view after an invalidate (and the
        // kernel's 1 s timeouts); one added appears.
        fs::remove_dir(src.path().join("valid")).expect("rmdir");
        fs::create_dir(src.path().join("test")).expect("mkdir");
        s.daemon().ctl_ok(&["invalidate", "/data"]);
        thread::sleep(Duration::from_millis(1500));
        let want = fs_tree(src.path());
        assert!(!want.dirs.contains("valid") && want.dirs.contains("test"));
        assert_tree(
            &s,
            "/data",
            &want,
            &["test"],
            &format!("{what} after invalidate"),
        );
        let err = s.daemon().ctl_err(&["stat", "/data/valid"]);
        assert!(
            err.contains("not found") || err.contains("NotFound"),
            "{err}"
        );
        if let Some(root) = s.mounted("/data") {
            let e = fs::metadata(root.join("valid")).expect_err("valid is gone");
            assert_eq!(e.raw_os_error(), Some(2), "{e}");
        }

        // Without an invalidate, once the metadata TTL ran out: a new empty directory appears,
        // a removed one is gone.
        fs::create_dir(src.path().join("later")).expect("mkdir");
        fs::remove_dir(src.path().join("test")).expect("rmdir");
        thread::sleep(Duration::from_millis(4500));
        let want = fs_tree(src.path());
        assert!(want.dirs.contains("later") && !want.dirs.contains("test"));
        assert_tree(
            &s,
            "/data",
            &want,
            &["later"],
            &format!("{what} after the TTL"),
        );
    }
}

fn s3_directory_markers_are_directories_and_never_files(server: FuseServer) {
    let data = tempfile::tempdir().expect("tempdir");
    let bytes = make_source(data.path());
    // The upload writes objects for files only: `valid/` and `deep/er/est/` are absent.
    let s3 = S3Sandbox::start(&[(data.path(), "ds")]);
    // Markers as the S3 console writes them: the mount's own root, one above objects, an
    // empty one, and a nested one whose parent is nothing but a marker.
    for key in [
        "ds/",
        "ds/train/",
        "ds/valid/",
        "ds/marked/",
        "ds/marked/inner/",
    ] {
        s3.put_object(key, b"");
    }
    // A zero-byte file stays a file; a file next to a directory of the same name is hidden.
    s3.put_object("ds/zero.txt", b"");
    s3.put_object("ds/both", b"a file named like a directory");
    s3.put_object("ds/both/in.bin", b"inside");

    for mode in [&[][..], &["--no-manifest"][..]] {
        let s = Served::start(server, s3.mount_args("/data", "ds"), mode);
        let what = format!("s3 {mode:?}");
        let mut want = fs_tree(data.path());
        // Without a marker, `deep/er/` and `deep/er/est/` (no file below them on disk) do not
        // exist on S3; `valid/` has one.
        want.dirs.remove("deep/er/est");
        want.dirs.remove("deep/er");
        want.dirs
            .extend(["marked", "marked/inner", "both"].map(String::from));
        want.files
            .extend(["zero.txt", "both/in.bin"].map(String::from));
        assert!(want.dirs.contains("valid"));
        assert_tree(&s, "/data", &want, &["valid", "marked/inner"], &what);

        let d = s.daemon();
        let zero = d.stat_json("/data/zero.txt");
        assert_eq!(
            (zero["is_dir"].clone(), zero["size"].as_u64()),
            (false.into(), Some(0))
        );
        assert_eq!(
            d.stat_json("/data/both")["is_dir"],
            true,
            "{what}: the directory wins"
        );
        assert_bytes_eq(&d.cat("/data/both/in.bin"), b"inside", "cat both/in.bin");
        assert_bytes_eq(&d.cat("/data/train/a/x.bin"), &bytes, "cat train/a/x.bin");
        let err = d.ctl_err(&["cat", "/data/valid"]);
        assert!(
            err.to_lowercase().contains("directory"),
            "{what}: cat of a marker: {err}"
        );
        if let Some(root) = s.mounted("/data") {
            assert_bytes_eq(
                &fs::read(root.join("train/a/x.bin")).unwrap(),
                &bytes,
                "read",
            );
            let e = fs::read(root.join("valid")).expect_err("read of a directory");
            assert_eq!(e.raw_os_error(), Some(21), "{what}: EISDIR: {e}");
        }
    }

    // A marker deleted from the store leaves the view after an invalidate.
    let s = Served::start(server, s3.mount_args("/data", "ds"), &[]);
    assert!(ls_tree(s.daemon(), "/data").dirs.contains("valid"));
    s3.delete_object("ds/valid/");
    s.daemon().ctl_ok(&["invalidate", "/data"]);
    thread::sleep(Duration::from_millis(1500));
    let tree = ls_tree(s.daemon(), "/data");
    assert!(
        !tree.dirs.contains("valid") && tree.dirs.contains("marked"),
        "{tree:?}"
    );
    if let Some(root) = s.mounted("/data") {
        let e = fs::metadata(root.join("valid")).expect_err("valid is gone");
        assert_eq!(e.raw_os_error(), Some(2), "{e}");
        assert_eq!(fs_tree(&root), tree, "the FUSE view after invalidate");
    }
}

loaderd_tests::against_both_fuse_servers!(
    file_mounts_show_empty_and_nested_empty_directories,
    s3_directory_markers_are_directories_and_never_files,
);
