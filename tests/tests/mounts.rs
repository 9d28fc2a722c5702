//! Mounts added and removed while the daemon runs.

use std::fs;

use loaderd_tests::{
    Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, file_uri, write_random_file,
};

#[test]
fn file_mount_added_and_removed_at_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_random_file(&dir.path().join("a.bin"), 150_000, 3);
    fs::create_dir_all(dir.path().join("nested")).expect("mkdir");
    fs::write(dir.path().join("nested/b.txt"), b"hello\n").expect("write");
    let root = dir.path().display().to_string();
    let daemon = Daemon::start(&args(&["--allowed-root", &root]));

    let uri = file_uri(dir.path());
    daemon.ctl_ok(&["mount", "add", "/extra", &uri]);
    let listed = daemon.ctl_ok(&["mount", "ls"]);
    assert!(
        listed.contains("/extra") && listed.contains(&uri),
        "mount ls lacks /extra -> {uri}:\n{listed}"
    );

    assert_bytes_eq(&daemon.cat("/extra/a.bin"), &a, "cat /extra/a.bin");
    assert_bytes_eq(
        &daemon.cat("/extra/nested/b.txt"),
        b"hello\n",
        "cat /extra/nested/b.txt",
    );
    let ls = daemon.ctl_ok(&["ls", "/extra"]);
    assert!(
        ls.contains("a.bin") && ls.contains("nested"),
        "ls /extra:\n{ls}"
    );

    daemon.ctl_ok(&["mount", "rm", "/extra"]);
    let err = daemon.ctl_err(&["cat", "/extra/a.bin"]);
    assert!(
        err.contains("/extra/a.bin"),
        "error does not name the path: {err:?}"
    );
    let listed = daemon.ctl_ok(&["mount", "ls"]);
    assert!(
        !listed.contains("/extra"),
        "mount ls still shows /extra:\n{listed}"
    );
}

#[test]
fn s3_mount_added_at_runtime_with_options() {
    let data = Dataset::blobs(&[100_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let daemon = Daemon::start(&args(&["--allowed-endpoint", &s3.endpoint]));

    let uri = s3.uri("ds");
    let mut add = vec!["mount".to_string(), "add".into(), "/s3".into(), uri.clone()];
    for (key, value) in s3.options() {
        add.push("-o".into());
        add.push(format!("{key}={value}"));
    }
    daemon.ctl_ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
    let listed = daemon.ctl_ok(&["mount", "ls"]);
    assert!(
        listed.contains("/s3") && listed.contains(&uri),
        "mount ls lacks /s3 -> {uri}:\n{listed}"
    );
    assert_bytes_eq(
        &daemon.cat("/s3/blobs/blob_00.bin"),
        &data.read("blobs/blob_00.bin"),
        "cat /s3/blobs/blob_00.bin",
    );

    daemon.ctl_ok(&["mount", "rm", "/s3"]);
    daemon.ctl_err(&["cat", "/s3/blobs/blob_00.bin"]);
}
