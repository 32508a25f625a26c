#!/usr/bin/env bash
# Build mmcv-full from its source release for the installed torch, as scripts/setup_env.sh needs
# it: mmcv-full 1.7 ships no wheel for today's torch, and its setup.py hard-codes -std=c++14/17
# while torch's headers need C++20.
#
#   bash scripts/build_mmcv.sh --python PY --wheel-dir DIR [--cuda]
#       build the wheel (CPU ops, plus CUDA ops with --cuda) into DIR
#   bash scripts/build_mmcv.sh --python PY --cuda --compile-only roi_align_cuda.cu nms_cuda.cu
#       compile only these CUDA sources of mmcv (mmcv's own setup.py, same flags and folders as
#       the wheel build): a quick check that the CUDA build set-up works (tests/test_mmcv_cuda_build.py)
#
# The source release is fetched through pip (`pip download --no-binary :all:`, so pip's index,
# mirror and proxy settings apply) into $INTERNIMAGE_CACHE/sdist (default
# ~/.cache/internimage-mmdet/sdist) and checked against its sha256. CUDA builds take the
# toolkit from CUDA_HOME (else from nvcc), the header folders of torch's nvidia-* wheels (as the
# DCNv3 build does) and the architectures from TORCH_CUDA_ARCH_LIST (unset: the visible GPUs', or
# 8.0;9.0+PTX with none visible, as setup.py).
# The build's output goes to stdout; a failed build ends with the compiler's first error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/_build_common.sh
source "$ROOT/scripts/_build_common.sh"
CACHE="${INTERNIMAGE_CACHE:-${HOME:?is not set: set INTERNIMAGE_CACHE, the folder for built wheels}/.cache/internimage-mmdet}"
MMCV_VERSION=1.7.2
MMCV_SDIST_SHA256=aa276a2c68fa84db9bbcdcf6ae941e30f0cb4a7f175bd283516669e00bab3759

die() { printf '[build_mmcv] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

PY= WHEEL_DIR= WITH_CUDA=0 COMPILE_ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=${2:?--python needs a path}; shift 2;;
    --wheel-dir) WHEEL_DIR=${2:?--wheel-dir needs a folder}; shift 2;;
    --cuda) WITH_CUDA=1; shift;;
    --compile-only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do COMPILE_ONLY+=("$1"); shift; done;;
    -h|--help) usage; exit 0;;
    *) die "unknown argument '$1' (see --help)";;
  esac
done
[ -n "$PY" ] || die "--python PY is required (the interpreter whose torch mmcv is built for)"
# An absolute path (the build runs it from other folders), the venv's link itself, not its target.
given_py=$PY
case "$PY" in
  */*) PY="$(cd "$(dirname "$PY")" 2>/dev/null && pwd)/$(basename "$PY")" ;;
  *) PY="$(command -v "$PY" || true)" ;;
esac
"$PY" -c '' 2>/dev/null || die "--python $given_py does not run"
if [ ${#COMPILE_ONLY[@]} -gt 0 ]; then
  [ "$WITH_CUDA" = 1 ] || die "--compile-only compiles CUDA sources: add --cuda"
  [ -z "$WHEEL_DIR" ] || die "--compile-only builds no wheel: drop --wheel-dir"
else
  [ -n "$WHEEL_DIR" ] || die "--wheel-dir DIR (or --compile-only SOURCES) is required"
fi

# --- the source release, through pip, cached ---------------------------------------------------
sdist="$CACHE/sdist/mmcv-full-$MMCV_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  echo "[build_mmcv] fetching the mmcv-full $MMCV_VERSION source release with pip"
  mkdir -p "$CACHE/sdist"
  fetch="$(mktemp -d "$CACHE/sdist/.fetch.XXXXXX")"
  # --no-build-isolation: pip reads the release's metadata with the torch already installed.
  if ! "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
       --no-build-isolation -d "$fetch" "mmcv-full==$MMCV_VERSION"; then
    rm -rf "$fetch"
    die "pip could not download the mmcv-full $MMCV_VERSION source release (check pip's index/proxy settings)"
  fi
  mv "$fetch/mmcv-full-$MMCV_VERSION.tar.gz" "$sdist.partial" && rm -rf "$fetch"
  mv "$sdist.partial" "$sdist"
fi
echo "$MMCV_SDIST_SHA256  $sdist" | sha256sum -c --quiet - \
  || die "$sdist does not match the expected sha256 $MMCV_SDIST_SHA256; delete it and rerun"

# --- sources, patched for C++20 ----------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar xzf "$sdist" -C "$work"
src="$work/mmcv-full-$MMCV_VERSION"
sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$src/setup.py"

export MMCV_WITH_OPS=1 FORCE_CUDA="$WITH_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [ "$WITH_CUDA" = 1 ]; then
  cuda_build_env "$PY" "$ROOT" || die "no CUDA toolkit found (no nvcc on PATH); set CUDA_HOME or build without CUDA"
  echo "[build_mmcv] CUDA ops: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CPATH=${CPATH:-}"
fi

log="$work/build.log"
if [ ${#COMPILE_ONLY[@]} -gt 0 ]; then
  # mmcv's setup.py globs its sources: leave only the named CUDA files, so that exactly the
  # wheel build's flags compile them (the link step then builds a library with open symbols).
  cuda_dir="$src/mmcv/ops/csrc/pytorch/cuda"
  for name in "${COMPILE_ONLY[@]}"; do
    [ -f "$cuda_dir/$name" ] || die "no CUDA source $name in mmcv $MMCV_VERSION (see $cuda_dir)"
  done
  keep="$work/keep"; mkdir "$keep"
  for name in "${COMPILE_ONLY[@]}"; do mv "$cuda_dir/$name" "$keep/"; done
  rm -f "$src"/mmcv/ops/csrc/pytorch/*.cpp "$src"/mmcv/ops/csrc/pytorch/cpu/*.cpp "$cuda_dir"/*.cpp "$cuda_dir"/*.cu
  mv "$keep"/* "$cuda_dir/"
  echo "[build_mmcv] compiling ${COMPILE_ONLY[*]} with mmcv's setup.py"
  build=(env -C "$src" "$PY" setup.py build_ext)
else
  echo "[build_mmcv] building the mmcv-full $MMCV_VERSION wheel ($([ "$WITH_CUDA" = 1 ] && echo 'CPU and CUDA' || echo CPU) ops, MAX_JOBS=$MAX_JOBS)"
  build=(env -C "$src" "$PY" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation -w "$work/wheel" .)
fi
start=$SECONDS
if ! "${build[@]}" 2>&1 | tee "$log"; then
  first_compiler_error "$log" >&2
  die "the mmcv-full build failed after $((SECONDS - start)) s (its first compiler error, or the end of its log, above)"
fi
echo "[build_mmcv] done in $((SECONDS - start)) s"
if [ -n "$WHEEL_DIR" ]; then
  # Into place in one step, so an interrupted copy never looks like a cached wheel.
  mkdir -p "$(dirname "$WHEEL_DIR")"
  rm -rf "$WHEEL_DIR.partial"
  mkdir "$WHEEL_DIR.partial"
  cp "$work"/wheel/mmcv_full-*.whl "$WHEEL_DIR.partial/"
  rm -rf "$WHEEL_DIR"
  mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  echo "[build_mmcv] wheel: $(ls "$WHEEL_DIR"/mmcv_full-*.whl)"
fi
