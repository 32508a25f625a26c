#!/usr/bin/env bash
# The GPU path end to end, in one run of at most 9 minutes on one H100/H200 without network
# (Python 3.12, torch 2.11, numpy 2: the lent GPU machine, see docs/benchmarks.md):
#   1. installs the kit (.device/gpu-kit, --prepare's copy of ../shared/gpu-kit: mmcv-full 1.7.2
#      with sm_90 CUDA ops, mmdet 2.28.2, ...) into a private folder, builds ops_dcnv3 for sm_90
#      and, beside it, the original InternImage kernel (.device/original_dcnv3, from
#      ../shared/anchors/original_dcnv3), and generates a 1333x800 COCO-format shapes dataset;
#   2. runs the CUDA tests (op, modules, backbone parity, original-kernel core op);
#   3. times our op against the original kernel and the PyTorch core (tools/benchmark_dcnv3.py:
#      InternImage-T stage shapes of a 1333x800 input, batch 2; float32 and float16 against the
#      original, whose targets are forward >= 3x and backward >= 2x in GPU time, the kernels
#      replayed from CUDA graphs; bfloat16 ours only), and reads the hardware counters of the
#      stage-1 float32 kernels, ours and the original's, with Nsight Compute where it is there;
#   4. trains InternImage-T Mask R-CNN (configs/coco/mask_rcnn_internimage_t_fpn_1x_coco.py, 2
#      images per GPU) through tools/train.py: float32 (TF32 matmuls, as tools/train.py sets
#      them), mixed precision (--amp: float16 with
#      mmcv's loss scaling, SyncFreeFp16OptimizerHook), and float32 with the original kernel
#      (core_op DCNv3_original, tools/original_dcnv3_core.py), reporting steady-state s/iter and peak GPU memory
#      (targets: ours >= 1.3x faster than the original kernel, mixed precision >= 1.5x faster
#      than float32); the last iterations of our two runs run under torch.profiler, whose
#      per-operator table (GPU time first, and the CPU and GPU totals) goes to the log (the
#      original kernel's run is only timed, to fit the budget);
#      every training run logs the host's time in each phase of a step (StepPhaseTimerHook),
#      and the summary sets them side by side;
#   5. runs tools/dist_train.sh with 1 GPU (NCCL, MMDistributedDataParallel), resuming the float32
#      run for one more epoch, and tools/test.py --eval bbox segm on the GPU;
#   6. times the kernel candidates (tools/kernel_candidates/*.patch, applied by --prepare, which
#      records the kernel they were made from) against our kernel in one process
#      (tools/benchmark_dcnv3_variants.py): last, so that a tight budget leaves them out first;
#   7. prints one summary table last (also when the run is stopped by SIGTERM or Ctrl-C).
#
#   bash scripts/gpu_check.sh --prepare   here, before sending the checkout to the GPU machine:
#                                         copies the kit, the original kernel and the reference
#                                         data into .device/ (git-ignored; name it in `carry`),
#                                         and writes each kernel candidate there (needs `patch`)
#   bash scripts/gpu_check.sh             on the GPU machine, from the checkout
#   bash scripts/gpu_check.sh --dry-run   on a CPU machine: every step it can, at tiny sizes (no
#                                         CUDA steps, no builds, the kit only installed to a
#                                         temporary folder when its wheels fit this Python; the
#                                         scratch folder is removed at the end)
#
# Options: --out DIR (default $OUT, else /tmp/gpu_check): gpu_check.log (everything) and
# summary.txt go there. Environment: PYTHON (default python3; in --dry-run .venv/bin/python when
# present), TORCH_CUDA_ARCH_LIST (default 9.0), GPU_CHECK_SECONDS (time budget, default 540),
# GPU_CHECK_WORK (scratch folder: datasets, work dirs; default /tmp/gpu_check_work),
# GPU_CHECK_TRAIN_EPOCHS (per training run, 8 iterations each; default 5, at least 3; the first
# 10 and the last 6 iterations, profiled, are left out of the timing), GPU_CHECK_PROFILE (0: no
# training profiles, which take about 20 s of each run to process), GPU_CHECK_SKIP (step names
# to leave out, e.g. "ncu-stage1 dist-train test-eval", to fit a short lease; leaving out
# build-dcnv3 ends the run, build-original leaves the original kernel out (its targets then count
# as not measured), and steps that need what a left-out step makes fail).
# Every step runs even if an earlier one failed (not after a failed DCNv3 build); the exit status
# is non-zero if any step failed or a target was missed or not measured.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
DEVICE_DIR="$ROOT/.device"

