//! `benches/gpu-check.sh verify`, which `prepare` ends with (CI never runs `prepare`: it is a
//! release build): a folder missing files, holding a broken archive or over the size limit is
//! refused, and a complete one is accepted.

use std::path::Path;
use std::process::{Command, Output};

use loaderd_tests::repo_root;

fn script(args: &[&str], max_mib: &str) -> Output {
    Command::new("bash")
        .arg(repo_root().join("benches/gpu-check.sh"))
        .args(args)
        .env("MAX_BUNDLE_MIB", max_mib)
        .output()
        .expect("run gpu-check.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `rel` under `dir`: an xz archive of a few bytes for `*.xz`, else a few bytes.
fn put(dir: &Path, rel: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    if rel.ends_with(".xz") {
        let st = Command::new("python3")
            .args([
                "-c",
                "import lzma,sys; open(sys.argv[1],'wb').write(lzma.compress(b'x'*99))",
            ])
            .arg(&path)
            .status()
            .expect("python3");
        assert!(st.success());
    } else {
        std::fs::write(&path, b"bytes\n").expect("write");
    }
}

#[test]
fn verify_refuses_incomplete_broken_or_oversized_bundles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let out = script(&["verify", d], "60");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("missing bin/loaderd.xz"),
        "{}",
        text(&out)
    );

    let layout = script(&["layout"], "60");
    assert!(layout.status.success(), "{}", text(&layout));
    let required = String::from_utf8_lossy(&layout.stdout).to_string();
    assert!(required.lines().count() > 10, "{required}");
    for rel in required.lines() {
        put(dir.path(), rel);
    }
    // What verify finds by pattern: a gpu crate integration test, the Python wheels.
    for rel in [
        "tests/gpu-gpu.xz",
        "wheels/protobuf-5.0-py3-none-any.whl",
        "wheels/pytest-8.0-py3-none-any.whl",
    ] {
        put(dir.path(), rel);
    }
    let out = script(&["verify", d], "60");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verify: ok"), "{}", text(&out));

    // Over the limit (1 MiB here).
    std::fs::write(dir.path().join("lib/big"), vec![0u8; 2 << 20]).expect("write");
    let out = script(&["verify", d], "1");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("over 1 MiB"), "{}", text(&out));
    std::fs::remove_file(dir.path().join("lib/big")).expect("rm");

    // A truncated archive.
    std::fs::write(dir.path().join("bin/loaderd.xz"), b"\xfd7zXZ\x00").expect("write");
    let out = script(&["verify", d], "60");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not a whole xz archive"),
        "{}",
        text(&out)
    );
}
