"""The client's CUDA path where no GPU is needed: the array interface it builds, the driver
structs it passes, when it gives slots back, and how it fails without CUDA."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest

from _support import Binaries, Daemon, open_loader

import loaderd
from loaderd import _cudadrv, _torch
from loaderd._conn import Connection
from loaderd._proto import loaderd_pb2 as pb
from loaderd._release import ReleaseQueue
from loaderd._session import Session

PTR = 0x7F12_3400_0000
SLOT_BYTES = 8 * 64 * 64 * 3


@pytest.mark.parametrize(
    "dtype, typestr",
    [(np.uint8, "|u1"), (np.float32, "<f4"), (np.float16, "<f2")],
)
def test_array_interface_of_a_slot(dtype: type, typestr: str) -> None:
    got = _torch.cuda_array_interface(PTR, 3, SLOT_BYTES, (8, 64, 64, 3), np.dtype(dtype))
    assert got == {
        "version": 3,
        "shape": (8, 64, 64, 3),
        "typestr": typestr,
        "data": (PTR + 3 * SLOT_BYTES, False),
        "strides": None,
        "stream": None,
    }
    # The type string means the batch's dtype to numpy (whose parser torch uses too).
    assert np.dtype(got["typestr"]) == np.dtype(dtype)
    assert isinstance(got["shape"][0], int) and isinstance(got["data"][0], int)


def test_array_interface_of_slot_zero_and_an_empty_batch() -> None:
    got = _torch.cuda_array_interface(PTR, 0, SLOT_BYTES, (8, 3, 4, 4), np.float32)
    assert got["data"] == (PTR, False)
    # Zero-size arrays have pointer 0 (the interface's rule).
    got = _torch.cuda_array_interface(PTR, 2, SLOT_BYTES, np.array([0, 3, 4, 4]), np.float32)
    assert got["data"] == (0, False) and got["shape"] == (0, 3, 4, 4)
    assert all(type(d) is int for d in got["shape"])  # not numpy integers


def test_array_interface_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="no CUDA array type"):
        _torch.cuda_array_interface(PTR, 0, SLOT_BYTES, (1,), np.dtype(np.int32))


def test_torch_parses_the_interface_and_refuses_a_read_only_one() -> None:
    """Why the interface is not flagged read-only: torch refuses it outright. Without a
    driver torch gets past the parsing (shape, typestr, data) and fails at the device."""
    torch = pytest.importorskip("torch", reason="torch is not installed")

    class Obj:
        def __init__(self, interface: dict) -> None:  # type: ignore[type-arg]
            self.__cuda_array_interface__ = interface

    interface = _torch.cuda_array_interface(PTR, 1, SLOT_BYTES, (8, 3, 64, 64), np.float16)
    read_only = dict(interface, data=(interface["data"][0], True))
    with pytest.raises(TypeError, match="read only flag is not supported"):
        torch.as_tensor(Obj(read_only))
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: test_cuda.py makes real tensors")
    with pytest.raises(RuntimeError) as e:
        torch.as_tensor(Obj(interface))
    assert "typestr" not in str(e.value) and "read only" not in str(e.value), e.value


def test_driver_struct_layouts_match_cuda_h() -> None:
    """cuda.h (12.x and 13.x, 64-bit Linux); gpu/src/export.rs asserts the same numbers."""
    c = _cudadrv
    assert ctypes.sizeof(c.CUmemLocation) == 8
    assert (c.CUmemLocation.type.offset, c.CUmemLocation.id.offset) == (0, 4)
    assert ctypes.sizeof(c.CUmemAccessDesc) == 12
    assert (c.CUmemAccessDesc.location.offset, c.CUmemAccessDesc.flags.offset) == (0, 8)
    prop = c.CUmemAllocationProp
    assert ctypes.sizeof(prop) == 32
    offsets = [getattr(prop, f).offset for f, _ in prop._fields_]
    assert offsets == [0, 4, 8, 16, 24]
    flags = c.CUmemAllocFlags
    assert ctypes.sizeof(flags) == 8
    assert [getattr(flags, f).offset for f, _ in flags._fields_] == [0, 1, 2, 4]
    assert ctypes.sizeof(c.CUdeviceptr) == ctypes.sizeof(c.CUmemGenericAllocationHandle) == 8


def test_driver_structs_hold_what_the_calls_need() -> None:
    # Device 2, read-write (CU_MEM_LOCATION_TYPE_DEVICE = 1, PROT_READWRITE = 3).
    assert bytes(_cudadrv.access_desc(2)) == struct.pack("<iii", 1, 2, 3)
    # PINNED = 1, POSIX_FILE_DESCRIPTOR = 1, device 5, no win32 metadata, no flags.
    want = struct.pack("<iiiiQQ", 1, 1, 1, 5, 0, 0)
    assert bytes(_cudadrv.allocation_prop(5)) == want


def simulate(depth: int, lag: int, batches: int) -> List[Tuple[int, Optional[int]]]:
    """Delivers ``batches`` batches in round-robin free slots as the daemon would; returns
    each request's release (slot, token) or (-1, None), checking the holding bound."""
    queue: ReleaseQueue[int] = ReleaseQueue(depth, lag)
    free = list(range(depth))
    released: List[Tuple[int, Optional[int]]] = []
    for seq in range(batches + 1):  # the last request gets the end of the epoch
        due = queue.request(seq - 1 if seq else None)  # token: the batch the slot held
        released.append(due if due is not None else (-1, None))
        if due is not None:
            free.append(due[0])
        # The daemon needs a free slot to deliver: never all held.
        assert queue.held < depth, (depth, lag, seq, queue.held)
        if seq < batches:
            slot = free.pop(0)
            queue.delivered(slot)
            assert queue.held <= depth
    return released


