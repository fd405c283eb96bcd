#!/usr/bin/env bash
# One command on a GPU machine (README: "On a GPU"): versions and device, the GPU subset of the
# tests, GPT-2's step with cuBLAS GEMMs, then the benchmarks and profiles, into OUT_DIR (versions.txt,
# tests.txt, bench-results.json, bench-gpu.md, bench-*-xla-cublas.*, gpu_check.log). Under 8 minutes
# with a cold compilation cache.
#
#   scripts/gpu_check.sh OUT_DIR [--platform gpu|cpu] [--tiny]
#
# Uses the machine's own python3 ($PYTHON to change) and packages; our code via PYTHONPATH.
# Wheels in .gpu-wheels/ (`make gpu-wheels`) whose package that Python lacks are installed into
# a folder of their own, with no network. --platform cpu --tiny runs everything end to end on a
# CPU at tiny sizes (tests/test_gpu_check.py): a smoke run, not a measurement.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=""
PLATFORM=gpu
TINY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) PLATFORM=${2:-}; shift 2 ;;
    --platform=*) PLATFORM=${1#*=}; shift ;;
    --tiny) TINY=(--tiny); shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "gpu_check: error: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "gpu_check: error: one OUT_DIR, got '$OUT' and '$1'" >&2; exit 2; }
       OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "gpu_check: error: usage: scripts/gpu_check.sh OUT_DIR [--platform gpu|cpu] [--tiny]" >&2; exit 2; }
case "$PLATFORM" in gpu|cpu) ;; *) echo "gpu_check: error: --platform must be gpu or cpu, got '$PLATFORM'" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
: > "$LOG"
START=$SECONDS
step() { echo "== [$((SECONDS - START))s] $*" | tee -a "$LOG"; }
trap 'echo "gpu_check: FAILED at: $CURRENT (see $LOG)" | tee -a "$LOG" >&2' ERR

# the persistent compilation cache: tests and benchmarks compile the same programs once
export NETY_JAX_COMPILE_CACHE=${NETY_JAX_COMPILE_CACHE:-$ROOT/.gpu-cache/jax}
export JAX_COMPILATION_CACHE_DIR=$NETY_JAX_COMPILE_CACHE
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and PyTorch share the device in one process
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$PLATFORM" = gpu ]; then export JAX_PLATFORMS=cuda; else export JAX_PLATFORMS=cpu; fi

CURRENT="wheels"
SITE=${NETY_GPU_SITE:-/tmp/nety-gpu-site}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$ROOT/.gpu-wheels/*.whl" > /dev/null; then
  mapfile -t NEED < <("$PY" "$ROOT/scripts/gpu_env.py" missing-wheels "$ROOT/.gpu-wheels")
  if [ "${#NEED[@]}" -gt 0 ] && [ -n "${NEED[0]}" ]; then
    step "installing ${#NEED[@]} missing wheel(s) into $SITE: ${NEED[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${NEED[@]}" >> "$LOG" 2>&1
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

CURRENT="versions and device"
step "$CURRENT"
"$PY" "$ROOT/scripts/gpu_env.py" check --platform "$PLATFORM" 2>&1 | tee "$OUT/versions.txt" | tee -a "$LOG"
if [ "$PLATFORM" = gpu ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
    | tee -a "$OUT/versions.txt" "$LOG"
fi

CURRENT="tests (tests/test_accelerator.py)"
step "$CURRENT"
# $NETY_GPU_CHECK_TESTS: more pytest arguments (tests/test_gpu_check.py picks one test: the
# ordinary suite runs the whole file on the CPU already)
read -r -a SELECT <<< "${NETY_GPU_CHECK_TESTS:-}"
# a failure (or a hang, past 180 s) is reported but does not stop the benchmarks: GPU time is rare
FAILED=()
(cd "$ROOT" && NETY_GPU_CHECK=$PLATFORM timeout 180 "$PY" -m pytest -q -p no:cacheprovider -rs --durations=5 \
  tests/test_accelerator.py "${SELECT[@]}" 2>&1) | tee "$OUT/tests.txt" | tee -a "$LOG" || FAILED+=("tests")

CURRENT="GPT-2's train step with cuBLAS for every product (scripts/bench_gpu.py --tag xla-cublas)"
step "$CURRENT"
# XLA's flags hold for a whole process: a second, short one, to tell whether XLA's Triton GEMMs
# are why JAX's bf16 products ran slower than PyTorch's (docs/PERFORMANCE.md, "On a GPU")
EXTRA_FLAGS=""
[ "$PLATFORM" = gpu ] && EXTRA_FLAGS="--xla_gpu_enable_triton_gemm=false"
XLA_FLAGS="${XLA_FLAGS:-} $EXTRA_FLAGS" timeout 150 "$PY" "$ROOT/scripts/bench_gpu.py" --out "$OUT" --parts gpt \
  --gpt-parts train --skip-hf --tag xla-cublas --budget 150 "${TINY[@]}" 2>&1 | tee -a "$LOG" | tail -4 \
  || FAILED+=("cuBLAS variant")

CURRENT="benchmarks (scripts/bench_gpu.py)"
step "$CURRENT"
# no benchmark part starts after 7 min 20 s in all ($NETY_GPU_BUDGET: seconds for the benchmarks)
BUDGET=${NETY_GPU_BUDGET:-$(( 440 - (SECONDS - START) ))}
[ "$BUDGET" -gt 30 ] || BUDGET=30
"$PY" "$ROOT/scripts/bench_gpu.py" --out "$OUT" --budget "$BUDGET" "${TINY[@]}" 2>&1 | tee -a "$LOG" \
  || FAILED+=("benchmarks")

step "done: $OUT"
ls "$OUT" | tee -a "$LOG"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]} (see $LOG)" | tee -a "$LOG" >&2
  exit 1
fi
