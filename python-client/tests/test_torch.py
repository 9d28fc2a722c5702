"""``Loader.torch()``: skipped (with the reason) where torch is not installed."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from _support import CLIENT_ROOT, Daemon, open_loader, require_cuda

torch = pytest.importorskip("torch", reason="torch is not installed: Loader.torch() untested")


def test_cpu_tensors_are_zero_copy_without_warnings(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        want = [(b.images.copy(), b.labels.copy()) for b in loader.batches()]
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = loader.torch(device=None)
            for (want_images, want_labels), (images, labels) in zip(want, got):
                assert images.dtype == torch.uint8 and labels.dtype == torch.int64
                np.testing.assert_array_equal(images.numpy(), want_images)
                np.testing.assert_array_equal(labels.numpy(), want_labels)
                assert loader.last_keys  # the loader's own iteration drives it


def test_layouts_map_to_torch_dtypes(daemon: Daemon) -> None:
    for layout, dtype in (("NCHW", torch.float32), ("NCHW16", torch.float16)):
        with open_loader(daemon, batch_size=8, layout=layout) as loader:
            images, _ = next(iter(loader.torch(device="cpu")))
            assert images.dtype == dtype and images.shape == (8, 3, 64, 64)


def test_cuda_copies_match_the_slot(daemon: Daemon) -> None:
    require_cuda()
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        host = [(b.images.copy(), b.labels.copy()) for b in loader.batches()]
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        for (want, want_labels), (images, labels) in zip(host, loader.torch("cuda")):
            assert images.is_cuda and labels.is_cuda
            np.testing.assert_array_equal(images.cpu().numpy(), want)
            np.testing.assert_array_equal(labels.cpu().numpy(), want_labels)


def test_in_place_ops_on_cpu_tensors_work_and_never_reach_the_daemon(daemon: Daemon) -> None:
    # In a child: before copy-on-write slots, `x.add_(1)` on a tensor over the read-only
    # slot killed the process with SIGSEGV.
    child = f"""
import sys
sys.path.insert(0, {str(CLIENT_ROOT)!r})
import torch, loaderd
def open(): return loaderd.Loader("/data", 8, socket={str(daemon.socket)!r}, size=64, seed=5,
                                  depth=2)
with open() as loader:
    want = [torch.from_numpy(b.images.copy()) for b in loader.batches()]
n = 0
with open() as loader:
    for (x, _), w in zip(loader.torch(device=None), want):
        # Each batch is the daemon's, also in a slot whose pages an earlier batch wrote.
        assert torch.equal(x, w), f"batch {{n}} differs from the daemon's"
        x.add_(1)
        x[0].zero_()
        assert torch.equal(x[1:], w[1:] + 1) and int(x[0].sum()) == 0
        n += 1
# Another client of the same batches sees none of those writes.
with open() as loader:
    for b, w in zip(loader.batches(), want):
        assert torch.equal(torch.from_numpy(b.images.copy()), w)
print("ok", n)
"""
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert proc.stdout.split() == ["ok", "6"], proc.stdout
