"""``Loader.torch()``: skipped (with the reason) where torch is not installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _support import Daemon, open_loader

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_copies_match_the_slot(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        host = [(b.images.copy(), b.labels.copy()) for b in loader.batches()]
    with open_loader(daemon, batch_size=8, seed=3) as loader:
        for (want, want_labels), (images, labels) in zip(host, loader.torch("cuda")):
            assert images.is_cuda and labels.is_cuda
            np.testing.assert_array_equal(images.cpu().numpy(), want)
            np.testing.assert_array_equal(labels.cpu().numpy(), want_labels)
