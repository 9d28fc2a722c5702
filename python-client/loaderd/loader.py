"""Training batches from the loaderd daemon as zero-copy numpy views.

The daemon reads, decodes and augments the samples; this client only asks for the next batch
and views it where the daemon wrote it: a slot of a shared-memory ring that the client maps
read-only. A slot stays the client's until it asks for the next batch (or closes), which is
also what lets the daemon reuse it, so a view is valid only until then.

Position in the data is three numbers, ``(seed, epoch, consumed)``, where ``consumed`` counts
the epoch's samples consumed by all ranks together. They are enough to resume after a crash
(:meth:`Loader.state_dict`) and to reconnect to a restarted daemon mid-epoch without seeing a
sample twice or losing one: every batch a rank receives consumes ``batch_size * world_size``
positions of the epoch's global order, on every rank alike.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _torch
from ._conn import Connection, PathLike, shm_socket_path
from ._proto import loaderd_pb2 as pb
from ._session import Session
from .errors import (
    INVALID_ARGUMENT,
    UNAVAILABLE,
    DaemonError,
    DaemonUnavailable,
    InvalidArgument,
    LoaderError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("loaderd")

#: Accepted ``layout`` names (case-insensitive) → the daemon's ``SampleLayout``.
LAYOUTS: Mapping[str, int] = {
    "nhwc": pb.SAMPLE_LAYOUT_NHWC_U8,
    "nhwc_u8": pb.SAMPLE_LAYOUT_NHWC_U8,
    "nchw": pb.SAMPLE_LAYOUT_NCHW_F32,
    "nchw_f32": pb.SAMPLE_LAYOUT_NCHW_F32,
    "nchw16": pb.SAMPLE_LAYOUT_NCHW_F16,
    "nchw_f16": pb.SAMPLE_LAYOUT_NCHW_F16,
    "nchw_fp16": pb.SAMPLE_LAYOUT_NCHW_F16,
}

#: Accepted ``on_error`` values → the daemon's ``OnSampleError``.
ON_ERROR: Mapping[str, int] = {
    "skip": pb.ON_SAMPLE_ERROR_SKIP,
    "fail": pb.ON_SAMPLE_ERROR_FAIL,
}

#: What turns a session's batches into CUDA tensors.
_Converter = Union[_torch.DeviceRingTensors, _torch.HostRingTensors]

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch as the daemon delivered it.

    ``images`` is a read-only view of the shared-memory slot, shape ``(n, *sample_shape)``;
    it is valid only until the loader's next batch is requested or the loader is closed.
    Copy it (``images.copy()``) to keep it longer. For a loader with a CUDA ``device``,
    ``images`` and ``labels`` are torch CUDA tensors, ``images`` over the device ring's slot
    under the same rule.
    """

    images: Any
    labels: Any
    #: The samples' keys (path below the dataset root, or WebDataset key), in batch order.
    keys: List[str]
    #: Samples left out because they could not be read or decoded (``on_error="skip"``).
    skipped: List[str]
    #: The batch's number in this rank's epoch (restarts at 0 after a resume or reconnect).
    seq: int


