#!/usr/bin/env bash
# GPU check of the compiled DCNv3 op: build the extension with its CUDA kernels (timed), run the
# op tests (CPU and CUDA), then benchmark the CUDA op against dcnv3_core_pytorch in float32,
# float16 and bfloat16. Meant for a CUDA machine without network; takes a few minutes.
#
#   bash scripts/gpu_check.sh            (from anywhere; it works in the repository root)
#
# Environment variables:
#   OUT                   folder for gpu_log.txt (default /tmp/dcnv3_gpu_check)
#   DCNV3_REF_DIR         folder holding dcnv3_core_ref.pt (default .device/reference)
#   TORCH_CUDA_ARCH_LIST  default 9.0 (H100/H200)
#   PYTHON                default python3
#
# Every step runs even if an earlier test or benchmark fails (not after a failed build); the exit
# status is non-zero if anything failed.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/dcnv3_gpu_check}"
mkdir -p "$OUT" || exit 1
LOG="$OUT/gpu_log.txt"
: >"$LOG"
export DCNV3_REF_DIR="${DCNV3_REF_DIR:-$PWD/.device/reference}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
# The GPU image's default CXX (/opt/gcc) builds an extension whose error paths crash inside
# libstdc++ (a runtime mismatch with the one torch loads); the system compiler does not.
[ -x /usr/bin/g++ ] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-450}))
FAILED=()

log() { echo "$*" | tee -a "$LOG"; }

# step NAME MAX_SECONDS COMMAND...: run with a time limit, log its output, record a failure.
step() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS)) start=$SECONDS rc
  shift 2
  ((left < limit)) && limit=$left
  if ((limit <= 0)); then
    log "=== $name: SKIPPED (time budget used up)"
    FAILED+=("$name")
    return 1
  fi
  log "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=$?
  log "=== $name: exit $rc after $((SECONDS - start))s"
  ((rc == 0)) || FAILED+=("$name")
  return "$rc"
}

log "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $PWD"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
command -v nvcc >/dev/null && nvcc --version 2>&1 | tail -n 2 | tee -a "$LOG"
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1 | tee -a "$LOG"
if [ -f "$DCNV3_REF_DIR/dcnv3_core_ref.pt" ]; then
  log "reference cases: $DCNV3_REF_DIR/dcnv3_core_ref.pt"
else
  log "WARNING: $DCNV3_REF_DIR/dcnv3_core_ref.pt not found: the reference-case test will skip"
fi

# A stale extension from another Python/torch must not be picked up if the build fails.
rm -f ops_dcnv3/_C*.so
if ! step build 300 "$PY" setup.py build_ext --inplace; then
  log "gpu_check: FAILED (build); nothing else was run"
  exit 1
fi
# Without CUDA kernels every CUDA test would skip and the run would look green.
step cuda-kernel-registered 60 "$PY" -c '
from ops_dcnv3.functions import dcnv3_func as f
assert f.HAS_COMPILED_OP, f.COMPILED_OP_IMPORT_ERROR
print("kernels for:", sorted(f.COMPILED_DEVICE_TYPES))
assert "cuda" in f.COMPILED_DEVICE_TYPES, "ops_dcnv3._C has no CUDA kernel"'

step benchmark-float32 60 "$PY" tools/benchmark_dcnv3.py --device cuda --dtype float32
step tests 240 "$PY" -m pytest -q -rs -p no:cacheprovider ${GPU_CHECK_TESTS:-tests/ops_dcnv3}

for dtype in float16 bfloat16; do
  step "benchmark-$dtype" 60 "$PY" tools/benchmark_dcnv3.py --device cuda --dtype "$dtype"
done

if ((${#FAILED[@]})); then
  log "gpu_check: FAILED: ${FAILED[*]} (total $((SECONDS))s)"
  exit 1
fi
log "gpu_check: all passed (total $((SECONDS))s)"
