#!/usr/bin/env bash
# One command from a fresh Debian machine to loaderd caching a real dataset:
#   1. installs dependencies and builds release binaries,
#   2. generates a sample ImageNet-like dataset (real JPEGs in class folders),
#   3. starts a real S3 server on loopback (moto) holding it,
#   4. starts loaderd on built-in defaults with the bucket mounted at /imagenet,
#   5. warms the cache with `loaderctl load`, then runs `loaderctl bench read`
#      (S3 direct vs loaderd cold vs warm vs local page cache) and one epoch of training
#      batches (`loaderctl bench pipeline`: decode + RandomResizedCrop + flip into shared memory).
# Everything lives under .quickstart/ and is stopped on exit.
# Knobs (environment): CLASSES (10), PER_CLASS (100).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.quickstart
CLASSES=${CLASSES:-10}
PER_CLASS=${PER_CLASS:-100}

./scripts/install-deps.sh
cargo build --release --bins --quiet
BIN=$ROOT/target/release

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$WORK"
if [ ! -d "$WORK/dataset" ]; then
  "$BIN/loaderctl" dataset gen --out "$WORK/dataset.tmp" --classes "$CLASSES" --per-class "$PER_CLASS" --seed 1
  mv "$WORK/dataset.tmp" "$WORK/dataset"
fi

rm -f "$WORK/s3.json"
python3 scripts/s3_sandbox.py --port 0 --bucket datasets --upload "$WORK/dataset:imagenet" \
  --ready-file "$WORK/s3.json" >"$WORK/s3.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -f "$WORK/s3.json" ] && break; sleep 0.2; done
[ -f "$WORK/s3.json" ] || { cat "$WORK/s3.log"; echo "S3 server did not start" >&2; exit 1; }
ENDPOINT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$WORK/s3.json")
echo "S3 server at $ENDPOINT, bucket 'datasets', prefix 'imagenet'"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
SOCK=$WORK/loaderd.sock
rm -rf "$WORK/ssd"
"$BIN/loaderd" --socket "$SOCK" --metrics-addr 127.0.0.1:0 --ssd-dir "$WORK/ssd" \
  --mount /imagenet=s3://datasets/imagenet \
  --mount-option "/imagenet:endpoint=$ENDPOINT" --mount-option /imagenet:allow_http=true \
  --mount-option /imagenet:region=us-east-1 >"$WORK/loaderd.log" 2>&1 &
pids+=($!)
CTL=("$BIN/loaderctl" --socket "$SOCK")
for _ in $(seq 100); do "${CTL[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done

echo
echo "== loaderctl load /imagenet (warm the cache from S3)"
"${CTL[@]}" load /imagenet
echo
echo "== loaderctl bench read (S3 direct vs loaderd cold vs warm vs local page cache)"
"${CTL[@]}" bench read --path /imagenet --ufs s3://datasets/imagenet \
  -o "endpoint=$ENDPOINT" -o allow_http=true -o region=us-east-1 --local "$WORK/dataset"
echo
echo "== loaderctl bench pipeline (one epoch of 224x224 training batches of 64 into shared memory)"
"${CTL[@]}" bench pipeline --dataset /imagenet --batch-size 64
echo
echo "== loaderctl status"
"${CTL[@]}" status
