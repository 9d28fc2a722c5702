"""The shared-memory socket: its paths, and the hello checks (no daemon needed: a listener in
the test answers the hello, as a daemon of another version would)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

import loaderd
from loaderd import shm_socket_path
from loaderd._conn import PROTOCOL_VERSION, Connection, default_socket
from loaderd._proto import loaderd_pb2 as pb


def test_socket_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert shm_socket_path("/x/loaderd.sock") == Path("/x/loaderd.shm.sock")
    assert shm_socket_path("/x/loaderd.shm.sock") == Path("/x/loaderd.shm.sock")
    assert shm_socket_path(tmp_path / "other.sock") == tmp_path / "other.shm.sock"
    monkeypatch.setenv("LOADERD_SOCKET", str(tmp_path / "env.sock"))
    assert shm_socket_path() == tmp_path / "env.shm.sock"
    monkeypatch.delenv("LOADERD_SOCKET")
    uid = os.getuid()
    expected = "/run/loaderd/loaderd.sock" if uid == 0 else f"/tmp/loaderd-{uid}/loaderd.sock"
    assert default_socket() == Path(expected)
    assert shm_socket_path() == Path(expected).with_name("loaderd.shm.sock")


def _greeter(path: Path, hello: bytes) -> Iterator[Path]:
    """A listener on ``path`` that sends ``hello`` to one client, then closes."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.send(hello)
            conn.settimeout(30)
            try:
                conn.recv(1)  # until the client hangs up
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        try:
            server.shutdown(socket.SHUT_RDWR)  # wakes an accept still waiting
        except OSError:
            pass
        server.close()
        thread.join(timeout=30)


@pytest.fixture
def old_daemon(tmp_path: Path) -> Iterator[Path]:
    hello = pb.ShmHello(version=PROTOCOL_VERSION - 1, arena_len=4096).SerializeToString()
    yield from _greeter(tmp_path / "old.shm.sock", hello)


@pytest.fixture
def garbled_daemon(tmp_path: Path) -> Iterator[Path]:
    yield from _greeter(tmp_path / "garbled.shm.sock", b"\x0a\x05ab")  # truncated field


def test_protocol_version_is_checked(old_daemon: Path) -> None:
    """A daemon of the string-layout protocol (1) is refused by name, not misread."""
    assert PROTOCOL_VERSION == 2
    with pytest.raises(loaderd.ProtocolError, match="speaks protocol 1; this client speaks 2"):
        Connection(old_daemon, timeout=30)


def test_a_reply_that_does_not_parse_is_a_protocol_error(garbled_daemon: Path) -> None:
    with pytest.raises(loaderd.ProtocolError, match="ShmHello that does not parse"):
        Connection(garbled_daemon, timeout=30)
