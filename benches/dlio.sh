#!/usr/bin/env bash
# DLIO (the engine of MLPerf Storage, PyPI `dlio-benchmark` 2.0.0) training through the FUSE
# view and against the local directory holding the same data, in one run:
#   1. installs DLIO into a scratch venv outside the repo (reused when it is already there);
#   2. generates each workload's data with DLIO itself into DATA/<workload>/ (train/, valid/);
#   3. per workload, trains E epochs (a) through a mount of a fresh loaderd serving
#      `file://DATA/<workload>` (`loaderd --fuse-mount`, and with `--front` also through the thin
#      FUSE front `loaderd fuse --socket SOCK MOUNTPOINT`), (b) the same with `[fuse] keep_cache
#      = false`, (c) straight from DATA/<workload>; the page cache is dropped before every run
#      where the kernel allows it, so epoch 1 is cold (the daemon reads its UFS); in the later
#      epochs (a) reads the kernel's page cache over the mount (FUSE's keep_cache, the
#      default), (b) makes every epoch reach the daemon (its memory tier);
#   4. prints one table: AU % and samples/s per run and per epoch, mount/local ratios, the
#      bytes the daemon's view returned and read from its UFS per epoch (its metrics, sampled
#      every second), the load average; raw results in WORK/results.jsonl.
# Needs root and /dev/fuse for the mount runs, Open MPI's library (libopenmpi-dev; installed
# with apt-get when missing and root), ~8 GB free for the venv (torch's CUDA wheels).
#
# Usage: benches/dlio.sh [--venv DIR] [--work DIR] [--keep] [--front] [--no-inproc] [--no-nokeep]
#                        [--workloads "unet3d resnet50"] [--epochs 3]
#   --venv DIR        the venv [WORK/venv]; an existing one is reused and never removed
#   --work DIR        scratch: data, DLIO's output, daemon logs [/tmp/loaderd-dlio]
#   --keep            keep the venv and data (default: remove what this run created)
#   --front           also run through the thin FUSE front (skipped, saying so, while
#                     `loaderd fuse` is not a known subcommand)
#   --no-inproc       skip the in-daemon mount (`--fuse-mount`)
#   --no-nokeep       skip the in-daemon mount without keep_cache
#   --workloads LIST  unet3d (NPZ, 1 MiB files, 0.636 s compute per step of 7) and/or
#                     resnet50 (JPEG, ~64 KB files, pytorch reader, 2 read threads)
#   --epochs N        epochs per training run [3]
#   BIN=dir           loaderd/loaderctl to use [target/release, built when missing]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=/tmp/loaderd-dlio
VENV=
KEEP=0
FRONT=0
INPROC=1
NOKEEP=1
WORKLOADS="unet3d resnet50"
EPOCHS=3
while [ $# -gt 0 ]; do
  case $1 in
    --venv) VENV=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --front) FRONT=1; shift ;;
    --no-inproc) INPROC=0; shift ;;
    --no-nokeep) NOKEEP=0; shift ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
VENV=${VENV:-$WORK/venv}
VENV_GB=8 # torch with its CUDA wheels, triton, numpy/pandas: ~7 GB installed
log() { echo "== $*" >&2; }
die() { echo "dlio.sh: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }

log "disk before: $(df -h / | awk 'NR == 2 { print $3 " used, " $4 " free of " $2 }')"
SOCK=$WORK/loaderd.sock
MNT=$WORK/mnt
stop_daemon() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; fi
  sampler_pid=
  if [ -n "$mnt_pid" ]; then kill "$mnt_pid" 2>/dev/null || true; wait "$mnt_pid" 2>/dev/null || true; fi
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  mnt_pid=
  pid=
  if grep -q " $MNT fuse" /proc/mounts 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
  rm -f "$SOCK"
}
CREATED_VENV=0
CREATED_DATA=0
pid=
mnt_pid=
sampler_pid=
cleanup() {
  local rc=$?
  stop_daemon
  if [ "$KEEP" = 0 ]; then
    [ "$CREATED_DATA" = 1 ] && rm -rf "$WORK/data" "$WORK/hydra"
    # The logs stay after a failure (they are small).
    [ "$CREATED_DATA" = 1 ] && [ "$rc" = 0 ] && rm -rf "$WORK/out"
    [ "$CREATED_VENV" = 1 ] && rm -rf "$VENV"
    rmdir "$MNT" 2>/dev/null || true
  fi
  log "disk after: $(df -h / | awk 'NR == 2 { print $3 " used, " $4 " free of " $2 }')"
}
trap cleanup EXIT

# --- 1. DLIO in a venv (the recipe of DLIO.md: dlio-benchmark --no-deps, its reader's deps,
# pydftracer, torch, a tensorflow stub). The marker is written last, so a half-done install is
# redone.
if ! ldconfig -p | grep -q 'libmpi\.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Open MPI (libopenmpi-dev openmpi-bin) for mpi4py"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin >/dev/null
  else
    die "mpi4py needs Open MPI's library: apt-get install libopenmpi-dev openmpi-bin"
  fi
