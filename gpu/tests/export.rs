//! GPU tests of the daemon-side runtime: [`GpuDevice`] (opened once, the kernel compiled once),
//! [`ExportedMemory`] (the device ring another process maps) and batches written into a slice
//! of it. Each skips with a printed reason without a usable GPU (device, NVRTC and nvJPEG:
//! what `GpuDevice::open` needs) and fails instead under `LOADERD_REQUIRE_GPU=1`.
//!
//! The cross-process test re-executes this test binary as the importer: the exported
//! descriptor is inherited (close-on-exec cleared for the spawn), and parent and child step
//! each other through the child's stdin and stdout.

use std::io::Write as _;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use image::ImageEncoder as _;
use loaderd_gpu::detect::{REQUIRE_GPU_ENV, require_or_skip};
use loaderd_gpu::{
    BatchConfig, CropBox, DeviceSliceMut, ExportedMemory, GpuContext, GpuDevice, GpuSample,
    H2dStream, HostImage, ImportedMemory, Layout, SampleSource, open_all,
};

#[path = "../src/testdata.rs"]
mod testdata;
use testdata::noise;

mod child;
use child::{ChildRun, await_go, child_args, cloexec, run_test};

/// Set in the re-executed child: the inherited descriptor, the allocation's length, the
/// device ordinal (`fd,len,ordinal`).
const CHILD_ENV: &str = "LOADERD_TEST_IMPORT";
/// The child's progress lines (matched anywhere in a line: libtest may print the test's name
/// on the same line).
const CHILD_MAPPED: &str = "child-step: mapped and checked";
const CHILD_STILL_MAPPED: &str = "child-step: still mapped after the exporter dropped it";

/// Device 0 opened the way the daemon opens it; `None` (skip) or a failure under
/// `LOADERD_REQUIRE_GPU=1` when it cannot be.
fn device_or_skip() -> Option<Arc<GpuDevice>> {
    require_or_skip("a usable CUDA device", GpuDevice::open(0))
}

/// What the parent writes: noise from a fixed seed, then 0xAB over `MARK` (a device-side
/// memset, not a host copy).
fn expected(len: usize) -> Vec<u8> {
    let mut v = noise(len, 77);
    v[mark(len)].fill(0xAB);
    v
}

fn mark(len: usize) -> std::ops::Range<usize> {
    len / 2..len / 2 + 4096
}

/// What the child writes back at the start of the allocation.
fn child_bytes() -> Vec<u8> {
    noise(8192, 78)
}

/// Exported device memory is mapped by a child process: the child reads exactly what this
/// process's copy and memset wrote, its own write is visible here, and its mapping stays
/// valid (same bytes) after this process dropped the allocation and its descriptor.
#[test]
fn exported_memory_maps_in_a_child_process() {
    if let Some(args) = child_args(CHILD_ENV) {
        child_imports(&args);
        return;
    }
    let Some(dev) = device_or_skip() else { return };
    let stream = H2dStream::new(dev.context()).unwrap();
    let mem = ExportedMemory::new(&dev, 3 << 20).unwrap();
    let len = mem.len();
    assert_eq!(len % dev.allocation_granularity(), 0);
    assert!(len >= 3 << 20);
    let want = expected(len);
    {
        // SAFETY: the only view of the allocation while it lives.
        let mut all = unsafe { mem.slice_mut(0..len) };
        stream.write_blocking(&noise(len, 77), &mut all).unwrap();
        stream
            .memset(&mut all.sub(mark(len)).unwrap(), 0xAB)
            .unwrap();
        stream.synchronize().unwrap();
    }
    assert!(mem.read(&stream, 0..len).unwrap() == want, "own read back");
    let fd = mem.export_fd().unwrap();
    assert!(cloexec(&fd), "exported descriptors are close-on-exec");
    let extra = format!("{len},{}", dev.info().ordinal);
    let mut child = ChildRun::spawn(
        "exported_memory_maps_in_a_child_process",
        &fd,
        CHILD_ENV,
        &extra,
    );
    let mapped = child.wait_for(CHILD_MAPPED);
    // The child's write, seen through this process's mapping.
    let head_ok = mapped && mem.read(&stream, 0..8192).unwrap() == child_bytes();
    // Drop everything this process holds: the allocation (waits, unmaps, frees the range,
    // releases the handle) and the descriptor. The child's mapping keeps the memory.
    drop(mem);
    drop(fd);
    drop(stream);
    child.go();
    let still = child.wait_for(CHILD_STILL_MAPPED);
    let (status, transcript) = child.finish();
    assert!(mapped, "the child did not map the memory:\n{transcript}");
    assert!(head_ok, "the child's write is not visible to the exporter");
    assert!(
        status.success() && still,
        "child failed ({status}):\n{transcript}"
    );
}