def test_host_release_gives_back_the_previous_slot_at_each_request() -> None:
    got = simulate(depth=3, lag=0, batches=5)
    # Slots 0, 1, 2, 0, 1 delivered; each request gives back the one before.
    assert got == [(-1, None), (0, 0), (1, 1), (2, 2), (0, 3), (1, 4)]


def test_gpu_release_lags_one_batch_and_waits_for_that_batch_token() -> None:
    got = simulate(depth=3, lag=1, batches=5)
    # Request k+1 gives back batch k-1's slot, with batch k-1's token (its event).
    assert got == [(-1, None), (-1, None), (0, 0), (1, 1), (2, 2), (0, 3)]


def test_a_one_slot_ring_never_holds_its_slot_over_a_request() -> None:
    assert simulate(depth=1, lag=1, batches=3) == [(-1, None), (0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("lag", [0, 1, 2, 5])
def test_releases_are_in_delivery_order_and_bounded(depth: int, lag: int) -> None:
    got = [r for r in simulate(depth, lag, batches=40) if r[0] >= 0]
    keep = min(lag, depth - 1)
    # Every batch but the last `keep + 1` is given back, oldest first, with its own token.
    assert [token for _, token in got] == list(range(40 - keep))


def test_drain_returns_every_held_slot_once() -> None:
    queue: ReleaseQueue[str] = ReleaseQueue(4, 1)
    queue.delivered(0)
    assert queue.request("e0") is None
    queue.delivered(1)
    assert queue.held == 2
    assert queue.drain() == [(0, "e0"), (1, None)]
    assert queue.held == 0 and queue.drain() == []


def test_a_delivery_before_the_next_request_is_a_bug() -> None:
    queue: ReleaseQueue[None] = ReleaseQueue(2, 1)
    queue.delivered(0)
    with pytest.raises(RuntimeError):
        queue.delivered(1)
    with pytest.raises(ValueError):
        ReleaseQueue(0, 1)


def test_host_devices_need_no_torch() -> None:
    assert _torch.resolve_device(None) is None
    assert _torch.resolve_device("cpu") is None


def test_cuda_without_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import fails
    with pytest.raises(loaderd.CudaError, match="torch is not installed"):
        _torch.resolve_device("cuda")


def test_bad_devices_are_invalid_arguments() -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    for bad in ("tpu", "cuda:x", 3.5):
        with pytest.raises(loaderd.InvalidArgument):
            _torch.resolve_device(bad)


def no_cuda_torch() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here: test_cuda.py covers the device path")


def test_a_cuda_loader_without_torch_cuda_fails_clearly_at_open(daemon: Daemon) -> None:
    no_cuda_torch()
    for device in ("cuda", "cuda:0"):
        with pytest.raises(loaderd.CudaError, match=r"torch.cuda.is_available\(\) is False"):
            open_loader(daemon, batch_size=8, device=device)
    # The daemon is fine and still serves.
    with open_loader(daemon, batch_size=8) as loader:
        assert loader.device is None and loader.memory == "host" and loader.gpu_reason == ""
        assert len(next(iter(loader))[0]) == 8


def test_torch_cuda_on_a_host_loader_fails_clearly_without_cuda(daemon: Daemon) -> None:
    no_cuda_torch()
    with open_loader(daemon, batch_size=8) as loader:
        with pytest.raises(loaderd.CudaError, match="needs a CUDA device"):
            next(iter(loader.torch("cuda")))
        # Not a broken loader: the host path still works.
        assert len(next(iter(loader))[0]) == 8


def driver_installed() -> bool:
    try:
        ctypes.CDLL(_cudadrv.DRIVER_LIB)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_daemon_without_a_gpu_answers_a_cuda_request_with_a_host_ring_and_why(
    bins: Binaries, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "auto" and driver_installed():
        pytest.skip(f"{_cudadrv.DRIVER_LIB} is installed: an auto daemon may use the GPU")
    daemon = Daemon(bins, tmp_path, {"/data": dataset}, ["--gpu", mode]).start()
    try:
        req = pb.OpenLoader(dataset="/data", batch_size=8, size=64, layout=pb.SAMPLE_LAYOUT_NHWC_U8)
        req.cuda_device = 0
        session = Session(Connection(daemon.shm_socket, 60.0), req, cuda=0)
        try:
            print(f"memory {session.opened.memory}, gpu_reason {session.opened.gpu_reason!r}")
            assert session.opened.memory == pb.BATCH_MEMORY_HOST
            assert session.mapping is None and session.ring is not None
            assert session.opened.gpu_reason, "a host ring for a CUDA request must say why"
            got = session.next()
            assert got is not None and got[1] is not None and got[1].shape == (8, 64, 64, 3)
        finally:
            session.close()
        # Through the Loader (its local CUDA check stood in for: torch may have no CUDA).
        monkeypatch.setattr(_torch, "resolve_device", lambda device: None if device is None else 0)
        with open_loader(daemon, batch_size=8, device="cuda") as loader:
            assert loader.memory == "host"
            assert loader.gpu_reason == session.opened.gpu_reason
    finally:
        daemon.stop()


def test_the_driver_is_missing_here_with_a_clear_error() -> None:
    if driver_installed():
        pytest.skip(f"{_cudadrv.DRIVER_LIB} is installed here")
    with pytest.raises(loaderd.CudaError, match="cannot be loaded"):
        _cudadrv.HostRegistration(0x1000, 4096, 0)


class Token:
    """Stands for a batch's CUDA event: records when the session waited for it."""

    def __init__(self, waits: List[int], seq: int) -> None:
        self.waits, self.seq = waits, seq

    def synchronize(self) -> None:
        self.waits.append(self.seq)


class LaggingReader:
    """The GPU converters' contract with the session (lag 1, a token per request), without
    a GPU: what the real daemon does with slots given back one batch late."""

    lag = 1

    def __init__(self) -> None:
        self.waits: List[int] = []
        self.requests = 0
        self.drained: List[Tuple[int, object]] = []

    def token(self) -> Token:
        self.requests += 1
        return Token(self.waits, self.requests - 2)  # the batch before this request's

    def close(self, drained: List[Tuple[int, object]]) -> None:
        self.drained = drained


@pytest.mark.parametrize("depth", [2, 3])
def test_the_daemon_serves_slots_given_back_one_batch_late(daemon: Daemon, depth: int) -> None:
    with open_loader(daemon, batch_size=4, seed=9) as loader:
        want = [b.images.copy() for b in loader.batches()]
    req = pb.OpenLoader(
        dataset="/data",
        batch_size=4,
        size=64,
        seed=9,
        depth=depth,
        train=True,
        layout=pb.SAMPLE_LAYOUT_NHWC_U8,
        on_error=pb.ON_SAMPLE_ERROR_SKIP,
    )
    session = Session(Connection(daemon.shm_socket, 60.0), req)
    reader = LaggingReader()
    session.attach(reader)
    try:
        prev: Optional[Tuple[np.ndarray, np.ndarray]] = None
        slots = set()
        for k in range(len(want)):
            got = session.next()
            assert got is not None and got[1] is not None
            ready, view = got
            slots.add(ready.slot)
            np.testing.assert_array_equal(view, want[k])
            if prev is not None:
                # Its slot is still this client's: the daemon has not refilled it.
                np.testing.assert_array_equal(prev[0], prev[1])
            prev = (view, view.copy())
            assert session.releases.held <= min(2, depth)
        assert session.next() is None
        # Batch k's slot went back at request k + 2, after waiting for batch k's token.
        assert reader.waits == list(range(len(want) - 1))
        assert len(slots) == depth  # every slot reused over the epoch
    finally:
        session.close()
    assert [slot for slot, _ in reader.drained] == [ready.slot]


def test_device_rings_map_in_whole_granules() -> None:
    mib2 = 2 << 20
    assert _cudadrv.round_up(mib2, mib2) == mib2
    assert _cudadrv.round_up(mib2 + 1, mib2) == 2 * mib2
    assert _cudadrv.round_up(1, mib2) == mib2
    assert _cudadrv.round_up(0, mib2) is None
    assert _cudadrv.round_up(5, 0) is None
