"""loaderd: training batches decoded by the node's loaderd daemon, as zero-copy numpy views.

    from loaderd import Loader

    loader = Loader("/imagenet/train", batch_size=256, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:  # uint8 NHWC views of shared memory
            ...

With ``Loader(..., device="cuda")`` the daemon decodes on the GPU into device memory and the
loader yields zero-copy torch CUDA tensors, valid until the next batch like the views.

See :class:`Loader` for the arguments, and ``Loader.torch()`` for torch tensors.
"""

from ._conn import default_socket, shm_socket_path
from .errors import (
    CudaError,
    DaemonError,
    DaemonTimeout,
    DaemonUnavailable,
    DatasetNotFound,
    InvalidArgument,
    LoaderError,
    ProtocolError,
    ResourceExhausted,
    SampleError,
)
from .loader import LAYOUTS, Batch, Loader

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CudaError",
    "DaemonError",
    "DaemonTimeout",
    "DaemonUnavailable",
    "DatasetNotFound",
    "InvalidArgument",
    "LAYOUTS",
    "Loader",
    "LoaderError",
    "ProtocolError",
    "ResourceExhausted",
    "SampleError",
    "default_socket",
    "shm_socket_path",
]
