"""The CUDA path on a GPU: device rings, zero-copy tensors, slot reuse, the host-register path.

Each test skips with the reason printed where torch has no CUDA device, and fails instead
under ``LOADERD_REQUIRE_GPU=1`` (the prepared GPU check sets it). The GPU daemon runs with
``--gpu on``, so a daemon that cannot use the GPU fails at start rather than passing these on
the CPU. What they measure is printed (run with ``-s`` to see it).

Tolerance of the GPU path against the CPU path (nvJPEG's IDCT and upsampling are not
libjpeg-turbo's; crops, flips and the resize are the same): in uint8 levels, at least 98% of
the values within 4 levels and a mean absolute difference of at most 1.5. Normalized layouts
are compared in the same levels (``(x * std + mean) * 255``).
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import socket
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import numpy as np
import pytest

from _support import Binaries, Daemon, open_loader, require_cuda

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
#: At least this share of values within LEVELS of the CPU path's, and this mean difference.
WITHIN, LEVELS, MEAN_ABS = 0.98, 4.0, 1.5


@pytest.fixture(scope="module")
def torch() -> Any:
    return require_cuda()


def gpu_mode_daemon(
    bins: Binaries, dataset: Path, tmp: pytest.TempPathFactory, mode: str
) -> Iterator[Daemon]:
    d = Daemon(bins, tmp.mktemp(f"gpu-{mode}"), {"/data": dataset}, ["--gpu", mode])
    d.start()
    yield d
    print(f"--gpu {mode} daemon log tail:\n{d.log.read_text()[-3000:]}")
    d.stop()


@pytest.fixture(scope="module")
def gpu_daemon(
    torch: Any, bins: Binaries, dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon that must decode on the GPU (``--gpu on``)."""
    yield from gpu_mode_daemon(bins, dataset, tmp_path_factory, "on")


