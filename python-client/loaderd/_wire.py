"""The few protobuf messages of the daemon's shared-memory socket, encoded by hand.

The socket carries one protobuf message per datagram (``proto/proto/loaderd.proto``). Only
six small messages cross it, so a table-driven encoder/decoder of the protobuf wire format
replaces a ``protobuf`` dependency: each message is a dataclass whose ``FIELDS`` map field
numbers to attribute names and kinds. Decoding accepts both packed and unpacked repeated
numbers and skips fields it does not know, as protobuf requires, so a newer daemon that adds
fields keeps working with this client.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Type, TypeVar, Union

# Wire types.
VARINT = 0
I64 = 1
LEN = 2
I32 = 5

_U64 = 1 << 64

# Field kinds: how an attribute maps to the wire.
UINT = "uint"  # uint32 / uint64: non-negative varint
INT = "int"  # int32 / int64: two's complement varint (negatives take 10 bytes)
BOOL = "bool"
STRING = "string"
REPEATED_UINT = "repeated_uint"  # packed when encoding
REPEATED_INT = "repeated_int"  # packed when encoding
REPEATED_STRING = "repeated_string"
MESSAGE = "message"  # a nested message; encoded whenever not None (oneof members)

_REPEATED = (REPEATED_UINT, REPEATED_INT, REPEATED_STRING)


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


def encode_varint(value: int) -> bytes:
    """The base-128 varint of ``value`` (negative values as 64-bit two's complement)."""
    if value < 0:
        value += _U64
    if not 0 <= value < _U64:
        raise WireError(f"{value} does not fit in 64 bits")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """The unsigned varint at ``buf[pos:]`` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & (_U64 - 1), pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def _signed(value: int) -> int:
    return value - _U64 if value >= 1 << 63 else value


def _tag(field: int, wire_type: int) -> bytes:
    return encode_varint(field << 3 | wire_type)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _tag(field, LEN) + encode_varint(len(payload)) + payload


def iter_fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """Yields ``(field, wire type, value)`` for each field of an encoded message.

    A varint's value is an int; the other wire types give their raw bytes.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = decode_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        value: Union[int, bytes]
        if wire_type == VARINT:
            value, pos = decode_varint(buf, pos)
        elif wire_type in (I64, I32):
            width = 8 if wire_type == I64 else 4
            if pos + width > end:
                raise WireError("truncated fixed-width field")
            value, pos = bytes(buf[pos : pos + width]), pos + width
        elif wire_type == LEN:
            length, pos = decode_varint(buf, pos)
            if pos + length > end:
                raise WireError("truncated length-delimited field")
            value, pos = bytes(buf[pos : pos + length]), pos + length
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {field})")
        yield field, wire_type, value


def _packed(payload: bytes) -> Iterator[int]:
    pos = 0
    while pos < len(payload):
        value, pos = decode_varint(payload, pos)
        yield value


M = TypeVar("M", bound="Message")


class Message:
    """Base of the hand-written messages: ``FIELDS`` drives both directions."""

    # field number -> (attribute, kind[, message class for MESSAGE])
    FIELDS: ClassVar[Dict[int, Tuple[Any, ...]]] = {}

    def encode(self) -> bytes:
        """The message's protobuf encoding (proto3: default values are left out)."""
        out = bytearray()
        for field, (name, kind, *_) in sorted(self.FIELDS.items()):
            value = getattr(self, name)
            if kind == MESSAGE:
                if value is not None:
                    out += _len_delimited(field, value.encode())
            elif kind in (UINT, INT):
                if value:
                    if kind == UINT and value < 0:
                        raise WireError(f"{type(self).__name__}.{name} must not be negative")
                    out += _tag(field, VARINT) + encode_varint(value)
            elif kind == BOOL:
                if value:
                    out += _tag(field, VARINT) + b"\x01"
            elif kind == STRING:
                if value:
                    out += _len_delimited(field, value.encode("utf-8"))
            elif kind in (REPEATED_UINT, REPEATED_INT):
                if value:
                    out += _len_delimited(field, b"".join(encode_varint(v) for v in value))
            elif kind == REPEATED_STRING:
                for v in value:
                    out += _len_delimited(field, v.encode("utf-8"))
            else:  # pragma: no cover - a typo in a FIELDS table
                raise AssertionError(f"unknown field kind {kind!r}")
        return bytes(out)

    @classmethod
    def decode(cls: Type[M], buf: bytes) -> M:
        """Parses ``buf``; unknown fields are skipped, missing ones keep their defaults."""
        msg = cls()
        for field, wire_type, value in iter_fields(buf):
            spec = cls.FIELDS.get(field)
            if spec is None:
                continue
            name, kind = spec[0], spec[1]
            try:
                if kind in _REPEATED:
                    getattr(msg, name).extend(_decode_repeated(kind, wire_type, value))
                else:
                    setattr(msg, name, _decode_single(spec, wire_type, value))
            except WireError as e:
                raise WireError(f"{cls.__name__}.{name}: {e}") from None
        return msg