fi
V=$VENV/bin
if [ ! -f "$VENV/.dlio-ready" ]; then
  [ -e "$VENV" ] || CREATED_VENV=1
  mkdir -p "$(dirname "$VENV")"
  have=$(free_gb "$(dirname "$VENV")")
  [ "$have" -ge $((VENV_GB + 1)) ] || die "DLIO's venv needs about $VENV_GB GB (torch's CUDA \
wheels) plus room for the data; $(dirname "$VENV") has ${have} GB free. Free some space, or \
point --venv/--work at a larger disk."
  log "installing DLIO into $VENV (about 3.5 min, ~7 GB; no pip cache)"
  python3 -m venv "$VENV"
  PIP=("$V/pip" install --quiet --no-cache-dir --disable-pip-version-check)
  # Its nvidia-dali-cuda110 requirement is a placeholder on PyPI: install without deps.
  "${PIP[@]}" --no-deps dlio-benchmark==2.0.0
  "${PIP[@]}" mpi4py numpy omegaconf hydra-core pandas psutil Pillow PyYAML
  # Without pydftracer DLIO's fallback profiler class fails at start-up (a TypeError).
  "${PIP[@]}" pydftracer==1.0.2
  "${PIP[@]}" torch
  # DLIO imports tensorflow at start-up even for the pytorch framework; it never uses it.
  mkdir -p "$VENV/tfstub/tensorflow"
  : >"$VENV/tfstub/tensorflow/__init__.py"
  touch "$VENV/.dlio-ready"
else
  log "reusing DLIO's venv at $VENV"
fi
export PYTHONPATH=$VENV/tfstub
"$V/python" -c 'import dlio_benchmark, torch, mpi4py' || die "the venv at $VENV does not import DLIO"

# --- loaderd and loaderctl: release builds.
if [ -n "${BIN:-}" ]; then
  BIN=$(cd "$BIN" && pwd)
elif [ -x target/release/loaderd ] && [ -x target/release/loaderctl ]; then
  BIN=$REPO/target/release
else
  log "no target/release/loaderd: building release binaries (cargo build --release -p loaderd -p loaderctl)"
  have=$(free_gb "$REPO")
  [ "$have" -ge 3 ] || die "a release build needs about 3 GB; $REPO has ${have} GB free (or set BIN)"
  cargo build --release -p loaderd -p loaderctl --bins --quiet
  BIN=$REPO/target/release
fi
for b in loaderd loaderctl; do [ -x "$BIN/$b" ] || die "no $BIN/$b"; done
MODES=()
if [ "$INPROC" = 1 ]; then MODES+=(inproc); fi
if [ "$NOKEEP" = 1 ]; then MODES+=(nokeep); fi
if [ "$FRONT" = 1 ]; then
  # The thin front is its own subcommand; until it exists the mode is skipped, not faked.
  if "$BIN/loaderd" fuse --help >/dev/null 2>&1; then
    MODES+=(front)
  else
    log "skipping --front: \`$BIN/loaderd fuse\` is not a known subcommand in this build"
  fi
