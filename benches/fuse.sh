#!/usr/bin/env bash
# The FUSE view against the daemon's API and the page cache, in one run per daemon:
#   1. the quickstart's 1,000 JPEGs: sequential and random reads, and a walk;
#   2. a metadata-heavy walk (list + stat) of 10,000 small files with the default FUSE
#      settings (10 min entry/attr timeouts, 16 threads) and untuned ones (no kernel caching
#      of entries or attributes, 1 thread).
# Needs root and /dev/fuse. Usage: benches/fuse.sh   (DATASET=dir overrides the JPEG set)
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-$PWD/.quickstart/dataset}
[ -d "$DATASET" ] || { echo "no dataset at $DATASET: run scripts/quickstart.sh first" >&2; exit 1; }
cargo build --release --bins --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap 'stop; rm -rf "$WORK"' EXIT

if [ ! -d "$WORK/small" ]; then
  "$BIN/loaderctl" dataset gen --out "$WORK/small" --classes 100 --per-class 100 \
    --width 64 --height 48 --seed 2 >/dev/null
fi

run() { # name dir logical extra-daemon-args...
  local name=$1 dir=$2 point=$3; shift 3
  mkdir -p "$WORK/mnt-$name"
  "$BIN/loaderd" --socket "$WORK/$name.sock" --metrics-addr off --memory-capacity 2GiB \
    --mount "$point=file://$dir" --fuse-mount "$WORK/mnt-$name" "$@" >"$WORK/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do "$BIN/loaderctl" --socket "$WORK/$name.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN/loaderctl" --socket "$WORK/$name.sock" load "$point" >/dev/null
  echo "== $name: $*"
  "$BIN/loaderctl" --socket "$WORK/$name.sock" bench fuse --path "$point" \
    --mount "$WORK/mnt-$name" --local "$dir"
  stop
}

run jpegs "$DATASET" /imagenet
run walk-default "$WORK/small" /small
run walk-untuned "$WORK/small" /small --fuse-entry-timeout 0s --fuse-attr-timeout 0s --fuse-threads 1
