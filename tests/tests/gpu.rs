//! GPU loaders end to end: `gpu.mode = on` without a usable GPU refuses to start, naming the
//! reason; a loader asking for a CUDA device on a daemon without one is served from the CPU
//! into a host ring with the same batches as a CPU loader, says why in its reply and in
//! `loaderctl status`; and, on a machine with a GPU, a `gpu.mode = on` daemon serves a CUDA
//! loader from a device ring whose batches (read through the exported allocation in this
//! process) match the CPU loader's.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use loaderctl::client::shm::{BatchClient, ShmConnection};
use loaderd_gpu::{GpuAvailability, GpuDevice, H2dStream, ImportedMemory};
use loaderd_proto::v1 as pb;
use loaderd_tests::{Daemon, bin, file_mount_args, gen_dataset, output_with_timeout};
use prost::Message;

/// An epoch of small batches over `/ds`, seeded; `cuda_device` as given.
fn loader(name: &str, cuda_device: Option<u32>) -> pb::OpenLoader {
    pb::OpenLoader {
        dataset: "/ds".into(),
        batch_size: 4,
        size: 32,
        depth: 3,
        seed: 7,
        train: true,
        name: name.into(),
        cuda_device,
        ..Default::default()
    }
}

/// (labels, keys, bytes) of every batch of one epoch from a host ring.
fn host_epoch(client: &mut BatchClient) -> Vec<(Vec<i64>, Vec<String>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(b) = client.next_batch().expect("next batch") {
        out.push((b.labels, b.keys, b.data.to_vec()));
    }
    out
}

fn daemon(data: &std::path::Path, extra: &[&str]) -> Daemon {
    let mut args = file_mount_args("/ds", data);
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start(&args)
}

fn no_gpu_reason() -> Option<String> {
    match loaderd_gpu::detect() {
        GpuAvailability::Available(_) => None,
        GpuAvailability::Unavailable { reason } => Some(reason),
    }
}

#[test]
fn gpu_mode_on_without_a_usable_gpu_exits_at_start_naming_the_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut args = file_mount_args("/ds", data.path());
    args.extend(["--gpu".to_string(), "on".to_string()]);
    match no_gpu_reason() {
        Some(reason) => {
            let socket = data.path().join("loaderd.sock");
            let mut cmd = Command::new(bin("loaderd"));
            cmd.arg("--socket").arg(&socket).args(&args);
            let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "loaderd --gpu on started: {stderr}");
            assert!(
                stderr.contains("gpu.mode = on, but no GPU can be used")
                    && stderr.contains(&reason),
                "the exit names the mode and the reason ({reason}):\n{stderr}"
            );
            assert!(!socket.exists(), "it did not serve");
        }
        None => {
            // With a driver and a device, `on` starts and says so.
            let d = Daemon::start(&args);
            let gpu = &d.status_json()["gpu"];
            assert_eq!(
                (&gpu["mode"], &gpu["available"]),
                (&"on".into(), &true.into())
            );
        }
    }
}

#[test]
fn a_cuda_loader_without_its_gpu_gets_a_host_ring_the_cpu_batches_and_the_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 3, 5);
    // `off` anywhere; `auto` where there is no GPU (with one, auto serves it from the GPU).
    let mut modes = vec![("off", "gpu.mode is off".to_string())];
    if let Some(reason) = no_gpu_reason() {
        modes.push(("auto", reason));
    }
    for (mode, reason) in modes {
        let d = daemon(data.path(), &["--gpu", mode]);
        let mut cpu = BatchClient::open(&d.shm_socket(), loader("cpu", None)).expect("cpu");
        let mut asked =
            BatchClient::open(&d.shm_socket(), loader("asked", Some(0))).expect("cuda open");
        let o = asked.opened().clone();
        assert_eq!(o.memory, pb::BatchMemory::Host as i32, "{mode}: {o:?}");
        assert_eq!(o.ring_bytes, o.slot_bytes * u64::from(o.depth), "{o:?}");
        assert!(
            o.gpu_reason.contains("CUDA device 0") && o.gpu_reason.contains(&reason),
            "{mode}: the reply says why ({reason}): {:?}",
            o.gpu_reason
        );
        assert!(cpu.opened().gpu_reason.is_empty(), "{:?}", cpu.opened());

        // Status shows it while open: on the CPU, and why.
        let status = d.status_json();
        let loaders = status["loaders"].as_array().expect("loaders").clone();
        let shown = loaders
            .iter()
            .find(|l| l["name"] == "asked")
            .unwrap_or_else(|| panic!("{status}"));
        assert_eq!(shown["device"], "cpu", "{shown}");
        assert_eq!(shown["gpu_reason"], o.gpu_reason.as_str(), "{shown}");
        assert_eq!(shown["gpu_samples"], 0, "{shown}");
        let text = d.ctl_ok(&["status"]);
        assert!(
            text.contains(&format!("; cpu, not CUDA: {}", o.gpu_reason)),
            "{text}"
        );

        // The same batches as the CPU loader, byte for byte.
        let want = host_epoch(&mut cpu);
        let got = host_epoch(&mut asked);
        assert_eq!(want.len(), 4, "15 samples in batches of 4");
        assert_eq!(got, want, "{mode}: the CPU-served CUDA loader's batches");
    }
}

