"""A child process that exports device memory the way the daemon does, for test_cuda.py.

``python _cuda_export.py FD``: allocates two granules on device 0 with ``cuMemCreate``
(pinned, POSIX-fd handle), fills them with ``pattern(size)``, sends ``b"<size>"`` and the
exported descriptor over the socket ``FD`` (SCM_RIGHTS), then waits for ``b"done"`` and frees
everything: the importer's mapping must outlive the exporter's.
"""

from __future__ import annotations

import socket
import sys
from ctypes import POINTER, byref, c_int, c_size_t, c_ulonglong, c_void_p

import numpy as np

from _support import CLIENT_ROOT  # noqa: F401  (puts the package on the path)

from loaderd import _cudadrv as c


def pattern(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.uint64) * 7 + 3) % 251).astype(np.uint8)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    drv = c.driver()
    lib = drv.lib
    lib.cuMemCreate.argtypes = [
        POINTER(c.CUmemGenericAllocationHandle),
        c_size_t,
        POINTER(c.CUmemAllocationProp),
        c_ulonglong,
    ]
    lib.cuMemExportToShareableHandle.argtypes = [
        c_void_p,
        c.CUmemGenericAllocationHandle,
        c_int,
        c_ulonglong,
    ]
    lib.cuMemcpyHtoD_v2.argtypes = [c.CUdeviceptr, c_void_p, c_size_t]
    for f in (lib.cuMemCreate, lib.cuMemExportToShareableHandle, lib.cuMemcpyHtoD_v2):
        f.restype = c.CUresult
    with drv.primary_context(0):
        prop = c.allocation_prop(0)
        gran = c_size_t()
        drv.call("cuMemGetAllocationGranularity", byref(gran), byref(prop), 0)
        size = 2 * gran.value
        handle = c.CUmemGenericAllocationHandle()
        drv.call("cuMemCreate", byref(handle), size, byref(prop), 0)
        ptr = c.CUdeviceptr()
        drv.call("cuMemAddressReserve", byref(ptr), size, 0, 0, 0)
        drv.call("cuMemMap", ptr, size, 0, handle, 0)
        drv.call("cuMemSetAccess", ptr, size, byref(c.access_desc(0)), 1)
        data = pattern(size)
        drv.call("cuMemcpyHtoD_v2", ptr, data.ctypes.data, size)
        fd = c_int(-1)
        drv.call("cuMemExportToShareableHandle", byref(fd), handle, 1, 0)
        socket.send_fds(sock, [str(size).encode()], [fd.value])
        assert sock.recv(16) == b"done"
        drv.call("cuMemUnmap", ptr, size)
        drv.call("cuMemAddressFree", ptr, size)
        drv.call("cuMemRelease", handle)
    print("exporter done", size)


if __name__ == "__main__":
    main()
