#!/usr/bin/env bash
# A/B of two release builds on the CPU path, alternating between them on the same data in one
# session: `loaderctl bench read` (cold, warm gRPC, warm shared memory; `file://`), `loaderctl
# bench pipeline` (the daemon's rate) and the first `loaderctl ls -R` of a generated tree of
# empty files (a cold daemon per listing, no SSD tier). The order of the builds is swapped every
# round. Prints medians per build and the paired after/before ratios per round.
#
# Usage: NEW=dir OLD=dir benches/ab.sh
#   NEW, OLD          directories holding each build's loaderd and loaderctl (target/release)
#   ROUNDS=6          rounds of bench read and bench pipeline
#   LS_ROUNDS=4       rounds of the listing
#   IMAGES=1000       quickstart-like JPEGs (`dataset gen --seed 1`), generated once
#   CLASSES=1000 PER_CLASS=100   the listing's tree: CLASSES folders of PER_CLASS empty files
#   DATA=dir          where the data is generated (kept between runs) [target/bench-data/ab]
#   OUT=file          the raw results, one JSON object per measurement [$DATA/results.jsonl]
#   S3_ROUNDS=0       rounds of the quickstart's `bench read` against a moto S3 server
#                     (scripts/s3_sandbox.py), a fresh daemon with a fresh SSD tier per run
#   SKIP_FILE=0       1: only the S3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=$(cd "${NEW:?set NEW to the new build dir}" && pwd)
OLD=$(cd "${OLD:?set OLD to the old build dir}" && pwd)
ROUNDS=${ROUNDS:-6}
LS_ROUNDS=${LS_ROUNDS:-4}
IMAGES=${IMAGES:-1000}
CLASSES=${CLASSES:-1000}
PER_CLASS=${PER_CLASS:-100}
DATA=${DATA:-$PWD/target/bench-data/ab}
OUT=${OUT:-$DATA/results.jsonl}
for b in "$NEW" "$OLD"; do
  for bin in loaderd loaderctl; do
    [ -x "$b/$bin" ] || { echo "no $b/$bin" >&2; exit 1; }
  done
done
mkdir -p "$DATA"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

JPEGS=$DATA/jpegs-$IMAGES
if [ ! -d "$JPEGS" ]; then
  "$NEW/loaderctl" dataset gen --out "$JPEGS.tmp" --classes 10 \
    --per-class "$(((IMAGES + 9) / 10))" --seed 1 >/dev/null
  mv "$JPEGS.tmp" "$JPEGS"
fi
TREE=$DATA/tree-${CLASSES}x$PER_CLASS
if [ ! -d "$TREE" ]; then
  python3 - "$TREE.tmp" "$CLASSES" "$PER_CLASS" <<'EOF'
import os, sys
root, classes, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for c in range(classes):
    name = f"n{1440764 + c * 97:08}"
    os.makedirs(os.path.join(root, name))
    for i in range(per):
        open(os.path.join(root, name, f"{name}_{10026 + i * 7}.JPEG"), "w").close()
EOF
  mv "$TREE.tmp" "$TREE"
fi
: >"$OUT"

load() { cut -d' ' -f1 /proc/loadavg; }

# start NAME BIN MOUNT [flags...]: a daemon on $WORK/NAME.sock
start() {
  local name=$1 bin=$2 mount=$3
  shift 3
  "$bin/loaderd" --socket "$WORK/$name.sock" --metrics-addr off --mount "$mount" "$@" \
    >"$WORK/$name.log" 2>&1 &
  echo $! >"$WORK/$name.pid"
  for _ in $(seq 300); do "$bin/loaderctl" --socket "$WORK/$name.sock" status >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon $name did not start" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}
stop() {
  local pid
  pid=$(cat "$WORK/$1.pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$WORK/$1.sock"
}
record() { # build round bench json
  python3 -c 'import json,sys; print(json.dumps({"build": sys.argv[1], "round": int(sys.argv[2]),
    "bench": sys.argv[3], "load": float(sys.argv[4]), "r": json.loads(sys.argv[5])}))' \
    "$1" "$2" "$3" "$(load)" "$4" >>"$OUT"
}

