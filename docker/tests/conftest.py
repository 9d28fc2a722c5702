"""Shared helpers of the chart and image tests: the chart, rendering, the daemon binary."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "docker" / "helm" / "loaderd"
RELEASE = "ld"
NAMESPACE = "ml"


def bin_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LOADERD_BIN_DIR", REPO / "target" / "debug"))


@pytest.fixture(scope="session")
def chart():
    helm_python = pytest.importorskip("helm_python")
    with helm_python.Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def loaderd_bin() -> pathlib.Path:
    path = bin_dir() / "loaderd"
    if not path.is_file():
        pytest.skip(f"{path} is not built (cargo build --bins, or set LOADERD_BIN_DIR)")
    return path


@pytest.fixture(scope="session")
def run_loaderd(loaderd_bin):
    """Runs the built daemon with `args` in a clean environment plus `env`."""

    def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(loaderd_bin), *args], capture_output=True, text=True, timeout=30, env=clean_env(env)
        )

    return _run


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without LOADERD_*/AWS_* variables, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOADERD_", "AWS_", "RUST_LOG"))
    }
    env["RUST_BACKTRACE"] = "0"
    env.update(extra or {})
    return env


class Rendered:
    """One release's manifests, parsed."""

    def __init__(self, manifests: dict[str, str]):
        self.text = {name: body for name, body in manifests.items()}
        self.docs = []
        for name, body in sorted(manifests.items()):
            if name.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(body):
                if doc:
                    self.docs.append(doc)

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, suffix: str = "") -> dict | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) <= 1, f"several {kind} named *{suffix}"
        return found[0] if found else None

    def configmap_data(self) -> dict[str, str]:
        return self.get("ConfigMap")["data"]


@pytest.fixture(scope="session")
def render(chart):
    cache: dict[str, Rendered] = {}

    def _render(values: dict | None = None) -> Rendered:
        key = yaml.safe_dump(values or {}, sort_keys=True)
        if key not in cache:
            cache[key] = Rendered(chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE))
        return cache[key]

    return _render
