"""``Loader.close()`` stops a running iteration: inside the loop, from another thread, and
from another thread while the iteration waits for a daemon that does not answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Dict, List

import numpy as np
import pytest

import loaderd
from _support import CLASSES, PER_CLASS, Daemon, open_loader, wait_stopped

BATCHES = CLASSES * PER_CLASS // 4  # an epoch of batch_size 4


def test_close_inside_the_loop_ends_the_iteration(daemon: Daemon) -> None:
    loader = open_loader(daemon, batch_size=4, depth=2)
    sizes: List[int] = []
    kept = want = None
    for images, labels in loader:
        sizes.append(len(labels))
        if len(sizes) == 2:
            kept, want = images, images.copy()
            loader.close()
    assert sizes == [4, 4], "the iteration went on after close()"
    assert loader.state_dict()["consumed"] == 8, "the position is the last delivered batch"
    # The view handed out before close() stays mapped and unchanged (no use after unmap).
    assert kept is not None and want is not None
    np.testing.assert_array_equal(kept, want)
    with pytest.raises(loaderd.LoaderError, match="closed"):
        next(iter(loader))


def test_close_from_another_thread_stops_the_iteration(daemon: Daemon) -> None:
    loader = open_loader(daemon, batch_size=4, depth=2)
    sizes: List[int] = []
    errors: List[BaseException] = []
    first = threading.Event()

    def train() -> None:
        try:
            for _, labels in loader:
                sizes.append(len(labels))
                first.set()
                time.sleep(0.2)  # a training step
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            errors.append(e)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    assert first.wait(30), "no first batch"
    loader.close()
    trainer.join(20)
    assert not trainer.is_alive(), "the iteration did not stop after close()"
    assert not errors, errors
    # At most the step running during close() and none after it (the epoch has 12 batches).
    assert 1 <= len(sizes) <= 2 < BATCHES, sizes


def test_close_from_another_thread_wakes_a_wait_for_the_daemon(own_daemon: Daemon) -> None:
    assert own_daemon.proc is not None
    pid = own_daemon.proc.pid
    loader = open_loader(own_daemon, batch_size=4, timeout=120)
    it = iter(loader)
    next(it)
    result: Dict[str, object] = {}

    def wait() -> None:
        try:
            result["next"] = next(it, "ended")
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            result["error"] = e

    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing: next() waits
    try:
        wait_stopped(pid)
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), f"next() returned from a stopped daemon: {result}"
        closed = time.monotonic()
        loader.close()
        waiter.join(20)
        assert not waiter.is_alive(), "close() did not wake the iteration waiting for a batch"
        assert result == {"next": "ended"}, result
        assert time.monotonic() - closed < 20
    finally:
        os.kill(pid, signal.SIGCONT)
    # The daemon, once running again, serves a new loader.
    with open_loader(own_daemon, batch_size=4, timeout=30) as again:
        _, labels = next(iter(again))
        assert len(labels) == 4
