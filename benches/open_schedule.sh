#!/usr/bin/env bash
# What a loader's schedule adds to its open: the Python client's open
# (`Loader("/ds", batch_size=256, size=224, layout="NHWC", depth=1).dataset_len`) timed with
# `--eviction clairvoyant` (a schedule, built after the reply) against `--eviction lru` (none),
# on a file:// tree of empty .jpg files, after one `loaderctl ls -R`; DAEMONS daemons per
# policy, OPENS opens each, alternating policies.
#
# Usage: benches/open_schedule.sh
#   BIN_DIR=target/release   binaries to use (build them first: cargo build --release --bins)
#   FOLDERS=200 PER=1000     the tree: FOLDERS class folders of PER files, generated once
#                            under target/bench-data/
#   DAEMONS=2 OPENS=2
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/release}
FOLDERS=${FOLDERS:-200}
PER=${PER:-1000}
DAEMONS=${DAEMONS:-2}
OPENS=${OPENS:-2}
[ -x "$BIN_DIR/loaderd" ] && [ -x "$BIN_DIR/loaderctl" ] ||
  { echo "no $BIN_DIR/loaderd: run cargo build --release --bins (or set BIN_DIR)" >&2; exit 1; }
BIN=$(cd "$BIN_DIR" && pwd)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

TREE=$PWD/target/bench-data/empty-$FOLDERS-$PER
if [ ! -d "$TREE" ]; then
  python3 - "$TREE" "$FOLDERS" "$PER" <<'PY'
import os, sys
root, folders, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for c in range(folders):
    d = os.path.join(root, f"c{c:04d}")
    os.makedirs(d, exist_ok=True)
    for i in range(per):
        open(os.path.join(d, f"{i:06d}.jpg"), "wb").close()
PY
fi

open_once() { # socket -> seconds
  PYTHONPATH=python-client python3 - "$1" <<'PY'
import sys, time
from loaderd import Loader
t = time.monotonic()
n = Loader("/ds", batch_size=256, size=224, layout="NHWC", depth=1, socket=sys.argv[1]).dataset_len
print(f"{time.monotonic() - t:.2f}")
assert n > 0
PY
}

declare -A TIMES
for d in $(seq "$DAEMONS"); do
  for policy in clairvoyant lru; do
    sock="$WORK/$policy-$d.sock"
    "$BIN/loaderd" --socket "$sock" --metrics-addr off --eviction "$policy" \
      --mount "/ds=file://$TREE" >"$WORK/$policy-$d.log" 2>&1 &
    for _ in $(seq 300); do "$BIN/loaderctl" --socket "$sock" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$BIN/loaderctl" --socket "$sock" ls -R /ds >/dev/null
  done
  for _ in $(seq "$OPENS"); do
    for policy in clairvoyant lru; do
      TIMES[$policy]+="$(open_once "$WORK/$policy-$d.sock"), "
    done
  done
  for policy in clairvoyant lru; do
    "$BIN/loaderctl" --socket "$WORK/$policy-$d.sock" status >/dev/null
  done
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
done
echo "| $((FOLDERS * PER)) files | open, s |"
echo "| --- | --- |"
echo "| \`clairvoyant\` (schedule built after the reply) | ${TIMES[clairvoyant]%, } |"
echo "| \`lru\` (no schedule) | ${TIMES[lru]%, } |"
