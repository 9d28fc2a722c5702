"""Batches as torch tensors: zero-copy from a device ring, or copied out of a host ring.

torch is imported only by the functions that need it, so the package works without it.

- A device ring (``BATCH_MEMORY_CUDA``) is mapped into this process
  (:class:`~loaderd._cudadrv.DeviceMapping`) and each batch becomes a tensor over its slot
  through ``__cuda_array_interface__`` (:class:`SlotArray`): no copy, no private torch API.
  The tensor holds the mapping, as a numpy view holds a host ring's.
- A host ring feeding a GPU is page-locked once (:class:`~loaderd._cudadrv.HostRegistration`)
  and each batch is copied from its slot to a fresh device tensor asynchronously; where the
  registration fails, each batch goes through ``pin_memory()`` instead, with one warning.

Either way a slot is given back to the daemon only after an event recorded behind its last
reader has completed (:mod:`loaderd._release`).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from ._cudadrv import DeviceMapping, HostRegistration
from .errors import INVALID_ARGUMENT, CudaError, InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("loaderd")

#: ``__cuda_array_interface__`` type strings of the batch dtypes (little-endian, as CUDA is).
TYPESTRS: Mapping["np.dtype[Any]", str] = {
    np.dtype(np.uint8): "|u1",
    np.dtype(np.float32): "<f4",
    np.dtype(np.float16): "<f2",
}

Pair = Tuple["torch.Tensor", "torch.Tensor"]
Drained = List[Tuple[int, Optional[Any]]]


def cuda_array_interface(
    ptr: int, slot: int, slot_bytes: int, shape: Sequence[int], dtype: "np.dtype[Any]"
) -> Dict[str, Any]:
    """The ``__cuda_array_interface__`` (version 3) of the batch in ``slot`` of a device ring
    mapped at ``ptr``: C-contiguous (``strides`` None) from the slot's start, and ``stream``
    None because the daemon finished writing it before saying it is ready.

    Not flagged read-only: torch refuses read-only CUDA arrays ("the read only flag is not
    supported"), and the mapping is writable (see ``loaderd._cudadrv.access_desc``). An
    empty batch has pointer 0, as the interface asks of zero-size arrays.
    """
    typestr = TYPESTRS.get(np.dtype(dtype))
    if typestr is None:
        raise ValueError(f"no CUDA array type for {dtype}")
    dims = tuple(int(d) for d in shape)
    return {
        "version": 3,
        "shape": dims,
        "typestr": typestr,
        "data": (ptr + slot * slot_bytes if all(dims) else 0, False),
        "strides": None,
        "stream": None,
    }


class SlotArray:
    """One batch of a device ring for ``torch.as_tensor``; the tensor keeps it (and so the
    mapping) alive."""

    def __init__(self, mapping: DeviceMapping, interface: Dict[str, Any]) -> None:
        self.mapping = mapping
        self.__cuda_array_interface__ = interface


def import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise CudaError(f"{what} needs torch with CUDA, and torch is not installed") from e
    return torch


def resolve_device(device: Any) -> Optional[int]:
    """The CUDA device index of a loader's ``device`` argument: None (or "cpu") for host
    memory, else "cuda" (torch's current device), "cuda:N" or a torch.device. Raises
    :class:`CudaError` where torch cannot use that device."""
    if device is None or (isinstance(device, str) and device == "cpu"):
        return None
    torch = import_torch(f"device={device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgument(INVALID_ARGUMENT, f"device {device!r}: {e}") from e
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise InvalidArgument(
            INVALID_ARGUMENT,
            f"device must be None, 'cuda', 'cuda:N' or a CUDA torch.device, not {device!r}",
        )
    if not torch.cuda.is_available():
        raise CudaError(
            f"device={device!r} needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
        )
    index = torch.cuda.current_device() if dev.index is None else int(dev.index)
    count = torch.cuda.device_count()
    if index >= count:
        raise CudaError(f"device={device!r}: this process sees {count} CUDA device(s)")
    # The device's primary context (torch's) exists from here on.
    torch.cuda.synchronize(index)
    return int(index)


def readonly_tensor(th: Any, array: np.ndarray) -> "torch.Tensor":
    """``torch.from_numpy`` of a read-only view, without the warning it gives for one.

    torch has no read-only tensors and warns; only the GPU copies take one of the read-only
    slot, and read it only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return cast("torch.Tensor", th.from_numpy(array))


def labels_to(th: Any, labels: Sequence[int], device: "torch.device") -> "torch.Tensor":
    """A batch's labels on ``device``: a small asynchronous copy from pinned memory (torch's
    host allocator keeps the buffer until the copy is done)."""
    host = th.from_numpy(np.array(labels, dtype=np.int64)).pin_memory()
    return cast("torch.Tensor", host.to(device, non_blocking=True))


def record_event(th: Any, device: "torch.device") -> Any:
    event = th.cuda.Event()
    event.record(th.cuda.current_stream(device))
    return event


class DeviceRingTensors:
    """Tensors over a device ring's slots. A slot's readers are the trainer's kernels, queued
    on its stream: the event behind them is recorded when it asks for the next batch."""

    lag = 1

    def __init__(self, torch: Any, mapping: DeviceMapping, slot_bytes: int, index: int) -> None:
        self.torch = torch
        self.mapping = mapping
        self.slot_bytes = slot_bytes
        self.device = torch.device("cuda", index)
        log.info("batches in the device memory of %s, zero-copy", self.device)

    def convert(
        self, slot: int, shape: Tuple[int, ...], dtype: "np.dtype[Any]", labels: Sequence[int]
    ) -> Pair:
        labels_on = labels_to(self.torch, labels, self.device)
        if not all(shape):  # every sample skipped: nothing in the slot to view
            return (
                self.torch.empty(shape, dtype=getattr(self.torch, dtype.name), device=self.device),
                labels_on,
            )
        interface = cuda_array_interface(self.mapping.ptr, slot, self.slot_bytes, shape, dtype)
        images = self.torch.as_tensor(SlotArray(self.mapping, interface))
        if images.device != self.device:
            raise CudaError(f"the device ring's tensor is on {images.device}, not {self.device}")
        return images, labels_on

    def token(self) -> Any:
        return record_event(self.torch, self.device)

    def close(self, drained: Drained) -> None:
        """Nothing to wait for: the tensors hold the mapping, which synchronizes before it
        unmaps, and the daemon freeing its side leaves this process's mapping intact."""


class HostRingTensors:
    """Device tensors copied out of a host ring, registered once (or pinned per batch)."""

    lag = 1

    def __init__(self, torch: Any, ring: Any, index: int, warned: Dict[str, bool]) -> None:
        self.torch = torch
        self.device = torch.device("cuda", index)
        self.event: Optional[Any] = None
        self.registration: Optional[HostRegistration] = None
        # The ring's address: of the read-only shared mapping (page-locking the private
        # copy-on-write one would copy its pages and read stale ones).
        view = np.frombuffer(ring, dtype=np.uint8)
        ptr, size = int(view.ctypes.data), len(view)
        del view
        try:
            self.registration = HostRegistration(ptr, size, index)
            log.info(
                "batches copied to %s asynchronously from the page-locked host ring", self.device
            )
        except CudaError as e:
            if not warned.get("register"):
                warned["register"] = True
                warnings.warn(
                    f"loaderd: cannot page-lock the host batch ring ({e}); copying each batch "
                    "to the GPU through pin_memory() instead",
                    RuntimeWarning,
                    stacklevel=4,
                )

    @property
    def registered(self) -> bool:
        return self.registration is not None

    def convert(self, view: np.ndarray, labels: Sequence[int]) -> Pair:
        torch = self.torch
        src = readonly_tensor(torch, view)
        if self.registration is None:
            # The pinned copy frees the slot at once: nothing to wait for.
            images = src.pin_memory().to(self.device, non_blocking=True)
        else:
            images = torch.empty(src.shape, dtype=src.dtype, device=self.device)
            images.copy_(src, non_blocking=True)
            self.event = record_event(torch, self.device)
        return images, labels_to(torch, labels, self.device)

    def token(self) -> Any:
        event, self.event = self.event, None
        return event

    def close(self, drained: Drained) -> None:
        """Waits for every copy out of the ring, then unregisters it (before it is unmapped)."""
        for _, event in drained:
            if event is not None:
                event.synchronize()
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        if self.registration is not None:
            self.registration.close()
            self.registration = None
