"""The generated protobuf module against proto/proto/loaderd.proto, and the client's enum
tables against the generated enums (no daemon needed)."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Tuple

import pytest
from google.protobuf import descriptor_pb2, text_format

import google.protobuf
from _support import CLIENT_ROOT, REPO_ROOT
from loaderd import LAYOUTS
from loaderd._proto import loaderd_pb2 as pb
from loaderd._session import DTYPES
from loaderd.loader import ON_ERROR

PROTO_DIR = REPO_ROOT / "proto" / "proto"
GENERATED = CLIENT_ROOT / "loaderd" / "_proto" / "loaderd_pb2.py"
REGENERATE = "run python-client/scripts/gen_proto.sh and commit the result"


def _protoc_descriptor(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    """loaderd.proto as protoc compiles it now."""
    protoc = shutil.which("protoc")
    if protoc is None:
        reason = (
            "protoc is not installed, so the generated loaderd/_proto/loaderd_pb2.py cannot be "
            "checked against proto/proto/loaderd.proto (scripts/install-deps.sh installs it)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this check")
        pytest.skip(reason)
    out = tmp_path / "loaderd.desc"
    subprocess.run(
        [protoc, f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", str(PROTO_DIR / "loaderd.proto")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert [f.name for f in files] == ["loaderd.proto"]
    return files[0]


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto],
) -> Iterable[descriptor_pb2.DescriptorProto]:
    for m in messages:
        yield m
        yield from _messages(m.nested_type)


def _normalized(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``fd`` without what differs between protoc's outputs for one .proto: the JSON names
    that ``--descriptor_set_out`` fills in and generated code leaves out, and source info."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fd)
    out.ClearField("source_code_info")
    for m in _messages(out.message_type):
        for field in [*m.field, *m.extension]:
            field.ClearField("json_name")
    return out


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    """Fails when loaderd.proto changed and loaderd_pb2.py was not regenerated (or the other
    way round): every message, field number, type, enum value and reserved range counts."""
    expected = _normalized(_protoc_descriptor(tmp_path))
    generated = _normalized(
        descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    )
    if generated != expected:
        diff = "\n".join(
            difflib.unified_diff(
                text_format.MessageToString(generated).splitlines(),
                text_format.MessageToString(expected).splitlines(),
                "loaderd/_proto/loaderd_pb2.py",
                "proto/proto/loaderd.proto",
                lineterm="",
            )
        )
        pytest.fail(f"the generated module and the .proto disagree ({REGENERATE}):\n{diff}")


def _minor_patch(version: str) -> Tuple[int, int]:
    """The protoc release of a protoc (``3.21.12``, ``25.1``) or Python runtime (``4.21.12``,
    ``6.33.6``) version: runtimes number it as their minor and patch, protoc since 22 as its
    major and minor, protoc 3.x as its minor and patch."""
    core = re.match(r"\d+(?:\.\d+)*", version)
    assert core, f"not a version: {version!r}"
    parts = [int(p) for p in core.group(0).split(".")]
    if len(parts) == 2:
        return parts[0], parts[1]
    assert len(parts) == 3, f"not a protoc or protobuf version: {version!r}"
    return parts[1], parts[2]


def test_declared_runtime_is_new_enough_for_the_generated_code() -> None:
    """Generated code needs a runtime at least as new as its protoc: the lower bound in
    pyproject.toml, and the runtime these tests run with, must cover it."""
    header = GENERATED.read_text().splitlines()[0]
    found = re.search(r"protoc: libprotoc (\S+)", header)
    assert found, f"{GENERATED} lacks the header gen_proto.sh writes ({REGENERATE})"
    generator = _minor_patch(found.group(1))
    pyproject = (CLIENT_ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"protobuf>=([0-9.]+)', pyproject)
    assert floor, "pyproject.toml declares no protobuf lower bound"
    assert _minor_patch(floor.group(1)) >= generator, (
        f"protobuf>={floor.group(1)} is older than the protoc {found.group(1)} that generated "
        f"{GENERATED.name}: raise the bound in pyproject.toml"
    )
    assert _minor_patch(google.protobuf.__version__) >= generator


def test_minor_patch() -> None:
    assert _minor_patch("3.21.12") == (21, 12)
    assert _minor_patch("25.1") == (25, 1)
    assert _minor_patch("4.21.12") == (21, 12)
    assert _minor_patch("6.33.6") == (33, 6)
    assert _minor_patch("7.36.2") == (36, 2)
    assert _minor_patch("30.0-rc1") == (30, 0)
    assert _minor_patch("5.26.0rc1") == (26, 0)


def test_every_enum_value_is_mapped() -> None:
    """A layout, policy or dtype added to the .proto needs a name (or numpy type) here."""
    assert set(LAYOUTS.values()) == set(pb.SampleLayout.values()) - {pb.SAMPLE_LAYOUT_UNSPECIFIED}
    assert set(ON_ERROR.values()) == set(pb.OnSampleError.values()) - {
        pb.ON_SAMPLE_ERROR_UNSPECIFIED
    }
    assert set(DTYPES) == set(pb.Dtype.values()) - {pb.DTYPE_UNSPECIFIED}
    # The numpy type matches each layout's name.
    assert DTYPES[pb.DTYPE_UINT8].itemsize == 1
    assert DTYPES[pb.DTYPE_FLOAT32].kind == "f" and DTYPES[pb.DTYPE_FLOAT32].itemsize == 4
    assert DTYPES[pb.DTYPE_FLOAT16].kind == "f" and DTYPES[pb.DTYPE_FLOAT16].itemsize == 2