MODE=gpu
OUT_DIR="${OUT:-/tmp/gpu_check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; shift;;
    --dry-run) MODE=dry-run; shift;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift 2;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2;;
  esac
done

kernel_sha256() { sha256sum ops_dcnv3/csrc/cuda/dcnv3_kernel.cu 2>/dev/null | cut -d' ' -f1; }

# Fewer epochs leave no timed training iterations between the warm-up and the profiled ones.
if [ "$MODE" = gpu ] && ((${GPU_CHECK_TRAIN_EPOCHS:-5} < 3)); then
  echo "gpu_check: GPU_CHECK_TRAIN_EPOCHS must be at least 3 (8 iterations each: 10 warm-up," \
    "then timed ones, then 6 profiled)" >&2
  exit 2
fi

# --- prepare: what the GPU machine cannot reach, copied into the checkout's ignored .device/ ------
if [ "$MODE" = prepare ]; then
  shared="$(dirname "$ROOT")/shared"
  for part in gpu-kit anchors/original_dcnv3 reference; do
    [ -d "$shared/$part" ] || { echo "gpu_check --prepare: $shared/$part not found" >&2; exit 1; }
  done
  mkdir -p "$DEVICE_DIR"
  # Ignored, so that it travels only where a run's carry names it and is never committed.
  git check-ignore -q "$DEVICE_DIR" || { echo "gpu_check --prepare: .device/ is not git-ignored" >&2; exit 1; }
  rm -rf "$DEVICE_DIR/gpu-kit" "$DEVICE_DIR/original_dcnv3" "$DEVICE_DIR/reference" "$DEVICE_DIR/candidates"
  cp -r "$shared/gpu-kit" "$DEVICE_DIR/gpu-kit"
  cp -r "$shared/anchors/original_dcnv3" "$DEVICE_DIR/original_dcnv3"
  cp -r "$shared/reference" "$DEVICE_DIR/reference"
  chmod -R u+w "$DEVICE_DIR"
  # Kernel candidates: our kernel file with each patch applied (the GPU machine may lack `patch`).
  mkdir -p "$DEVICE_DIR/candidates"
  for candidate in tools/kernel_candidates/*.patch; do
    [ -e "$candidate" ] || continue
    if ! patch --batch --quiet --reject-file=- -o "$DEVICE_DIR/candidates/$(basename "$candidate" .patch).cu" \
        ops_dcnv3/csrc/cuda/dcnv3_kernel.cu <"$candidate"; then
      echo "gpu_check --prepare: $candidate does not apply to ops_dcnv3/csrc/cuda/dcnv3_kernel.cu; refresh it or delete it" >&2
      exit 1
    fi
  done
  # The candidates are whole kernel files: a kernel edited after --prepare would be compared
  # with candidates of the old one.
  kernel_sha256 >"$DEVICE_DIR/candidates/.kernel.sha256"
  echo "gpu_check --prepare: $(du -sh "$DEVICE_DIR" | cut -f1) in $DEVICE_DIR (kit, original kernel, reference data," \
    "$(find "$DEVICE_DIR/candidates" -name '*.cu' | wc -l) kernel candidates)"
  exit 0
fi

DRY=0; [ "$MODE" = dry-run ] && DRY=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3
fi
export PYTHON="$PY"  # tools/dist_train.sh's interpreter where there is no .venv
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
if [ "$DRY" = 1 ]; then
  # Thrown away at the end: its checkpoints take about 1 GB a run, and the test suite runs two.
  WORK="$(mktemp -d /tmp/gpu_check_dry.XXXXXX)" || exit 1
  trap 'rm -rf "$WORK"' EXIT
fi
rm -rf "$WORK/logs" && mkdir -p "$OUT_DIR" "$WORK/logs" || exit 1
LOG="$OUT_DIR/gpu_check.log"
STEPS="$WORK/steps.tsv"
RESULTS="$WORK/results.jsonl"
: >"$LOG"; : >"$STEPS"; : >"$RESULTS"
HELPER=("$PY" "$ROOT/scripts/gpu_check_helper.py")
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))

export DCNV3_REF_DIR="${DCNV3_REF_DIR:-$DEVICE_DIR/reference}"
export ORIGINAL_DCNV3_DIR="$DEVICE_DIR/original_dcnv3"
export ORIGINAL_DCNV3_BUILD="$WORK/original_dcnv3_build"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [ "$DRY" = 0 ]; then
  # The GPU image's default CXX (/opt/gcc) builds extensions whose error paths crash inside
  # libstdc++ (a runtime mismatch with the one torch loads); the system compiler does not.
  [ -x /usr/bin/g++ ] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc
  # One CUDA_HOME and CPATH (torch's nvidia headers) for every process: the original kernel is
  # compiled by torch's JIT loader, which rebuilds (and without those headers fails) in any
  # later process whose include paths differ from the first build's.
  # shellcheck source=scripts/_build_common.sh
  source scripts/_build_common.sh
  cuda_build_env "$PY" "$ROOT" || echo "gpu_check: WARNING: no CUDA toolkit found (nvcc)" >&2
fi

log() { echo "$*" | tee -a "$LOG"; }

# Steps run with a time limit (clamped to what is left of the budget), their output in
# $WORK/logs/NAME.log, then copied into the main log; steps.tsv records name, status, seconds.
declare -A STEP_PID STEP_START
step_start() {  # step_start NAME LIMIT COMMAND...: in the background
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  ((left < limit)) && limit=$left
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    log "=== $name: SKIPPED (GPU_CHECK_SKIP)"
    printf '%s\tskipped (GPU_CHECK_SKIP)\t0\n' "$name" >>"$STEPS"
    return 1
  fi
  if ((limit <= 0)); then
    log "=== $name: SKIPPED (time budget used up)"
    printf '%s\tskipped (time budget)\t0\n' "$name" >>"$STEPS"
    return 1
  fi
  log "=== $name (limit ${limit}s): $*"
  STEP_START[$name]=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1 &
  STEP_PID[$name]=$!
}
step_wait() {  # step_wait NAME: its exit status, its output appended to the main log
  local name=$1 rc=0
  [ -n "${STEP_PID[$name]:-}" ] || return 1
  wait "${STEP_PID[$name]}" || rc=$?
  unset "STEP_PID[$name]"
  cat "$WORK/logs/$name.log" >>"$LOG"
  local took=$((SECONDS - STEP_START[$name])) status=passed
  ((rc == 124 || rc == 137)) && status="FAILED (time limit)"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
  log "=== $name: $status after ${took}s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$took" >>"$STEPS"
  return "$rc"
}
step() {  # step NAME LIMIT COMMAND...: in the foreground, output shown as it comes
  local name=$1
  step_start "$@" || return 1
  # Waited for with `wait`, which a signal interrupts: bash runs a trap only after a foreground
  # command ends, so a SIGTERM to this script alone waited for the whole step.
  tail -n +1 -f --pid="${STEP_PID[$name]}" "$WORK/logs/$name.log" 2>/dev/null &
  TAIL_PID=$!
  wait "$TAIL_PID"
  step_wait "$name"
}
skip() {  # skip NAME REASON
  log "=== $1: SKIPPED ($2)"
  printf '%s\tskipped (%s)\t0\n' "$1" "$2" >>"$STEPS"
}
step_cancel() {  # step_cancel NAME REASON: stop a background step whose result is not needed any more
  local pid=${STEP_PID[$1]:-}
  [ -n "$pid" ] || return 0
  # timeout passes the signal on to its process group: the command and what it started (nvcc).
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  unset "STEP_PID[$1]"
  cat "$WORK/logs/$1.log" >>"$LOG"
  skip "$1" "$2"
}
finish() {
  trap '' TERM INT  # one summary: signals that come while it is written are ignored
  "${HELPER[@]}" summary --steps "$STEPS" --results "$RESULTS" --logs "$WORK/logs" --mode "$MODE" \
    --elapsed "$SECONDS" 2>&1 | tee "$OUT_DIR/summary.txt" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  exit "$rc"
}
stopped() {  # stopped from outside (a lease's time limit): the steps under way stopped, what
  # ran so far, and a failed summary
  local name running=()
  trap '' TERM INT  # one stop, however many signals follow
  log "gpu_check: stopped by a signal"
  printf 'gpu_check\tFAILED (stopped by a signal)\t%s\n' "$SECONDS" >>"$STEPS"
  for name in "${!STEP_PID[@]}"; do
    # Each step runs in a process group of its own (timeout's), which a signal to this script's
    # group does not reach: stopped here, timeout passing it on to what the step started.
    if kill -0 "${STEP_PID[$name]}" 2>/dev/null; then
      kill "${STEP_PID[$name]}" 2>/dev/null
      running+=("$name")
    else  # ended before the signal, not yet waited for (a background step): its own status
      step_wait "$name"
    fi
  done
  for name in "${running[@]}"; do
    wait "${STEP_PID[$name]}" 2>/dev/null
    cat "$WORK/logs/$name.log" >>"$LOG"
    log "=== $name: stopped after $((SECONDS - STEP_START[$name]))s"
    printf '%s\tFAILED (stopped by a signal)\t%s\n' "$name" $((SECONDS - STEP_START[$name])) >>"$STEPS"
  done
  [ -n "${TAIL_PID:-}" ] && kill "$TAIL_PID" 2>/dev/null
  finish
}
trap stopped TERM INT

log "gpu_check ($MODE): $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $ROOT, log $LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
command -v nvcc >/dev/null && nvcc --version 2>&1 | tail -n 2 | tee -a "$LOG"
"$PY" -c 'import sys, numpy, torch; print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1 | tee -a "$LOG"
log "cores: $(nproc), load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1. the kit, the builds and the dataset ----------------------------------------------------------
KIT="$DEVICE_DIR/gpu-kit"
if [ "$DRY" = 0 ]; then
  SITE=/tmp/gpu_check_site
  if ! step kit-install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$KIT"/*.whl; then
    log "gpu_check: the kit did not install (run scripts/gpu_check.sh --prepare here and carry .device)"
    finish
  fi
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # The kit's importlib_metadata (10.x) imports lazy_importer, which the kit lacks, and so broke
  # every import of mmcv (through yapf). yapf only needs metadata(), which the standard library
  # has: stand in for the package with it.
  if ! "$PY" -c 'import importlib_metadata' >/dev/null 2>&1; then
    log "gpu_check: the kit's importlib_metadata does not import; using the standard library's importlib.metadata"
    rm -rf "$SITE"/importlib_metadata "$SITE"/importlib_metadata-*.dist-info
    printf 'from importlib.metadata import *  # noqa: F401,F403\n' > "$SITE/importlib_metadata.py"
  fi
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  py_tag="$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  kit_mmcv="$(ls "$KIT"/mmcv_full-*.whl "$(dirname "$ROOT")"/shared/gpu-kit/mmcv_full-*.whl 2>/dev/null | head -n1)"
  if [ -n "$kit_mmcv" ] && [[ "$(basename "$kit_mmcv")" == *"-$py_tag-"* ]]; then
    # The same install command, into a throwaway folder; this run keeps its own stack.
    step kit-install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
      --target "$WORK/kit-site" "$(dirname "$kit_mmcv")"/*.whl
  elif [ -z "$kit_mmcv" ]; then
    skip kit-install "dry-run: no kit (neither $KIT nor ../shared/gpu-kit)"
  else
    skip kit-install "dry-run: the kit's wheels are not for $py_tag"
  fi
fi

if [ "$DRY" = 0 ]; then
  # A stale extension from another Python/torch must not be picked up if the build fails.
  rm -f ops_dcnv3/_C*.so
  step_start build-dcnv3 300 "$PY" setup.py build_ext --inplace
  step_start build-original 300 "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import load
load.build(); print("original DCNv3 built in", sys.argv[2])' "$ORIGINAL_DCNV3_DIR" "$ORIGINAL_DCNV3_BUILD"
else
  skip build-dcnv3 "dry-run: uses the extension already built in place"
  skip build-original "dry-run: CUDA only"
fi
# Kernel candidates, each built as an op library of its own beside our kernel (for one A/B).
CANDIDATES=()
for candidate in "$DEVICE_DIR"/candidates/*.cu; do
  [ -e "$candidate" ] && CANDIDATES+=("$(basename "$candidate" .cu)=$candidate")
done
VARIANTS=("$PY" tools/benchmark_dcnv3_variants.py --build-dir "$WORK/variants"
          main=ops_dcnv3/csrc/cuda/dcnv3_kernel.cu "${CANDIDATES[@]}")
if [ "$DRY" = 1 ]; then
  skip build-candidates "dry-run: CUDA only"
elif [ ${#CANDIDATES[@]} = 0 ]; then
  skip build-candidates "no kernel candidates in .device/candidates (made by --prepare)"
elif [ "$(cat "$DEVICE_DIR/candidates/.kernel.sha256" 2>/dev/null)" != "$(kernel_sha256)" ]; then
  skip build-candidates "stale: the kernel changed after --prepare wrote the candidates (rerun it)"
  CANDIDATES=()
else
  step_start build-candidates 300 "${VARIANTS[@]}" --build-only
fi

DATA="$WORK/shapes"
if [ "$DRY" = 0 ]; then IMAGE_HW=(800 1333) NUM_TRAIN=16 NUM_VAL=8; else IMAGE_HW=(96 160) NUM_TRAIN=4 NUM_VAL=2; fi
step_start dataset 180 "$PY" -m mmdet_custom.datasets.synthetic_shapes --out "$DATA" \
  --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" --size "${IMAGE_HW[@]}" --seed 0

ORIGINAL=(--original "$ORIGINAL_DCNV3_DIR") CHECK_ORIGINAL=(--check-original 3 2)
if [ "$DRY" = 0 ]; then
  # Without it, each step that loads it would spend minutes failing to build it again.
  step_wait build-original || ORIGINAL=() CHECK_ORIGINAL=()
  # torch before 2.14 guards JIT builds with a lock file whose mere existence blocks: one left by
  # a build killed at its time limit would hang every later load. Nothing holds it now.
  rm -f "$ORIGINAL_DCNV3_BUILD/lock"
  if ! step_wait build-dcnv3; then
    step_cancel build-candidates "stopped: the DCNv3 build failed"
    step_wait dataset
    log "gpu_check: the DCNv3 build failed; nothing else was run"
    finish
  fi
  # Without CUDA kernels every CUDA test would skip and the run would look green.
  step cuda-kernel-registered 60 "$PY" -c '
from ops_dcnv3.functions import dcnv3_func as f
assert f.HAS_COMPILED_OP, f.COMPILED_OP_IMPORT_ERROR
print("kernels for:", sorted(f.COMPILED_DEVICE_TYPES))
assert "cuda" in f.COMPILED_DEVICE_TYPES, "ops_dcnv3._C has no CUDA kernel"' || {
    step_cancel build-candidates "stopped: ops_dcnv3 has no CUDA kernel"
    step_wait dataset
    log "gpu_check: the DCNv3 op has no CUDA kernel; every later step would fail, none was run"
    finish
  }
fi

# --- 2. CUDA tests -------------------------------------------------------------------------------------
# The training configs are written (here) and checked (during the benchmarks) in the background:
# imports and a model build on the CPU, about 35 s that the budget cannot spare one after another.
# Iterations: 2 images each; the last PROFILE_WARMUP + PROFILE_ACTIVE run under torch.profiler
# (its per-operator table lands in the log) and are left out of the timing.
EPOCHS=${GPU_CHECK_TRAIN_EPOCHS:-5}; SKIP_ITERS=10 PROFILE_WARMUP=2 PROFILE_ACTIVE=4
[ "$DRY" = 1 ] && EPOCHS=2 SKIP_ITERS=0 PROFILE_WARMUP=0 PROFILE_ACTIVE=1
ITERS=$((EPOCHS * NUM_TRAIN / 2))
TIMED_UNTIL=$((ITERS - PROFILE_WARMUP - PROFILE_ACTIVE))
CONFIG="$WORK/mask_rcnn_internimage_t_fpn_shapes.py"
# Its twin, written beside it, swaps in the original kernel (core_op DCNv3_original); each has a
# profiling twin (*_profile.py), which the float32 and mixed-precision runs train.
ORIGINAL_CONFIG="${CONFIG%.py}_original.py"
step_start config 60 "${HELPER[@]}" config --data "$DATA" --epochs "$EPOCHS" --out "$CONFIG" \
  --profile "$ITERS" "$PROFILE_WARMUP" "$PROFILE_ACTIVE" \
  $([ "$DRY" = 1 ] && echo "--tiny ${IMAGE_HW[1]} ${IMAGE_HW[0]}")

# In the dry run they are collected and skip (no GPU): that checks the command, not the kernels.
# Without the original kernel, each of its tests would try the failed build again (minutes).
ORIGINAL_TESTS=(tests/tools/test_original_dcnv3_core.py)
[ ${#ORIGINAL[@]} -gt 0 ] || ORIGINAL_TESTS=()
step cuda-tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests/ops_dcnv3 \
  tests/mmdet_custom "${ORIGINAL_TESTS[@]}"

# --- 3. the op against the original kernel and the PyTorch core ------------------------------------------
if step_wait config; then
  step_start original-core-op 60 "${HELPER[@]}" check-core-op --config "$ORIGINAL_CONFIG" --core-op DCNv3_original
else
  skip original-core-op "config did not pass"
fi
BENCH=("$PY" tools/benchmark_dcnv3.py)
if [ "$DRY" = 0 ]; then
  for dtype in float32 float16; do
    step "benchmark-$dtype" 120 "${BENCH[@]}" --device cuda --dtype "$dtype" --batch 2 \
      --image-size "${IMAGE_HW[@]}" "${ORIGINAL[@]}" "${CHECK_ORIGINAL[@]}"
  done
  step benchmark-bfloat16 90 "${BENCH[@]}" --device cuda --dtype bfloat16 --batch 2 --image-size "${IMAGE_HW[@]}"
  # Hardware counters of the stage-1 float32 kernels, ours and the original's (first launches of
  # each: the correctness check and the warm-up; the original's backward is the 7th), for the
  # next round of kernel work.
  NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n1)"
  if [ -n "$NCU" ]; then
    if ! step ncu-stage1 120 "$NCU" --clock-control none --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        -k 'regex:dcnv3_(forward|backward)_kernel|im2col|col2im' -c 8 \
        "${BENCH[@]}" --device cuda --dtype float32 --batch 2 --image-size "${IMAGE_HW[@]}" \
        --stages 1 --repeats 1 --warmup 0 "${ORIGINAL[@]}" \
        && grep -q 'LibraryNotLoaded\|Failed to initialize the profiler' "$WORK/logs/ncu-stage1.log"; then
      # A sandboxed GPU (gVisor) hides the counters: not this project's failure.
      sed -i '$d' "$STEPS"
      skip ncu-stage1 "ncu cannot read this machine's hardware counters"
    fi
  else
    skip ncu-stage1 "Nsight Compute (ncu) not found"
  fi
else
  # Tiny shapes on the CPU, ours against the core only.
  for dtype in float32 bfloat16; do
    step "benchmark-$dtype" 120 "${BENCH[@]}" --device cpu --dtype "$dtype" --batch 2 \
      --image-size 64 96 --repeats 1 --warmup 0
  done
fi

# --- 4. InternImage-T Mask R-CNN training: float32, mixed precision, original kernel --------------------
step_wait dataset
# Finished before the timed runs, which a busy host would slow.
step_wait original-core-op
train_run() {  # train_run NAME CONFIG profiled|plain [train.py options]: train, then record
  # its speed and memory. The original kernel's run is only timed: processing a profile takes
  # about 20 s, and the budget has little more to spare.
  local name=$1 config=$2 timed=(--until "$TIMED_UNTIL")
  # Every run is timed over the same iterations: those before the profiled runs' profile.
  if [ "${GPU_CHECK_PROFILE:-1}" = 0 ]; then
    timed=()
  elif [ "$3" = profiled ]; then
    config="${config%.py}_profile.py"
  fi
  shift 3
  step "train-$name" 200 "$PY" tools/train.py "$config" --no-validate --seed 0 \
    --work-dir "$WORK/$name" "$@" || return 1
  # Why its speed could not be read goes into the summary: the console's tail may be all that
  # comes back from the GPU machine.
  local speed rc=0
  speed="$("${HELPER[@]}" train-speed --name "$name" --work-dir "$WORK/$name" --skip "$SKIP_ITERS" \
    "${timed[@]}" --results "$RESULTS" 2>&1)" || rc=$?
  log "$speed"
  ((rc == 0)) || printf 'speed-%s\tFAILED (%s)\t0\n' "$name" "$(tail -n 1 <<<"$speed")" >>"$STEPS"
}
train_run float32 "$CONFIG" profiled
if [ "$DRY" = 0 ]; then
  train_run amp "$CONFIG" profiled --amp
  if [ ${#ORIGINAL[@]} -gt 0 ]; then
    train_run original "$ORIGINAL_CONFIG" plain
  else
    skip train-original "build-original did not pass"
  fi
else
  train_run amp "$CONFIG" profiled --amp bfloat16
  skip train-original "dry-run: the original kernel is CUDA only"
fi

# --- 5. distributed launcher and evaluation ------------------------------------------------------------
# The launcher resumes the float32 run for one more epoch: its fused AdamW's state comes back onto
# the GPU (configured_update_implementation), then trains on through NCCL and mmcv's DDP.
# The evaluation runs beside it: nothing here is timed, and one after the other they would take a
# minute of the budget.
step_start test-eval 150 "$PY" tools/test.py "$CONFIG" "$WORK/float32/latest.pth" --eval bbox segm --gpu-id 0 \
  --work-dir "$WORK/test"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
step dist-train 150 env PORT="$PORT" bash tools/dist_train.sh "$CONFIG" 1 --work-dir "$WORK/dist" \
  --no-validate --seed 0 --resume-from "$WORK/float32/latest.pth" \
  --cfg-options runner.max_epochs=$((EPOCHS + 1)) \
  && step dist-resumed 30 "${HELPER[@]}" check-resumed --work-dir "$WORK/dist" --from-epoch "$EPOCHS"
step_wait test-eval

# --- 6. kernel candidates: last, as what a short budget leaves out -----------------------------------
# The candidates against our kernel: outputs and gradients must agree (the backward's atomics
# add in varying order), the times are GPU times of CUDA-graph replays, as above.
if [ "$DRY" = 0 ] && [ ${#CANDIDATES[@]} -gt 0 ]; then
  built=0
  step_wait build-candidates && built=1
  for dtype_diff in float32:1e-4 float16:5e-3; do
    if [ "$built" = 1 ]; then
      step "candidates-${dtype_diff%%:*}" 60 "${VARIANTS[@]}" --dtype "${dtype_diff%%:*}" --batch 2 \
        --image-size "${IMAGE_HW[@]}" --max-diff "${dtype_diff#*:}"
    else
      skip "candidates-${dtype_diff%%:*}" "build-candidates did not pass"
    fi
  done
fi

# --- 7. summary ----------------------------------------------------------------------------------------
[ "$DRY" = 1 ] && log "dry-run scratch folder: $WORK"
finish
