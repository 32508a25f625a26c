#!/usr/bin/env bash
# Create or refresh .venv/ at the repository root with everything this project needs.
# Idempotent: a second run checks what is there and installs nothing new.
#
# Environment variables:
#   MMCV_WITH_CUDA=1      build mmcv-full's CUDA ops even without a visible GPU (default: only with a GPU)
#   DCNV3_WITH_CUDA=0     build the DCNv3 extension without its CUDA kernels
#   INTERNIMAGE_CACHE     where built wheels are cached (default: ~/.cache/internimage-mmdet)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${INTERNIMAGE_CACHE:-$HOME/.cache/internimage-mmdet}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=1.7.2
MMCV_SDIST_URL="https://files.pythonhosted.org/packages/c9/cc/21ba65de872f57418d8b233c718cddb6f55f86ef1aa399141344887c052c/mmcv-full-1.7.2.tar.gz"
MMCV_SDIST_SHA256=aa276a2c68fa84db9bbcdcf6ae941e30f0cb4a7f175bd283516669e00bab3759

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- Python ---------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
command -v "$PYTHON" >/dev/null 2>&1 || die "no python3 found on PATH; install Python 3.11 and rerun"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
  3.9|3.10|3.11) ;;
  *) die "Python $PYVER at $(command -v "$PYTHON") is not supported: mmcv-full 1.7.2 and mmdet 2.28.2 need Python 3.9-3.11 (set PYTHON=/path/to/python3.11)";;
esac
command -v g++ >/dev/null 2>&1 || die "no C++ compiler: install g++ (e.g. 'apt-get install g++') to build mmcv-full and the DCNv3 extension"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON ($PYVER)"
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed; install the venv module (e.g. 'apt-get install python3-venv')"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

have() { "$PY" - "$@" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if want and got.split("+")[0] != want:
        sys.exit(1)
PYEOF
}

# --- CUDA toolkit -----------------------------------------------------------------------------
# `nvcc` on PATH may be a wrapper script, from whose folder torch would guess a CUDA_HOME without
# headers; setup.py knows how to find the real toolkit.
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME="$(cd "$ROOT" && "$PY" -c 'from setup import find_cuda_home; print(find_cuda_home() or "")')"
  [ -n "$CUDA_HOME" ] && export CUDA_HOME || unset CUDA_HOME
fi
[ -n "${CUDA_HOME:-}" ] && say "CUDA toolkit: $CUDA_HOME"

# --- packages from the index --------------------------------------------------------------------
if ! have "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; then
  say "installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
if ! have "mmdet==2.28.2" "numpy" "yapf==0.40.1" "addict" "opencv-python-headless" "pycocotools" "timm" "pytest" "wheel" "ninja"; then
  say "installing requirements.txt"
  "${PIP[@]}" -r "$ROOT/requirements.txt"
fi

# --- mmcv-full, built from source with C++20 -----------------------------------------------------
if ! have "mmcv-full==$MMCV_VERSION"; then
  with_cuda=0
  if [ "${MMCV_WITH_CUDA:-}" = 1 ] || { [ "${MMCV_WITH_CUDA:-}" != 0 ] && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; }; then
    with_cuda=1
  fi
  flavour=cpu; [ "$with_cuda" = 1 ] && flavour=cuda
  wheel_dir="$CACHE/mmcv-full-$MMCV_VERSION-torch$TORCH_VERSION-py$PYVER-$flavour"
  if ! ls "$wheel_dir"/mmcv_full-*.whl >/dev/null 2>&1; then
    say "building mmcv-full $MMCV_VERSION ($flavour ops) from source; this takes about 10 minutes on 2 cores"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    curl -fsSL -o "$build/mmcv.tar.gz" "$MMCV_SDIST_URL" || die "could not download the mmcv-full sdist from $MMCV_SDIST_URL"
    echo "$MMCV_SDIST_SHA256  $build/mmcv.tar.gz" | sha256sum -c --quiet - || die "mmcv-full sdist checksum mismatch"
    tar xzf "$build/mmcv.tar.gz" -C "$build"
    src="$build/mmcv-full-$MMCV_VERSION"
    # torch >= 2.10 headers need C++20; mmcv hard-codes c++14/c++17.
    sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$src/setup.py"
    if ! (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$with_cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
          "$PY" -m pip wheel --no-deps --no-build-isolation -w "$build/wheel" . >"$build/build.log" 2>&1); then
      tail -n 40 "$build/build.log" >&2
      die "building mmcv-full failed (log above). Check that g++ supports -std=c++20 (gcc >= 10) and, for CUDA ops, that CUDA_HOME points at a toolkit matching torch."
    fi
    mkdir -p "$wheel_dir"
    cp "$build"/wheel/mmcv_full-*.whl "$wheel_dir/"
  else
    say "using cached mmcv-full wheel from $wheel_dir"
  fi
  # --no-deps: mmcv's runtime deps come from requirements.txt, resolved there together with numpy<2
  # (opencv-python-headless instead of the GUI opencv-python mmcv names).
  "${PIP[@]}" --no-deps "$wheel_dir"/mmcv_full-*.whl
fi

# --- this project: build the DCNv3 extension in place and put the checkout on the venv's path ----
# (an in-place build plus a .pth file is what `pip install -e .` amounts to, without pip's
# isolated build environment, which would lack torch)
site_packages="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" >"$site_packages/internimage_mmdet.pth"
stamp="$VENV/.dcnv3-build-stamp"
sources_hash="$(cd "$ROOT" && cat setup.py $(find ops_dcnv3/csrc -type f | sort) | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sources_hash" ] || ! "$PY" -c 'import ops_dcnv3._C' 2>/dev/null; then
  say "building the DCNv3 extension (CPU kernels$([ -n "${CUDA_HOME:-}" ] && [ "${DCNV3_WITH_CUDA:-1}" != 0 ] && echo ' and CUDA kernels'))"
  if ! (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace >"$VENV/dcnv3-build.log" 2>&1); then
    grep -E -B2 -A6 'error' "$VENV/dcnv3-build.log" | head -n 60 >&2 || tail -n 40 "$VENV/dcnv3-build.log" >&2
    die "building the DCNv3 extension failed (full log: $VENV/dcnv3-build.log)"
  fi
  echo "$sources_hash" >"$stamp"
fi

"$PY" -c 'import mmcv, mmdet, mmdet_custom, ops_dcnv3' || die "the environment in $VENV does not import cleanly"
say "ready: $VENV"
