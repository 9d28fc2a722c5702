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
import mmap
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ._conn import Connection, PathLike, shm_socket_path
from ._proto import loaderd_pb2 as pb
from .errors import (
    INVALID_ARGUMENT,
    UNAVAILABLE,
    DaemonError,
    DaemonUnavailable,
    InvalidArgument,
    LoaderError,
    ProtocolError,
    daemon_error,
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

#: The daemon's ``Dtype`` of a batch's samples → numpy's.
DTYPES: Mapping[int, "np.dtype[Any]"] = {
    pb.DTYPE_UINT8: np.dtype(np.uint8),
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_FLOAT16: np.dtype(np.float16),
}

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch as the daemon delivered it.

    ``images`` is a read-only view of the shared-memory slot, shape ``(n, *sample_shape)``;
    it is valid only until the loader's next batch is requested or the loader is closed.
    Copy it (``images.copy()``) to keep it longer.
    """

    images: np.ndarray
    labels: np.ndarray
    #: The samples' keys (path below the dataset root, or WebDataset key), in batch order.
    keys: List[str]
    #: Samples left out because they could not be read or decoded (``on_error="skip"``).
    skipped: List[str]
    #: The batch's number in this rank's epoch (restarts at 0 after a resume or reconnect).
    seq: int


class _Session:
    """One epoch's pipeline in the daemon: a connection and the mapped batch ring."""

    def __init__(self, conn: Connection, req: pb.OpenLoader) -> None:
        self.conn = conn
        self.epoch = req.epoch
        self.consumed = req.consumed
        opened, fds = conn.request(pb.ShmRequest(open_loader=req), pb.LoaderOpened)
        try:
            if opened.code != 0:
                raise daemon_error(opened.code, opened.error)
            if not fds:
                raise ProtocolError("the daemon opened the loader but sent no batch ring")
            dtype = DTYPES.get(opened.dtype)
            if dtype is None:
                raise ProtocolError(
                    f"unknown sample dtype {_enum_name(pb.Dtype, opened.dtype)} "
                    "(upgrade the loaderd Python package)"
                )
            shape = tuple(opened.sample_shape)
            if int(np.prod(shape)) * dtype.itemsize != opened.sample_bytes:
                raise ProtocolError(
                    f"sample shape {shape} of {dtype} is not {opened.sample_bytes} bytes"
                )
            size = os.fstat(fds[0]).st_size
            if size < opened.slot_bytes * opened.depth:
                raise ProtocolError(f"the batch ring has {size} bytes, less than its slots")
            # The mapping keeps the ring's memory alive after the descriptor is closed, and
            # for as long as a view of it lives, even past this session.
            self.ring = mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            # The same ring copy-on-write, for tensors (torch has no read-only ones): reading
            # it reads the daemon's pages, and a write copies the page it touches into this
            # process, never reaching the daemon. Mapping costs address space only.
            self.private = mmap.mmap(
                fds[0], size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            for fd in fds:
                os.close(fd)
        self.opened = opened
        self.dtype = dtype
        self.shape = shape
        self.held: Optional[int] = None
        self.used = False

    def next(self, writable: bool = False) -> Optional[Tuple[pb.BatchReady, np.ndarray]]:
        """The next batch and its view, releasing the previous slot; ``None`` at the end.

        The view is read-only, or with ``writable`` a copy-on-write view whose writes stay in
        this process.
        """
        self.used = True
        release = -1 if self.held is None else self.held
        self.held = None
        ready, fds = self.conn.request(
            pb.ShmRequest(next_batch=pb.NextBatch(release_slot=release)), pb.BatchReady
        )
        for fd in fds:
            os.close(fd)
        if ready.code != 0:
            raise daemon_error(ready.code, ready.error)
        if ready.end:
            return None
        if (
            ready.slot >= self.opened.depth
            or ready.samples * self.opened.sample_bytes > self.opened.slot_bytes
        ):
            raise ProtocolError(f"batch {ready.seq} lies outside the ring (slot {ready.slot})")
        if len(ready.labels) != ready.samples or len(ready.keys) != ready.samples:
            raise ProtocolError(
                f"batch {ready.seq} has {ready.samples} samples but {len(ready.labels)} labels"
            )
        self.held = ready.slot
        offset = ready.slot * self.opened.slot_bytes
        ring = self.ring
        if writable:
            ring = self.private
            self._drop_copies(offset, self.opened.slot_bytes)
        images = np.frombuffer(
            ring,
            dtype=self.dtype,
            count=ready.samples * int(np.prod(self.shape)),
            offset=offset,
        ).reshape((ready.samples, *self.shape))
        return ready, images

    def _drop_copies(self, offset: int, length: int) -> None:
        """Drops this process's copies of the slot's pages (written through an earlier
        batch's tensor), so the copy-on-write view shows the daemon's new batch again.

        Whole pages around the slot: a neighbour's part of a shared page belongs to a
        released slot, whose views are no longer valid anyway.
        """
        start = offset - offset % mmap.PAGESIZE
        end = min(len(self.private), -(-(offset + length) // mmap.PAGESIZE) * mmap.PAGESIZE)
        self.private.madvise(mmap.MADV_DONTNEED, start, end - start)

    def interrupt(self) -> None:
        """Ends the pipeline from any thread; a ``next`` waiting elsewhere fails at once."""
        self.conn.shutdown()

    def close(self) -> None:
        """Ends the pipeline (the daemon frees the ring); live views keep their mapping."""
        self.conn.close()
        for ring in (self.ring, self.private):
            try:
                ring.close()
            except BufferError:
                pass  # views still exported: unmapped when the last one goes


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

    Raises:
        DaemonUnavailable: the daemon is not running (or not on that socket).
        DaemonTimeout: the daemon did not answer within ``timeout`` (hung or overloaded).
        DatasetNotFound: the dataset is not in the daemon's namespace.
        InvalidArgument: an argument the client or the daemon refuses.
        ResourceExhausted: the daemon cannot hold the batch ring.

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
    ) -> None:
        self._session: Optional[_Session] = None
        # The session of the running iteration, for close() from another thread.
        self._running: Optional[_Session] = None
        self._closed = False
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

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for batch in self.batches():
            yield batch.images, batch.labels

    def batches(self) -> Iterator[Batch]:
        """Like iterating the loader, with each batch's keys and skipped keys."""
        return self._batches(writable=False)

    def _batches(self, writable: bool) -> Iterator[Batch]:
        self._not_iterating("iterate")
        session = self._pending()
        self._session = None
        self._running = session
        self._iteration_len = session.opened.batches
        step = self.batch_size * self.world_size
        try:
            while True:
                if self._closed:
                    return  # closed inside the loop or by another thread
                try:
                    got = session.next(writable)
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
                ready, images = got
                self._consumed = min(self._consumed + step, session.opened.dataset_len)
                keys, skipped = list(ready.keys), list(ready.skipped)
                self.last_keys, self.last_skipped = keys, skipped
                yield Batch(
                    images=images,
                    labels=np.array(ready.labels, dtype=np.int64),
                    keys=keys,
                    skipped=skipped,
                    seq=ready.seq,
                )
            self._epoch, self._consumed = self._epoch + 1, 0
        finally:
            self._running = None
            self._iteration_len = None
            session.close()

    def torch(
        self, device: Optional[Any] = "cuda", non_blocking: bool = True
    ) -> Iterator[Tuple["torch.Tensor", "torch.Tensor"]]:
        """Iterates like the loader, yielding torch tensors ``(images, labels)``.

        On the CPU (``device=None`` or ``"cpu"``) the images are a zero-copy tensor over a
        copy-on-write mapping of the slot, valid until the next batch: reading costs nothing
        extra, and in-place ops (``x.add_(1)``, ``x.div_(255)``) work, copying each page they
        write into this process (the daemon's batch is never changed). On a GPU each batch is
        copied into pinned memory, which frees the slot at once, and then to ``device``
        (asynchronously with ``non_blocking``).
        """
        import torch

        dev = torch.device("cpu" if device is None else device)
        for batch in self._batches(writable=dev.type == "cpu"):
            images, labels = batch.images, batch.labels
            x, y = _readonly_tensor(torch, images), torch.from_numpy(labels)
            if dev.type != "cpu":
                x = x.pin_memory().to(dev, non_blocking=non_blocking)
                y = y.pin_memory().to(dev, non_blocking=non_blocking)
            yield x, y

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
            f"layout={self._layout!r}, socket={str(self.socket_path)!r})"
        )

    # Internals ----------------------------------------------------------------------------

    def _pending(self) -> _Session:
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

    def _open(self, retry: bool) -> _Session:
        """Opens a session at the current position, waiting for the daemon when ``retry``."""
        req = pb.OpenLoader()
        req.CopyFrom(self._request)
        req.seed, req.epoch, req.consumed = self._seed, self._epoch, self._consumed
        deadline = time.monotonic() + self.reconnect_timeout
        pause = 0.05
        while True:
            try:
                session = _Session(Connection(self.socket_path, self.timeout), req)
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
        return session

    def _not_iterating(self, what: str) -> None:
        if self._iteration_len is not None:
            raise LoaderError(f"cannot {what} while an iteration of this loader is running")


def _enum_name(enum: Any, value: int) -> str:
    """``value``'s name in the generated ``enum``, or the bare number for one this client
    does not know (a newer daemon's)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(INVALID_ARGUMENT, message)


def _check_int(name: str, value: object, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
        raise _invalid(f"{name} must be an integer in 0..{top}, not {value!r}")


def _readonly_tensor(torch: Any, array: np.ndarray) -> "torch.Tensor":
    """``torch.from_numpy`` of a read-only view, without the warning it gives for one.

    torch has no read-only tensors and warns; only the GPU path takes one of the read-only
    slot, and copies it into pinned memory at once, before anything could write it.
    """
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