S3_ROUNDS=${S3_ROUNDS:-0}
SKIP_FILE=${SKIP_FILE:-0}
if [ "$S3_ROUNDS" -gt 0 ]; then
  python3 scripts/s3_sandbox.py --port 0 --bucket datasets --upload "$JPEGS:imagenet" \
    --ready-file "$WORK/s3.json" >"$WORK/s3.log" 2>&1 &
  for _ in $(seq 300); do [ -f "$WORK/s3.json" ] && break; sleep 0.2; done
  [ -f "$WORK/s3.json" ] || { cat "$WORK/s3.log"; echo "S3 server did not start" >&2; exit 1; }
  ENDPOINT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$WORK/s3.json")
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  for r in $(seq "$S3_ROUNDS"); do
    order="new old"
    [ $((r % 2)) = 0 ] && order="old new"
    for b in $order; do
      bin=$NEW
      [ $b = old ] && bin=$OLD
      rm -rf "$WORK/ssd"
      start s3 "$bin" /imagenet=s3://datasets/imagenet --ssd-dir "$WORK/ssd" \
        --mount-option "/imagenet:endpoint=$ENDPOINT" --mount-option /imagenet:allow_http=true \
        --mount-option /imagenet:region=us-east-1
      CTL=("$bin/loaderctl" --socket "$WORK/s3.sock")
      "${CTL[@]}" load /imagenet >/dev/null
      record $b "$r" read-s3 "$("${CTL[@]}" bench read --path /imagenet --ufs s3://datasets/imagenet \
        -o "endpoint=$ENDPOINT" -o allow_http=true -o region=us-east-1 --local "$JPEGS" --json)"
      stop s3
    done
    echo "s3 round $r done (load $(load))" >&2
  done
fi
[ "$SKIP_FILE" = 1 ] && { python3 benches/ab_summary.py "$OUT"; exit 0; }

# Both daemons side by side on the same JPEGs, loaded into memory and warmed.
find "$JPEGS" -type f -exec cat {} + >/dev/null
for b in new old; do
  bin=$NEW
  [ $b = old ] && bin=$OLD
  start $b "$bin" "/d=file://$JPEGS" --memory-capacity 2GiB
  "$bin/loaderctl" --socket "$WORK/$b.sock" load /d >/dev/null
  "$bin/loaderctl" --socket "$WORK/$b.sock" bench pipeline --dataset /d --batch-size 64 \
    --size 224 --workers 2 --json >/dev/null
done
for r in $(seq "$ROUNDS"); do
  order="new old"
  [ $((r % 2)) = 0 ] && order="old new"
  for b in $order; do
    bin=$NEW
    [ $b = old ] && bin=$OLD
    CTL=("$bin/loaderctl" --socket "$WORK/$b.sock")
    record $b "$r" read "$("${CTL[@]}" bench read --path /d --ufs "file://$JPEGS" --local "$JPEGS" --json)"
  done
  for b in $order; do
    bin=$NEW
    [ $b = old ] && bin=$OLD
    CTL=("$bin/loaderctl" --socket "$WORK/$b.sock")
    record $b "$r" pipeline "$("${CTL[@]}" bench pipeline --dataset /d --batch-size 64 --size 224 --workers 2 --json)"
  done
  echo "round $r done (load $(load))" >&2
done
stop new
stop old

# The listing: a cold daemon per `ls -R`, the tree's inodes in the kernel's cache.
find "$TREE" >/dev/null
for r in $(seq "$LS_ROUNDS"); do
  order="new old"
  [ $((r % 2)) = 0 ] && order="old new"
  for b in $order; do
    bin=$NEW
    [ $b = old ] && bin=$OLD
    start ls "$bin" "/t=file://$TREE"
    t0=$(date +%s.%N)
    lines=$("$bin/loaderctl" --socket "$WORK/ls.sock" ls -R /t | wc -l)
    t1=$(date +%s.%N)
    lines2=$("$bin/loaderctl" --socket "$WORK/ls.sock" ls -R /t | wc -l)
    t2=$(date +%s.%N)
    stop ls
    record $b "$r" ls "{\"first_secs\": $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}"), \"second_secs\": $(awk "BEGIN{printf \"%.3f\", $t2 - $t1}"), \"lines\": $lines, \"lines2\": $lines2}"
  done
  echo "ls round $r done (load $(load))" >&2
done

python3 benches/ab_summary.py "$OUT"