class Loader:
    """Training batches of a dataset served by the loaderd daemon on this node.

    Each iteration (``for images, labels in loader``) runs the rest of the current epoch
    from the loader's position and yields ``(images, labels)``: ``images`` a read-only,
    zero-copy numpy view of the shared-memory slot, shape ``(n, *sample_shape)`` (``n`` is
    ``batch_size`` except for the last batch and batches with skipped samples); ``labels``
    int64 of shape ``(n,)``. **A view is valid only until the next batch is requested or the
    loader is closed**: the daemon then reuses its slot. Copy what must outlive the step.
    :meth:`batches` yields :class:`Batch` objects with the keys and skipped keys as well;
    :attr:`last_keys` and :attr:`last_skipped` describe the latest batch.

    :meth:`close` stops a running iteration, from inside the loop or from another thread
    (even one waiting for the daemon's next batch): the iteration ends as if the epoch were
    over, without its last batches, and the position stays where the last delivered batch
    left it. Views handed out stay readable.

    Epochs follow ``DistributedSampler``: one seeded permutation of the whole dataset per
    epoch, strided over ``world_size`` ranks (padded by repeating the head unless
    ``drop_last``), so every rank gets the same number of batches. Call :meth:`set_epoch`
    before each epoch; after a complete epoch the loader moves on to the next one by itself,
    so ``set_epoch(e)`` with the epoch it already stands on changes nothing, and
    :meth:`state_dict` taken at an epoch's end resumes at the start of the next.

    With a CUDA ``device`` the loader yields torch CUDA tensors: the daemon decodes on that
    GPU into a ring in device memory, and each batch is a zero-copy tensor over its slot
    (labels a small copy), valid until the next batch like a host view; the slot goes back to
    the daemon one batch later, once the kernels that read it are done. A daemon without a
    usable GPU serves a host ring instead (:attr:`gpu_reason` says why, with one warning) and
    the batches are copied to the device as by ``torch("cuda")``.

    Args:
        dataset: logical path of the dataset in the daemon's namespace (an ImageFolder
            directory or WebDataset shards), e.g. ``"/imagenet/train"``.
        batch_size: samples per batch on this rank.
        rank, world_size: this process's share of the data.
        seed: seed of the shuffle and of the augmentations (the same on every rank).
        epoch: the first epoch.
        train: RandomResizedCrop + random flip (True) or resize + centre crop (False).
        size: output side in pixels.
        layout: ``"NHWC"`` (uint8), ``"NCHW"`` (float32, normalized with the ImageNet
            mean/std) or ``"NCHW16"`` (float16, normalized).
        socket: the daemon's gRPC socket or its ``.shm.sock``; default ``$LOADERD_SOCKET``,
            else ``/run/loaderd/loaderd.sock`` (root) or ``/tmp/loaderd-<uid>/loaderd.sock``.
        depth: batches the daemon prepares ahead (ring slots); 0 = its default.
        workers: decode threads in the daemon for this loader; 0 = its default.
        drop_last: drop the tail that does not divide among ranks instead of padding.
        shuffle: shuffle each epoch (False reads in dataset order).
        on_error: an unreadable sample is left out and named (``"skip"``) or fails the
            batch with :class:`~loaderd.SampleError` (``"fail"``), whatever the daemon's
            own default (``pipeline.on_error``).
        resize: val only: the shorter side before the centre crop; 0 = 256.
        name: a label for this loader in ``loaderctl status`` and the daemon's logs.
        reconnect: when the daemon goes away mid-epoch, wait for it to come back (up to
            ``reconnect_timeout`` seconds) and continue at the same position.
        timeout: seconds to wait for any one answer of the daemon (opening the loader,
            which may list the dataset, or the next batch) before raising
            :class:`~loaderd.DaemonTimeout`; ``None`` waits forever.
        device: ``None`` for host memory (numpy views), or ``"cuda"`` (torch's current
            device), ``"cuda:N"`` or a CUDA ``torch.device`` for batches in that GPU's
            memory. The daemon numbers its devices by its own ``CUDA_VISIBLE_DEVICES``.

    Raises:
        DaemonUnavailable: the daemon is not running (or not on that socket).
        DaemonTimeout: the daemon did not answer within ``timeout`` (hung or overloaded).
        DatasetNotFound: the dataset is not in the daemon's namespace.
        InvalidArgument: an argument the client or the daemon refuses.
        ResourceExhausted: the daemon cannot hold the batch ring.
        CudaError: a CUDA ``device`` torch cannot use (no torch, no CUDA), or a device ring
            that cannot be mapped.

    A loader runs one iteration at a time; apart from :meth:`close`, call it from one thread.
    """

    def __init__(
        self,
        dataset: str,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        train: bool = True,
        size: int = 224,
        layout: str = "NHWC",
        socket: Optional[PathLike] = None,
        depth: int = 0,
        workers: int = 0,
        drop_last: bool = False,
        shuffle: bool = True,
        on_error: str = "skip",
        resize: int = 0,
        name: Optional[str] = None,
        reconnect: bool = True,
        reconnect_timeout: float = 30.0,
        timeout: Optional[float] = 600.0,
        device: Optional[Any] = None,
    ) -> None:
        self._session: Optional[Session] = None
        # The session of the running iteration, for close() from another thread.
        self._running: Optional[Session] = None
        self._closed = False
        self._last: Optional[pb.LoaderOpened] = None
        # Warnings given once per loader (host ring for a CUDA device, no page-locking).
        self._warned: Dict[str, bool] = {}
        wire_layout = LAYOUTS.get(layout.lower()) if isinstance(layout, str) else None
        if wire_layout is None:
            raise _invalid(f"unknown layout {layout!r}; use NHWC, NCHW or NCHW16")
        wire_on_error = ON_ERROR.get(on_error) if isinstance(on_error, str) else None
        if wire_on_error is None:
            raise _invalid(f"on_error must be 'skip' or 'fail', not {on_error!r}")
        self._layout = layout
        if not isinstance(dataset, str):
            raise _invalid(f"dataset must be a path string, not {dataset!r}")
        if name is not None and not isinstance(name, str):
            raise _invalid(f"name must be a string, not {name!r}")
        for arg, value, top in (
            ("batch_size", batch_size, _U32),
            ("rank", rank, _U32),
            ("world_size", world_size, _U32),
            ("size", size, _U32),
            ("resize", resize, _U32),
            ("depth", depth, _U32),
            ("workers", workers, _U32),
            ("seed", seed, _U64),
            ("epoch", epoch, _U64),
        ):
            _check_int(arg, value, top)
        self.socket_path = shm_socket_path(socket)
        self.batch_size = batch_size
        self.world_size = world_size
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        if timeout is not None and not timeout > 0:
            raise _invalid(f"timeout must be positive seconds or None, not {timeout!r}")
        self.timeout = timeout
        # Checked before the daemon is asked: torch must be able to use the device.
        self._cuda = _torch.resolve_device(device)
        # Everything but the position (seed, epoch, consumed), filled in per open.
        self._request = pb.OpenLoader(
            dataset=dataset,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            train=bool(train),
            size=size,
            resize=resize,
            layout=wire_layout,
            depth=depth,
            drop_last=bool(drop_last),
            no_shuffle=not shuffle,
            workers=workers,
            on_error=wire_on_error,
            name=name or "",
            cuda_device=self._cuda,
        )
        self._seed = seed
        self._epoch = epoch
        self._consumed = 0
        self._iteration_len: Optional[int] = None
        self._ever_connected = False
        self._dataset_len = 0
        self.last_keys: List[str] = []
        self.last_skipped: List[str] = []
        # Open now: errors surface here, len() works, and the first batches get decoded
        # while the caller sets up its model.
        self._pending()

    # Position -----------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the current or next iteration reads."""
        return self._epoch

    @property
    def device(self) -> Optional[Any]:
        """The CUDA device (a ``torch.device``) the batches are delivered on, or ``None``."""
        if self._cuda is None:
            return None
        return _torch.import_torch("device").device("cuda", self._cuda)

    @property
    def memory(self) -> str:
        """Where the daemon put the latest session's batch ring: ``"cuda"`` (device memory,
        batches decoded on the GPU) or ``"host"``."""
        if self._last is not None and self._last.memory == pb.BATCH_MEMORY_CUDA:
            return "cuda"
        return "host"

    @property
    def gpu_reason(self) -> str:
        """Why the daemon served a CUDA ``device`` from host memory (``""`` when it did
        not, or when no device was asked for)."""
        return "" if self._last is None else self._last.gpu_reason

    @property
    def dataset_len(self) -> int:
        """Samples in the dataset (all ranks)."""
        return self._dataset_len

    def set_epoch(self, epoch: int) -> None:
        """Reads ``epoch`` next, from its start; the epoch the loader stands on is kept as is."""
        _check_int("epoch", epoch, _U64)
        if epoch != self._epoch:
            self._not_iterating("set_epoch")
            self._epoch, self._consumed = epoch, 0
            self._drop_pending()

    def state_dict(self) -> Dict[str, int]:
        """Where the loader stands: ``{"seed", "epoch", "consumed"}`` (samples of the epoch
        consumed by all ranks together, counting every batch delivered so far).

        Valid on any rank and under another ``world_size`` when resuming.
        """
        return {"seed": self._seed, "epoch": self._epoch, "consumed": self._consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resumes at ``state`` (from :meth:`state_dict`); the next iteration continues there."""
        self._not_iterating("load_state_dict")
        for key in ("seed", "epoch", "consumed"):
            _check_int(key, state[key], _U64)
        self._seed, self._epoch, self._consumed = state["seed"], state["epoch"], state["consumed"]
        self._drop_pending()

    def __len__(self) -> int:
        """Batches of the current iteration, or of the next one (from the current position)."""
        if self._iteration_len is not None:
            return self._iteration_len
        return self._pending().opened.batches

    # Iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        for batch in self.batches():
            yield batch.images, batch.labels

    def batches(self) -> Iterator[Batch]:
        """Like iterating the loader, with each batch's keys and skipped keys."""
        return self._batches(self._cuda)

    def _batches(self, target: Union[None, str, int]) -> Iterator[Batch]:
        """The iteration: numpy views (``target`` None), copy-on-write numpy views ("cpu"),
        or torch tensors on CUDA device ``target``."""
        self._not_iterating("iterate")
        session = self._pending()
        self._session = None
        self._running = session
        self._iteration_len = session.opened.batches
        step = self.batch_size * self.world_size
        convert: Optional[_Converter] = None
        try:
            while True:
                if self._closed:
                    return  # closed inside the loop or by another thread
                if isinstance(target, int) and session.converter is None:
                    convert = self._attach(session, target)
                try:
                    got = session.next(writable=target == "cpu")
                except DaemonUnavailable as e:
                    if self._closed:
                        return  # close() ended the wait
                    if not (self.reconnect and e.retryable):
                        raise
                    log.warning("%s; reconnecting at %s", e, self.state_dict())
                    session.close()
                    session = self._open(retry=True)
                    self._running = session
                    if self._closed:  # closed while reconnecting
                        return
                    continue
                if got is None:
                    break
                ready, view = got
                self._consumed = min(self._consumed + step, session.opened.dataset_len)
                keys, skipped = list(ready.keys), list(ready.skipped)
                self.last_keys, self.last_skipped = keys, skipped
                images: Any
                labels: Any
                if isinstance(convert, _torch.DeviceRingTensors):
                    shape = (ready.samples, *session.shape)
                    images, labels = convert.convert(ready.slot, shape, session.dtype, ready.labels)
                elif isinstance(convert, _torch.HostRingTensors):
                    assert view is not None
                    images, labels = convert.convert(view, ready.labels)
                else:
                    images, labels = view, np.array(ready.labels, dtype=np.int64)
                yield Batch(images=images, labels=labels, keys=keys, skipped=skipped, seq=ready.seq)
            self._epoch, self._consumed = self._epoch + 1, 0
        finally:
            self._running = None
            self._iteration_len = None
            session.close()

    def _attach(self, session: Session, index: int) -> "_Converter":
        """Tensors on CUDA device ``index`` for ``session``'s batches: over its device ring, or
        copied out of its host ring (the daemon's reason said once, when it was asked for a
        device ring)."""
        torch = _torch.import_torch("CUDA tensors")
        convert: _Converter
        if session.mapping is not None:
            convert = _torch.DeviceRingTensors(
                torch, session.mapping, session.opened.slot_bytes, index
            )
        else:
            if self._cuda is not None and not self._warned.get("host"):
                self._warned["host"] = True
                warnings.warn(
                    f"loaderd served cuda:{index} from host memory, decoded on the CPU: "
                    f"{session.opened.gpu_reason or 'the daemon gave no reason'}; batches are "
                    "copied to the GPU",
                    RuntimeWarning,
                    stacklevel=3,
                )
            assert session.ring is not None
            convert = _torch.HostRingTensors(torch, session.ring, index, self._warned)
        session.attach(convert)
        return convert

    def torch(
        self, device: Optional[Any] = "cuda", non_blocking: bool = True
    ) -> Iterator[Tuple["torch.Tensor", "torch.Tensor"]]:
        """Iterates like the loader, yielding torch tensors ``(images, labels)``.

        On the CPU (``device=None`` or ``"cpu"``) the images are a zero-copy tensor over a
        copy-on-write mapping of the slot, valid until the next batch: reading costs nothing
        extra, and in-place ops (``x.add_(1)``, ``x.div_(255)``) work, copying each page they
        write into this process (the daemon's batch is never changed). On a GPU each batch is
        copied asynchronously into a new device tensor from the host ring, page-locked once
        for the session (or, where that fails, through ``pin_memory()``, with one warning);
        the slot goes back to the daemon once the copy is done. With ``non_blocking=False``
        each batch's copy is complete when it is yielded.

        A loader opened with a CUDA ``device`` yields its own device's tensors (zero-copy over
        the device ring); ``device`` must then be ``"cuda"`` or that device.
        """
        if self._cuda is not None:
            index = _torch.resolve_device(device)
            bare = isinstance(device, str) and device == "cuda"
            if index != self._cuda and not bare:
                raise _invalid(
                    f"this loader's batches are on cuda:{self._cuda}; torch({device!r}) "
                    "cannot move them"
                )
            yield from self._tensors(self._cuda, non_blocking)
            return
        import torch

        dev = torch.device("cpu" if device is None else device)
        if dev.type != "cpu":
            index = _torch.resolve_device(dev)
            assert index is not None
            yield from self._tensors(index, non_blocking)
            return
        for batch in self._batches("cpu"):
            yield torch.from_numpy(batch.images), torch.from_numpy(batch.labels)

    def _tensors(self, index: int, non_blocking: bool) -> Iterator[Tuple[Any, Any]]:
        import torch

        for batch in self._batches(index):
            if not non_blocking:
                torch.cuda.current_stream(index).synchronize()
            yield batch.images, batch.labels

    # Lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the daemon's pipeline for this loader; views already handed out stay mapped.

        Safe from another thread and inside the loop: a running iteration ends at once (a
        wait for the daemon's next batch returns) instead of reading the rest of the epoch.
        """
        self._closed = True
        running = self._running
        if running is not None:
            running.interrupt()
        self._drop_pending()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            try:
                session.close()
            except Exception:  # interpreter shutdown: nothing left to tell
                pass

    def __repr__(self) -> str:
        r = self._request
        return (
            f"Loader({r.dataset!r}, batch_size={r.batch_size}, rank={r.rank}, "
            f"world_size={r.world_size}, epoch={self._epoch}, consumed={self._consumed}, "
            f"layout={self._layout!r}, socket={str(self.socket_path)!r}"
            + ("" if self._cuda is None else f", device='cuda:{self._cuda}'")
            + ")"
        )

    # Internals ----------------------------------------------------------------------------

    def _pending(self) -> Session:
        """The session the next iteration reads, opened at the current position if needed."""
        if self._closed:
            raise LoaderError("the loader is closed")
        if self._session is None:
            # Once a daemon answered, a missing one is a restart in progress: wait for it.
            self._session = self._open(retry=self.reconnect and self._ever_connected)
        return self._session

    def _drop_pending(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _open(self, retry: bool) -> Session:
        """Opens a session at the current position, waiting for the daemon when ``retry``."""
        req = pb.OpenLoader()
        req.CopyFrom(self._request)
        req.seed, req.epoch, req.consumed = self._seed, self._epoch, self._consumed
        deadline = time.monotonic() + self.reconnect_timeout
        pause = 0.05
        while True:
            try:
                session = Session(Connection(self.socket_path, self.timeout), req, self._cuda)
                break
            except (DaemonUnavailable, DaemonError) as e:
                lost = isinstance(e, DaemonUnavailable) and e.retryable
                starting = isinstance(e, DaemonError) and e.code == UNAVAILABLE
                if not (retry and (lost or starting)):
                    raise
                if time.monotonic() + pause > deadline:
                    raise DaemonUnavailable(
                        f"loaderd at {self.socket_path} did not come back within "
                        f"{self.reconnect_timeout:g}s: {e}",
                        str(self.socket_path),
                    ) from e
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        self._ever_connected = True
        self._dataset_len = session.opened.dataset_len
        self._last = session.opened
        if self._cuda is not None:
            where = "device memory" if self.memory == "cuda" else f"host memory: {self.gpu_reason}"
            log.info("loader %s: cuda:%d asked, %s", self._request.name, self._cuda, where)
        return session

    def _not_iterating(self, what: str) -> None:
        if self._iteration_len is not None:
            raise LoaderError(f"cannot {what} while an iteration of this loader is running")


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(INVALID_ARGUMENT, message)


def _check_int(name: str, value: object, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
        raise _invalid(f"{name} must be an integer in 0..{top}, not {value!r}")
