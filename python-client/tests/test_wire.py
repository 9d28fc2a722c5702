"""The hand-written protobuf codec and socket paths (no daemon needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loaderd import _wire, shm_socket_path
from loaderd._conn import default_socket


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        ((1 << 64) - 1, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),  # int64 -1: ten bytes, two's complement
    ],
)
def test_varint(value: int, encoded: bytes) -> None:
    assert _wire.encode_varint(value) == encoded
    decoded, end = _wire.decode_varint(encoded + b"\x99", 0)
    assert decoded == value % (1 << 64) and end == len(encoded)


def test_varint_errors() -> None:
    with pytest.raises(_wire.WireError, match="truncated"):
        _wire.decode_varint(b"\x80\x80", 0)
    with pytest.raises(_wire.WireError, match="longer than 10"):
        _wire.decode_varint(b"\xff" * 11, 0)
    with pytest.raises(_wire.WireError):
        _wire.encode_varint(1 << 64)


def test_known_encoding() -> None:
    # The bytes prost writes for ShmRequest{next_batch: NextBatch{release_slot: 3}}.
    assert _wire.ShmRequest(next_batch=_wire.NextBatch(3)).encode() == b"\x22\x02\x08\x03"
    # An empty oneof member is still written (it selects the member).
    assert _wire.ShmRequest(next_batch=_wire.NextBatch(0)).encode() == b"\x22\x00"
    # release_slot -1 (none): a ten-byte varint.
    assert _wire.NextBatch(-1).encode() == b"\x08" + b"\xff" * 9 + b"\x01"
    # proto3 leaves defaults out.
    assert _wire.OpenLoader().encode() == b""
    assert _wire.OpenLoader(dataset="/d", batch_size=2).encode() == b"\x0a\x02/d\x10\x02"


def test_open_loader_round_trip() -> None:
    req = _wire.OpenLoader(
        dataset="/imagenet/train",
        batch_size=256,
        rank=3,
        world_size=8,
        seed=(1 << 64) - 1,
        epoch=7,
        consumed=123456,
        train=True,
        size=224,
        resize=256,
        layout="nchw_f16",
        depth=4,
        drop_last=True,
        no_shuffle=True,
        workers=6,
        on_error="fail",
        name="job-7 rank 3 — é",
    )
    wrapped = _wire.ShmRequest(open_loader=req)
    assert _wire.ShmRequest.decode(wrapped.encode()) == wrapped


def test_replies_round_trip() -> None:
    opened = _wire.LoaderOpened(
        code=0,
        slot_bytes=64 * 150528,
        depth=4,
        batches=20019,
        dataset_len=1281167,
        sample_shape=[224, 224, 3],
        dtype="uint8",
        sample_bytes=150528,
        samples=1281167,
    )
    assert _wire.LoaderOpened.decode(opened.encode()) == opened
    ready = _wire.BatchReady(
        seq=5,
        slot=2,
        samples=3,
        labels=[0, 999, -1],
        keys=["a/1.jpg", "b/2.jpg", "c/3.jpg"],
        skipped=["bad.jpg"],
    )
    assert _wire.BatchReady.decode(ready.encode()) == ready
    err = _wire.BatchReady(code=-2, error="negative codes survive", end=True)
    assert _wire.BatchReady.decode(err.encode()) == err


def test_repeated_numbers_packed_and_unpacked() -> None:
    packed = b"\x32\x03\x01\x02\x03"  # field 6, LEN: 1, 2, 3
    unpacked = b"\x30\x04\x30\x05"  # field 6 twice as varints: 4, 5
    assert _wire.BatchReady.decode(packed + unpacked).labels == [1, 2, 3, 4, 5]
    assert _wire.LoaderOpened.decode(b"\x38\xe0\x01\x3a\x02\xe0\x01").sample_shape == [224, 224]


def test_unknown_fields_are_skipped() -> None:
    known = _wire.BatchReady(seq=9, keys=["k"], labels=[1]).encode()
    unknown = (
        b"\xa0\x06\x2a"  # field 100, varint
        + b"\xaa\x06\x03abc"  # field 101, length-delimited
        + b"\xb1\x06"
        + b"\x00" * 8  # field 102, fixed64
        + b"\xbd\x06"
        + b"\x00" * 4  # field 103, fixed32
    )
    assert _wire.BatchReady.decode(unknown + known + unknown) == _wire.BatchReady.decode(known)


def test_last_value_of_a_scalar_wins() -> None:
    assert _wire.BatchReady.decode(b"\x18\x01\x18\x02").seq == 2


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x0a\x05ab", "truncated length-delimited"),
        (b"\x1b", "unsupported wire type"),  # field 3, wire type 3 (group start)
        (b"\x18\x80", "truncated varint"),
        (b"\x1a\x01x", "seq: wire type 2"),  # seq sent as a string
        (b"\x00\x00", "field number 0"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(_wire.WireError, match=match):
        _wire.BatchReady.decode(data)


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
