"""What the tests share: the generated dataset's shape, a daemon process, epoch helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_ROOT = REPO_ROOT / "python-client"
if str(CLIENT_ROOT) not in sys.path:  # the package without installing it
    sys.path.insert(0, str(CLIENT_ROOT))

import loaderd  # noqa: E402  (found through the path above)

#: The generated dataset: 4 classes x 12 JPEGs of 320x240.
CLASSES = 4
PER_CLASS = 12
WIDTH, HEIGHT = 320, 240
#: Files of the corrupt copy that cannot be decoded, and what was done to them.
CORRUPTED = {
    "class_001/bad_garbage.jpg": b"this is not a JPEG file" * 10,
    "class_002/bad_empty.jpg": b"",
}
#: A real file of the corrupt copy truncated to its first bytes (header only).
TRUNCATED = "class_003/img_00010.jpg"


class Binaries(NamedTuple):
    loaderd: Path
    loaderctl: Path


class Daemon:
    """A ``loaderd`` process on a socket in a temporary directory."""

    def __init__(
        self,
        bins: Binaries,
        workdir: Path,
        mounts: Dict[str, Path],
        args: Sequence[str] = (),
    ) -> None:
        self.bins = bins
        self.workdir = workdir
        self.mounts = mounts
        #: More command-line arguments of the daemon.
        self.args = list(args)
        self.socket = workdir / "loaderd.sock"
        self.shm_socket = workdir / "loaderd.shm.sock"
        self.log = workdir / "loaderd.log"
        self.proc: "subprocess.Popen[bytes] | None" = None

    def start(self) -> "Daemon":
        """Starts the daemon and waits until its shared-memory socket accepts connections."""
        cmd: List[str] = [
            str(self.bins.loaderd),
            "--socket",
            str(self.socket),
            "--metrics-addr",
            "off",
            "--memory-capacity",
            "64MiB",
        ]
        for point, directory in self.mounts.items():
            cmd += ["--mount", f"{point}=file://{directory}"]
        cmd += self.args
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"loaderd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if _accepts(self.shm_socket):
                return self
            time.sleep(0.02)
        pytest.fail(f"loaderd did not open {self.shm_socket}:\n{self.log.read_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, the sockets stay behind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def ctl(self, *args: str) -> "subprocess.CompletedProcess[str]":
        """Runs ``loaderctl --socket <this daemon> ARGS``."""
        return subprocess.run(
            [str(self.bins.loaderctl), "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )


def _accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def open_loader(daemon: Daemon, dataset: str = "/data", **kwargs: Any) -> "loaderd.Loader":
    """A small, fast loader on ``daemon`` (64x64 samples unless ``size`` says otherwise)."""
    kwargs.setdefault("size", 64)
    return loaderd.Loader(dataset, socket=daemon.socket, **kwargs)


def read_epoch(loader: "loaderd.Loader") -> Tuple[List[str], List[int], List[int]]:
    """One iteration: the keys and labels in delivery order and each batch's size."""
    keys: List[str] = []
    labels: List[int] = []
    sizes: List[int] = []
    for batch in loader.batches():
        assert len(batch.images) == len(batch.labels) == len(batch.keys)
        keys += batch.keys
        labels += batch.labels.tolist()
        sizes.append(len(batch.keys))
    return keys, labels, sizes


def wait_stopped(pid: int) -> None:
    """Waits until every thread of ``pid`` is stopped: a signal stops threads running on
    another CPU a moment after ``kill`` returns, time enough to answer one more request."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # a thread that just exited
                continue
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"loaderd (pid {pid}) did not stop")


#: Set to 1 on a GPU machine: a missing CUDA device or library then fails instead of skipping.
REQUIRE_GPU_ENV = "LOADERD_REQUIRE_GPU"


def require_cuda(what: str = "a CUDA device for torch") -> Any:
    """torch, where it has a CUDA device; else the test skips with the reason printed
    (``skipping: ... unavailable: ...``), or fails under ``LOADERD_REQUIRE_GPU=1``, as the
    Rust GPU tests do (``loaderd_gpu::detect::require_or_skip``)."""
    try:
        import torch
    except ImportError:
        reason = "torch is not installed"
    else:
        if torch.cuda.is_available():
            return torch
        reason = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    if os.environ.get(REQUIRE_GPU_ENV) == "1":
        pytest.fail(f"{REQUIRE_GPU_ENV}=1 but {what} is unavailable: {reason}")
    print(f"skipping: {what} unavailable: {reason}")
    pytest.skip(f"skipping: {what} unavailable: {reason}")
