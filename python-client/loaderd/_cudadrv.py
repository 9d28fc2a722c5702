"""The few CUDA driver calls the client makes, through ctypes on ``libcuda.so.1``.

Two jobs: mapping a device batch ring the daemon exported (a ``cuMemCreate`` allocation sent
as a POSIX file descriptor) into this process, and page-locking this process's mapping of a
host ring (``cuMemHostRegister``) so copies out of it to the GPU run asynchronously. Every
call runs with the device's primary context current (the one torch uses), pushed and popped
around it, and every ``CUresult`` is checked, its ``cuGetErrorString`` in the message.

The driver API rather than ``torch.cuda.cudart()`` for host registration too: a failed
runtime call leaves the runtime's last error set, which torch reports at its next kernel
launch as that kernel's failure; a failed driver call leaves nothing behind.

Struct layouts (``cuda.h`` of CUDA 12.x and 13.x, x86-64 and aarch64 Linux; the same numbers
the gpu crate asserts in ``gpu/src/export.rs``):

==========================  =====  ======================================================
struct                      bytes  fields (offset)
==========================  =====  ======================================================
``CUmemLocation``           8      type (0), id (4) — a union ``{int id; ...}`` in 13.2+
``CUmemAccessDesc``         12     location (0), flags (8)
``CUmemAllocationProp``     32     type (0), requestedHandleTypes (4), location (8),
                                   win32HandleMetaData (16), allocFlags (24: compressionType
                                   24, gpuDirectRDMACapable 25, usage 26, reserved 28..32)
==========================  =====  ======================================================
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from ctypes import POINTER, Structure, byref, c_char_p, c_int, c_size_t, c_uint, c_ulonglong
from ctypes import c_ubyte, c_ushort, c_void_p
from typing import Any, Callable, Iterator, Optional

from contextlib import contextmanager

from .errors import CudaError

log = logging.getLogger("loaderd")

DRIVER_LIB = "libcuda.so.1"

CUDA_SUCCESS = 0
CU_MEM_ALLOCATION_TYPE_PINNED = 1
CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0
CU_MEMHOSTREGISTER_PORTABLE = 0x01
CU_MEMHOSTREGISTER_READ_ONLY = 0x08

CUresult = c_int
CUdevice = c_int
CUcontext = c_void_p
CUdeviceptr = c_ulonglong
CUmemGenericAllocationHandle = c_ulonglong


class CUmemLocation(Structure):
    _fields_ = [("type", c_int), ("id", c_int)]


class CUmemAccessDesc(Structure):
    _fields_ = [("location", CUmemLocation), ("flags", c_int)]


class CUmemAllocFlags(Structure):
    _fields_ = [
        ("compressionType", c_ubyte),
        ("gpuDirectRDMACapable", c_ubyte),
        ("usage", c_ushort),
        ("reserved", c_ubyte * 4),
    ]


class CUmemAllocationProp(Structure):
    _fields_ = [
        ("type", c_int),
        ("requestedHandleTypes", c_int),
        ("location", CUmemLocation),
        ("win32HandleMetaData", c_void_p),
        ("allocFlags", CUmemAllocFlags),
    ]


#: Each function used: (argument types). All return ``CUresult``.
_SIGNATURES = {
    "cuInit": [c_uint],
    "cuGetErrorString": [CUresult, POINTER(c_char_p)],
    "cuDeviceGet": [POINTER(CUdevice), c_int],
    "cuDevicePrimaryCtxRetain": [POINTER(CUcontext), CUdevice],
    "cuDevicePrimaryCtxRelease_v2": [CUdevice],
    "cuCtxPushCurrent_v2": [CUcontext],
    "cuCtxPopCurrent_v2": [POINTER(CUcontext)],
    "cuCtxSynchronize": [],
    "cuMemImportFromShareableHandle": [POINTER(CUmemGenericAllocationHandle), c_void_p, c_int],
    "cuMemGetAllocationPropertiesFromHandle": [
        POINTER(CUmemAllocationProp),
        CUmemGenericAllocationHandle,
    ],
    "cuMemGetAllocationGranularity": [POINTER(c_size_t), POINTER(CUmemAllocationProp), c_int],
    "cuMemAddressReserve": [POINTER(CUdeviceptr), c_size_t, c_size_t, CUdeviceptr, c_ulonglong],
    "cuMemAddressFree": [CUdeviceptr, c_size_t],
    "cuMemMap": [CUdeviceptr, c_size_t, c_size_t, CUmemGenericAllocationHandle, c_ulonglong],
    "cuMemUnmap": [CUdeviceptr, c_size_t],
    "cuMemSetAccess": [CUdeviceptr, c_size_t, POINTER(CUmemAccessDesc), c_size_t],
    "cuMemRelease": [CUmemGenericAllocationHandle],
    "cuMemHostRegister_v2": [c_void_p, c_size_t, c_uint],
    "cuMemHostUnregister": [c_void_p],
}


class Driver:
    """``libcuda.so.1`` with the signatures above; ``call`` raises :class:`CudaError`."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = CUresult

    def error_string(self, result: int) -> str:
        text = c_char_p()
        if self.lib.cuGetErrorString(result, byref(text)) != CUDA_SUCCESS or not text.value:
            return f"CUresult {result}"
        return f"{text.value.decode(errors='replace')} (CUresult {result})"

    def call(self, name: str, *args: Any) -> None:
        result = getattr(self.lib, name)(*args)
        if result != CUDA_SUCCESS:
            raise CudaError(f"{name} failed: {self.error_string(result)}", result)

    @contextmanager
    def primary_context(self, device: int) -> Iterator[None]:
        """Device ``device``'s primary context current on this thread for the block (pushed,
        then popped: whatever was current before stays so). The caller holds a retain."""
        dev = CUdevice()
        self.call("cuDeviceGet", byref(dev), device)
        ctx = CUcontext()
        self.call("cuDevicePrimaryCtxRetain", byref(ctx), dev)
        try:
            self.call("cuCtxPushCurrent_v2", ctx)
            try:
                yield
            finally:
                self.call("cuCtxPopCurrent_v2", byref(CUcontext()))
        finally:
            self.call("cuDevicePrimaryCtxRelease_v2", dev)