fi
if [ ${#MODES[@]} -gt 0 ] && ! [ -r /dev/fuse ]; then
  die "/dev/fuse cannot be opened: the mount runs need it (and root)"
fi
MODES+=(local)

# --- DLIO's command line per workload (hydra overrides; the stock configs shrunk to fit a
# 2-core machine in a few minutes, see docs/BENCHMARKS.md).
workload_args() {
  case $1 in
    unet3d)
      echo workload=unet3d_a100 ++workload.dataset.num_files_train=224 \
        ++workload.dataset.record_length=1048576 ++workload.dataset.record_length_stdev=0 \
        ++workload.workflow.checkpoint=False
      ;;
    resnet50)
      echo workload=resnet50_a100 ++workload.framework=pytorch \
        ++workload.reader.data_loader=pytorch ++workload.dataset.format=jpeg \
        ++workload.dataset.num_samples_per_file=1 ++workload.dataset.num_files_train=4000 \
        ++workload.reader.read_threads=2 ++workload.workflow.checkpoint=False
      ;;
    *) die "unknown workload $1 (unet3d, resnet50)" ;;
  esac
}
# dlio NAME WORKLOAD DATA_FOLDER extra-overrides...: one DLIO run, output in WORK/out/NAME
dlio() {
  local name=$1 wl=$2 folder=$3
  shift 3
  rm -rf "$WORK/out/$name" "$WORK/hydra/$name"
  mkdir -p "$WORK/out/$name" "$WORK/hydra/$name"
  # shellcheck disable=SC2046 # the overrides are words
  (cd "$WORK/hydra/$name" && mpirun -np 1 --allow-run-as-root --bind-to none -x PYTHONPATH \
    "$V/dlio_benchmark" $(workload_args "$wl") ++workload.dataset.data_folder="$folder" \
    ++workload.output.folder="$WORK/out/$name" \
    ++workload.checkpoint.checkpoint_folder="$WORK/hydra/$name/checkpoints" \
    hydra.run.dir="$WORK/hydra/$name" "$@") >"$WORK/out/$name.log" 2>&1 ||
    { tail -30 "$WORK/out/$name.log" >&2; die "DLIO run $name failed (log: $WORK/out/$name.log)"; }
}
drop_caches() {
  sync
  if (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then echo yes; else echo no; fi
}

# start_daemon MODE DIR: a fresh loaderd serving /dlio=file://DIR, mounted at MNT
start_daemon() {
  local mode=$1 dir=$2
  mkdir -p "$MNT"
  local fuse=()
  case $mode in
    inproc) fuse=(--fuse-mount "$MNT") ;;
    nokeep)
      printf '[fuse]\nkeep_cache = false\n' >"$WORK/nokeep.toml"
      fuse=(--config "$WORK/nokeep.toml" --fuse-mount "$MNT")
      ;;
  esac
  METRICS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$BIN/loaderd" --socket "$SOCK" --metrics-addr "127.0.0.1:$METRICS_PORT" --memory-capacity 2GiB \
    --mount "/dlio=file://$dir" "${fuse[@]}" >"$WORK/out/loaderd-$mode.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do "$BIN/loaderctl" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN/loaderctl" --socket "$SOCK" status >/dev/null 2>&1 ||
    { cat "$WORK/out/loaderd-$mode.log" >&2; die "loaderd did not start"; }
  if [ "$mode" = front ]; then
    "$BIN/loaderd" fuse --socket "$SOCK" "$MNT" >"$WORK/out/front.log" 2>&1 &
    mnt_pid=$!
  fi
  for _ in $(seq 300); do [ -d "$MNT/dlio/train" ] && return; sleep 0.1; done
  cat "$WORK/out/loaderd-$mode.log" >&2
  die "the mount at $MNT does not show /dlio/train"
}

# --- 2. the data, generated by DLIO
mkdir -p "$WORK/out"
have=$(free_gb "$WORK")
[ "$have" -ge 2 ] || die "the data and DLIO's output need about 1 GB; $WORK has ${have} GB free"
[ -d "$WORK/data" ] || CREATED_DATA=1
RESULTS=$WORK/results.jsonl # kept: a few lines
: >"$RESULTS"
for wl in $WORKLOADS; do
  data=$WORK/data/$wl
  if [ ! -f "$data/.generated" ]; then
    rm -rf "$data"
    log "$wl: generating the data with DLIO into $data"
    dlio "gen-$wl" "$wl" "$data" ++workload.workflow.generate_data=True ++workload.workflow.train=False
    touch "$data/.generated"
  fi
  log "$wl: $(find "$data/train" -type f | wc -l) training files, $(du -sh "$data" | cut -f1);" \
    "valid/ holds $(find "$data/valid" -type f 2>/dev/null | wc -l) files"

  # --- 3. training through each mount and from the local directory
  for mode in "${MODES[@]}"; do
    folder=$data
    before='{}'
    samples=
    if [ "$mode" != local ]; then
      start_daemon "$mode" "$data"
      folder=$MNT/dlio
      # DLIO lists valid/ too: an empty directory the view must show (issue 17).
      [ -d "$folder/valid" ] || die "the mount does not show the empty valid/ directory"
      before=$("$BIN/loaderctl" --socket "$SOCK" status --json)
      # The daemon's FUSE and UFS byte counters, sampled every second, split per epoch later.
      samples=$WORK/out/$wl-$mode.samples
      : >"$samples"
      "$V/python" "$REPO/benches/dlio_summary.py" sample \
        --metrics "http://127.0.0.1:$METRICS_PORT/metrics" --out "$samples" 2>/dev/null &
      sampler_pid=$!
      sleep 2
    fi
    dropped=$(drop_caches)
    log "$wl/$mode: training $EPOCHS epochs from $folder (page cache dropped: $dropped; load $(load))"
    load_before=$(load)
    dlio "$wl-$mode" "$wl" "$folder" ++workload.workflow.generate_data=False \
      ++workload.workflow.train=True ++workload.train.epochs="$EPOCHS"
    after='{}'
    if [ "$mode" != local ]; then
      sleep 2
      after=$("$BIN/loaderctl" --socket "$SOCK" status --json)
      stop_daemon
    fi
    "$V/python" "$REPO/benches/dlio_summary.py" record --workload "$wl" --mode "$mode" \
      --out "$WORK/out/$wl-$mode" --dropped "$dropped" --load-before "$load_before" \
      --load-after "$(load)" --before "$before" --after "$after" \
      --data-bytes "$(du -sb "$data/train" | cut -f1)" ${samples:+--samples "$samples"} >>"$RESULTS"
  done
done

# --- 4. the table
"$V/python" "$REPO/benches/dlio_summary.py" table "$RESULTS"
log "raw results: $RESULTS"
