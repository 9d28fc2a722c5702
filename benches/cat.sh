#!/usr/bin/env bash
# `loaderctl cat` of a cached file vs `cat` of the same file from the local page cache, in one
# run: a large file (default 512 MiB) and the sample dataset's small JPEGs.
# Usage: benches/cat.sh [SIZE_MIB]   (release binaries; run scripts/quickstart.sh once first
# for the dataset, or set DATASET=dir)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-512}
DATASET=${DATASET:-$PWD/.quickstart/dataset}
cargo build --release --bins --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

mkdir -p "$WORK/big"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/big/file.bin"
"$BIN/loaderd" --socket "$WORK/s.sock" --metrics-addr off --memory-capacity "$((SIZE_MIB * 2))MiB" \
  --mount "/big=file://$WORK/big" --mount "/ds=file://$DATASET" >"$WORK/log" 2>&1 &
CTL=("$BIN/loaderctl" --socket "$WORK/s.sock")
for _ in $(seq 100); do "${CTL[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${CTL[@]}" load /big >/dev/null
"${CTL[@]}" load /ds >/dev/null
cat "$WORK/big/file.bin" >/dev/null

best() { # best of 5 wall-clock seconds of "$@"
  local b=999
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N)
    b=$(python3 -c "print(min($b, $t1 - $t0))")
  done
  echo "$b"
}
rate() { python3 -c "print(f'{$1 / $2 / 1e6:8.1f} MB/s')"; }
BYTES=$((SIZE_MIB << 20))
echo "large file: $SIZE_MIB MiB"
for mode in devnull pipe; do
  if [ $mode = devnull ]; then sink() { cat >/dev/null; }; out=/dev/null; else out=; fi
  run_cat() { if [ -n "$out" ]; then cat "$WORK/big/file.bin" >"$out"; else cat "$WORK/big/file.bin" | cat >/dev/null; fi; }
  run_shm() { if [ -n "$out" ]; then "${CTL[@]}" cat /big/file.bin >"$out"; else "${CTL[@]}" cat /big/file.bin | cat >/dev/null; fi; }
  run_grpc() { if [ -n "$out" ]; then "${CTL[@]}" cat --no-shm /big/file.bin >"$out"; else "${CTL[@]}" cat --no-shm /big/file.bin | cat >/dev/null; fi; }
  c=$(best run_cat); s=$(best run_shm); g=$(best run_grpc)
  printf '  to %-8s cat (page cache) %s | loaderctl cat (shm) %s (%.2fx) | loaderctl cat --no-shm %s (%.2fx)\n' \
    "$mode" "$(rate $BYTES "$c")" "$(rate $BYTES "$s")" "$(python3 -c "print($c/$s)")" \
    "$(rate $BYTES "$g")" "$(python3 -c "print($c/$g)")"
done

echo "small files: $(find "$DATASET" -type f | wc -l) JPEGs from $DATASET (one process per file)"
mapfile -t FILES < <(cd "$DATASET" && find . -type f | sort | head -200 | sed 's|^\./||')
small_cat() { for f in "${FILES[@]}"; do cat "$DATASET/$f" >/dev/null; done; }
small_shm() { for f in "${FILES[@]}"; do "${CTL[@]}" cat "/ds/$f" >/dev/null; done; }
c=$(best small_cat); s=$(best small_shm)
printf '  200 files: cat %.3fs, loaderctl cat %.3fs (%.2fx; process start dominates both)\n' "$c" "$s" "$(python3 -c "print($c/$s)")"
