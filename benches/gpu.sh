#!/usr/bin/env bash
# GPU benchmarks, in one run on the same generated files (docs/GPU.md, docs/BENCHMARKS.md):
#   1. loaderctl bench pipeline --gpu: the daemon's CPU path and GPU path, no trainer;
#   2. benches/gpu_bench.py pipelines: batches as normalized CUDA tensors from the loaderd GPU
#      path (device ring, Loader(device="cuda")), the loaderd CPU path (host ring +
#      .torch("cuda")), torchvision.io.decode_jpeg(device="cuda") + per-image resized crop,
#      flip and normalize on the GPU, and a torch DataLoader with PIL (workers = cores);
#   3. python-client/examples/train_resnet50.py (bf16, channels_last) loader-fed against
#      --synthetic, eager and with torch.compile.
# One log ($GPU_BENCH_LOG, default $OUT/gpu-bench.log or /tmp/gpu-bench.log) ending in a table
# of img/s and ratios.
#
# Needs a CUDA GPU, python3 with torch + torchvision, and release loaderd + loaderctl in
# $LOADERD_BIN_DIR (default target/release). Knobs: GPU_BENCH_DATA (a folder of images to use
# instead of generating GPU_BENCH_IMAGES=4096 of them), GPU_BENCH_BATCH (256),
# GPU_BENCH_TRAIN_BATCH (128), GPU_BENCH_TRAIN_STEPS (30), GPU_BENCH_BUDGET (seconds; the stages
# that no longer fit are skipped and say so).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
bin=${LOADERD_BIN_DIR:-$root/target/release}
log=${GPU_BENCH_LOG:-${OUT:-/tmp}/gpu-bench.log}
BS=${GPU_BENCH_BATCH:-256}
TBS=${GPU_BENCH_TRAIN_BATCH:-128}
STEPS=${GPU_BENCH_TRAIN_STEPS:-30}
BUDGET=${GPU_BENCH_BUDGET:-1800}

