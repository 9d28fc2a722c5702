#!/usr/bin/env bash
# The daemon's training pipeline (`loaderctl bench pipeline`) vs the Python baseline
# (benches/pipeline_baseline.py: Pillow in a multiprocessing pool, and a torch DataLoader when
# torch + torchvision are installed) on the same JPEGs, one epoch each, in one run.
#
# Usage: benches/pipeline.sh
#   BIN_DIR=target/release   binaries to use (build them first: cargo build --release --bins)
#   IMAGES=1000              ImageNet-like 500x375 noisy JPEGs (10 classes), generated once
#                            under target/bench-data/
#   BATCH=64 SIZE=224        batch size and output side
#   WORKERS=$(nproc)         decode threads in the daemon = processes of the baseline
#   DATASET=dir              an existing ImageFolder directory instead of the generated one
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/release}
IMAGES=${IMAGES:-1000}
BATCH=${BATCH:-64}
SIZE=${SIZE:-224}
WORKERS=${WORKERS:-$(nproc)}
CLASSES=10
for bin in loaderd loaderctl; do
  [ -x "$BIN_DIR/$bin" ] || { echo "no $BIN_DIR/$bin: run cargo build --release --bins (or set BIN_DIR)" >&2; exit 1; }
done
BIN=$(cd "$BIN_DIR" && pwd)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

DATASET=${DATASET:-$PWD/target/bench-data/pipeline-$IMAGES}
if [ ! -d "$DATASET" ]; then
  "$BIN/loaderctl" dataset gen --out "$DATASET" --classes "$CLASSES" \
    --per-class "$(((IMAGES + CLASSES - 1) / CLASSES))" --width 500 --height 375
fi
DATASET=$(cd "$DATASET" && pwd)

"$BIN/loaderd" --socket "$WORK/s.sock" --metrics-addr off --memory-capacity 2GiB \
  --mount "/data=file://$DATASET" >"$WORK/log" 2>&1 &
CTL=("$BIN/loaderctl" --socket "$WORK/s.sock")
for _ in $(seq 100); do "${CTL[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${CTL[@]}" load /data >/dev/null
# Both sides read from memory: the daemon from its cache, the baseline from the page cache.
find "$DATASET" -type f -exec cat {} + >/dev/null

# A first epoch warms the decoder threads and the allocator; the second is measured.
"${CTL[@]}" bench pipeline --dataset /data --batch-size "$BATCH" --size "$SIZE" --workers "$WORKERS" --json >/dev/null
"${CTL[@]}" bench pipeline --dataset /data --batch-size "$BATCH" --size "$SIZE" --workers "$WORKERS" \
  --json >"$WORK/daemon.json"
python3 benches/pipeline_baseline.py --dir "$DATASET" --batch-size "$BATCH" --size "$SIZE" \
  --workers "$WORKERS" --json >"$WORK/baseline.json"

python3 - "$WORK/daemon.json" "$WORK/baseline.json" "$BIN" <<'EOF'
import json, sys
daemon = json.load(open(sys.argv[1]))
base = json.load(open(sys.argv[2]))
print(f"{base['files']} JPEGs, batch {base['batch_size']}, {base['size']}px, "
      f"{base['workers']} workers/processes, binaries {sys.argv[3]}")
rows = [("loaderd pipeline", daemon)]
rows += [(f"python {name} baseline", base[name]) for name in ("pil", "torch") if base[name]]
for name, r in rows:
    print(f"  {name:<22} {r['images_per_s']:8.1f} img/s {r['mb_per_s']:8.1f} MB/s")
for name, r in rows[1:]:
    print(f"  loaderd / {name}: {daemon['images_per_s'] / r['images_per_s']:.2f}x")
if daemon.get("skipped"):
    print(f"  (daemon skipped {len(daemon['skipped'])} samples)")
EOF
