"""The daemon's shared-memory socket: where it is, connecting, one request and its answer.

The socket is SOCK_SEQPACKET, so each protobuf message is one datagram and message
boundaries come for free. The daemon attaches descriptors (SCM_RIGHTS) to two messages: its
hello (the cache arena, which a batch client does not need and closes at once) and a
successful ``LoaderOpened`` (the client's batch ring).
"""

from __future__ import annotations

import array
import errno
import os
import socket
from pathlib import Path
from typing import List, Optional, Tuple, Type, TypeVar, Union

from google.protobuf.message import DecodeError, Message

from ._proto import loaderd_pb2 as pb
from .errors import DaemonTimeout, DaemonUnavailable, ProtocolError, daemon_error

#: Largest message either side sends.
MAX_MESSAGE = 1 << 20
#: The protocol version in the daemon's hello that this client speaks (2: layouts, dtypes
#: and ``on_error`` as enums).
PROTOCOL_VERSION = 2

M = TypeVar("M", bound=Message)

PathLike = Union[str, "os.PathLike[str]"]

_FD_SIZE = array.array("i").itemsize
# Room for a few descriptors: the daemon sends one, more would only be closed.
_ANCILLARY = socket.CMSG_SPACE(4 * _FD_SIZE)

# Connection errors after which a restarted daemon may answer: nothing listens (yet), or
# the daemon went away under an open connection.
_RETRYABLE = {errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN}

START_HINT = (
    "start it with `loaderd --mount /data=file:///path/to/dataset` (or point `socket=` / "
    "LOADERD_SOCKET at a running daemon's socket)"
)


def default_socket() -> Path:
    """The daemon's default gRPC socket: ``$LOADERD_SOCKET``, else the per-user default.

    ``/run/loaderd/loaderd.sock`` for root, ``/tmp/loaderd-<uid>/loaderd.sock`` otherwise.
    """
    env = os.environ.get("LOADERD_SOCKET")
    if env:
        return Path(env)
    uid = os.getuid()
    if uid == 0:
        return Path("/run/loaderd/loaderd.sock")
    return Path(f"/tmp/loaderd-{uid}/loaderd.sock")


def shm_socket_path(sock: Optional[PathLike] = None) -> Path:
    """The shared-memory socket for ``sock``: a gRPC socket path or a ``.shm.sock`` path.

    ``loaderd.sock`` → ``loaderd.shm.sock`` in the same directory, as the daemon names it.
    """
    path = Path(sock) if sock is not None else default_socket()
    if path.name.endswith(".shm.sock"):
        return path
    return path.with_name(f"{path.stem}.shm.sock")


class Connection:
    """One connection to the shared-memory socket, after the daemon's hello."""

    def __init__(self, path: Path, timeout: Optional[float] = None) -> None:
        self.path = path
        self.timeout = timeout
        self._buf = bytearray(MAX_MESSAGE)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # Every send and receive waits at most `timeout` seconds (None: forever).
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
            data, fds = self._recv()
            for fd in fds:  # the cache arena: batch clients read their ring only
                os.close(fd)
            hello = self._parse(pb.ShmHello, data)
            if hello.code != 0:
                # Refused (too many connections): the daemon says which limit, then closes.
                raise daemon_error(hello.code, hello.error)
            if hello.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"loaderd at {path} speaks protocol {hello.version}; this client speaks "
                    f"{PROTOCOL_VERSION} (upgrade the loaderd Python package or the daemon)"
                )
        except OSError as e:
            self._sock.close()
            raise self._unavailable(e) from e
        except BaseException:
            self._sock.close()
            raise

    def request(self, msg: pb.ShmRequest, answer: Type[M]) -> Tuple[M, List[int]]:
        """Sends ``msg`` and returns the daemon's answer, parsed as ``answer``, and the
        descriptors attached to it.

        The caller owns the descriptors. Raises :class:`DaemonUnavailable` (``retryable``)
        when the daemon has gone away, :class:`ProtocolError` for an answer that does not
        parse.
        """
        try:
            self._sock.send(msg.SerializeToString())
            data, fds = self._recv()
        except OSError as e:
            raise self._unavailable(e) from e
        try:
            return self._parse(answer, data), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _parse(self, answer: Type[M], data: bytes) -> M:
        try:
            return answer.FromString(data)
        except DecodeError as e:
            raise ProtocolError(
                f"loaderd at {self.path} sent a {answer.DESCRIPTOR.name} that does not parse: {e}"
            ) from None

    def _recv(self) -> Tuple[bytes, List[int]]:
        n, ancdata, flags, _ = self._sock.recvmsg_into(
            [self._buf], _ANCILLARY, socket.MSG_CMSG_CLOEXEC
        )
        fds: List[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % _FD_SIZE]))
        if n == 0:
            for fd in fds:
                os.close(fd)
            raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
        if flags & socket.MSG_TRUNC:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"a message from {self.path} is larger than {MAX_MESSAGE} bytes")
        return bytes(self._buf[:n]), fds

    def close(self) -> None:
        """Closes the connection; the daemon then stops this connection's pipeline."""
        self._sock.close()

    def shutdown(self) -> None:
        """Ends the connection from any thread: a request waiting in another thread fails at
        once (:class:`DaemonUnavailable`) and the daemon stops this connection's pipeline.

        Unlike :meth:`close` it leaves the descriptor to the thread using it (closing it
        under a blocked receive would not wake that receive), so :meth:`close` still
        follows.
        """
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already, or the daemon went away first: ended either way

    def _unavailable(self, e: OSError) -> DaemonUnavailable:
        if isinstance(e, TimeoutError):
            # An answer may still come, out of step with the next request: give up this
            # connection.
            self._sock.close()
            return DaemonTimeout(
                f"loaderd at {self.path} did not answer within {self.timeout:g}s: it is hung "
                "or overloaded (Loader(timeout=...) sets the limit)",
                str(self.path),
            )
        return _unavailable(self.path, e)


def _unavailable(path: Path, e: OSError) -> DaemonUnavailable:
    retryable = e.errno in _RETRYABLE
    if e.errno == errno.ENOENT:
        what = f"no loaderd socket at {path}: is the daemon running? {START_HINT}"
    elif e.errno == errno.ECONNREFUSED:
        what = f"nothing listens on {path} (loaderd stopped or crashed); {START_HINT}"
    elif e.errno in (errno.EACCES, errno.EPERM):
        what = (
            f"permission denied on {path}: the socket is 0660, so run as the daemon's user "
            "or a member of its socket group (`--socket-group`)"
        )
    elif retryable:
        what = f"loaderd at {path} went away ({e.strerror})"
    else:
        what = f"cannot talk to loaderd at {path}: {e}"
    return DaemonUnavailable(what, str(path), retryable)
