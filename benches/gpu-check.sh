#!/usr/bin/env bash
# The prepared GPU check (docs/GPU.md). Three modes:
#
#   benches/gpu-check.sh prepare     on a build machine (Rust, internet to PyPI, no GPU): builds
#                                    release loaderd + loaderctl and the GPU test binaries,
#                                    fetches nvJPEG/NVRTC (.so.13) and fallback Python wheels,
#                                    and lays it all out in ONE folder, .gpubin/ (git-ignored),
#                                    under $MAX_BUNDLE_MIB MiB; then verifies it.
#   benches/gpu-check.sh verify [DIR]  checks a bundle's layout, archives and size (prepare
#                                    ends with it); `layout` prints the files it requires.
#   bash .gpubin/gpu-check.sh run    on the GPU machine (CUDA 13 driver, python3 with torch,
#                                    no Rust, no internet): every GPU test in its own process
#                                    under LOADERD_REQUIRE_GPU=1, compute-sanitizer memcheck
#                                    of the decoder and kernel tests, a daemon with
#                                    `[gpu] mode = "on"` serving the Python CUDA tests, `loaderctl
#                                    bench pipeline --gpu` and a device="cuda" loader, then
#                                    benches/gpu.sh; one log ($OUT/gpu-check.log), a summary
#                                    with pass/fail per step, exit status 0 only if all passed.
#
# Test names are listed from the binaries (`--list`) at run time, never written here.
set -uo pipefail

MAX_BUNDLE_MIB=${MAX_BUNDLE_MIB:-60}
# CUDA 13.0 builds (the H200's driver 580 is CUDA 13.0; a newer 13.x library may need a newer
# driver).
NVJPEG_WHEEL=${NVJPEG_WHEEL:-nvidia-nvjpeg==13.0.*}
NVRTC_WHEEL=${NVRTC_WHEEL:-nvidia-cuda-nvrtc==13.0.*}
# Pure-Python fallbacks for the Python check, installed there only if the machine lacks them.
PY_WHEELS=${PY_WHEELS:-protobuf==5.29.5 pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0 packaging==24.2}
# The tests crate's GPU end-to-end tests: its test targets whose name matches this (tests/tests/gpu*.rs).
GPU_E2E_PATTERN=${GPU_E2E_PATTERN:-^gpu}