/// The child's side: import, check, write, wait for the parent to drop, check again.
fn child_imports(args: &[usize]) {
    let [raw, len, ordinal] = args[..] else {
        panic!("{CHILD_ENV}: {args:?}")
    };
    let ordinal = u32::try_from(ordinal).unwrap();
    // SAFETY: the parent passed this descriptor open and inheritable; we borrow it only while
    // importing and never close it (the process exits soon after).
    let fd = unsafe { BorrowedFd::borrow_raw(i32::try_from(raw).unwrap()) };
    let ctx = GpuContext::new(ordinal).unwrap();
    let stream = H2dStream::new(&ctx).unwrap();
    let mem = ImportedMemory::import(&ctx, ordinal, fd, len).unwrap();
    let got = mem.read(&stream, 0..len).unwrap();
    let mut want = expected(len);
    assert!(
        got == want,
        "the child reads other bytes than the parent wrote"
    );
    {
        // SAFETY: the parent does not touch these bytes until we say CHILD_MAPPED.
        let mut head = unsafe { mem.slice_mut(0..8192) };
        stream.write_blocking(&child_bytes(), &mut head).unwrap();
    }
    want[..8192].copy_from_slice(&child_bytes());
    println!("{CHILD_MAPPED}");
    await_go();
    let again = mem.read(&stream, 0..len).unwrap();
    assert!(
        again == want,
        "the memory changed after the exporter dropped it"
    );
    println!("{CHILD_STILL_MAPPED}");
    drop(mem);
}

/// Runs on any machine: the same re-exec protocol as the cross-process GPU test, over a
/// plain file, so its plumbing (the inherited descriptor, the steps through stdin and stdout,
/// a failing child's message reaching the parent) is checked where there is no GPU.
#[test]
fn child_protocol_passes_a_descriptor() {
    const ENV: &str = "LOADERD_TEST_FILE_CHILD";
    if let Some(args) = child_args(ENV) {
        let [raw, len] = args[..] else {
            panic!("{ENV}: {args:?}")
        };
        // SAFETY: the parent passed this descriptor open and inheritable.
        let fd = unsafe { BorrowedFd::borrow_raw(i32::try_from(raw).unwrap()) };
        let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, 0).unwrap();
        assert!(got == expected(len), "the child reads other bytes");
        file.write_all_at(&child_bytes(), 0).unwrap();
        println!("{CHILD_MAPPED}");
        await_go();
        file.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..8192] == child_bytes()[..], "the file changed");
        println!("{CHILD_STILL_MAPPED}");
        return;
    }
    let len = 3 << 16;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&expected(len)).unwrap();
    let fd = OwnedFd::from(file);
    assert!(
        cloexec(&fd),
        "tempfile opens close-on-exec; spawn must clear it"
    );
    let test = "child_protocol_passes_a_descriptor";
    let mut child = ChildRun::spawn(test, &fd, ENV, &len.to_string());
    assert!(child.wait_for(CHILD_MAPPED), "no first step");
    let file = std::fs::File::from(fd);
    let mut head = vec![0u8; 8192];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head == child_bytes(), "the child's write is not visible");
    drop(file);
    child.go();
    assert!(child.wait_for(CHILD_STILL_MAPPED), "no second step");
    let (status, transcript) = child.finish();
    assert!(status.success(), "{status}:\n{transcript}");
    // A child whose check fails fails the run, and says why: a descriptor of other bytes.
    let mut other = tempfile::tempfile().unwrap();
    other.write_all(&noise(len, 1)).unwrap();
    let other = OwnedFd::from(other);
    let mut child = ChildRun::spawn(test, &other, ENV, &len.to_string());
    assert!(!child.wait_for(CHILD_MAPPED));
    let (status, transcript) = child.finish();
    assert!(!status.success(), "{transcript}");
    assert!(
        transcript.contains("the child reads other bytes"),
        "{transcript}"
    );
}

/// Lengths round up to the granularity; an empty allocation is refused.
#[test]
fn exported_memory_rounds_up_to_the_granularity() {
    let Some(dev) = device_or_skip() else { return };
    let g = dev.allocation_granularity();
    println!("allocation granularity {g} bytes");
    assert!(g.is_power_of_two(), "{g}");
    assert_eq!(ExportedMemory::new(&dev, 1).unwrap().len(), g);
    assert_eq!(ExportedMemory::new(&dev, g).unwrap().len(), g);
    assert_eq!(ExportedMemory::new(&dev, g + 1).unwrap().len(), 2 * g);
    assert!(ExportedMemory::new(&dev, 0).is_err());
    assert!(ExportedMemory::new(&dev, usize::MAX).is_err());
}

