"""The container image (docker/Dockerfile): build it and run its entrypoint. Needs a Docker
engine; skipped with the reason where there is none (a client alone is not enough)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TAG = "loaderd:test"


@pytest.fixture(scope="module")
def docker() -> str:
    exe = shutil.which("docker")
    if exe is None:
        pytest.skip("no docker client")
    info = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no Docker engine reachable: {reason}")
    return exe


@pytest.fixture(scope="module")
def image(docker) -> str:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    build = subprocess.run(
        [docker, "build", "-f", "docker/Dockerfile", "-t", TAG, "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return TAG


def run(docker: str, image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    cmd = [docker, "run", "--rm"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=120)


def test_entrypoint_prints_the_default_config(docker, image):
    done = run(docker, image, "--print-config")
    assert done.returncode == 0, done.stderr
    config = tomllib.loads(done.stdout)
    assert config["server"]["metrics_addr"] == "127.0.0.1:9464"
    # Not root: the default socket is the per-user one.
    assert config["server"]["socket"] == "/tmp/loaderd-10001/loaderd.sock"
    assert {"cache", "fuse", "pipeline", "cluster"} <= config.keys()


def test_image_has_loaderctl_and_fuse3_and_no_cuda(docker, image):
    done = run(docker, image, "-c", "loaderctl --version && command -v fusermount3 && id -u", entrypoint="/bin/sh")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "10001"
    libs = run(docker, image, "-c", "ldconfig -p | grep -c libcuda || true", entrypoint="/bin/sh")
    assert libs.stdout.strip() == "0", "CUDA libraries must come from the node, not the image"
