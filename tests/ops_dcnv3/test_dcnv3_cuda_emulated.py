"""The CUDA forward kernel's logic, run on the CPU: ops_dcnv3/csrc/cuda/dcnv3_kernel.cu and each
kernel candidate (tools/kernel_candidates/*.patch) compiled as host C++, each launch running its
threads one after another, against the op's CPU kernels.

The forward needs nothing a sequential run lacks: one thread per output chunk, no shared memory,
no shuffles, no atomics. So its indexing, vector widths, lanes and softmax are checked here on
every configuration of benchmark_dcnv3_variants.EDGE_CASES, in all four dtypes, on machines
without a GPU. What this does not check: nvcc's code generation and the backward (whose
sub-warp shuffles need lanes in lockstep); those are the GPU run's (scripts/gpu_check.sh).
"""
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from tools_testlib import load_script  # noqa: E402

KERNEL = REPO_ROOT / 'ops_dcnv3' / 'csrc' / 'cuda' / 'dcnv3_kernel.cu'
CANDIDATES = sorted((REPO_ROOT / 'tools' / 'kernel_candidates').glob('*.patch'))
variants = load_script('tools/benchmark_dcnv3_variants.py', 'benchmark_dcnv3_variants')

# Defines that turn the kernel file's CUDA constructs into host C++.
HOST_PRELUDE = r'''// The CUDA kernel file as host C++ (tests/ops_dcnv3/test_dcnv3_cuda_emulated.py).
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#include <cmath>
struct EmulatedIndex { unsigned int x; };
static EmulatedIndex blockIdx, threadIdx;
// The backward only has to compile: it is never run here.
template <typename T> T __shfl_xor_sync(unsigned int, T value, int) { return value; }
template <typename T> T atomicAdd(T* address, T value) {
  const T old = *address;
  *address += value;
  return old;
}
template <typename Kernel, typename... Args>
void emulate_launch(unsigned int blocks, int threads, Kernel kernel, Args... args) {
  for (unsigned int block = 0; block < blocks; ++block) {
    blockIdx.x = block;
    for (int thread = 0; thread < threads; ++thread) {
      threadIdx.x = static_cast<unsigned int>(thread);
      kernel(args...);
    }
  }
}
'''
LAUNCH = re.compile(r'(dcnv3_\w+_kernel<[^;{}]*?>)\s*<<<\s*([^,]+),\s*([^,]+),[^>]*>>>\(')


def host_source(cuda_source, library):
    """``cuda_source`` as host C++ registering its kernels for the CPU under ``library``."""
    text = cuda_source
    for header in ('ATen/cuda/CUDAContext.h', 'c10/cuda/CUDAException.h', 'c10/cuda/CUDAGuard.h'):
        text = text.replace(f'#include <{header}>\n', '')
    text = re.sub(r'c10::cuda::CUDAGuard device_guard\([^;]*\);', '', text)
    text = text.replace('cudaStream_t stream = at::cuda::getCurrentCUDAStream();', '')
    text = text.replace('C10_CUDA_KERNEL_LAUNCH_CHECK();', '')
    text, launches = LAUNCH.subn(r'emulate_launch(\2, \3, \1, ', text)
    assert launches == 2, f'expected the forward and backward launches, found {launches}'
    text = variants._renamed(text, library)
    text = text.replace(f'TORCH_LIBRARY_IMPL({library}, CUDA, m)',
                        f'TORCH_LIBRARY_IMPL({library}, CPU, m)')
    return HOST_PRELUDE + text


def build_emulated(name, cuda_source, build_dir):
    """torch.ops.dcnv3_emulated_NAME: the op schema with ``cuda_source``'s kernels on the CPU."""
    from torch.utils.cpp_extension import load
    library = f'dcnv3_emulated_{name}'
    folder = Path(build_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'dcnv3.cpp').write_text(variants._renamed((variants.CSRC / 'dcnv3.cpp').read_text(),
                                                        library))
    (folder / 'kernel.cpp').write_text(host_source(cuda_source, library))
    load(name=library, sources=[str(folder / 'dcnv3.cpp'), str(folder / 'kernel.cpp')],
         extra_include_paths=[str(variants.CSRC)], extra_cflags=['-O1', '-std=c++20'],
         build_directory=str(folder), is_python_module=False, verbose=False)
    return getattr(torch.ops, library)


