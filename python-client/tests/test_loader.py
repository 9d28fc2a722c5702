"""Batches from a real daemon: coverage, sharding, order, zero-copy, layouts, resume, errors."""

from __future__ import annotations

import mmap
from collections import Counter
from pathlib import Path
from typing import List

import numpy as np
import pytest

import loaderd
from _support import CLASSES, PER_CLASS, Daemon, open_loader, read_epoch

N = CLASSES * PER_CLASS


def class_label(key: str) -> int:
    """ImageFolder's label: the index of the class folder among the sorted folders."""
    return sorted(f"class_{c:03}" for c in range(CLASSES)).index(key.split("/")[0])


def test_one_epoch_sees_every_sample_once_with_its_label(
    daemon: Daemon, all_keys: List[str]
) -> None:
    with open_loader(daemon, batch_size=5, seed=1) as loader:
        assert len(loader) == 10 and loader.dataset_len == N
        keys, labels, sizes = read_epoch(loader)
        assert sizes == [5] * 9 + [3]
        assert sorted(keys) == all_keys
        assert labels == [class_label(k) for k in keys]
        assert keys != all_keys, "shuffled"
        assert loader.last_keys == keys[-3:] and loader.last_skipped == []


def test_tuples_and_dtypes(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=16, size=32) as loader:
        batches = [(images.shape, images.dtype, labels.dtype) for images, labels in loader]
    assert batches == [((16, 32, 32, 3), np.uint8, np.int64)] * 3


def test_two_ranks_cover_the_dataset_once(daemon: Daemon, all_keys: List[str]) -> None:
    per_rank = []
    for rank in range(2):
        with open_loader(daemon, batch_size=5, rank=rank, world_size=2, seed=3) as loader:
            assert len(loader) == 5
            keys, _, sizes = read_epoch(loader)
            assert sizes == [5, 5, 5, 5, 4]
            per_rank.append(keys)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == all_keys


