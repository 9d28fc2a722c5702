#!/usr/bin/env bash
# The thin FUSE front against the in-daemon FUSE view, in one run of `loaderctl bench fuse`:
# one daemon serves its own mount (--fuse-mount) and a front (`loaderd fuse`) serves a second
# mount from the same daemon's sockets; every FUSE phase runs through both.
#   1. 1,000 JPEGs (about 115 KB each): sequential whole-file and random reads, and a walk;
#   2. a metadata-heavy walk (list + stat) of 10,000 small files.
# Prints the front's memory (VmRSS, of which RssAnon is its own and RssShmem the worker's
# arena pages it mapped) after each run. Needs root and /dev/fuse.
# Usage: benches/fuse-front.sh   (BIN=target/debug skips the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --quiet
  BIN=$PWD/target/release
fi
WORK=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; pids=(); }
trap 'stop; rm -rf "$WORK"' EXIT

"$BIN/loaderctl" dataset gen --out "$WORK/jpegs" --classes 10 --per-class 100 --seed 1 >/dev/null
"$BIN/loaderctl" dataset gen --out "$WORK/small" --classes 100 --per-class 100 \
  --width 64 --height 48 --seed 2 >/dev/null

run() { # name dir logical
  local name=$1 dir=$2 point=$3 sock="$WORK/$1.sock"
  mkdir -p "$WORK/mnt-$name" "$WORK/front-$name"
  "$BIN/loaderd" --socket "$sock" --metrics-addr off --memory-capacity 2GiB \
    --mount "$point=file://$dir" --fuse-mount "$WORK/mnt-$name" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do "$BIN/loaderctl" --socket "$sock" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN/loaderd" fuse --socket "$sock" "$WORK/front-$name" >"$WORK/$name-front.log" 2>&1 &
  local front=$!
  pids+=($front)
  for _ in $(seq 100); do mountpoint -q "$WORK/front-$name" && break; sleep 0.1; done
  "$BIN/loaderctl" --socket "$sock" load "$point" >/dev/null
  echo "== $name"
  "$BIN/loaderctl" --socket "$sock" bench fuse --path "$point" --mount "$WORK/mnt-$name" \
    --front "$WORK/front-$name" --local "$dir"
  grep -E '^(VmRSS|VmHWM|RssAnon|RssShmem)' "/proc/$front/status" | tr -s ' \t' ' ' | paste -sd ';' \
    | sed 's/^/front memory: /'
  stop
}

run jpegs "$WORK/jpegs" /imagenet
run walk "$WORK/small" /small