main() {
  local t0=$SECONDS
  # Globals: the EXIT trap below reads them after main returns.
  w=$(mktemp -d /tmp/loaderd-gpubench.XXXXXX)
  local results=$w/results.jsonl bad=0
  : >"$results"
  # fits SECONDS: whether a stage of about SECONDS still fits the budget.
  fits() { [ $((BUDGET - (SECONDS - t0))) -ge "$1" ]; }
  skip() { echo "{\"name\": \"$1\", \"skipped\": \"budget\"}" >>"$results"; echo "gpu.sh: $1 skipped: not enough of the ${BUDGET}s budget left"; }
  for b in loaderd loaderctl; do [ -x "$bin/$b" ] || { echo "gpu.sh: no $bin/$b (set LOADERD_BIN_DIR)"; return 1; }; done
  export PYTHONPATH=$root/python-client${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "gpu.sh: $(nproc) CPU cores; batch $BS, train batch $TBS x $STEPS steps; budget ${BUDGET}s"

  local ds=${GPU_BENCH_DATA:-$w/ds}
  python3 "$here/gpu_data.py" --out "$ds" --images "${GPU_BENCH_IMAGES:-4096}" || return 1
  local sock=$w/loaderd.sock
  # GPU_BENCH_GPU_MODE=auto: a dry run on a machine without a GPU (everything GPU fails).
  printf '[gpu]\nmode = "%s"\n' "${GPU_BENCH_GPU_MODE:-on}" >"$w/loaderd.toml"
  "$bin/loaderd" --config "$w/loaderd.toml" --socket "$sock" --metrics-addr off \
    --memory-capacity 8GiB --mount "/ds=file://$ds" >"$w/loaderd.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$w"' EXIT
  local i
  for i in $(seq 1 150); do
    "$bin/loaderctl" --socket "$sock" status >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { echo "gpu.sh: loaderd exited:"; cat "$w/loaderd.log"; return 1; }
    sleep 0.2
  done
  "$bin/loaderctl" --socket "$sock" load --no-progress /ds
  "$bin/loaderctl" --socket "$sock" status | grep -iE 'gpu|memory' | head -8

  # 1. The daemon alone.
  if fits 30; then
    if "$bin/loaderctl" --socket "$sock" bench pipeline --dataset /ds --batch-size "$BS" --gpu \
      --json >"$w/bench.json"; then
      cat "$w/bench.json"
      python3 - "$w/bench.json" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["gpu"]
st = g.get("status") or {}
print(json.dumps({"name": "loaderctl_cpu", "images_per_s": r["images_per_s"]}))
print(json.dumps({"name": "loaderctl_gpu", "images_per_s": g["images_per_s"],
                  "note": f"memory {g['memory']}, GPU share {st.get('gpu_share')}, "
                          f"{st.get('cpu_fallback_samples')} CPU fallbacks"}))
PY
    else
      bad=1
      echo '{"name": "loaderctl_gpu", "failed": true}' >>"$results"
    fi
  else skip loaderctl_gpu; fi

  # 2. Four pipelines into CUDA tensors.
  if fits 60; then
    python3 "$here/gpu_bench.py" pipelines --dataset /ds --files "$ds" --socket "$sock" \
      --batch-size "$BS" | tee "$w/pipelines.out"
    [ "${PIPESTATUS[0]}" = 0 ] || bad=1
    python3 - "$w/pipelines.out" >>"$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        for name, r in json.loads(line[7:]).items():
            print(json.dumps({"name": name, **r}))
PY
  else skip pipelines; fi

  # 3. ResNet-50 training, loader-fed against synthetic; eager, then compiled (the first
  # compile fills the inductor cache the second reuses).
  local train=$root/python-client/examples/train_resnet50.py mode src est
  for mode in eager compile; do
    for src in synthetic loaderd; do
      est=$([ $mode = compile ] && echo 150 || echo 45)
      if ! fits "$est"; then
        skip "resnet50_${mode}_$src"
        continue
      fi
      local args=(--batch-size "$TBS" --steps "$STEPS" --warmup 10 --classes 16 --json)
      [ $mode = compile ] && args+=(--compile)
      if [ $src = synthetic ]; then args+=(--synthetic); else args+=(--dataset /ds --socket "$sock" --loader device); fi
      if timeout $((BUDGET - (SECONDS - t0))) python3 "$train" "${args[@]}" >"$w/train.out"; then
        cat "$w/train.out"
        grep '^{' "$w/train.out" | tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); r['name']='resnet50_${mode}_$src'; print(json.dumps(r))" >>"$results"
      else
        cat "$w/train.out"
        bad=1
        echo "{\"name\": \"resnet50_${mode}_$src\", \"failed\": true}" >>"$results"
      fi
    done
  done
  "$bin/loaderctl" --socket "$sock" status

  echo
  echo "================ gpu.sh summary ($((SECONDS - t0)) s) ================"
  python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["name"]: r for r in rows}
labels = {
    "loaderd_gpu": "loaderd GPU path, device ring (Loader device='cuda')",
    "loaderd_cpu": "loaderd CPU path, host ring + .torch('cuda')",
    "torchvision_gpu": "torchvision decode_jpeg(device='cuda') + crop/flip",
    "dataloader_pil": "torch DataLoader + PIL",
    "loaderctl_cpu": "loaderctl bench pipeline, CPU loader (no trainer)",
    "loaderctl_gpu": "loaderctl bench pipeline --gpu (no trainer)",
}
def ips(name):
    r = by.get(name, {})
    return r.get("images_per_s")
def cell(name):
    r = by.get(name)
    if r is None:
        return "not run"
    if r.get("skipped"):
        return "skipped (" + r["skipped"] + ")"
    if r.get("failed"):
        return "FAILED"
    return f"{r['images_per_s']:.0f}"
base = ips("loaderd_gpu")
print(f"{'pipeline':58} {'img/s':>12} {'vs loaderd GPU':>15}")
for name, label in labels.items():
    v = ips(name)
    ratio = f"{v / base:.2f}" if v and base else "-"
    print(f"{label:58} {cell(name):>12} {ratio:>15}  {by.get(name, {}).get('note', '')}")
print()
print(f"{'resnet50 training (bf16, channels_last)':58} {'img/s':>12} {'of synthetic':>15}")
for mode in ("eager", "compile"):
    syn = ips(f"resnet50_{mode}_synthetic")
    for src in ("synthetic", "loaderd"):
        name = f"resnet50_{mode}_{src}"
        v = ips(name)
        ratio = f"{v / syn:.2f}" if v and syn else "-"
        print(f"{'  ' + mode + ', ' + src:58} {cell(name):>12} {ratio:>15}")
PY
  return $bad
}

mkdir -p "$(dirname "$log")"
main 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