def test_padding_and_drop_last_match_distributed_sampler(
    daemon: Daemon, all_keys: List[str]
) -> None:
    # 48 samples on 5 ranks: padded to 50 (two repeats) or cut to 45.
    for drop_last, per_rank, total in ((False, 10, 50), (True, 9, 45)):
        keys: List[str] = []
        for rank in range(5):
            with open_loader(
                daemon, batch_size=4, rank=rank, world_size=5, drop_last=drop_last
            ) as loader:
                assert len(loader) == -(-per_rank // 4)
                rank_keys, _, _ = read_epoch(loader)
                assert len(rank_keys) == per_rank
                keys += rank_keys
        assert len(keys) == total
        counts = Counter(keys)
        if drop_last:
            assert max(counts.values()) == 1 and len(counts) == 45
        else:
            assert sorted(counts) == all_keys and sum(c - 1 for c in counts.values()) == 2


def test_order_depends_on_seed_and_epoch_only(daemon: Daemon) -> None:
    def order(seed: int, epoch: int) -> List[str]:
        with open_loader(daemon, batch_size=8, seed=seed, epoch=epoch) as loader:
            return read_epoch(loader)[0]

    assert order(7, 3) == order(7, 3)
    assert order(7, 3) != order(7, 4)
    assert order(7, 3) != order(8, 3)
    with open_loader(daemon, batch_size=8, shuffle=False) as loader:
        ordered = read_epoch(loader)[0]
    assert ordered == sorted(ordered)


def test_epochs_advance_and_set_epoch(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=8, seed=7, epoch=3) as loader:
        first = read_epoch(loader)[0]
        assert loader.epoch == 4 and loader.state_dict() == {"seed": 7, "epoch": 4, "consumed": 0}
        loader.set_epoch(4)  # where it stands: nothing changes
        second = read_epoch(loader)[0]
        loader.set_epoch(3)
        again = read_epoch(loader)[0]
    assert first == again != second
    with open_loader(daemon, batch_size=8, seed=7, epoch=4) as loader:
        assert read_epoch(loader)[0] == second


def test_images_are_read_only_views_of_the_ring(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=4) as loader:
        images, _ = next(iter(loader))
        assert not images.flags.writeable
        with pytest.raises(ValueError):
            images[0, 0, 0, 0] = 1
        root = images
        while isinstance(root, (np.ndarray, memoryview)):
            root = root.base if isinstance(root, np.ndarray) else root.obj
        assert isinstance(root, mmap.mmap), "a view of the mapped ring, not a copy"
        ring = np.frombuffer(root, dtype=np.uint8)
        start = images.__array_interface__["data"][0] - ring.__array_interface__["data"][0]
        assert 0 <= start and start + images.nbytes <= ring.nbytes
    # The mapping outlives the loader while a view holds it.
    assert images.sum() >= 0


def test_nchw_layouts_are_normalized_nhwc(daemon: Daemon) -> None:
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)

    def epoch(layout: str) -> dict:
        with open_loader(daemon, batch_size=16, seed=5, layout=layout) as loader:
            return {k: img.copy() for b in loader.batches() for k, img in zip(b.keys, b.images)}

    nhwc, nchw, nchw16 = epoch("NHWC"), epoch("NCHW"), epoch("NCHW16")
    assert nhwc.keys() == nchw.keys() == nchw16.keys()
    for key, img in nhwc.items():
        expected = ((img.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
        assert nchw[key].dtype == np.float32 and nchw[key].shape == (3, 64, 64)
        np.testing.assert_allclose(nchw[key], expected, atol=1e-5)
        assert nchw16[key].dtype == np.float16
        np.testing.assert_allclose(nchw16[key].astype(np.float32), expected, atol=1e-2)


def test_state_dict_resumes_without_repeats(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=5, seed=11) as loader:
        full = read_epoch(loader)[0]
    with open_loader(daemon, batch_size=5, seed=11) as loader:
        it = loader.batches()
        seen = [k for _, b in zip(range(3), it) for k in b.keys]
        state = loader.state_dict()
        it.close()
    assert seen == full[:15] and state == {"seed": 11, "epoch": 0, "consumed": 15}

    with open_loader(daemon, batch_size=5, seed=0) as loader:
        loader.load_state_dict(state)
        assert len(loader) == 7  # 33 samples left
        assert read_epoch(loader)[0] == full[15:]
        assert loader.state_dict() == {"seed": 11, "epoch": 1, "consumed": 0}

    # Resumed on two ranks: the rest of the same permutation, split (drop_last: 32 of 33).
    rest: List[str] = []
    for rank in range(2):
        with open_loader(daemon, batch_size=5, rank=rank, world_size=2, drop_last=True) as loader:
            loader.load_state_dict(state)
            rest += read_epoch(loader)[0]
    assert len(rest) == len(set(rest)) == 32 and set(rest) <= set(full[15:])


def test_breaking_off_continues_at_the_cursor(daemon: Daemon) -> None:
    with open_loader(daemon, batch_size=5, seed=2) as loader:
        full = read_epoch(loader)[0]
        loader.set_epoch(0)
        for _ in loader:
            break
        assert loader.state_dict()["consumed"] == 5
        assert read_epoch(loader)[0] == full[5:]


def test_loader_errors(daemon: Daemon) -> None:
    with pytest.raises(loaderd.DatasetNotFound, match="nope"):
        open_loader(daemon, dataset="/data/nope", batch_size=4)
    with pytest.raises(loaderd.DatasetNotFound):
        open_loader(daemon, dataset="/not-mounted", batch_size=4)
    with pytest.raises(loaderd.InvalidArgument, match="batch_size") as bad:
        open_loader(daemon, batch_size=0)
    assert bad.value.code == 3 and isinstance(bad.value, ValueError)
    with pytest.raises(loaderd.InvalidArgument, match="rank"):
        open_loader(daemon, batch_size=4, rank=2, world_size=2)
    with pytest.raises(loaderd.InvalidArgument, match="layout"):
        open_loader(daemon, batch_size=4, layout="CHW")
    with pytest.raises(loaderd.InvalidArgument, match="layout"):
        open_loader(daemon, batch_size=4, layout=None)  # type: ignore[arg-type]
    with pytest.raises(loaderd.InvalidArgument, match="on_error"):
        open_loader(daemon, batch_size=4, on_error="ignore")
    with pytest.raises(loaderd.InvalidArgument, match="on_error"):
        open_loader(daemon, batch_size=4, on_error=1)  # type: ignore[arg-type]
    with pytest.raises(loaderd.InvalidArgument, match="dataset"):
        open_loader(daemon, dataset=b"/data", batch_size=4)  # type: ignore[arg-type]
    with pytest.raises(loaderd.InvalidArgument, match="batch_size"):
        open_loader(daemon, batch_size=-1)
    with pytest.raises(loaderd.InvalidArgument, match="pipeline.max_batch_size"):
        open_loader(daemon, batch_size=100_000, size=224, depth=64)
    # Every field within its limit, the ring over the budget.
    with pytest.raises(loaderd.ResourceExhausted, match="bytes"):
        open_loader(daemon, batch_size=4096, size=224, depth=64)
    with pytest.raises(loaderd.InvalidArgument):
        with open_loader(daemon, batch_size=4) as loader:
            loader.load_state_dict({"seed": 0, "epoch": 0, "consumed": N + 1})
            len(loader)


def test_daemon_not_running(tmp_path: Path) -> None:
    missing = tmp_path / "loaderd.sock"
    with pytest.raises(loaderd.DaemonUnavailable, match="is the daemon running") as err:
        loaderd.Loader("/data", 4, socket=missing)
    assert str(tmp_path / "loaderd.shm.sock") in str(err.value)
    assert "loaderd --mount" in str(err.value)
    assert isinstance(err.value, loaderd.LoaderError)


def test_closed_loader(daemon: Daemon) -> None:
    loader = open_loader(daemon, batch_size=4)
    loader.close()
    loader.close()
    with pytest.raises(loaderd.LoaderError, match="closed"):
        next(iter(loader))
    del loader  # __del__ after close is harmless


def test_a_refused_connection_names_the_limit(own_daemon: Daemon) -> None:
    """Over the daemon's connections per process (32 by default), a Loader raises
    ResourceExhausted naming the limit instead of hanging or a protocol error."""
    import os
    import socket
    import time

    held = []
    try:
        # Connections until the daemon refuses one (a refusal carries no arena descriptor).
        for _ in range(64):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            held.append(s)
            s.connect(str(own_daemon.shm_socket))
            _, fds, _, _ = socket.recv_fds(s, 4096, 1)
            for fd in fds:
                os.close(fd)
            if not fds:
                break
        else:
            pytest.fail("64 connections of one process were all accepted")
        with pytest.raises(loaderd.ResourceExhausted, match="shm_max_connections_per_process"):
            open_loader(own_daemon, batch_size=4)
    finally:
        for s in held:
            s.close()
    # Once the daemon has seen them close, this process gets connections again.
    deadline = time.monotonic() + 20
    while True:
        try:
            with open_loader(own_daemon, batch_size=4) as loader:
                assert len(loader) > 0
            break
        except loaderd.ResourceExhausted:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
