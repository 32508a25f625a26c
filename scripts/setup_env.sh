#!/usr/bin/env bash
# Create or refresh .venv/ at the repository root with everything this project needs.
# Idempotent: a second run checks what is there and installs nothing new (a few seconds).
#
#   bash scripts/setup_env.sh [--beside CMD [ARGS...]]
#
# On a first run the slow parts overlap: once torch is in, mmcv-full builds in the background
# (scripts/build_mmcv.sh, about 10 minutes on 2 cores for CPU ops) while requirements.txt installs and the
# DCNv3 extension builds. --beside runs CMD ARGS alongside them as soon as torch and
# requirements.txt are installed (mmcv-full may still be building), with the venv's bin/ first
# on PATH; the setup fails if CMD fails.
#
# Environment variables:
#   PYTHON                the interpreter to build the venv from (default python3.11, else python3);
#                         an existing .venv of another Python version is refused, not rebuilt
#   MMCV_WITH_CUDA=1      build mmcv-full's CUDA ops even without a visible GPU (default: only with a GPU)
#   DCNV3_WITH_CUDA=0     build the DCNv3 extension without its CUDA kernels
#   TORCH_CUDA_ARCH_LIST  CUDA architectures of both builds (default: the visible GPUs'; with none, 8.0;9.0+PTX)
#   INTERNIMAGE_CACHE     where built wheels and the mmcv source are cached (default: ~/.cache/internimage-mmdet)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${INTERNIMAGE_CACHE:-${HOME:?is not set: set INTERNIMAGE_CACHE, the folder for built wheels}/.cache/internimage-mmdet}"
REQUIREMENTS="$ROOT/requirements.txt"
MMCV_VERSION=1.7.2

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

BESIDE=()
if [ $# -gt 0 ]; then
  case "$1" in
    --beside)
      shift
      [ $# -gt 0 ] || die "--beside needs a command to run, e.g. --beside python mmdet_custom/datasets/synthetic_shapes.py --out data/shapes (by file path: mmcv may still be building)"
      BESIDE=("$@");;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument '$1' (usage: bash scripts/setup_env.sh [--beside CMD [ARGS...]])";;
  esac
fi

# --- Python ---------------------------------------------------------------------------------
python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
check_supported() {  # check_supported VERSION WHERE HINT
  case "$1" in
    3.10|3.11|3.12) ;;
    *) die "Python $1 at $2 is not supported: torch 2.14 needs Python 3.10 or newer, and mmcv-full 1.7.2 and mmdet 2.28.2 are checked up to 3.12 ($3)";;
  esac
}
if [ -n "${PYTHON:-}" ]; then
  python_named=1
  command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON: no such interpreter"
else
  python_named=0
  PYTHON=python3.11
  command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
  command -v "$PYTHON" >/dev/null 2>&1 || die "no python3 found on PATH; install Python 3.11 and rerun"
fi
PYVER="$(python_version "$PYTHON")" || die "$PYTHON does not run (try '$PYTHON --version'); set PYTHON=/path/to/python3.11"
check_supported "$PYVER" "$(command -v "$PYTHON")" "set PYTHON=/path/to/python3.11"
command -v g++ >/dev/null 2>&1 || die "no C++ compiler: install g++ (e.g. 'apt-get install g++') to build mmcv-full and the DCNv3 extension"
# shellcheck source=scripts/_build_common.sh
source "$ROOT/scripts/_build_common.sh"

# One setup at a time in a checkout: two would install into one venv and build into one build/.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ROOT/.venv.lock"
  if ! flock -n 9; then
    say "another setup is running in this checkout; waiting for it to finish"
    flock 9
  fi
fi

PY="$VENV/bin/python"
make_venv() {  # make_venv [--clear]: the venv from $PYTHON, with a working pip
  "$PYTHON" -m venv "$@" "$VENV" || die "'$PYTHON -m venv' failed; install the venv module (e.g. 'apt-get install python3-venv')"
  "$PY" -m pip --version >/dev/null 2>&1 || die "$VENV has no working pip (the venv module of $PYTHON installs none: e.g. 'apt-get install python3-venv'); delete $VENV and rerun"
}
if [ -e "$PY" ] || [ -L "$PY" ]; then
  if ! venv_version="$(python_version "$PY")" || ! "$PY" -m pip --version >/dev/null 2>&1; then
    # A setup killed while creating it, or the interpreter it was made from has gone.
    say "recreating $VENV: its Python does not run or has no pip"
    make_venv --clear
  elif [ "$venv_version" != "$PYVER" ]; then
    [ "$python_named" = 0 ] || die "$VENV is Python $venv_version, PYTHON is Python $PYVER: delete $VENV to build it again with PYTHON"
    PYVER="$venv_version"  # the venv's Python decides (the wheel cache is keyed by it)
    check_supported "$PYVER" "$PY" "delete $VENV and rerun"
  fi
