"""examples/train_resnet50.py: its flags, and a tiny CPU run, synthetic and fed by a real daemon
(needs torch and torchvision; skipped with the reason without them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List

import pytest

from _support import REPO_ROOT, Daemon

EXAMPLE = REPO_ROOT / "python-client" / "examples" / "train_resnet50.py"


def run(args: List[str]) -> "subprocess.CompletedProcess[str]":
    # The example imports the client from this checkout, as a user's install would provide it.
    path = os.pathsep.join(filter(None, [str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": path},
    )


def test_help_lists_the_benchmark_flags() -> None:
    out = run(["--help"])
    assert out.returncode == 0, out.stderr
    for flag in (
        "--loader",
        "--bf16",
        "--no-bf16",
        "--channels-last",
        "--compile",
        "--synthetic",
        "--json",
        "--device",
    ):
        assert flag in out.stdout, flag
    bad = run(["--loader", "gpu", "--synthetic"])
    assert bad.returncode != 0 and "--loader" in bad.stderr
    assert "--dataset is required" in run([]).stderr


TINY = [
    "--device",
    "cpu",
    "--batch-size",
    "2",
    "--size",
    "32",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--classes",
    "4",
    "--json",
]


def result(out: "subprocess.CompletedProcess[str]") -> dict:
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_smoke_synthetic_and_loader_fed(daemon: Daemon) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("torchvision", reason="torchvision is not installed (resnet50)")
    r = result(run(TINY + ["--synthetic", "--no-channels-last"]))
    assert r["source"] == "synthetic" and r["images_per_s"] > 0
    assert r["bf16"] is False and r["channels_last"] is False
    r = result(run(TINY + ["--dataset", "/data", "--socket", str(daemon.socket)]))
    assert r["source"] == "loaderd" and r["images_per_s"] > 0 and r["steps"] == 1