def _expect(wire_type: int, want: int) -> None:
    if wire_type != want:
        raise WireError(f"wire type {wire_type}, expected {want}")


def _decode_single(spec: Tuple[Any, ...], wire_type: int, value: Union[int, bytes]) -> Any:
    kind = spec[1]
    if kind in (UINT, INT, BOOL):
        _expect(wire_type, VARINT)
        assert isinstance(value, int)
        if kind == BOOL:
            return value != 0
        return _signed(value) if kind == INT else value
    _expect(wire_type, LEN)
    assert isinstance(value, bytes)
    if kind == STRING:
        return value.decode("utf-8")
    return spec[2].decode(value)


def _decode_repeated(kind: str, wire_type: int, value: Union[int, bytes]) -> List[Any]:
    if kind == REPEATED_STRING:
        _expect(wire_type, LEN)
        assert isinstance(value, bytes)
        return [value.decode("utf-8")]
    # Numbers: one unpacked varint, or a packed run of them.
    if wire_type == VARINT:
        assert isinstance(value, int)
        values = [value]
    else:
        _expect(wire_type, LEN)
        assert isinstance(value, bytes)
        values = list(_packed(value))
    return [_signed(v) for v in values] if kind == REPEATED_INT else values


@dataclasses.dataclass
class ShmHello(Message):
    """The daemon's greeting (sent with a descriptor of its cache arena)."""

    version: int = 0
    arena_len: int = 0
    # Nonzero when the daemon refuses the connection (a connection cap); ``error`` says why.
    code: int = 0
    error: str = ""

    FIELDS = {1: ("version", UINT), 2: ("arena_len", UINT), 3: ("code", INT), 4: ("error", STRING)}


@dataclasses.dataclass
class OpenLoader(Message):
    """Starts this connection's training pipeline."""

    dataset: str = ""
    batch_size: int = 0
    rank: int = 0
    world_size: int = 0
    seed: int = 0
    epoch: int = 0
    consumed: int = 0
    train: bool = False
    size: int = 0
    resize: int = 0
    layout: str = ""
    depth: int = 0
    drop_last: bool = False
    no_shuffle: bool = False
    workers: int = 0
    on_error: str = ""
    name: str = ""

    FIELDS = {
        1: ("dataset", STRING),
        2: ("batch_size", UINT),
        3: ("rank", UINT),
        4: ("world_size", UINT),
        5: ("seed", UINT),
        6: ("epoch", UINT),
        7: ("consumed", UINT),
        8: ("train", BOOL),
        9: ("size", UINT),
        10: ("resize", UINT),
        11: ("layout", STRING),
        12: ("depth", UINT),
        13: ("drop_last", BOOL),
        14: ("no_shuffle", BOOL),
        15: ("workers", UINT),
        16: ("on_error", STRING),
        17: ("name", STRING),
    }


@dataclasses.dataclass
class NextBatch(Message):
    """Asks for the next batch, releasing the slot the client is done with (-1: none)."""

    release_slot: int = -1

    FIELDS = {1: ("release_slot", INT)}


@dataclasses.dataclass
class ShmRequest(Message):
    """A client request: exactly one member of the ``kind`` oneof is set."""

    open_loader: Optional[OpenLoader] = None
    next_batch: Optional[NextBatch] = None

    FIELDS = {
        3: ("open_loader", MESSAGE, OpenLoader),
        4: ("next_batch", MESSAGE, NextBatch),
    }


@dataclasses.dataclass
class LoaderOpened(Message):
    """The answer to ``OpenLoader`` (with the ring descriptor when ``code == 0``)."""

    code: int = 0
    error: str = ""
    slot_bytes: int = 0
    depth: int = 0
    batches: int = 0
    dataset_len: int = 0
    sample_shape: List[int] = dataclasses.field(default_factory=list)
    dtype: str = ""
    sample_bytes: int = 0
    samples: int = 0

    FIELDS = {
        1: ("code", INT),
        2: ("error", STRING),
        3: ("slot_bytes", UINT),
        4: ("depth", UINT),
        5: ("batches", UINT),
        6: ("dataset_len", UINT),
        7: ("sample_shape", REPEATED_UINT),
        8: ("dtype", STRING),
        9: ("sample_bytes", UINT),
        10: ("samples", UINT),
    }


@dataclasses.dataclass
class BatchReady(Message):
    """The answer to ``NextBatch``: one batch in a ring slot, or ``end``."""

    code: int = 0
    error: str = ""
    seq: int = 0
    slot: int = 0
    samples: int = 0
    labels: List[int] = dataclasses.field(default_factory=list)
    keys: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)
    end: bool = False

    FIELDS = {
        1: ("code", INT),
        2: ("error", STRING),
        3: ("seq", UINT),
        4: ("slot", UINT),
        5: ("samples", UINT),
        6: ("labels", REPEATED_INT),
        7: ("keys", REPEATED_STRING),
        8: ("skipped", REPEATED_STRING),
        9: ("end", BOOL),
    }