/// The next batch over a raw connection, releasing `release`.
fn next_batch(conn: &mut ShmConnection, release: i64) -> pb::BatchReady {
    let req = pb::ShmRequest {
        kind: Some(pb::shm_request::Kind::NextBatch(pb::NextBatch {
            release_slot: release,
        })),
    };
    let (buf, _) = conn.request(&req).expect("next batch");
    let ready = pb::BatchReady::decode(&buf[..]).expect("BatchReady");
    assert_eq!(ready.code, 0, "{ready:?}");
    ready
}

/// GPU only: needs a CUDA device with NVRTC and nvJPEG (skips with the reason without one;
/// fails under LOADERD_REQUIRE_GPU=1).
#[test]
fn gpu_loader_delivers_into_device_memory_the_cpu_loaders_samples() {
    let Some(gpu) = loaderd_gpu::detect::require_or_skip("a CUDA device", GpuDevice::open(0))
    else {
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    gen_dataset(data.path(), 3, 7);
    let d = daemon(data.path(), &["--gpu", "on"]);
    let mut cpu = BatchClient::open(&d.shm_socket(), loader("cpu", None)).expect("cpu loader");
    let want = host_epoch(&mut cpu);

    let mut conn = ShmConnection::connect(&d.shm_socket()).expect("connect");
    let req = pb::ShmRequest {
        kind: Some(pb::shm_request::Kind::OpenLoader(loader("gpu", Some(0)))),
    };
    let (buf, fd) = conn.request(&req).expect("open");
    let o = pb::LoaderOpened::decode(&buf[..]).expect("LoaderOpened");
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.memory, pb::BatchMemory::Cuda as i32, "{o:?}");
    assert_eq!(o.cuda_device, 0, "{o:?}");
    assert!(o.gpu_reason.is_empty(), "{o:?}");
    assert!(o.ring_bytes >= o.slot_bytes * u64::from(o.depth), "{o:?}");
    let fd: OwnedFd = fd.expect("the device ring's descriptor");
    let ring = ImportedMemory::import(gpu.context(), 0, fd.as_fd(), o.ring_bytes as usize)
        .expect("import the device ring");
    let stream = H2dStream::new(gpu.context()).expect("stream");

    let mut release = -1i64;
    let mut worst = 0.0f64;
    for (i, (labels, keys, bytes)) in want.iter().enumerate() {
        let b = next_batch(&mut conn, release);
        assert!(!b.end, "batch {i} of {}", want.len());
        assert_eq!((&b.labels, &b.keys), (labels, keys), "batch {i}");
        let off = b.slot as usize * o.slot_bytes as usize;
        let len = b.samples as usize * o.sample_bytes as usize;
        let pixels = ring.read(&stream, off..off + len).expect("read the slot");
        assert_eq!(pixels.len(), bytes.len(), "batch {i}");
        // nvJPEG decodes at full size where libjpeg-turbo may scale in the DCT: close, not
        // equal. Mean absolute difference in levels of 255.
        let mad = pixels
            .iter()
            .zip(bytes)
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / bytes.len().max(1) as f64;
        println!("batch {i}: mean absolute difference to the CPU batch {mad:.2}");
        worst = worst.max(mad);
        release = i64::from(b.slot);
    }
    assert!(
        worst < 12.0,
        "GPU batches differ from the CPU ones by {worst:.2} on average"
    );
    assert!(next_batch(&mut conn, release).end, "the epoch ends");

    let status = d.status_json();
    let shown = status["loaders"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "gpu").cloned())
        .unwrap_or_else(|| panic!("{status}"));
    println!("status of the GPU loader: {shown}");
    assert_eq!(shown["device"], "cuda:0", "{shown}");
    let samples = shown["samples"].as_u64().unwrap_or(0);
    let gpu_samples = shown["gpu_samples"].as_u64().unwrap_or(0);
    let fallback = shown["cpu_fallback_samples"].as_u64().unwrap_or(0);
    assert_eq!(samples, 21, "{shown}");
    assert_eq!(gpu_samples + fallback, samples, "{shown}");
    assert!(
        shown["device_bytes"].as_u64().unwrap_or(0) >= o.ring_bytes,
        "{shown}"
    );
    assert!(shown["gpu_secs"].as_f64().unwrap_or(0.0) > 0.0, "{shown}");
}