# The InternImage-T stage shape (16 channels a group, 4 groups) beside the edge cases.
CASES = variants.EDGE_CASES + ((4, 16, (3, 3), 1, 1, 1, 1.0, True),)
# dtype: (the CPU op's dtype for the reference, max |emulated - reference| / max(1, |reference|))
DTYPES = {torch.float32: (torch.float32, 1e-5), torch.float64: (torch.float64, 1e-12),
          torch.float16: (torch.float32, 2e-3), torch.bfloat16: (torch.float32, 1.6e-2)}


def worst_case(op):
    """(relative error, case, dtype) of ``op``'s forward against the CPU op, worst over CASES
    and DTYPES, each error over its tolerance (so <= 1 passes)."""
    import ops_dcnv3  # noqa: F401  (torch.ops.dcnv3 with its CPU kernels)
    generator = torch.Generator().manual_seed(0)
    errors = []
    for case in CASES:
        tensors, scalars = variants.edge_case_inputs(case, generator)
        for dtype, (reference_dtype, tolerance) in DTYPES.items():
            inputs = [t.to(dtype) for t in tensors[:3]]
            expected = torch.ops.dcnv3.dcnv3_forward(*[t.to(reference_dtype) for t in inputs],
                                                     *scalars).double()
            got = op.dcnv3_forward(*inputs, *scalars)
            assert got.dtype == dtype and got.shape == expected.shape, (case, dtype)
            error = ((got.double() - expected).abs().max() / expected.abs().max().clamp(min=1)
                     ).item() / tolerance
            errors.append((error, case, dtype))
    return max(errors, key=lambda item: (math.isnan(item[0]), item[0]))  # NaN is the worst


def candidate_source(patch, tmp_path):
    source = tmp_path / f'{patch.stem}.cu'
    with patch.open() as text:
        subprocess.run(['patch', '--batch', '--quiet', '--reject-file=-', '-o', str(source),
                        str(KERNEL)], stdin=text, check=True)
    return source.read_text()


@pytest.fixture(scope='module')
def main_kernel(tmp_path_factory):
    return build_emulated('main', KERNEL.read_text(), tmp_path_factory.mktemp('emulated'))


@pytest.mark.slow
def test_cuda_forward_matches_the_cpu_op(main_kernel):
    error, case, dtype = worst_case(main_kernel)
    assert error <= 1, (error, case, dtype)


@pytest.mark.slow
def test_a_wrong_cuda_forward_is_caught(tmp_path):
    """The forward's top-left corner weighted by (1 - ly)^2, not (1 - ly)(1 - lx)."""
    source = KERNEL.read_text()
    assert source.count('const acc_t w = m * hy * hx;') == 1
    wrong = build_emulated('wrong', source.replace('const acc_t w = m * hy * hx;',
                                                   'const acc_t w = m * hy * hy;'), tmp_path)
    error, _, _ = worst_case(wrong)
    assert error > 100


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('patch') is None, reason='no patch command')
@pytest.mark.parametrize('patch', CANDIDATES, ids=[path.stem for path in CANDIDATES])
def test_candidate_forward_matches_the_cpu_op_and_main(main_kernel, tmp_path, patch):
    """A candidate computes what the op does and, where it claims the same arithmetic in the
    same order, exactly what main's kernel computes (here, as host code)."""
    candidate = build_emulated(patch.stem, candidate_source(patch, tmp_path), tmp_path)
    error, case, dtype = worst_case(candidate)
    assert error <= 1, (error, case, dtype)
    generator = torch.Generator().manual_seed(1)
    for case in CASES:
        tensors, scalars = variants.edge_case_inputs(case, generator)
        for dtype in DTYPES:
            inputs = [t.to(dtype) for t in tensors[:3]]
            assert torch.equal(candidate.dcnv3_forward(*inputs, *scalars),
                               main_kernel.dcnv3_forward(*inputs, *scalars)), (case, dtype)
