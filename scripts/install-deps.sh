#!/usr/bin/env bash
# Installs what building and testing loaderd needs on Debian 12: protoc (tonic code generation,
# and the Python client's check of its generated protobuf module),
# cmake and nasm (to build the bundled libjpeg-turbo 3 that the JPEG decoder links), and
# etcd (cluster membership tests), moto + boto3 for the local S3 server used by the tests and
# the quickstart, the Python packages the client and chart tests use, and NVRTC (a PyPI wheel:
# it compiles the GPU augment kernel to PTX with no GPU, so a broken kernel fails the tests).
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler libprotobuf-dev)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v nasm >/dev/null 2>&1 || need_apt+=(nasm)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c "import moto.server, boto3, numpy, google.protobuf, pytest, PIL, helm_python, kubernetes_validate, nvidia.cuda_nvrtc" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5" boto3 \
    numpy "protobuf>=4.21.12" pytest pillow helm-python-sdk kubernetes-validate nvidia-cuda-nvrtc-cu12
fi

command -v cargo >/dev/null 2>&1 || { echo "install-deps: cargo not found (install Rust with rustup)" >&2; exit 1; }
