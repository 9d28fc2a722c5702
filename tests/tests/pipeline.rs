//! Training batches from the daemon's pipeline: every sample exactly once per epoch across
//! ranks, the same order for the same seed, a new order for a new epoch, a corrupt image
//! skipped (named in its batch) without stopping the epoch or failing it with `on_error =
//! fail`, shared-memory budgets, and per-loader numbers in `loaderctl status`.

use std::collections::BTreeSet;
use std::path::Path;

use loaderctl::client::shm::{BatchClient, ShmError};
use loaderd_proto::v1 as pb;
use loaderd_tests::{Daemon, args, file_mount_args, gen_dataset, small_epoch};

/// `loaderctl bench pipeline --dataset /ds ARGS...` (`--json` added) and its report.
fn bench(d: &Daemon, extra: &[&str]) -> serde_json::Value {
    let mut a = vec!["bench", "pipeline", "--dataset", "/ds", "--json"];
    a.extend_from_slice(extra);
    let out = d.ctl_ok(&a);
    serde_json::from_str(out.trim()).expect("bench json")
}

/// Runs one epoch on `rank` of `world` and returns the keys in delivery order.
fn epoch(
    d: &Daemon,
    rank: u32,
    world: u32,
    seed: u64,
    epoch: u64,
) -> (Vec<String>, serde_json::Value) {
    let keys = d.dir().join(format!("keys-{rank}-{world}-{seed}-{epoch}"));
    let out = d.ctl_ok(&small_epoch(&[
        "--json",
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
    ]));
    let report = serde_json::from_str(out.trim()).expect("bench json");
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

fn open_loader(d: &Daemon, batch_size: u32, size: u32) -> Result<BatchClient, ShmError> {
    BatchClient::open(
        &d.shm_socket(),
        pb::OpenLoader {
            dataset: "/ds".into(),
            batch_size,
            size,
            train: true,
            depth: 2,
            name: "test loader".into(),
            ..Default::default()
        },
    )
}

#[test]
fn on_error_fail_stops_at_the_bad_sample_and_names_it() {
    let data = tempfile::tempdir().expect("tempdir");
    dataset(data.path());
    let d = Daemon::start(&file_mount_args("/ds", data.path()));
    let err = d.ctl_err(&small_epoch(&["--on-error", "fail"]));
    assert!(err.contains("class_001/broken.jpg"), "{err}");
    let err = d.ctl_err(&[
        "bench",
        "pipeline",
        "--dataset",
        "/ds",
        "--on-error",
        "maybe",
    ]);
    assert!(err.contains("on_error"), "{err}");
    // The same daemon, default policy: the epoch completes without the bad sample.
    let (keys, _) = epoch(&d, 0, 1, 0, 0);
    assert_eq!(keys.len(), 18);
}

#[test]
fn shared_memory_is_budgeted_per_client_and_in_total() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 4);
    let conf = tempfile::tempdir().expect("tempdir");
    let config = conf.path().join("loaderd.toml");
    // A 32x32 RGB sample is 3 KiB: one client may have 56 KiB (a 48 KiB ring with its slot
    // state and dataset index), all clients 80 KiB, at most 2.
    std::fs::write(
        &config,
        "[pipeline]\nmax_client_bytes = \"56KiB\"\nmax_total_bytes = \"80KiB\"\nmax_clients = 2\n",
    )
    .expect("write config");
    let mut a = file_mount_args("/ds", data.path());
    a.extend(args(&["--config", config.to_str().expect("utf-8 path")]));
    let d = Daemon::start(&a);

    let too_big = open_loader(&d, 64, 32)
        .err()
        .expect("a 384 KiB ring is refused");
    assert!(
        too_big.to_string().contains("max_client_bytes"),
        "{too_big}"
    );
    // 8 samples x 2 slots x 3 KiB = 48 KiB each: the second does not fit the total.
    let mut first = open_loader(&d, 8, 32).expect("first loader");
    let second = open_loader(&d, 8, 32).err().expect("over the total");
    assert!(second.to_string().contains("max_total_bytes"), "{second}");
    let small = open_loader(&d, 2, 32).expect("a small ring fits beside it");
    let third = open_loader(&d, 1, 32).err().expect("over the client count");
    assert!(third.to_string().contains("max_clients"), "{third}");

    // Status names the open loaders and their rings.
    assert!(first.next_batch().expect("a batch").is_some());
    let status = d.status_json();
    let loaders = status["loaders"].as_array().expect("loaders");
    assert_eq!(loaders.len(), 2, "{status}");
    // Each loader counts its slots and more (per-slot state, dataset index); the total is
    // what the loaders hold.
    let held: Vec<u64> = loaders
        .iter()
        .map(|l| l["ring_bytes"].as_u64().expect("ring_bytes"))
        .collect();
    assert!(held.iter().any(|&b| b > 48 * 1024), "{status}");
    assert!(held.iter().all(|&b| b > 12 * 1024), "{status}");
    assert_eq!(status["ring_bytes"], held.iter().sum::<u64>(), "{status}");
    assert!(
        loaders
            .iter()
            .any(|l| l["name"] == "test loader" && l["batches_delivered"] == 1)
    );
    let text = d.ctl_ok(&["status"]);
    assert!(
        text.contains("starved") && text.contains("test loader"),
        "{text}"
    );

    // A client that goes away gives its budget back.
    drop(first);
    drop(small);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.status_json()["loaders"]
        .as_array()
        .is_some_and(|l| !l.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "rings not reclaimed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    open_loader(&d, 8, 32).expect("the budget is free again");
}

