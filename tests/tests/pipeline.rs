//! Training batches from the daemon's pipeline: every sample exactly once per epoch across
//! ranks, the same order for the same seed, a new order for a new epoch, and a corrupt image
//! skipped (named in its batch) without stopping the epoch.

use std::collections::BTreeSet;
use std::path::Path;

use loaderd_tests::{Daemon, file_mount_args, gen_dataset};

/// Runs one epoch on `rank` of `world` and returns the keys in delivery order.
fn epoch(
    d: &Daemon,
    rank: u32,
    world: u32,
    seed: u64,
    epoch: u64,
) -> (Vec<String>, serde_json::Value) {
    let keys = d.dir().join(format!("keys-{rank}-{world}-{seed}-{epoch}"));
    let out = d.ctl_ok(&[
        "bench",
        "pipeline",
        "--dataset",
        "/ds",
        "--batch-size",
        "4",
        "--size",
        "32",
        "--rank",
        &rank.to_string(),
        "--world-size",
        &world.to_string(),
        "--seed",
        &seed.to_string(),
        "--epoch",
        &epoch.to_string(),
        "--keys-out",
        keys.to_str().expect("utf-8 path"),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
    let keys = std::fs::read_to_string(&keys).expect("keys file");
    (keys.lines().map(str::to_string).collect(), report)
}

fn dataset(dir: &Path) {
    gen_dataset(dir, 3, 6);
    std::fs::write(
        dir.join("class_001/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .expect("write corrupt image");
}

#[test]
fn ranks_see_every_sample_once_in_a_seeded_order() {
    let data = tempfile::tempdir().expect("tempdir");
    dataset(data.path());
    let d = Daemon::start(&file_mount_args("/ds", data.path()));

    let (all, report) = epoch(&d, 0, 1, 7, 0);
    assert_eq!(report["dataset_len"], 19, "{report}");
    assert_eq!(report["samples"], 18, "{report}");
    assert_eq!(report["skipped"][0], "class_001/broken.jpg", "{report}");
    assert_eq!(
        report["sample_shape"],
        serde_json::json!([32, 32, 3]),
        "{report}"
    );
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 18, "no duplicates in one epoch");

    // Same seed and epoch: same order. Next epoch: another order of the same samples.
    assert_eq!(epoch(&d, 0, 1, 7, 0).0, all);
    let (next, _) = epoch(&d, 0, 1, 7, 1);
    assert_ne!(next, all);
    assert_eq!(next.iter().collect::<BTreeSet<_>>(), unique);

    // Two ranks: equal shares (19 samples pad to 20), together every sample.
    let (r0, rep0) = epoch(&d, 0, 2, 7, 0);
    let (r1, rep1) = epoch(&d, 1, 2, 7, 0);
    assert_eq!(
        rep0["batches"], rep1["batches"],
        "same number of batches per rank"
    );
    let union: BTreeSet<&String> = r0.iter().chain(&r1).collect();
    assert_eq!(union, unique);
    assert!(d.metric("loaderd_pipeline_skipped_total") >= 1.0);
}

#[test]
fn bad_loader_requests_are_clear_errors() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 1, 2);
    let d = Daemon::start(&file_mount_args("/ds", data.path()));
    let err = d.ctl_err(&["bench", "pipeline", "--dataset", "/ds/nope"]);
    assert!(err.contains("/ds/nope"), "{err}");
    let err = d.ctl_err(&["bench", "pipeline", "--dataset", "/ds", "--batch-size", "0"]);
    assert!(err.contains("batch_size"), "{err}");
    let err = d.ctl_err(&["bench", "pipeline", "--dataset", "/ds", "--layout", "bgr"]);
    assert!(err.contains("layout"), "{err}");
    // The daemon keeps serving.
    d.ctl_ok(&["status"]);
}
