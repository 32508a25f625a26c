"""The mmcv-full CUDA build set-up (scripts/build_mmcv.sh), checked without building all of mmcv.

A full CUDA build of mmcv-full takes many minutes; compiling two of its CUDA sources with the
very same script, flags and header folders catches a broken set-up (e.g. a toolkit without
cusparse.h, which every mmcv CUDA source needs through torch's headers) in well under a minute.
"""
import os
import shlex
import shutil
import sys
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_MMCV = ROOT / 'scripts' / 'build_mmcv.sh'
BUILD_COMMON = ROOT / 'scripts' / '_build_common.sh'

needs_nvcc = pytest.mark.skipif(shutil.which('nvcc') is None, reason='no nvcc: no CUDA toolkit to build with')


def _quoted(path):
    return shlex.quote(str(path))  # a checkout's path may hold spaces


def _bash(script, **kwargs):
    return subprocess.run(['bash', '-c', script], capture_output=True, text=True, cwd=ROOT, **kwargs)


@needs_nvcc
@pytest.mark.slow
def test_mmcv_roi_align_and_nms_cuda_sources_compile():
    result = subprocess.run(
        ['bash', str(BUILD_MMCV), '--python', sys.executable, '--cuda',
         '--compile-only', 'roi_align_cuda.cu', 'nms_cuda.cu'],
        capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Both went through nvcc with mmcv's flags, raised to C++20.
    for source in ('roi_align_cuda.cu', 'nms_cuda.cu'):
        assert any('nvcc' in line and source in line and '-std=c++20' in line
                   for line in output.splitlines()), output[-4000:]


def test_compile_only_names_an_unknown_source():
    result = subprocess.run(['bash', str(BUILD_MMCV), '--python', sys.executable, '--cuda',
                             '--compile-only', 'no_such_op_cuda.cu'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'no CUDA source no_such_op_cuda.cu' in result.stderr


def test_compile_only_needs_cuda():
    result = subprocess.run(['bash', str(BUILD_MMCV), '--python', 'python3', '--compile-only', 'nms_cuda.cu'],
                            capture_output=True, text=True)
    assert result.returncode != 0 and 'add --cuda' in result.stderr


@needs_nvcc
def test_cuda_build_env_puts_torch_cusparse_headers_on_cpath():
    """The header folders of torch's nvidia wheels, as setup.py adds them for the DCNv3 build."""
    try:
        import nvidia  # noqa: F401  (torch's CUDA wheels)
    except ImportError:
        pytest.skip("torch's nvidia-* wheels are not installed")
    result = _bash(f'source {_quoted(BUILD_COMMON)} && cuda_build_env {_quoted(sys.executable)} '
                   f'{_quoted(ROOT)} && echo "$CUDA_HOME" && echo "$CPATH"')
    assert result.returncode == 0, result.stderr
    cuda_home, cpath = result.stdout.splitlines()[:2]
    assert (Path(cuda_home) / 'include' / 'cuda_runtime.h').is_file()
    assert any((Path(folder) / 'cusparse.h').is_file() for folder in cpath.split(':')), cpath


@needs_nvcc
def test_first_compiler_error_shows_nvcc_error(tmp_path):
    """A failed build names its cause: the compiler's first error, not a Python traceback."""
    source = tmp_path / 'broken.cu'
    source.write_text('#include "header_that_does_not_exist.h"\n__global__ void k() {}\n')
    log = tmp_path / 'build.log'
    compiled = subprocess.run(['nvcc', '-c', str(source), '-o', str(tmp_path / 'broken.o')],
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode != 0
    log.write_text('running build_ext\n' + compiled.stdout + compiled.stderr +
                   'Traceback (most recent call last):\nRuntimeError: Error compiling objects for extension\n')
    result = _bash(f'source {_quoted(BUILD_COMMON)} && first_compiler_error {_quoted(log)}')
    assert 'first compiler error' in result.stdout
    assert 'header_that_does_not_exist.h' in result.stdout


def test_first_compiler_error_falls_back_to_log_end(tmp_path):
    log = tmp_path / 'build.log'
    log.write_text(''.join(f'line {i}\n' for i in range(100)) + 'Killed\n')
    result = _bash(f'source {_quoted(BUILD_COMMON)} && first_compiler_error {_quoted(log)}')
    assert 'no compiler error found' in result.stdout and 'Killed' in result.stdout
    assert 'line 10\n' not in result.stdout



def test_a_relative_python_is_taken_from_the_current_folder(tmp_path):
    # The build runs it from the source folder: a relative path was "not found" there.
    relative = os.path.relpath(sys.executable, tmp_path)
    result = subprocess.run(['bash', str(BUILD_MMCV), '--python', relative], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.stderr.strip() == ('[build_mmcv] ERROR: --wheel-dir DIR (or --compile-only '
                                     'SOURCES) is required')
    result = subprocess.run(['bash', str(BUILD_MMCV), '--python', 'no/python', '--wheel-dir', 'w'],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.stderr.strip() == '[build_mmcv] ERROR: --python no/python does not run'