fn jpeg(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            &noise(w as usize * h as usize * 3, seed),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// Three JPEGs and one caller-decoded image, with crops and flips.
struct Inputs {
    files: Vec<Vec<u8>>,
    rgb: Vec<u8>,
}

impl Inputs {
    fn new() -> Self {
        Inputs {
            files: vec![jpeg(320, 240, 1), jpeg(97, 131, 2), jpeg(500, 375, 3)],
            rgb: noise(64 * 48 * 3, 4),
        }
    }

    fn items(&self) -> Vec<GpuSample<'_>> {
        let crop = |x0, y0, x1, y1| CropBox { x0, y0, x1, y1 };
        let mut items: Vec<GpuSample<'_>> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| GpuSample {
                source: SampleSource::Jpeg(f),
                crop: crop(3.0 + i as f64, 2.5, 90.0, 96.0),
                flip: i % 2 == 0,
            })
            .collect();
        items.push(GpuSample {
            source: SampleSource::Rgb(HostImage {
                pixels: &self.rgb,
                width: 64,
                height: 48,
                stride: 192,
            }),
            crop: crop(1.0, 1.0, 60.5, 40.0),
            flip: true,
        });
        items
    }
}

fn small_config(layout: Layout) -> BatchConfig {
    BatchConfig {
        max_batch: 4,
        out_width: 56,
        out_height: 48,
        layout,
        ..BatchConfig::default()
    }
}

/// A batch run into a slot of exported memory (not at offset 0) holds the same bytes as the
/// same batch run into a DeviceBuffer, and leaves the bytes around the slot alone; the
/// stream's timing events give the batch's GPU time, as the loader reports it.
#[test]
fn batch_into_exported_slot_equals_device_buffer() {
    let Some(dev) = device_or_skip() else { return };
    let inputs = Inputs::new();
    let items = inputs.items();
    for layout in [Layout::NhwcU8, Layout::NchwF16, Layout::NchwF32] {
        let mut pipe = dev.batch_pipeline(small_config(layout)).unwrap();
        let n = pipe.output_bytes(items.len());
        let mut buf = pipe.stream().alloc(n).unwrap();
        let report = pipe.run(&items, buf.as_slice_mut()).unwrap();
        assert_eq!(report.delivered(), items.len(), "{report:?}");
        let want = pipe.stream().to_host(&buf).unwrap();

        // Slot 1 of a ring of slots of `n` bytes.
        let mem = ExportedMemory::new(&dev, 3 * n).unwrap();
        let slot = n..2 * n;
        {
            // SAFETY: the only view of the allocation while it lives.
            let mut all = unsafe { mem.slice_mut(0..mem.len()) };
            pipe.stream().memset(&mut all, 0x5A).unwrap();
        }
        let start = pipe.stream().record().unwrap();
        // SAFETY: the only live view of `slot`.
        let out: DeviceSliceMut<'_> = unsafe { mem.slice_mut(slot.clone()) };
        let report = pipe.run(&items, out).unwrap();
        let end = pipe.stream().record().unwrap();
        end.synchronize().unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        println!(
            "{layout:?}: batch of {} on the GPU in {ms:.3} ms",
            items.len()
        );
        assert!(ms >= 0.0);
        assert_eq!(report.delivered(), items.len());
        let got = mem.read(pipe.stream(), slot.clone()).unwrap();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{layout:?}: {differ} of {n} bytes differ");
        let before = mem.read(pipe.stream(), 0..slot.start).unwrap();
        let after = mem.read(pipe.stream(), slot.end..mem.len()).unwrap();
        assert!(
            before.iter().chain(&after).all(|&b| b == 0x5A),
            "{layout:?}: bytes outside the slot changed"
        );
        // A slot too small for the batch is refused before anything is queued.
        // SAFETY: as above; the earlier view is gone.
        let short = unsafe { mem.slice_mut(0..n - 1) };
        assert!(pipe.run(&items, short).is_err());
        if layout != Layout::NhwcU8 {
            // A slot off its element boundary is refused (the kernel's stores would fault).
            // SAFETY: as above.
            let skewed = unsafe { mem.slice_mut(1..n + 1) };
            let e = pipe.run(&items, skewed).unwrap_err();
            assert!(e.to_string().contains("aligned"), "{e}");
        }
    }
}

