#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit tests and the
# end-to-end tests (real S3 server, real loaderd and loaderctl processes), then the Python
# client's tests (against a real daemon) and the Helm chart's render and schema tests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
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
