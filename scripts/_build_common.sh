# Shell functions shared by setup_env.sh and build_mmcv.sh (sourced, not run).
# Both need the same CUDA toolkit, header folders and architectures, and the same way of naming a
# failed build.

# cuda_build_env PY ROOT: export CUDA_HOME (unless set), put the header folders of torch's
# nvidia-* wheels on CPATH, exactly as the DCNv3 build (setup.py) adds them to its include path,
# and export TORCH_CUDA_ARCH_LIST as setup.py's cuda_arch_list() resolves it (the visible GPUs'
# architectures unless set), so mmcv-full and DCNv3 are built for the same GPUs.
# A toolkit without cuSPARSE headers needs them: every source that includes torch's
# ATen/cuda/CUDAContextLight.h includes cusparse.h. CPATH comes after -I folders, so the toolkit's
# own headers still win where both have one. Prints nothing; returns 1 when no toolkit is found.
cuda_build_env() {
  local py=$1 root=$2 found includes
  if [ -z "${CUDA_HOME:-}" ]; then
    # `nvcc` on PATH may be a wrapper script, from whose folder torch would guess a CUDA_HOME
    # without headers; setup.py follows it to the real toolkit.
    found="$(cd "$root" && "$py" -c 'from setup import find_cuda_home; print(find_cuda_home() or "")')"
    [ -n "$found" ] || return 1
    export CUDA_HOME="$found"
  fi
  includes="$(cd "$root" && "$py" -c 'from setup import _nvidia_wheel_includes; print(":".join(_nvidia_wheel_includes()))')"
  if [ -n "$includes" ]; then
    export CPATH="$includes${CPATH:+:$CPATH}"
  fi
  TORCH_CUDA_ARCH_LIST="$(cuda_arch_list "$py" "$root")" || return 1
  export TORCH_CUDA_ARCH_LIST
}

# cuda_arch_list PY ROOT: print the CUDA architectures to build for (setup.py's cuda_arch_list():
# TORCH_CUDA_ARCH_LIST when set, else the visible GPUs', else 8.0;9.0+PTX).
cuda_arch_list() {
  (cd "$2" && "$1" -c 'from setup import cuda_arch_list; print(cuda_arch_list())')
}

# first_compiler_error LOG: the first compiler error in a build log, with a few lines around it
# (pip and setuptools end a failed build with a Python traceback that names no cause), else the
# end of the log.
first_compiler_error() {
  local log=$1 line
  line="$(grep -n -m1 -E '(^|[^A-Za-z])(fatal )?error( #?[A-Za-z0-9-]+)?:' "$log" | cut -d: -f1 || true)"
  if [ -n "$line" ]; then
    echo "--- first compiler error ($log, line $line) ---"
    sed -n "$((line > 4 ? line - 4 : 1)),$((line + 8))p" "$log"
    echo "---"
  else
    echo "--- end of $log (no compiler error found) ---"
    tail -n 40 "$log"
    echo "---"
  fi
}