/// `GpuDevice::open` compiles the kernel once: two batch pipelines (and `open_all`'s devices
/// being opened separately) compile nothing more on that device, and both pipelines give the
/// same bytes for the same batch.
#[test]
fn device_compiles_once_and_pipelines_share_the_kernel() {
    let Some(dev) = device_or_skip() else { return };
    // One program (two only where this NVRTC gives no CUBIN and the PTX fallback compiles
    // again, which the log says).
    let compiled = dev.nvrtc().compilations();
    println!(
        "NVRTC {:?} compiled {compiled} program(s) at open",
        dev.nvrtc().version()
    );
    assert!((1..=2).contains(&compiled), "{compiled}");
    let config = small_config(Layout::NhwcU8);
    let mut a = dev.batch_pipeline(config).unwrap();
    let mut b = dev.batch_pipeline(config).unwrap();
    assert_eq!(
        dev.nvrtc().compilations(),
        compiled,
        "batch_pipeline compiled again"
    );
    let inputs = Inputs::new();
    let items = inputs.items();
    let mut outs = Vec::new();
    for pipe in [&mut a, &mut b] {
        let mut buf = pipe.stream().alloc(pipe.output_bytes(items.len())).unwrap();
        pipe.run(&items, buf.as_slice_mut()).unwrap();
        outs.push(pipe.stream().to_host(&buf).unwrap());
    }
    assert!(outs[0] == outs[1], "two pipelines of one device disagree");
    assert_eq!(dev.nvrtc().compilations(), compiled);
    let all = open_all().unwrap();
    assert!(!all.is_empty());
    assert_eq!(all[0].info(), dev.info());
    println!(
        "{} device(s); device 0: {} (sm_{}{}), nvJPEG {}",
        all.len(),
        dev.info().name,
        dev.info().compute_capability.0,
        dev.info().compute_capability.1,
        dev.nvjpeg().path()
    );
}

/// Dropping in awkward orders does not crash and frees in time: the device before its
/// memory and pipelines; exported memory and a DeviceBuffer (lent as a view to another
/// stream) dropped right after queueing work into them, without synchronizing (their drops
/// wait for it); and an exported descriptor outliving its ExportedMemory still maps (the
/// descriptor holds the allocation) in a new import.
#[test]
fn drop_order_does_not_crash() {
    let Some(dev) = device_or_skip() else { return };
    let inputs = Inputs::new();
    let items = inputs.items();
    let mut pipe = dev.batch_pipeline(small_config(Layout::NchwF32)).unwrap();
    let n = pipe.output_bytes(items.len());
    let mem = ExportedMemory::new(&dev, n).unwrap();
    let ctx = dev.context().clone();
    let ordinal = dev.info().ordinal;
    drop(dev); // the memory and the pipeline keep the context
    {
        // SAFETY: the only view of the allocation.
        let out = unsafe { mem.slice_mut(0..n) };
        pipe.run(&items, out).unwrap();
    }
    let want = mem.read(pipe.stream(), 0..n).unwrap();
    let fd = mem.export_fd().unwrap();
    {
        // SAFETY: as above.
        let out = unsafe { mem.slice_mut(0..n) };
        pipe.run(&items, out).unwrap();
    }
    let len = mem.len();
    drop(mem); // queued work still running: the drop waits for it, then unmaps and frees
    let other = H2dStream::new(&ctx).unwrap();
    let again = ImportedMemory::import(&ctx, ordinal, fd_ref(&fd), len).unwrap();
    drop(fd);
    let got = again.read(&other, 0..n).unwrap();
    assert!(got == want, "the descriptor did not keep the allocation");
    drop(again);
    // A DeviceBuffer allocated on another stream, written through a view on the pipeline's
    // stream and dropped at once: its drop waits for the context before cudarc frees it.
    let mut buf = other.alloc(n).unwrap();
    pipe.run(&items, buf.as_slice_mut()).unwrap();
    drop(buf);
    drop(pipe);
    drop(other);
    ctx.cuda().synchronize().unwrap();
}

fn fd_ref(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

/// Runs on any machine: without a usable GPU these tests skip with a reason, and under
/// `LOADERD_REQUIRE_GPU=1` they fail naming it (checked on a child run of one of them).
#[test]
fn require_gpu_fails_these_tests_without_a_device() {
    let Err(reason) = GpuDevice::open(0) else {
        println!("device 0 opens here: nothing to check");
        return;
    };
    let test = "exported_memory_rounds_up_to_the_granularity";
    let (ok, text) = run_test(test, true);
    assert!(
        !ok,
        "passed under {REQUIRE_GPU_ENV}=1 without a device:\n{text}"
    );
    assert!(text.contains(&reason.to_string()), "{text}");
    let (ok, text) = run_test(test, false);
    assert!(
        ok && text.contains("skipping: a usable CUDA device"),
        "{text}"
    );
}