@pytest.fixture(scope="module")
def no_gpu_daemon(
    torch: Any, bins: Binaries, dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon told not to use the GPU (``--gpu off``)."""
    yield from gpu_mode_daemon(bins, dataset, tmp_path_factory, "off")


def cpu_batches(daemon: Daemon, **kwargs: Any) -> List[Tuple[np.ndarray, np.ndarray, List[str]]]:
    """The CPU path's epoch (host ring): images, labels and keys per batch, copied."""
    with open_loader(daemon, **kwargs) as loader:
        return [(b.images.copy(), b.labels.copy(), list(b.keys)) for b in loader.batches()]


def levels(x: np.ndarray, layout: str) -> np.ndarray:
    """uint8 levels of a batch in ``layout`` (NCHW ones normalized with the ImageNet mean/std)."""
    x = x.astype(np.float64)
    if layout == "NHWC":
        return x
    return (x * STD[None, :, None, None] + MEAN[None, :, None, None]) * 255.0


def assert_close(got: np.ndarray, want: np.ndarray, layout: str, what: str) -> float:
    """Asserts the tolerance of the module docstring; returns the share within it."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    diff = np.abs(levels(got, layout) - levels(want, layout))
    within = float(np.mean(diff <= LEVELS)) if diff.size else 1.0
    mean = float(diff.mean()) if diff.size else 0.0
    assert within >= WITHIN and mean <= MEAN_ABS, (
        f"{what}: {within:.2%} of values within {LEVELS} levels (want {WITHIN:.0%}), "
        f"mean |diff| {mean:.3f} (want <= {MEAN_ABS}), max {diff.max():.1f}"
    )
    return within


def slow_gpu(torch: Any, ms: float = 20.0) -> None:
    """Queues about ``ms`` of GPU time on the current stream, so later kernels wait."""
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(int(ms * 1.5e6))  # cycles at ~1.5 GHz
    else:  # pragma: no cover (every torch release so far has it)
        a = torch.randn(2048, 2048, device="cuda")
        for _ in range(int(ms)):
            a = a @ a / 2048


@pytest.mark.parametrize(
    "layout, dtype_name", [("NHWC", "uint8"), ("NCHW", "float32"), ("NCHW16", "float16")]
)
def test_cuda_loader_yields_device_tensors_like_the_cpu_path(
    torch: Any, gpu_daemon: Daemon, layout: str, dtype_name: str
) -> None:
    want = cpu_batches(gpu_daemon, batch_size=8, seed=3, layout=layout)
    started = time.monotonic()
    shares = []
    with open_loader(gpu_daemon, batch_size=8, seed=3, layout=layout, device="cuda") as loader:
        assert loader.memory == "cuda", f"served from the host: {loader.gpu_reason!r}"
        assert loader.gpu_reason == ""
        n = 0
        for batch, (want_images, want_labels, want_keys) in zip(loader.batches(), want):
            images, labels = batch.images, batch.labels
            assert images.is_cuda and labels.is_cuda
            assert images.device == labels.device == torch.device("cuda", 0)
            assert images.dtype == getattr(torch, dtype_name) and labels.dtype == torch.int64
            assert images.is_contiguous()
            assert batch.keys == want_keys
            np.testing.assert_array_equal(labels.cpu().numpy(), want_labels)
            shares.append(assert_close(images.cpu().numpy(), want_images, layout, f"batch {n}"))
            n += 1
        assert n == len(want)
    took = time.monotonic() - started
    print(
        f"{layout}: {n} batches on the GPU path in {took:.2f}s, values within {LEVELS} levels "
        f"of the CPU path: min {min(shares):.3%} mean {np.mean(shares):.3%}"
    )


def test_a_cuda_loader_torch_yields_its_own_device_only(torch: Any, gpu_daemon: Daemon) -> None:
    import loaderd

    with open_loader(gpu_daemon, batch_size=8, device="cuda:0") as loader:
        assert loader.device == torch.device("cuda", 0)
        for device in ("cuda", "cuda:0", torch.device("cuda", 0)):
            images, labels = next(iter(loader.torch(device)))
            assert images.device == labels.device == torch.device("cuda", 0)
        with pytest.raises(loaderd.InvalidArgument, match="batches are on cuda:0"):
            next(iter(loader.torch("cpu")))


@pytest.mark.parametrize("depth", [2, 3])
def test_slots_hold_still_while_held_and_are_reused_over_the_epoch(
    torch: Any, gpu_daemon: Daemon, depth: int
) -> None:
    want = cpu_batches(gpu_daemon, batch_size=4, seed=5)
    assert len(want) > 2 * depth, "the epoch must be longer than the ring"
    ptrs = set()
    prev = None
    with open_loader(gpu_daemon, batch_size=4, seed=5, depth=depth, device="cuda") as loader:
        assert loader.memory == "cuda", loader.gpu_reason
        depth = loader._pending().opened.depth  # what the daemon made of it
        assert len(want) > 2 * depth
        for k, (x, y) in enumerate(loader):
            ptrs.add(x.data_ptr())
            snap = x.clone()
            time.sleep(0.05)  # the daemon fills the other slots meanwhile
            assert torch.equal(x, snap), f"batch {k} changed while held"
            if prev is not None:
                # Its slot goes back one batch later: still unchanged now.
                assert torch.equal(prev[0], prev[1]), f"batch {k - 1} changed under batch {k}"
            assert_close(x.cpu().numpy(), want[k][0], "NHWC", f"batch {k}")
            np.testing.assert_array_equal(y.cpu().numpy(), want[k][1])
            prev = (x, snap)
        assert k + 1 == len(want)
    print(f"depth {depth}: {len(want)} batches in {len(ptrs)} distinct slots")
    assert 2 <= len(ptrs) <= depth


def test_queued_kernels_read_their_batch_not_the_next_ones(torch: Any, gpu_daemon: Daemon) -> None:
    """Copies queued behind a slow kernel run after the trainer asked for later batches:
    each must still read its own batch (the slot goes back only after its event)."""
    want = cpu_batches(gpu_daemon, batch_size=4, seed=7)
    copies = []
    asked = time.monotonic()
    with open_loader(gpu_daemon, batch_size=4, seed=7, depth=2, device="cuda") as loader:
        for x, _ in loader:
            slow_gpu(torch)
            copies.append(x.clone())  # runs after the sleep, long after this loop moved on
        looped = time.monotonic() - asked
        torch.cuda.synchronize()
    drained = time.monotonic() - asked
    for k, (copy, (images, _, _)) in enumerate(zip(copies, want)):
        assert_close(copy.cpu().numpy(), images, "NHWC", f"queued copy of batch {k}")
    print(f"{len(copies)} queued copies: loop {looped:.3f}s, GPU done at {drained:.3f}s")


def test_closing_frees_the_device_ring_once_its_tensors_go(torch: Any, gpu_daemon: Daemon) -> None:
    free_before = torch.cuda.mem_get_info(0)[0]
    loader = open_loader(gpu_daemon, batch_size=32, size=224, layout="NCHW", depth=4, device="cuda")
    it = iter(loader)
    x, y = next(it)
    session = loader._running
    assert session is not None and session.mapping is not None
    ring_bytes = session.opened.ring_bytes
    assert ring_bytes >= session.opened.slot_bytes * session.opened.depth
    mapping = weakref.ref(session.mapping)
    del session
    snap = x.clone()
    free_open = torch.cuda.mem_get_info(0)[0]
    loader.close()
    it.close()
    # A tensor handed out keeps the mapping, like a numpy view keeps a host ring.
    alive = mapping()
    assert alive is not None and alive.mapped
    del alive
    assert torch.equal(x, snap)
    del x, y, it
    gc.collect()
    assert mapping() is None, "the mapping outlived its last tensor"
    deadline = time.monotonic() + 20
    free_after = torch.cuda.mem_get_info(0)[0]
    while free_after < free_open + ring_bytes // 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        free_after = torch.cuda.mem_get_info(0)[0]
    mib = 1 << 20
    print(
        f"ring {ring_bytes / mib:.1f} MiB; free before {free_before / mib:.0f} MiB, open "
        f"{free_open / mib:.0f} MiB, after close {free_after / mib:.0f} MiB"
    )
    assert free_after >= free_open + ring_bytes // 2, "the device ring's memory came not back"
    status = gpu_daemon.ctl("status")
    print(status.stdout[-2000:])


def test_host_register_path_equals_the_cpu_batches(
    torch: Any, daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    want = cpu_batches(daemon, batch_size=8, seed=3)
    caplog.set_level(logging.INFO, logger="loaderd")
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with open_loader(daemon, batch_size=8, seed=3, depth=2) as loader:
            got = []
            for images, labels in loader.torch("cuda"):
                assert images.is_cuda and labels.is_cuda
                slow_gpu(torch, 10)  # the next copies queue behind it
                got.append((images, labels))
            torch.cuda.synchronize()
    took = time.monotonic() - started
    assert not [w for w in warned if "page-lock" in str(w.message)], [
        str(w.message) for w in warned
    ]
    assert any("page-locked host ring" in r.getMessage() for r in caplog.records)
    assert len(got) == len(want)
    for k, ((images, labels), (want_images, want_labels, _)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(images.cpu().numpy(), want_images, f"batch {k}")
        np.testing.assert_array_equal(labels.cpu().numpy(), want_labels)
    print(f"host-register path: {len(got)} batches equal to the CPU ones in {took:.2f}s")


def test_a_cuda_loader_on_a_daemon_off_the_gpu_falls_back_with_the_reason(
    torch: Any, no_gpu_daemon: Daemon
) -> None:
    want = cpu_batches(no_gpu_daemon, batch_size=8, seed=3)
    with pytest.warns(RuntimeWarning, match="served cuda:0 from host memory") as warned:
        with open_loader(no_gpu_daemon, batch_size=8, seed=3, device="cuda:0") as loader:
            assert loader.memory == "host" and loader.gpu_reason
            got = [(x.cpu().numpy(), y.cpu().numpy()) for x, y in loader]
    print(f"fallback: {loader.gpu_reason!r}; warnings {[str(w.message) for w in warned]}")
    assert len(got) == len(want)
    for (images, labels), (want_images, want_labels, _) in zip(got, want):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_device_mapping_reads_memory_another_process_exported(torch: Any) -> None:
    """The import half of the device ring without the daemon: a child exports a cuMemCreate
    allocation as a POSIX fd over SCM_RIGHTS, as the daemon does; slots of it become tensors
    through ``__cuda_array_interface__`` and stay readable after the child frees its side."""
    from _cuda_export import pattern

    from loaderd._cudadrv import DeviceMapping
    from loaderd._torch import SlotArray, cuda_array_interface

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_cuda_export.py")), str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    theirs.close()
    try:
        ours.settimeout(60)
        msg, fds, _, _ = socket.recv_fds(ours, 64, 1)
        assert fds, f"the exporter sent no descriptor: {msg!r}"
        size = int(msg)
        try:
            mapping = DeviceMapping(fds[0], size, 0)
        finally:
            os.close(fds[0])
        want = pattern(size)
        half = size // 2
        tensors = []
        for slot in (0, 1):
            interface = cuda_array_interface(mapping.ptr, slot, half, (half,), np.dtype(np.uint8))
            t = torch.as_tensor(SlotArray(mapping, interface))
            assert t.device == torch.device("cuda", 0) and t.dtype == torch.uint8
            assert t.data_ptr() == mapping.ptr + slot * half
            np.testing.assert_array_equal(t.cpu().numpy(), want[slot * half : (slot + 1) * half])
            tensors.append(t)
        # Read-write: an in-place op on a slot works (and stays in that slot).
        tensors[1][:4096].zero_()
        torch.cuda.synchronize()
        assert int(tensors[1][:4096].sum()) == 0
        np.testing.assert_array_equal(tensors[0].cpu().numpy(), want[:half])
        ours.sendall(b"done")
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0, out
        # The exporter freed its side; this mapping still holds the memory.
        np.testing.assert_array_equal(tensors[0].cpu().numpy(), want[:half])
        ref = weakref.ref(mapping)
        del mapping
        assert ref() is not None, "the tensors hold the mapping"
        del tensors, t
        gc.collect()
        assert ref() is None, "the mapping outlived its tensors"
        print(f"imported {size} bytes from pid {child.pid}: both slots read back, unmapped")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        ours.close()


def test_host_registration_of_a_read_only_memfd_mapping(torch: Any) -> None:
    """The host-register path without the daemon: a memfd mapped read-only and shared, as
    the client maps a host ring, page-locked and copied from asynchronously."""
    from loaderd._cudadrv import HostRegistration
    from loaderd._torch import readonly_tensor

    size = 8 << 20
    fd = os.memfd_create("loaderd-test-ring")
    try:
        os.ftruncate(fd, size)
        data = (np.arange(size, dtype=np.uint64) % 253).astype(np.uint8)
        os.pwrite(fd, data.tobytes(), 0)
        ring = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = np.frombuffer(ring, dtype=np.uint8)
    reg = HostRegistration(int(view.ctypes.data), size, 0)
    try:
        src = readonly_tensor(torch, view)
        dst = torch.empty(size, dtype=torch.uint8, device="cuda")
        started = time.monotonic()
        dst.copy_(src, non_blocking=True)
        queued = time.monotonic() - started
        torch.cuda.synchronize()
        took = time.monotonic() - started
        np.testing.assert_array_equal(dst.cpu().numpy(), data)
        print(
            f"registered copy of {size >> 20} MiB: queued in {queued * 1e3:.2f} ms, done in "
            f"{took * 1e3:.2f} ms"
        )
    finally:
        reg.close()
        reg.close()  # idempotent
    del src, view
    ring.close()
