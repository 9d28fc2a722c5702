"""One epoch's pipeline in the daemon: a connection, the mapped batch ring, the held slots.

The ring is the descriptor sent with the daemon's ``LoaderOpened``: a memfd this process maps
read-only (``BATCH_MEMORY_HOST``), or a CUDA allocation exported as a POSIX file descriptor
(``BATCH_MEMORY_CUDA``), mapped into the device's address space here. Slot ``k`` starts at
``k × slot_bytes`` either way.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Mapping, Optional, Protocol, Tuple

import numpy as np

from ._conn import Connection
from ._cudadrv import DeviceMapping
from ._proto import loaderd_pb2 as pb
from ._release import ReleaseQueue
from .errors import ProtocolError, daemon_error

#: The daemon's ``Dtype`` of a batch's samples → numpy's.
DTYPES: Mapping[int, "np.dtype[Any]"] = {
    pb.DTYPE_UINT8: np.dtype(np.uint8),
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_FLOAT16: np.dtype(np.float16),
}


class Converter(Protocol):
    """What turns this session's batches into tensors (``loaderd._torch``)."""

    lag: int

    def token(self) -> Any: ...

    def close(self, drained: Any) -> None: ...


class Session:
    """One epoch's pipeline in the daemon: a connection and the mapped batch ring.

    ``cuda`` is this process's index of the device asked for (``OpenLoader.cuda_device``),
    where a device ring gets mapped.
    """

    def __init__(self, conn: Connection, req: pb.OpenLoader, cuda: Optional[int] = None) -> None:
        self.conn = conn
        self.epoch = req.epoch
        self.consumed = req.consumed
        self.ring: Optional[mmap.mmap] = None
        self.private: Optional[mmap.mmap] = None
        self.mapping: Optional[DeviceMapping] = None
        try:
            self._open(req, cuda)
        except BaseException:
            conn.close()  # the daemon ends the loader at once, not when this is collected
            raise
        self.releases: ReleaseQueue[Any] = ReleaseQueue(max(self.opened.depth, 1), 0)
        self.converter: Optional[Converter] = None
        self.used = False

    def _open(self, req: pb.OpenLoader, cuda: Optional[int]) -> None:
        opened, fds = self.conn.request(pb.ShmRequest(open_loader=req), pb.LoaderOpened)
        try:
            if opened.code != 0:
                raise daemon_error(opened.code, opened.error)
            if not fds:
                raise ProtocolError("the daemon opened the loader but sent no batch ring")
            dtype = DTYPES.get(opened.dtype)
            if dtype is None:
                raise ProtocolError(
                    f"unknown sample dtype {enum_name(pb.Dtype, opened.dtype)} "
                    "(upgrade the loaderd Python package)"
                )
            shape = tuple(opened.sample_shape)
            if int(np.prod(shape)) * dtype.itemsize != opened.sample_bytes:
                raise ProtocolError(
                    f"sample shape {shape} of {dtype} is not {opened.sample_bytes} bytes"
                )
            if opened.memory == pb.BATCH_MEMORY_CUDA:
                self._map_device(opened, fds[0], cuda)
            elif opened.memory in (pb.BATCH_MEMORY_HOST, pb.BATCH_MEMORY_UNSPECIFIED):
                self._map_host(opened, fds[0])
            else:
                raise ProtocolError(
                    f"unknown batch memory {enum_name(pb.BatchMemory, opened.memory)} "
                    "(upgrade the loaderd Python package)"
                )
        finally:
            for fd in fds:
                os.close(fd)
        self.opened = opened
        self.dtype = dtype
        self.shape = shape

    def _map_host(self, opened: pb.LoaderOpened, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < opened.slot_bytes * opened.depth:
            raise ProtocolError(f"the batch ring has {size} bytes, less than its slots")
        # The mapping keeps the ring's memory alive after the descriptor is closed, and
        # for as long as a view of it lives, even past this session.
        self.ring = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        # The same ring copy-on-write, for tensors (torch has no read-only ones): reading
        # it reads the daemon's pages, and a write copies the page it touches into this
        # process, never reaching the daemon. Mapping costs address space only.
        self.private = mmap.mmap(
            fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )

    def _map_device(self, opened: pb.LoaderOpened, fd: int, cuda: Optional[int]) -> None:
        if cuda is None or opened.cuda_device != cuda:
            asked = "none" if cuda is None else f"cuda:{cuda}"
            raise ProtocolError(
                f"the daemon sent a ring on cuda:{opened.cuda_device}; this loader asked for "
                f"{asked}"
            )
        if opened.ring_bytes < opened.slot_bytes * opened.depth:
            raise ProtocolError(
                f"the device ring has {opened.ring_bytes} bytes, less than its slots"
            )
        self.mapping = DeviceMapping(fd, opened.ring_bytes, cuda)

    @property
    def on_device(self) -> bool:
        return self.mapping is not None

    def attach(self, converter: Converter) -> None:
        """Batches go through ``converter``, whose readers hold slots ``converter.lag``
        batches longer. Before the first batch."""
        self.converter = converter
        self.releases = ReleaseQueue(max(self.opened.depth, 1), converter.lag)

    def next(self, writable: bool = False) -> Optional[Tuple[pb.BatchReady, Optional[np.ndarray]]]:
        """The next batch and, for a host ring, its view; ``None`` at the end. Gives back the
        slot the release queue says is due, after waiting for its token.

        The view is read-only, or with ``writable`` a copy-on-write view whose writes stay in
        this process.
        """
        self.used = True
        token = None if self.converter is None else self.converter.token()
        due = self.releases.request(token)
        release = -1
        if due is not None:
            release, done = due
            if done is not None:
                done.synchronize()  # long complete in the common case
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
        self.releases.delivered(ready.slot)
        if self.ring is None:
            return ready, None
        offset = ready.slot * self.opened.slot_bytes
        ring = self.ring
        if writable:
            assert self.private is not None
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
        assert self.private is not None
        start = offset - offset % mmap.PAGESIZE
        end = min(len(self.private), -(-(offset + length) // mmap.PAGESIZE) * mmap.PAGESIZE)
        self.private.madvise(mmap.MADV_DONTNEED, start, end - start)

    def interrupt(self) -> None:
        """Ends the pipeline from any thread; a ``next`` waiting elsewhere fails at once."""
        self.conn.shutdown()

    def close(self) -> None:
        """Ends the pipeline (the daemon frees the ring); live views and tensors keep their
        mapping."""
        converter, self.converter = self.converter, None
        try:
            if converter is not None:
                converter.close(self.releases.drain())
        finally:
            self.conn.close()
            # Tensors over a device ring hold the mapping; it goes with the last of them.
            self.mapping = None
            for ring in (self.ring, self.private):
                if ring is None:
                    continue
                try:
                    ring.close()
                except BufferError:
                    pass  # views still exported: unmapped when the last one goes


def enum_name(enum: Any, value: int) -> str:
    """``value``'s name in the generated ``enum``, or the bare number for one this client
    does not know (a newer daemon's)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)
