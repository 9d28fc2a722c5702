"""Fixtures: the real ``loaderd`` and ``loaderctl`` binaries, a generated dataset, daemons.

The binaries come from ``target/debug`` of this repository (``LOADERD_BIN_DIR`` overrides):
build them first with ``cargo build --bins``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from _support import (
    CLASSES,
    CORRUPTED,
    HEIGHT,
    PER_CLASS,
    REPO_ROOT,
    TRUNCATED,
    WIDTH,
    Binaries,
    Daemon,
)


@pytest.fixture(scope="session")
def bins() -> Binaries:
    bin_dir = Path(os.environ.get("LOADERD_BIN_DIR", REPO_ROOT / "target" / "debug"))
    found = Binaries(bin_dir / "loaderd", bin_dir / "loaderctl")
    missing = [str(p) for p in found if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `cargo build --bins` in {REPO_ROOT} "
            "(or set LOADERD_BIN_DIR to the directory holding loaderd and loaderctl)"
        )
    return found


@pytest.fixture(scope="session")
def dataset(bins: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of 4 classes x 12 noisy 320x240 JPEGs."""
    out = tmp_path_factory.mktemp("dataset") / "ds"
    subprocess.run(
        [
            str(bins.loaderctl),
            "dataset",
            "gen",
            "--out",
            str(out),
            "--classes",
            str(CLASSES),
            "--per-class",
            str(PER_CLASS),
            "--width",
            str(WIDTH),
            "--height",
            str(HEIGHT),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def all_keys(dataset: Path) -> List[str]:
    """Every sample key of ``dataset`` (paths below its root), sorted."""
    return sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.jpg"))


@pytest.fixture(scope="session")
def corrupt_dataset(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``dataset`` with undecodable files added and one file truncated."""
    out = tmp_path_factory.mktemp("corrupt") / "ds"
    shutil.copytree(dataset, out)
    for key, data in CORRUPTED.items():
        (out / key).write_bytes(data)
    truncated = out / TRUNCATED
    truncated.write_bytes(truncated.read_bytes()[:600])
    return out


@pytest.fixture(scope="session")
def daemon(
    bins: Binaries, dataset: Path, corrupt_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon for the session: ``/data`` is the dataset, ``/bad`` its corrupt copy."""
    d = Daemon(bins, tmp_path_factory.mktemp("daemon"), {"/data": dataset, "/bad": corrupt_dataset})
    d.start()
    yield d
    d.stop()


@pytest.fixture
def own_daemon(bins: Binaries, dataset: Path, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon for one test (to kill and restart), serving ``/data``."""
    d = Daemon(bins, tmp_path, {"/data": dataset})
    d.start()
    yield d
    d.stop()
