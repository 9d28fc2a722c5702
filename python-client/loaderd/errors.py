"""Exceptions of the loaderd client.

Everything the client raises derives from :class:`LoaderError`. Errors answered by the daemon
carry the gRPC status code it sent (``code``) and are mapped to a subclass by that code, never
by message text.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

# gRPC status codes (tonic::Code) the daemon answers with.
OK = 0
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15


class LoaderError(Exception):
    """Base of every error raised by the loaderd client."""


class DaemonUnavailable(LoaderError, ConnectionError):
    """The daemon cannot be reached (not running, wrong socket) or went away.

    ``retryable`` is true when a restarted daemon could answer on the same socket (nothing
    listens yet, or the connection broke), false for errors such as a permission denied.
    """

    def __init__(self, message: str, socket_path: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.socket_path = socket_path
        self.retryable = retryable


class DaemonTimeout(DaemonUnavailable):
    """The daemon did not answer within the loader's ``timeout``: it is hung or overloaded.

    The connection is closed (a late answer would be out of step); not ``retryable``.
    """


class ProtocolError(LoaderError):
    """The daemon answered something this client does not understand."""


class CudaError(LoaderError):
    """A CUDA path of the client cannot run: torch without CUDA, no driver, or a driver call
    that failed (``result`` is its ``CUresult``, ``None`` when no call was made)."""

    def __init__(self, message: str, result: Optional[int] = None) -> None:
        super().__init__(message)
        self.result = result


class DaemonError(LoaderError):
    """An error answered by the daemon; ``code`` is its gRPC status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (daemon status {self.code})"


class InvalidArgument(DaemonError, ValueError):
    """A loader argument the daemon refused (or that the client refused before sending)."""


class DatasetNotFound(DaemonError, LookupError):
    """The dataset path does not exist in the daemon's namespace (check its mounts)."""


class ResourceExhausted(DaemonError):
    """The daemon's budget cannot hold this loader (ring size, memory)."""


class SampleError(DaemonError):
    """A sample could not be read or decoded and ``on_error="fail"`` was asked for."""


_BY_CODE: Dict[int, Type[DaemonError]] = {
    INVALID_ARGUMENT: InvalidArgument,
    NOT_FOUND: DatasetNotFound,
    RESOURCE_EXHAUSTED: ResourceExhausted,
    DATA_LOSS: SampleError,
}


def daemon_error(code: int, message: str) -> DaemonError:
    """The exception for a daemon answer with status ``code`` (non-zero)."""
    return _BY_CODE.get(code, DaemonError)(code, message)
