//! The Rust client and `loaderctl bench pipeline --gpu` asking for a CUDA loader from a daemon
//! that uses no GPU (`--gpu off`, so on any machine): a host ring decoded on the CPU, the reason
//! said, the bench failing unless `--allow-cpu`, and then both runs on the same samples.

use loaderctl::client::shm::BatchClient;
use loaderd_proto::v1 as pb;
use loaderd_tests::{Daemon, file_mount_args, gen_dataset, small_epoch};

/// A daemon serving `dir` at `/ds` that uses no GPU.
fn cpu_daemon(dir: &std::path::Path) -> Daemon {
    let mut args = file_mount_args("/ds", dir);
    args.extend(["--gpu".to_string(), "off".to_string()]);
    Daemon::start(&args)
}

fn loader(cuda_device: Option<u32>) -> pb::OpenLoader {
    pb::OpenLoader {
        dataset: "/ds".into(),
        batch_size: 4,
        size: 32,
        train: true,
        seed: 3,
        depth: 2,
        name: "bench_gpu test".into(),
        cuda_device,
        ..Default::default()
    }
}

#[test]
fn a_cuda_loader_without_a_gpu_gets_a_host_ring_and_the_reason() {
    // The client's view of it (tests/tests/gpu.rs checks the batches against a CPU loader's).
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 5);
    let d = cpu_daemon(data.path());

    let mut gpu = BatchClient::open(&d.shm_socket(), loader(Some(0))).expect("open cuda loader");
    assert_eq!(gpu.memory(), pb::BatchMemory::Host);
    assert!(gpu.cuda_ring_fd().is_none());
    let o = gpu.opened().clone();
    assert_eq!(gpu.ring_bytes(), o.slot_bytes * u64::from(o.depth));
    let reason = gpu.gpu_reason().unwrap_or_default();
    assert!(
        reason.contains("gpu.mode is off"),
        "a host ring for a CUDA request says why: {o:?}"
    );
    let mut samples = 0;
    while let Some(b) = gpu.next_batch().expect("batch") {
        assert!(b.device.is_none(), "a host ring's batch has no device slot");
        assert_eq!(b.data.len() as u64, o.sample_bytes * b.labels.len() as u64);
        assert_eq!(b.len(), b.data.len() as u64);
        samples += b.labels.len();
    }
    assert_eq!(samples, 10);
    drop(gpu);
    let cpu = BatchClient::open(&d.shm_socket(), loader(None)).expect("open cpu loader");
    assert_eq!(cpu.gpu_reason(), None, "no reason when none was asked for");
}

#[test]
fn bench_gpu_fails_on_a_cpu_served_loader_unless_allowed() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 2, 6);
    let d = cpu_daemon(data.path());

    let err = d.ctl_err(&small_epoch(&["--gpu"]));
    assert!(
        err.contains("served the loader from the CPU") && err.contains("--allow-cpu"),
        "{err}"
    );
    assert!(
        err.contains("gpu.mode is off"),
        "the daemon says why: {err}"
    );
    let err = d.ctl_err(&small_epoch(&["--device", "1"]));
    assert!(err.contains("--gpu"), "{err}");

    let out = d.ctl_ok(&small_epoch(&[
        "--gpu",
        "--allow-cpu",
        "--json",
        "--seed",
        "5",
    ]));
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
    let g = &r["gpu"];
    assert_eq!(g["memory"], "host", "{r}");
    assert!(
        g["gpu_reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert_eq!(g["samples"], r["samples"], "{r}");
    assert_eq!(r["samples"], 12, "{r}");
    assert_eq!(g["same_order_as_cpu"], true, "{r}");
    let st = &g["status"];
    assert_eq!(st["device"], "cpu", "{r}");
    assert_eq!(st["samples"], 12, "{r}");
    assert_eq!(st["gpu_samples"], 0, "{r}");
    assert!(g["gpu_over_cpu"].as_f64().is_some_and(|x| x > 0.0), "{r}");

    // The text report says where it was served and why.
    let text = d.ctl_ok(&small_epoch(&["--gpu", "--allow-cpu"]));
    assert!(text.contains("gpu: served from the CPU: "), "{text}");
    assert!(text.contains("against"), "{text}");
}