_driver: Optional[Driver] = None
_driver_lock = threading.Lock()


def driver() -> Driver:
    """The loaded, initialized driver; :class:`CudaError` saying why when there is none."""
    global _driver
    with _driver_lock:
        if _driver is None:
            try:
                lib = ctypes.CDLL(DRIVER_LIB)
            except OSError as e:
                raise CudaError(f"the CUDA driver ({DRIVER_LIB}) cannot be loaded: {e}") from e
            try:
                drv = Driver(lib)
            except AttributeError as e:
                raise CudaError(f"{DRIVER_LIB} is too old for device batch rings: {e}") from e
            drv.call("cuInit", 0)
            _driver = drv
        return _driver


def round_up(size: int, granularity: int) -> Optional[int]:
    """``size`` rounded up to whole ``granularity``; None for an empty ring or no granule."""
    if size <= 0 or granularity <= 0:
        return None
    return -(-size // granularity) * granularity


def access_desc(device: int) -> CUmemAccessDesc:
    """Read and write access for ``device``: torch refuses read-only CUDA arrays, and an
    in-place op on a read-only mapping would fault the trainer's context. The writes only ever
    change this client's current batch, which the daemon never reads back."""
    return CUmemAccessDesc(
        CUmemLocation(CU_MEM_LOCATION_TYPE_DEVICE, device), CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    )


def allocation_prop(device: int) -> CUmemAllocationProp:
    """The properties the daemon allocates its device rings with (for the granularity)."""
    prop = CUmemAllocationProp()
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
    prop.location = CUmemLocation(CU_MEM_LOCATION_TYPE_DEVICE, device)
    return prop


class DeviceMapping:
    """An exported device ring mapped into this process, read-write for its device.

    The mapping lives until :meth:`close` or until the object is collected (the tensors made
    from the ring hold it, like numpy views hold a host mapping); unmapping first
    synchronizes the context, since the trainer's kernels reading it may still be queued.
    """

    def __init__(self, fd: int, size: int, device: int) -> None:
        drv = driver()
        self.size = size
        self.device = device
        # Retained for the mapping's life: unmapping needs the context, even at shutdown.
        dev = CUdevice()
        drv.call("cuDeviceGet", byref(dev), device)
        drv.call("cuDevicePrimaryCtxRetain", byref(CUcontext()), dev)
        try:
            with drv.primary_context(device):
                self.size = self._mapped_size(drv)
                handle = CUmemGenericAllocationHandle()
                drv.call(
                    "cuMemImportFromShareableHandle",
                    byref(handle),
                    c_void_p(fd),
                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                )
                try:
                    self.ptr = self._map(drv, handle)
                finally:
                    # The mapping holds the allocation from now on.
                    drv.call("cuMemRelease", handle)
        except BaseException:
            drv.call("cuDevicePrimaryCtxRelease_v2", dev)
            raise
        self._finalizer = weakref.finalize(
            self, _unmap, drv, device, dev.value, self.ptr, self.size
        )

    def _mapped_size(self, drv: Driver) -> int:
        """The ring's size in whole granules (what cuMemMap takes; the allocation itself is
        whole granules, so this never maps past it)."""
        gran = c_size_t()
        drv.call(
            "cuMemGetAllocationGranularity",
            byref(gran),
            byref(allocation_prop(self.device)),
            CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
        size = round_up(self.size, gran.value)
        if size is None:
            raise CudaError(
                f"a device ring of {self.size} bytes cannot be mapped in granules of "
                f"{gran.value} bytes"
            )
        return size

    def _map(self, drv: Driver, handle: CUmemGenericAllocationHandle) -> int:
        prop = CUmemAllocationProp()
        drv.call("cuMemGetAllocationPropertiesFromHandle", byref(prop), handle)
        if prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE or prop.location.id != self.device:
            raise CudaError(
                f"the daemon's device ring lives on device {prop.location.id} of this process "
                f"(location type {prop.location.type}), not on cuda:{self.device}: the daemon "
                "numbers its devices differently (CUDA_VISIBLE_DEVICES); ask for the device "
                "it is"
            )
        ptr = CUdeviceptr()
        drv.call("cuMemAddressReserve", byref(ptr), self.size, 0, 0, 0)
        try:
            drv.call("cuMemMap", ptr, self.size, 0, handle, 0)
            try:
                drv.call("cuMemSetAccess", ptr, self.size, byref(access_desc(self.device)), 1)
            except CudaError:
                drv.call("cuMemUnmap", ptr, self.size)
                raise
        except CudaError:
            drv.call("cuMemAddressFree", ptr, self.size)
            raise
        return int(ptr.value)

    @property
    def mapped(self) -> bool:
        return bool(self._finalizer.alive)

    def close(self) -> None:
        """Unmaps now (idempotent); tensors over the ring must not be used after this."""
        self._finalizer()


def _unmap(drv: Driver, device: int, dev: int, ptr: int, size: int) -> None:
    """cuCtxSynchronize, cuMemUnmap, cuMemAddressFree, then the retain of ``__init__`` goes."""
    try:
        with drv.primary_context(device):
            drv.call("cuCtxSynchronize")
            drv.call("cuMemUnmap", ptr, size)
            drv.call("cuMemAddressFree", ptr, size)
        drv.call("cuDevicePrimaryCtxRelease_v2", dev)
    except CudaError as e:  # collected: nobody to raise to
        log.warning("unmapping the device batch ring failed: %s", e)


class HostRegistration:
    """A host ring's read-only mapping page-locked for ``device`` (and, portable, for every
    context) so copies out of it are asynchronous DMA; :meth:`close` unregisters it."""

    def __init__(self, ptr: int, size: int, device: int) -> None:
        drv = driver()
        with drv.primary_context(device):
            drv.call(
                "cuMemHostRegister_v2",
                c_void_p(ptr),
                size,
                CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_READ_ONLY,
            )
        self._unregister: Optional[Callable[[], None]] = lambda: _host_unregister(drv, device, ptr)

    def close(self) -> None:
        """Unregisters (idempotent); the caller has waited for copies out of it first."""
        unregister, self._unregister = self._unregister, None
        if unregister is not None:
            unregister()


def _host_unregister(drv: Driver, device: int, ptr: int) -> None:
    try:
        with drv.primary_context(device):
            drv.call("cuMemHostUnregister", c_void_p(ptr))
    except CudaError as e:
        log.warning("unregistering the host batch ring failed: %s", e)
