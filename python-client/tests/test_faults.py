"""Failures: corrupt samples, a client killed mid-epoch, the daemon killed and restarted or
hung."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

import loaderd
from _support import (
    CLIENT_ROOT,
    CORRUPTED,
    TRUNCATED,
    Binaries,
    Daemon,
    open_loader,
    read_epoch,
    wait_stopped,
)


def test_corrupt_samples_are_skipped_and_named(daemon: Daemon, all_keys: List[str]) -> None:
    bad = sorted([*CORRUPTED, TRUNCATED])
    keys: List[str] = []
    skipped: List[str] = []
    sizes: List[int] = []
    with open_loader(daemon, dataset="/bad", batch_size=8) as loader:
        assert loader.dataset_len == len(all_keys) + len(CORRUPTED)
        for batch in loader.batches():
            assert len(batch.images) == len(batch.labels) == len(batch.keys)
            assert batch.skipped == loader.last_skipped
            keys += batch.keys
            skipped += batch.skipped
            sizes.append(len(batch.keys) + len(batch.skipped))
    assert sizes == [8] * 6 + [2], "a skipped sample still takes its place in the order"
    assert sorted(skipped) == bad
    assert sorted(keys) == sorted(set(all_keys) - {TRUNCATED})


def test_on_error_fail_names_the_sample(daemon: Daemon) -> None:
    with open_loader(daemon, dataset="/bad", batch_size=8, on_error="fail") as loader:
        with pytest.raises(loaderd.SampleError) as err:
            read_epoch(loader)
    assert err.value.code == 15 and any(key in str(err.value) for key in [*CORRUPTED, TRUNCATED])


def test_on_error_skip_holds_against_a_failing_daemon_default(
    bins: Binaries, corrupt_dataset: Path, tmp_path: Path
) -> None:
    """``on_error="skip"`` (the default) is sent as such: a daemon whose own default is
    ``fail`` still skips for this loader."""
    config = tmp_path / "loaderd.toml"
    config.write_text('[pipeline]\non_error = "fail"\n')
    d = Daemon(bins, tmp_path, {"/bad": corrupt_dataset}, ["--config", str(config)]).start()
    try:
        with open_loader(d, dataset="/bad", batch_size=8) as loader:
            skipped = [key for batch in loader.batches() for key in batch.skipped]
        assert sorted(skipped) == sorted([*CORRUPTED, TRUNCATED])
    finally:
        d.stop()


def test_a_killed_client_leaves_the_daemon_serving(daemon: Daemon, all_keys: List[str]) -> None:
    child = f"""
import sys, time
sys.path.insert(0, {str(CLIENT_ROOT)!r})
import loaderd
loader = loaderd.Loader("/data", 4, socket={str(daemon.socket)!r}, size=64, depth=2)
images, labels = next(iter(loader))
print("holding", len(images), flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding 4"
    finally:
        proc.kill()
        proc.wait()
    assert daemon.alive()
    with open_loader(daemon, batch_size=4) as loader:
        assert sorted(read_epoch(loader)[0]) == all_keys
    status = daemon.ctl("status")
    assert status.returncode == 0, status.stderr
    assert daemon.alive()


def _restart_soon(daemon: Daemon) -> threading.Thread:
    """Kills the daemon now and restarts it on the same socket a little later."""
    daemon.kill()
    restart = threading.Timer(0.5, daemon.start)
    restart.start()
    return restart


def test_reconnects_to_a_restarted_daemon_mid_epoch(
    own_daemon: Daemon, all_keys: List[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loaderd")
    with open_loader(own_daemon, batch_size=5, seed=4, depth=2, reconnect_timeout=20) as loader:
        it = loader.batches()
        keys = [k for _, b in zip(range(3), it) for k in b.keys]
        restart = _restart_soon(own_daemon)
        sizes = []
        for batch in it:
            keys += batch.keys
            sizes.append(len(batch.keys))
        restart.join()
        assert sizes == [5] * 6 + [3]
        assert sorted(keys) == all_keys, "each sample exactly once across the restart"
        assert "reconnecting" in caplog.text

        # Between epochs too: the next iteration waits for the daemon.
        restart = _restart_soon(own_daemon)
        second = read_epoch(loader)[0]
        restart.join()
        assert sorted(second) == all_keys and second != keys


def test_without_reconnect_a_lost_daemon_is_an_error(own_daemon: Daemon) -> None:
    with open_loader(own_daemon, batch_size=5, reconnect=False) as loader:
        it = iter(loader)
        next(it)
        own_daemon.kill()
        with pytest.raises(loaderd.DaemonUnavailable, match=str(own_daemon.workdir)):
            next(it)


def test_reconnect_gives_up_after_its_timeout(own_daemon: Daemon) -> None:
    with open_loader(own_daemon, batch_size=5, reconnect_timeout=0.5) as loader:
        it = iter(loader)
        next(it)
        own_daemon.kill()
        with pytest.raises(loaderd.DaemonUnavailable, match="did not come back within 0.5s"):
            next(it)


def test_a_hung_daemon_is_a_timeout_not_a_hang(own_daemon: Daemon) -> None:
    assert own_daemon.proc is not None
    with open_loader(own_daemon, batch_size=5, timeout=0.5) as loader:
        it = iter(loader)
        next(it)
        os.kill(own_daemon.proc.pid, signal.SIGSTOP)  # alive, but answers nothing
        try:
            wait_stopped(own_daemon.proc.pid)
            started = time.monotonic()
            with pytest.raises(loaderd.DaemonTimeout, match="did not answer within 0.5s"):
                next(it)
            # Opening another loader waits for the daemon's hello no longer either.
            with pytest.raises(loaderd.DaemonTimeout):
                open_loader(own_daemon, batch_size=5, timeout=0.5)
            assert time.monotonic() - started < 10
        finally:
            os.kill(own_daemon.proc.pid, signal.SIGCONT)
    # The daemon serves again once it runs.
    with open_loader(own_daemon, batch_size=5, timeout=10) as loader:
        _, labels = next(iter(loader))
        assert len(labels) == 5


def test_timeout_must_be_positive(own_daemon: Daemon) -> None:
    with pytest.raises(loaderd.InvalidArgument, match="timeout"):
        open_loader(own_daemon, batch_size=5, timeout=0)