#[test]
fn status_reports_stage_times_and_starvation() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 8);
    let d = Daemon::start(&file_mount_args("/ds", data.path()));
    let mut client = open_loader(&d, 4, 64).expect("loader");
    let mut batches = 0;
    while client.next_batch().expect("batch").is_some() {
        batches += 1;
    }
    assert_eq!(batches, 4);
    let status = d.status_json();
    let l = &status["loaders"][0];
    assert_eq!(l["samples"], 16, "{status}");
    assert_eq!(l["batches_delivered"], 4, "{status}");
    for stage in ["fetch_secs", "decode_secs", "augment_secs"] {
        assert!(l[stage].as_f64().unwrap_or(0.0) > 0.0, "{stage}: {status}");
    }
    // This client never did anything but wait for batches.
    let starved = l["starved_percent"].as_f64().unwrap_or(0.0);
    assert!(starved > 0.0 && starved <= 100.0, "{status}");
    assert!(d.metric("loaderd_pipeline_stage_micros_total{stage=\"decode\"}") > 0.0);
}

#[test]
fn predecoded_delivery_is_compared_with_memcpy() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 1, 8);
    let d = Daemon::start(&file_mount_args("/ds", data.path()));
    let report = bench(&d, &["--batch-size", "4", "--size", "64", "--predecoded"]);
    assert_eq!(report["samples"], 8, "{report}");
    assert!(
        report["memcpy_mb_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(
        report["of_memcpy"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
}

#[test]
fn images_over_the_pixel_limit_are_refused_before_decoding() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 1, 3);
    let conf = tempfile::tempdir().expect("tempdir");
    let config = conf.path().join("loaderd.toml");
    // The generated images are 500x375 = 187,500 pixels.
    std::fs::write(&config, "[pipeline]\nmax_pixels = 100000\n").expect("write config");
    let mut a = file_mount_args("/ds", data.path());
    a.extend(args(&["--config", config.to_str().expect("utf-8 path")]));
    let d = Daemon::start(&a);
    let (keys, report) = epoch(&d, 0, 1, 0, 0);
    assert!(keys.is_empty(), "{report}");
    assert_eq!(
        report["skipped"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert!(d.log().contains("pixel"), "{}", d.log());
}