die() {
  echo "gpu-check: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# prepare / verify (the build machine)

# Layout of a bundle, relative to its folder. Big files are xz-compressed (NAME.xz); `run`
# unpacks them into a scratch directory.
REQUIRED=(
  gpu-check.sh MANIFEST
  bin/loaderd.xz bin/loaderctl.xz
  tests/gpu-unit.xz
  lib/libnvjpeg.so.13.xz lib/libnvrtc.so.13.xz lib/libnvrtc-builtins.so.13.0.xz
  python-client/loaderd/__init__.py python-client/examples/train_resnet50.py
  python-client/tests/conftest.py
  benches/gpu.sh benches/gpu_bench.py benches/gpu_data.py
)

verify() {
  local dir=${1:-.gpubin} bad=0 f
  [ -d "$dir" ] || die "verify: no bundle at $dir"
  for f in "${REQUIRED[@]}"; do
    [ -s "$dir/$f" ] || {
      echo "verify: missing $f"
      bad=1
    }
  done
  # At least one integration test binary of the gpu crate besides its unit tests.
  ls "$dir"/tests/gpu-*.xz 2>/dev/null | grep -qv '/gpu-unit.xz$' || {
    echo "verify: no gpu crate integration test binary (tests/gpu-NAME.xz)"
    bad=1
  }
  ls "$dir"/wheels/protobuf-*.whl "$dir"/wheels/pytest-*.whl >/dev/null 2>&1 || {
    echo "verify: missing the protobuf/pytest wheels"
    bad=1
  }
  for f in "$dir"/*/*.xz; do
    [ -e "$f" ] || continue
    python3 -c 'import lzma,sys
with lzma.open(sys.argv[1]) as f:
    while f.read(1 << 24): pass' "$f" || {
      echo "verify: $f is not a whole xz archive"
      bad=1
    }
  done
  ls "$dir"/tests/e2e-*.xz >/dev/null 2>&1 ||
    echo "verify: warning: no end-to-end GPU test binary (tests crate targets matching $GPU_E2E_PATTERN); run will fail that step"
  local bytes limit=$((MAX_BUNDLE_MIB * 1024 * 1024))
  bytes=$(du -sb "$dir" | cut -f1)
  echo "verify: bundle $dir is $bytes bytes ($((bytes / 1024 / 1024)) MiB; limit $MAX_BUNDLE_MIB MiB)"
  [ "$bytes" -lt "$limit" ] || {
    echo "verify: bundle over $MAX_BUNDLE_MIB MiB"
    bad=1
  }
  [ $bad = 0 ] || die "verify: $dir is not a complete bundle"
  echo "verify: ok"
}

# `cargo ... --message-format=json` on stdin: "TARGET_KIND TARGET_NAME PACKAGE EXECUTABLE" per
# test executable.
test_executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        t = m["target"]
        print(t["kind"][0], t["name"], m["package_id"].split("#")[-1].split("@")[0], m["executable"])
'
}

# The tests crate's test targets matching GPU_E2E_PATTERN.
e2e_targets() {
  cargo metadata --no-deps --format-version 1 | python3 -c '
import json, re, sys
pat = re.compile(sys.argv[1])
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "loaderd-tests":
        for t in p["targets"]:
            if "test" in t["kind"] and pat.search(t["name"]):
                print(t["name"])
' "$GPU_E2E_PATTERN"
}

# Downloads wheel $1 into the cache and prints its path.
wheel() {
  local spec=$1 cache=$2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --platform any -d "$cache" "$spec" >&2 ||
    die "pip download $spec failed"
  local name=${spec%%[=<>]*}
  ls -t "$cache"/"${name//-/_}"-*.whl | head -1
}

# Extracts `*/lib/$lib` from wheel $1 into $3/$lib.xz, through a cache keyed by the wheel.
lib_from_wheel() {
  local whl=$1 lib=$2 out=$3 cache=$4
  local cached="$cache/$(basename "$whl").$lib.xz"
  if [ ! -s "$cached" ]; then
    local tmp
    tmp=$(mktemp -d)
    unzip -q -j -o "$whl" "*/lib/$lib" -d "$tmp" || die "$lib not in $whl"
    xz -T2 -6 -c "$tmp/$lib" >"$cached.part" && mv "$cached.part" "$cached"
    rm -rf "$tmp"
  fi
  cp "$cached" "$out/$lib.xz"
}

prepare() {
  local t0=$SECONDS root
  root=$(git rev-parse --show-toplevel) || die "prepare runs in the repository"
  cd "$root" || die "cd $root"
  git check-ignore -q .gpubin/ || die ".gpubin/ is not git-ignored (.gitignore has /.gpubin/)"
  command -v cargo >/dev/null || die "prepare needs cargo"
  for t in xz unzip strip python3; do command -v $t >/dev/null || die "prepare needs $t"; done
  local out=$root/.gpubin cache=$root/target/gpu-check-cache
  rm -rf "$out"
  mkdir -p "$out"/{bin,tests,lib,wheels,benches} "$cache" || die "mkdir $out"

  echo "== release build of loaderd and loaderctl"
  cargo build --release --locked -p loaderd -p loaderctl --bins || die "release build failed"
  cp target/release/loaderd target/release/loaderctl "$out/bin/"

  echo "== GPU test binaries (cargo test --release --no-run)"
  local e2e
  e2e=$(e2e_targets) || die "cargo metadata failed"
  local list=$cache/executables
  cargo test --release --locked --no-run --message-format=json -p loaderd-gpu |
    test_executables >"$list" || die "building the gpu crate's tests failed"
  if [ -n "$e2e" ]; then
    local e2e_args=(-p loaderd-tests)
    for t in $e2e; do e2e_args+=(--test "$t"); done
    cargo test --release --locked --no-run --message-format=json "${e2e_args[@]}" |
      test_executables >>"$list" || die "building the end-to-end GPU tests failed"
  else
    echo "prepare: no tests crate target matches $GPU_E2E_PATTERN: no end-to-end GPU test in the bundle"
  fi
  local kind name pkg exe dst
  while read -r kind name pkg exe; do
    case $pkg:$kind in
    loaderd-gpu:lib) dst=gpu-unit ;;
    loaderd-gpu:*) dst=gpu-$name ;;
    loaderd-tests:*) dst=e2e-$name ;;
    *) continue ;;
    esac
    cp "$exe" "$out/tests/$dst"
    echo "  $dst <- $exe"
  done <"$list"

  echo "== strip and compress"
  strip --strip-debug "$out"/bin/* "$out"/tests/* || die "strip failed"
  xz -T2 -6 "$out"/bin/* "$out"/tests/* || die "xz failed"

  echo "== nvJPEG and NVRTC from PyPI ($NVJPEG_WHEEL, $NVRTC_WHEEL)"
  local whl
  whl=$(wheel "$NVJPEG_WHEEL" "$cache") || exit 1
  lib_from_wheel "$whl" libnvjpeg.so.13 "$out/lib" "$cache"
  whl=$(wheel "$NVRTC_WHEEL" "$cache") || exit 1
  lib_from_wheel "$whl" libnvrtc.so.13 "$out/lib" "$cache"
  lib_from_wheel "$whl" libnvrtc-builtins.so.13.0 "$out/lib" "$cache"

  echo "== Python wheels ($PY_WHEELS)"
  for spec in $PY_WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation py --platform any -d "$out/wheels" "$spec" ||
      die "pip download $spec failed"
  done

  echo "== python-client, benches, this script"
  mkdir -p "$out/python-client"
  (cd python-client && tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
    -cf - loaderd tests examples pyproject.toml README.md) | tar -xf - -C "$out/python-client"
  cp benches/gpu.sh benches/gpu_bench.py benches/gpu_data.py "$out/benches/"
  cp benches/gpu-check.sh "$out/gpu-check.sh"
  {
    echo "loaderd GPU check bundle"
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpubin' || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%FT%TZ) on $(uname -m), $(ldd --version | head -1)"
    echo "wheels: $NVJPEG_WHEEL $NVRTC_WHEEL $PY_WHEELS"
    (cd "$out" && find . -type f ! -name MANIFEST | sort | xargs ls -l | awk '{print $5, $9}')
  } >"$out/MANIFEST"

  echo "== the binaries run here (glibc, --list)"
  local scratch
  scratch=$(mktemp -d)
  unpack "$out" "$scratch"
  "$scratch/bin/loaderd" --version || die "loaderd does not run"
  "$scratch/bin/loaderctl" --version || die "loaderctl does not run"
  for exe in "$scratch"/tests/*; do
    local n
    n=$("$exe" --list 2>/dev/null | grep -c ': test$') || die "$exe --list failed"
    echo "  $(basename "$exe"): $n tests"
  done
  rm -rf "$scratch"
  verify "$out"
  # What travels to the GPU machine: the tracked and untracked-not-ignored files plus .gpubin.
  local tree
  tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null || true) | tail -1 | cut -f1)
  echo "prepare: working tree ${tree:-?} bytes + bundle; carry .gpubin (64 MiB in all)"
  echo "prepare: done in $((SECONDS - t0)) s"
}

# Copies bundle $1 into $2, decompressing every NAME.xz to NAME (executables under bin/ and
# tests/).
unpack() {
  local from=$1 to=$2
  mkdir -p "$to"
  cp -r "$from"/. "$to"/
  python3 - "$to" <<'PY' || die "unpacking $from failed"
import lzma, os, sys, pathlib
root = pathlib.Path(sys.argv[1])
for p in root.rglob("*.xz"):
    dst = p.with_suffix("")
    with lzma.open(p) as src, open(dst, "wb") as out:
        while chunk := src.read(1 << 24):
            out.write(chunk)
    p.unlink()
    if dst.parent.name in ("bin", "tests"):
        os.chmod(dst, 0o755)
PY
}

# ---------------------------------------------------------------------------------------------
# run (the GPU machine)

STEPS=()
FAILED=0
# record STEP RESULT [DETAIL]: RESULT is PASS, FAIL or NA (could not run here, said why).
record() {
  STEPS+=("$(printf '%-44s %-4s %s' "$1" "$2" "${3:-}")")
  [ "$2" = FAIL ] && FAILED=1
  echo "== step $1: $2 ${3:-}"
}

# Seconds left of the run's budget, less $1 kept for later steps.
left() {
  local l=$((BUDGET - (SECONDS - T0) - ${1:-0}))
  [ $l -gt 5 ] && echo $l || echo 5
}

# min A B
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }

# Runs each test of binary $1 in its own process (timeout $2 s each), LOADERD_REQUIRE_GPU=1;
# a printed "skipping:" fails the test.
run_tests_of() {
  local exe=$1 each=$2 name bad=0 n=0 t rc
  local names
  names=$("$exe" --list 2>/dev/null | sed -n 's/: test$//p')
  [ -n "$names" ] || {
    record "tests $(basename "$exe")" FAIL "--list printed no tests"
    return
  }
  for t in $names; do
    n=$((n + 1))
    LOADERD_REQUIRE_GPU=1 timeout "$(min "$each" "$(left 150)")" "$exe" --exact "$t" --nocapture --test-threads 1 >"$W/t.out" 2>&1
    rc=$?
    cat "$W/t.out"
    if grep -q 'skipping:' "$W/t.out"; then rc=99; fi
    echo "-- $(basename "$exe") $t rc=$rc"
    [ $rc = 0 ] || {
      bad=$((bad + 1))
      FAILED_TESTS+=("$(basename "$exe") $t (rc $rc)")
    }
  done
  if [ $bad = 0 ]; then
    record "tests $(basename "$exe")" PASS "$n tests"
  else
    record "tests $(basename "$exe")" FAIL "$bad of $n failed"
  fi
}

# compute-sanitizer memcheck of one test.
memcheck() {
  local exe=$1 t=$2 rc
  timeout "$(min 90 "$(left 120)")" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$exe" --exact "$t" --nocapture --test-threads 1 >"$W/m.out" 2>&1
  rc=$?
  tail -40 "$W/m.out"
  if grep -qiE 'device not supported|unable to (find|load)|tool.*not supported' "$W/m.out" && [ $rc != 0 ]; then
    record "memcheck $t" NA "compute-sanitizer refused this machine (see log)"
  elif [ $rc = 0 ] && ! grep -q 'skipping:' "$W/m.out"; then
    record "memcheck $t" PASS "$(grep -o 'ERROR SUMMARY: [0-9]* errors' "$W/m.out" | tail -1)"
  else
    record "memcheck $t" FAIL "rc $rc $(grep -o 'ERROR SUMMARY: [0-9]* errors' "$W/m.out" | tail -1)"
  fi
}

# Finds a library through cuda.pathfinder (the machine's pip CUDA packages).
pathfinder() {
  python3 -c "from cuda.pathfinder import load_nvidia_dynamic_lib as l; print(l('$1').abs_path or '')" 2>/dev/null
}

stop_daemon() {
  if [ -n "${DAEMON_PID:-}" ]; then
    kill "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID" 2>/dev/null
    DAEMON_PID=
  fi
}

run() {
  local B
  B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  local O=${OUT:-$B/out}
  mkdir -p "$O"
  run_steps "$B" "$O" 2>&1 | tee "$O/gpu-check.log"
  return "${PIPESTATUS[0]}"
}

# The steps of `run`, bundle $1, output folder $2.
run_steps() {
  local B=$1 O=$2
  T0=$SECONDS
  BUDGET=${GPU_CHECK_BUDGET:-330}
  echo "loaderd GPU check; budget $BUDGET s"
  head -4 "$B/MANIFEST"
  W=$(mktemp -d /tmp/loaderd-gpucheck.XXXXXX)
  FAILED_TESTS=()
  trap 'stop_daemon' EXIT
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ldd --version | head -1
  unpack "$B" "$W/b"
  local b=$W/b

  # Libraries: the machine's (cuda.pathfinder) first, the carried .so.13 otherwise; also on
  # LD_LIBRARY_PATH, which reaches daemons that the end-to-end tests start with a clean
  # LOADERD_* environment.
  local nvrtc nvjpeg
  nvrtc=$(pathfinder nvrtc)
  nvjpeg=$(pathfinder nvjpeg)
  export LOADERD_NVRTC_LIB=${nvrtc:-$b/lib/libnvrtc.so.13}
  export LOADERD_NVJPEG_LIB=${nvjpeg:-$b/lib/libnvjpeg.so.13}
  export LD_LIBRARY_PATH=$(dirname "$LOADERD_NVRTC_LIB"):$(dirname "$LOADERD_NVJPEG_LIB"):$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export RUST_BACKTRACE=1 LOADERD_BIN_DIR=$b/bin PYTHONUNBUFFERED=1
  echo "nvrtc=$LOADERD_NVRTC_LIB ($([ -n "$nvrtc" ] && echo pathfinder || echo carried))"
  echo "nvjpeg=$LOADERD_NVJPEG_LIB ($([ -n "$nvjpeg" ] && echo pathfinder || echo carried))"

  # Python: the carried wheels only where the machine lacks a package.
  if ! python3 -c 'import google.protobuf, pytest, numpy' 2>/dev/null ||
    ! PYTHONPATH=$b/python-client python3 -c 'import loaderd' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$W/site" "$b"/wheels/*.whl &&
      export PYTHONPATH=$W/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$b/python-client${PYTHONPATH:+:$PYTHONPATH}
  python3 -c 'import torch, google.protobuf, pytest, loaderd; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "protobuf", google.protobuf.__version__, "pytest", pytest.__version__)' ||
    record "python environment" FAIL "torch/protobuf/pytest/loaderd do not import"

  # 1. Every GPU test in its own process.
  local exe
  for exe in "$b"/tests/gpu-*; do run_tests_of "$exe" 120; done
  local e2e=("$b"/tests/e2e-*)
  if [ -e "${e2e[0]}" ]; then
    for exe in "${e2e[@]}"; do run_tests_of "$exe" 120; done
  else
    record "end-to-end GPU tests" FAIL "none in the bundle (tests crate targets matching $GPU_E2E_PATTERN)"
  fi

  # 2. compute-sanitizer memcheck of the kernel and the decoder tests (names from --list).
  if command -v compute-sanitizer >/dev/null; then
    local t found=0
    for exe in "$b"/tests/gpu-*; do
      [ "$(basename "$exe")" = gpu-unit ] && continue
      for pat in ${GPU_MEMCHECK_PATTERNS:-augment.*reference kernel decode}; do
        t=$("$exe" --list 2>/dev/null | sed -n 's/: test$//p' | grep -E "$pat" | head -1)
        [ -n "$t" ] || continue
        case " ${done_memcheck:-} " in *" $t "*) continue ;; esac
        done_memcheck="${done_memcheck:-} $t"
        found=1
        memcheck "$exe" "$t"
        # The decoder and the kernel: one test of each is enough for the time budget.
        [ "$(echo "$done_memcheck" | wc -w)" -ge 2 ] && break 2
      done
    done
    [ $found = 1 ] || record "memcheck" FAIL "no kernel or decoder test found by name"
  else
    record "memcheck" NA "compute-sanitizer not installed"
  fi

  # 3. A daemon with [gpu] mode = "on" over generated ImageNet-like files.
  local ds=$W/ds sock=$W/run/loaderd.sock
  mkdir -p "$W/run"
  timeout 120 python3 "$b/benches/gpu_data.py" --out "$ds" --images "${GPU_CHECK_IMAGES:-2048}" ||
    record "dataset" FAIL "generation failed"
  # GPU_CHECK_GPU_MODE=auto: a dry run of this script on a machine without a GPU.
  printf '[gpu]\nmode = "%s"\n' "${GPU_CHECK_GPU_MODE:-on}" >"$W/loaderd.toml"
  "$b/bin/loaderd" --config "$W/loaderd.toml" --socket "$sock" --metrics-addr off \
    --mount "/ds=file://$ds" >"$W/loaderd.log" 2>&1 &
  DAEMON_PID=$!
  local up=0 i
  for i in $(seq 1 100); do
    "$b/bin/loaderctl" --socket "$sock" status >/dev/null 2>&1 && {
      up=1
      break
    }
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.2
  done
  if [ $up = 1 ]; then
    record "daemon with gpu.mode = ${GPU_CHECK_GPU_MODE:-on}" PASS
    "$b/bin/loaderctl" --socket "$sock" status
    "$b/bin/loaderctl" --socket "$sock" load --no-progress /ds
    # The Python CUDA tests (they start their own gpu.mode = on daemon from LOADERD_BIN_DIR).
    if [ -f "$b/python-client/tests/test_cuda.py" ]; then
      (cd "$b/python-client" && LOADERD_REQUIRE_GPU=1 timeout "$(min 150 "$(left 100)")" \
        python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py) >"$W/py.out" 2>&1
      local rc=$?
      cat "$W/py.out"
      if [ $rc = 0 ] && ! grep -qiE '[0-9]+ skipped|SKIPPED' "$W/py.out"; then
        record "python tests/test_cuda.py" PASS "$(tail -1 "$W/py.out")"
      else
        record "python tests/test_cuda.py" FAIL "rc $rc: $(tail -1 "$W/py.out")"
      fi
    else
      record "python tests/test_cuda.py" FAIL "not in the bundle"
    fi
    # loaderctl bench pipeline --gpu: fails unless the daemon served it from the GPU.
    timeout "$(min 90 "$(left 90)")" "$b/bin/loaderctl" --socket "$sock" bench pipeline \
      --dataset /ds --batch-size 128 --gpu --device 0
    local rc=$?
    [ $rc = 0 ] && record "loaderctl bench pipeline --gpu" PASS || record "loaderctl bench pipeline --gpu" FAIL "rc $rc"
    # A device="cuda" loader from Python against this daemon.
    LOADERD_SOCKET=$sock timeout "$(min 90 "$(left 90)")" python3 "$b/benches/gpu_bench.py" smoke --dataset /ds
    rc=$?
    [ $rc = 0 ] && record "python device=\"cuda\" loader" PASS || record "python device=\"cuda\" loader" FAIL "rc $rc"
    "$b/bin/loaderctl" --socket "$sock" status
  else
    record "daemon with gpu.mode = on" FAIL "did not start"
  fi
  stop_daemon
  echo "-- loaderd log (tail)"
  tail -30 "$W/loaderd.log"

  # 4. The benchmarks, in what is left of the budget.
  GPU_BENCH_DATA=$ds GPU_BENCH_GPU_MODE=${GPU_CHECK_GPU_MODE:-on} GPU_BENCH_BUDGET=$(left 10) GPU_BENCH_LOG=$O/gpu-bench.log \
    timeout "$(left 0)" bash "$b/benches/gpu.sh"
  local rc=$?
  [ $rc = 0 ] && record "benches/gpu.sh" PASS "table above, log gpu-bench.log" || record "benches/gpu.sh" FAIL "rc $rc"

  echo
  echo "================ summary ($((SECONDS - T0)) s) ================"
  printf '%s\n' "${STEPS[@]}"
  for t in "${FAILED_TESTS[@]}"; do echo "  failed: $t"; done
  [ $FAILED = 0 ] && echo "ALL PASSED" || echo "SOME FAILED"
  rm -rf "$W"
  return $FAILED
}

case ${1:-} in
prepare) prepare ;;
verify) verify "${2:-.gpubin}" ;;
layout) printf '%s\n' "${REQUIRED[@]}" ;;
run) run; exit $? ;;
*) die "usage: benches/gpu-check.sh prepare | verify [DIR] | layout | run" ;;
esac
