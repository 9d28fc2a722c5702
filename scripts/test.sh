#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit tests and the
# end-to-end tests (real S3 server, real loaderd and loaderctl processes), then the Python
# client's tests (against a real daemon) and the Helm chart's render and schema tests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
# NVRTC from the wheel install-deps put in place (a CUDA toolkit's own is found without this).
if [ -z "${LOADERD_NVRTC_LIB:-}" ]; then
  LOADERD_NVRTC_LIB=$(python3 -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], "lib", "libnvrtc.so.12"))' 2>/dev/null || true)
  export LOADERD_NVRTC_LIB
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end tests run the binaries, so build them first.
cargo build --workspace --bins --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
python3 -m pytest -q python-client/tests docker/tests
