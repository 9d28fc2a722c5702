#!/usr/bin/env bash
# Peer reads on loopback: a two-node static cluster over a local S3 server (moto) holding the
# sample dataset; node a reads the files whose blocks node b owns (1) straight from S3,
# (2) from b over the peer API, (3) from a's own memory tier — the same bytes, in one run
# (`loaderctl bench read --remote`).
# Usage: benches/cluster.sh [bench read flags]   (release binaries; DATASET=dir, else the
# quickstart dataset or a generated one; LARGE=1: 12 random files of 8 MiB instead;
# BLOCK_SIZE=4MiB; BIN_DIR=target/release; PIN=1 runs node b on CPU 1 and node a + loaderctl
# on CPU 0, as two hosts would not share cores; KEEP=1 keeps the work directory with both
# nodes' logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN_DIR:-$ROOT/target/release}
BLOCK_SIZE=${BLOCK_SIZE:-4MiB}
[ -n "${BIN_DIR:-}" ] || cargo build --release --bins --quiet
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

DATASET=${DATASET:-$ROOT/.quickstart/dataset}
if [ "${LARGE:-0}" = 1 ]; then # 12 files of 8 MiB of random bytes
  DATASET=$WORK/large
  mkdir -p "$DATASET"
  python3 - "$DATASET" <<'PY'
import random, sys
rng = random.Random(1)
for i in range(12):
    with open(f"{sys.argv[1]}/f{i:02}.bin", "wb") as f:
        f.write(rng.randbytes(8 << 20))
PY
elif [ ! -d "$DATASET" ]; then
  DATASET=$WORK/dataset
  "$BIN/loaderctl" dataset gen --out "$DATASET" --classes 10 --per-class 100 --seed 1 >/dev/null
fi
python3 scripts/s3_sandbox.py --port 0 --bucket datasets --upload "$DATASET:ds" \
  --ready-file "$WORK/s3.json" >"$WORK/s3.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -f "$WORK/s3.json" ] && break; sleep 0.2; done
ENDPOINT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$WORK/s3.json")
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
head -c 32 /dev/urandom | base64 >"$WORK/token"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PA=$(port); PB=$(port)
PIN=${PIN:-0}
cpu() { # the command prefix that runs on CPU $1 when pinning (taskset execs the program)
  if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi
}
node() { # id listen peer cpu
  # shellcheck disable=SC2046
  $(cpu "$4") "$BIN/loaderd" --socket "$WORK/$1.sock" --metrics-addr off --block-size "$BLOCK_SIZE" \
    --node-id "$1" --cluster-listen "$2" --peer "$3" --cluster-token-file "$WORK/token" \
    --mount /ds=s3://datasets/ds --mount-option "/ds:endpoint=$ENDPOINT" \
    --mount-option /ds:allow_http=true --mount-option /ds:region=us-east-1 >"$WORK/$1.log" 2>&1 &
  pids+=($!)
}
node a "127.0.0.1:$PA" "b=127.0.0.1:$PB" 0
node b "127.0.0.1:$PB" "a=127.0.0.1:$PA" 1
for n in a b; do
  for _ in $(seq 100); do "$BIN/loaderctl" --socket "$WORK/$n.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "dataset $DATASET: $(find "$DATASET" -type f | wc -l) files, $(du -sh "$DATASET" | cut -f1); block size $BLOCK_SIZE; pinned: $PIN"
$(cpu 0) "$BIN/loaderctl" --socket "$WORK/a.sock" bench read --path /ds --ufs s3://datasets/ds \
  -o "endpoint=$ENDPOINT" -o allow_http=true -o region=us-east-1 --remote "$@"