else
  say "creating $VENV with $PYTHON ($PYVER)"
  make_venv
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# requirement_lines [NAME...]: requirements.txt's requirement lines (all, or those of the named
# packages), without comments; requirements.txt is the one list of what the venv needs.
requirement_lines() {
  local names
  names="$(IFS='|'; echo "$*")"
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$REQUIREMENTS" | grep -v -e '^$' -e '^-' \
    | if [ -n "$names" ]; then grep -E "^($names)([<>=!~; \[]|$)"; else cat; fi
}

# satisfied REQUIREMENT...: true when every requirement is met by what the venv has installed.
satisfied() { "$PY" - "$@" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:  # before requirements.txt is in, pip's own copy of packaging
    from pip._vendor.packaging.requirements import Requirement
for line in sys.argv[1:]:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(installed, prereleases=True):
        sys.exit(1)
PYEOF
}

# --- background jobs: each in its own process group, ended with the setup if it stops early ----
JOBS=()
start_job() {  # start_job LOG CMD...: run CMD in the background, output to LOG ('-' = ours)
  local log=$1
  shift
  # Without the checkout's lock (fd 9): a job orphaned by a killed setup must not hold it.
  if [ "$log" = - ]; then setsid "$@" 9>&- & else setsid "$@" >"$log" 2>&1 9>&- & fi
  JOBS+=("$!")
}
wait_job() {  # wait_job PID: its exit status, after which it is no longer ended on exit
  local pid=$1 rc=0 kept=() other
  wait "$pid" || rc=$?
  for other in "${JOBS[@]}"; do [ "$other" = "$pid" ] || kept+=("$other"); done
  JOBS=("${kept[@]+"${kept[@]}"}")
  return "$rc"
}
end_jobs() {
  local pid
  for pid in "${JOBS[@]+"${JOBS[@]}"}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
trap end_jobs EXIT
trap 'exit 130' INT TERM

# --- torch, and what building mmcv-full needs ----------------------------------------------------
mapfile -t TORCH_REQUIREMENTS < <(requirement_lines torch torchvision setuptools wheel ninja)
if ! satisfied "${TORCH_REQUIREMENTS[@]}"; then
  say "installing ${TORCH_REQUIREMENTS[*]}"
  "${PIP[@]}" "${TORCH_REQUIREMENTS[@]}" || die "pip could not install ${TORCH_REQUIREMENTS[*]} (its message is above; check network access and pip's index or proxy settings, e.g. PIP_INDEX_URL)"
fi
TORCH_VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"

# --- mmcv-full, built from source with C++20, in the background -------------------------------------
mmcv_wheel_dir=
mmcv_build_pid=
mmcv_log="$VENV/mmcv-build.log"
with_cuda=0
if [ "${MMCV_WITH_CUDA:-}" = 1 ] || { [ "${MMCV_WITH_CUDA:-}" != 0 ] && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; }; then
  with_cuda=1
fi
flavour=cpu
if [ "$with_cuda" = 1 ]; then
  # The architectures name the build too: kernels built for other GPUs do not run on these.
  cuda_archs="$(cuda_arch_list "$PY" "$ROOT")" \
    || die "could not work out which CUDA architectures to build for (message above); set TORCH_CUDA_ARCH_LIST, e.g. 8.0"
  flavour="cuda-$(printf '%s' "$cuda_archs" | tr ';' '_')"
fi
# What the installed mmcv-full was built for: its compiled ops fit one torch (and flavour) only.
mmcv_build="$MMCV_VERSION-torch$TORCH_VERSION-py$PYVER-$flavour"
mmcv_stamp="$VENV/.mmcv-build-stamp"
mmcv_installed=0
satisfied "mmcv-full==$MMCV_VERSION" && mmcv_installed=1
if [ "$mmcv_installed" = 1 ] && [ ! -f "$mmcv_stamp" ]; then
  echo "$mmcv_build" >"$mmcv_stamp"  # a venv from before the stamp: what it has is taken as fitting
fi
if [ "$mmcv_installed" = 0 ] || [ "$(cat "$mmcv_stamp" 2>/dev/null)" != "$mmcv_build" ]; then
  mmcv_wheel_dir="$CACHE/mmcv-full-$mmcv_build"
  if ls "$mmcv_wheel_dir"/mmcv_full-*.whl >/dev/null 2>&1; then
    say "using cached mmcv-full wheel from $mmcv_wheel_dir"
  else
    { mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; } \
      || die "cannot write the wheel cache $CACHE: set INTERNIMAGE_CACHE to a writable folder"
    if [ "$with_cuda" = 1 ] && ! (cuda_build_env "$PY" "$ROOT"); then
      die "mmcv-full's CUDA ops need a CUDA toolkit (nvcc), and none was found (a GPU is visible, or MMCV_WITH_CUDA=1): set CUDA_HOME to one matching torch's CUDA, or MMCV_WITH_CUDA=0 for CPU ops only"
    fi
    if [ "$with_cuda" = 1 ]; then
      what="CPU and CUDA ops for architectures $cuda_archs; about 30 minutes on 2 cores for one architecture, longer for more"
    else
      what="CPU ops; about 10 minutes on 2 cores"
    fi
    say "building mmcv-full $MMCV_VERSION ($what) from source in the background (log: $mmcv_log)"
    build_args=(--python "$PY" --wheel-dir "$mmcv_wheel_dir")
    [ "$with_cuda" = 1 ] && build_args+=(--cuda)
    start_job "$mmcv_log" bash "$ROOT/scripts/build_mmcv.sh" "${build_args[@]}"
    mmcv_build_pid=$!
  fi
fi

# --- the rest of requirements.txt ------------------------------------------------------------------
mapfile -t ALL_REQUIREMENTS < <(requirement_lines)
if ! satisfied "${ALL_REQUIREMENTS[@]}"; then
  say "installing requirements.txt"
  "${PIP[@]}" -r "$REQUIREMENTS" || die "pip could not install requirements.txt (its message is above; check network access and pip's index or proxy settings, e.g. PIP_INDEX_URL)"
fi

beside_pid=
if [ ${#BESIDE[@]} -gt 0 ]; then
  say "running beside the setup: ${BESIDE[*]}"
  start_job - env PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" "${BESIDE[@]}"
  beside_pid=$!
fi

# --- this project: build the DCNv3 extension in place and put the checkout on the venv's path ----
# (an in-place build plus a .pth file is what `pip install -e .` amounts to, without pip's
# isolated build environment, which would lack torch)
site_packages="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" >"$site_packages/internimage_mmdet.pth"
stamp="$VENV/.dcnv3-build-stamp"
with_kernels="CPU kernels"
if [ "${DCNV3_WITH_CUDA:-1}" != 0 ] && cuda_build_env "$PY" "$ROOT"; then
  with_kernels="CPU and CUDA kernels; CUDA toolkit $CUDA_HOME, architectures $TORCH_CUDA_ARCH_LIST"
fi
# The sources and the choices the build depends on: a CPU-only build is redone once nvcc is there,
# a CUDA build once the GPUs it is for change, and either for another torch (an extension built
# for one torch may still import under another).
torch_version="$("$PY" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)"
sources_hash="$(cd "$ROOT" && { cat setup.py $(find ops_dcnv3/csrc -type f | LC_ALL=C sort)
  echo "torch=$torch_version DCNV3_WITH_CUDA=${DCNV3_WITH_CUDA:-1} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} CUDA_HOME=${CUDA_HOME:-} nvcc=$(command -v nvcc || true)"
} | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sources_hash" ] || ! "$PY" -c 'import ops_dcnv3._C' 2>/dev/null; then
  say "building the DCNv3 extension ($with_kernels)"
  if ! (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace >"$VENV/dcnv3-build.log" 2>&1); then
    if grep -q 'mismatches the version that was used to compile' "$VENV/dcnv3-build.log"; then
      toolkit="$("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' | cut -d' ' -f2 || true)"
      die "the CUDA toolkit at $CUDA_HOME (CUDA ${toolkit:-?}) does not match torch's CUDA $("$PY" -c 'import torch; print(torch.version.cuda)'): set CUDA_HOME to a matching toolkit, or DCNV3_WITH_CUDA=0 for CPU kernels only (log: $VENV/dcnv3-build.log)"
    fi
    first_compiler_error "$VENV/dcnv3-build.log" >&2
    die "building the DCNv3 extension failed (its first compiler error, or the end of its log, above; full log: $VENV/dcnv3-build.log)"
  fi
  echo "$sources_hash" >"$stamp"
fi

# --- wait for the background work ------------------------------------------------------------------
if [ -n "$mmcv_build_pid" ]; then
  say "waiting for the mmcv-full build (log: $mmcv_log)"
  if ! wait_job "$mmcv_build_pid"; then
    reason="$(grep -m1 '^\[build_mmcv\] ERROR: ' "$mmcv_log" | sed 's/^\[build_mmcv\] ERROR: //' || true)"
    [ -z "$reason" ] || die "building mmcv-full failed: $reason (log: $mmcv_log)"
    first_compiler_error "$mmcv_log" >&2
    die "building mmcv-full failed (its first compiler error, or the end of its log, above; full log: $mmcv_log). Check that g++ supports -std=c++20 (gcc >= 10) and, for CUDA ops, that CUDA_HOME points at a toolkit matching torch."
  fi
fi
if [ -n "$mmcv_wheel_dir" ]; then
  # --no-deps: mmcv's runtime deps come from requirements.txt (opencv-python-headless instead of
  # the GUI opencv-python mmcv names).
  # --force-reinstall: the same version built for another torch or flavour is replaced.
  "${PIP[@]}" --no-deps --force-reinstall "$mmcv_wheel_dir"/mmcv_full-*.whl \
    || die "installing the cached mmcv-full wheel failed (message above): delete $mmcv_wheel_dir and rerun to build it again"
  echo "$mmcv_build" >"$mmcv_stamp"
fi
if [ -n "$beside_pid" ]; then
  wait_job "$beside_pid" || die "the command run beside the setup failed (exit status $?): ${BESIDE[*]}"
fi

# Quietly: mmcv's 2.0 notice and torch's "No CUDA runtime" note concern no user of this venv.
"$PY" -W ignore -c 'import logging; logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
import mmcv, mmdet, mmdet_custom, ops_dcnv3' || die "the environment in $VENV does not import cleanly"
say "ready: $VENV"
