"""The CUDA kernels' logic, run on the CPU: ops_dcnv3/csrc/cuda/dcnv3_kernel.cu and each kernel
candidate (tools/kernel_candidates/*.patch) compiled as host C++ against the op's CPU kernels.

A launch of the forward runs its threads one after another: it needs nothing more (one thread per
output chunk, no shared memory, shuffles or atomics). A launch of the backward runs a warp at a
time, its 32 lanes as threads, so that a shuffle waits for the lanes of its sub-warp as on the
GPU; its atomics take a lock. So the kernels' indexing, vector widths, lanes, softmax and sub-warp
reductions are checked on every configuration of benchmark_dcnv3_variants.EDGE_CASES, in all four
dtypes, on machines without a GPU. What this does not check: nvcc's code, the sm_90 vector
atomics, and timing; those are the GPU run's (scripts/gpu_check.sh).
"""
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from tools_testlib import (CUDA_KERNEL, KERNEL_CANDIDATES, apply_kernel_candidate,  # noqa: E402
                           load_script)

KERNEL = Path(CUDA_KERNEL)  # the kernel the candidates patch
variants = load_script('tools/benchmark_dcnv3_variants.py', 'benchmark_dcnv3_variants')

# Defines that turn the kernel file's CUDA constructs into host C++.
HOST_PRELUDE = r'''// The CUDA kernel file as host C++, written by test_dcnv3_cuda_emulated.py.
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#include <barrier>
#include <bit>
#include <cmath>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
struct EmulatedIndex { unsigned int x; };
static thread_local EmulatedIndex blockIdx, threadIdx;
// A warp's 32 lanes run as threads. A shuffle waits for every lane of its mask (a sub-warp),
// through one barrier per mask, keyed by the mask's lowest lane.
struct EmulatedWarp {
  std::mutex mutex;
  std::unique_ptr<std::barrier<>> barriers[32];
  double values[32];
};
static thread_local EmulatedWarp* current_warp = nullptr;
static std::mutex atomic_mutex;
template <typename T> T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
  EmulatedWarp& warp = *current_warp;
  const unsigned int lane = threadIdx.x & 31u;
  std::barrier<>* barrier;
  {
    std::lock_guard<std::mutex> lock(warp.mutex);
    auto& slot = warp.barriers[std::countr_zero(mask)];
    if (!slot) {
      slot = std::make_unique<std::barrier<>>(std::popcount(mask));
    }
    barrier = slot.get();
  }
  warp.values[lane] = static_cast<double>(value);  // exact for float and double
  barrier->arrive_and_wait();
  const T other = static_cast<T>(warp.values[lane ^ static_cast<unsigned int>(lane_mask)]);
  barrier->arrive_and_wait();  // nobody overwrites a value before its partner has read it
  return other;
}
template <typename T> T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(atomic_mutex);
  const T old = *address;
  *address += value;
  return old;
}
// The forward: one thread after another.
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
// The backward, whose sub-warps shuffle: a warp at a time, its lanes as threads.
template <typename Kernel, typename... Args>
void emulate_warp_launch(unsigned int blocks, int threads, Kernel kernel, Args... args) {
  for (unsigned int block = 0; block < blocks; ++block) {
    for (int first = 0; first < threads; first += 32) {
      EmulatedWarp warp;
      std::vector<std::thread> lanes;
      for (int lane = 0; lane < 32; ++lane) {
        lanes.emplace_back([&, lane] {
          blockIdx.x = block;
          threadIdx.x = static_cast<unsigned int>(first + lane);
          current_warp = &warp;
          kernel(args...);
        });
      }
      for (std::thread& lane : lanes) {
        lane.join();
      }
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
    text, launches = LAUNCH.subn(
        lambda launch: (f'emulate_{"warp_" if "backward" in launch[1] else ""}launch('
                        f'{launch[2]}, {launch[3]}, {launch[1]}, '), text)
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


def forward(op, tensors, scalars):
    values, offset, mask, _ = tensors
    return [op.dcnv3_forward(values, offset, mask, *scalars)]


def backward(op, tensors, scalars):
    values, offset, mask, grad_output = tensors
    return list(op.dcnv3_backward(grad_output, values, offset, mask, *scalars))


def worst_case(op, direction):
    """(relative error, case, dtype) of ``direction`` (forward or backward) through ``op``
    against the CPU op, worst over CASES, DTYPES and the outputs, each error over its dtype's
    tolerance (so <= 1 passes)."""
    import ops_dcnv3  # noqa: F401  (torch.ops.dcnv3 with its CPU kernels)
    generator = torch.Generator().manual_seed(0)
    errors = []
    for case in CASES:
        tensors, scalars = variants.edge_case_inputs(case, generator)
        for dtype, (reference_dtype, tolerance) in DTYPES.items():
            inputs = [t.to(dtype) for t in tensors]
            expected = direction(torch.ops.dcnv3, [t.to(reference_dtype) for t in inputs], scalars)
            for got, want in zip(direction(op, inputs, scalars), expected, strict=True):
                assert got.dtype == dtype and got.shape == want.shape, (case, dtype)
                want = want.double()
                error = ((got.double() - want).abs().max() / want.abs().max().clamp(min=1)
                         ).item() / tolerance
                errors.append((error, case, dtype))
    return max(errors, key=lambda item: (math.isnan(item[0]), item[0]))  # NaN is the worst


@pytest.fixture(scope='module')
def main_kernel(tmp_path_factory):
    return build_emulated('main', KERNEL.read_text(), tmp_path_factory.mktemp('emulated'))


@pytest.mark.slow
@pytest.mark.parametrize('direction', [forward, backward])
def test_cuda_kernels_match_the_cpu_op(main_kernel, direction):
    error, case, dtype = worst_case(main_kernel, direction)
    assert error <= 1, (error, case, dtype)


@pytest.mark.slow
@pytest.mark.parametrize('direction,right,wrong', [
    # the top-left corner weighted by (1 - ly)^2, not (1 - ly)(1 - lx)
    (forward, 'const acc_t w = m * hy * hx;', 'const acc_t w = m * hy * hy;'),
    # each lane keeps its own partial sum of grad_out * value: no reduction over the sub-warp
    (backward, 'sum_v += __shfl_xor_sync(sub_mask, sum_v, s);', 'sum_v += sum_v;'),
], ids=['forward', 'backward'])
def test_a_wrong_cuda_kernel_is_caught(tmp_path, direction, right, wrong):
    source = KERNEL.read_text()
    assert source.count(right) == 1
    wrong_kernel = build_emulated(f'wrong_{direction.__name__}', source.replace(right, wrong),
                                  tmp_path)
    error, _, _ = worst_case(wrong_kernel, direction)
    assert error > 100


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('patch') is None, reason='no patch command')
@pytest.mark.parametrize('patch', KERNEL_CANDIDATES, ids=[path.stem for path in KERNEL_CANDIDATES])
def test_candidate_forward_matches_the_cpu_op_and_main(main_kernel, tmp_path, patch):
    """A candidate computes what the op does and, where it claims the same arithmetic in the
    same order, exactly what main's kernel computes (here, as host code)."""
    source = apply_kernel_candidate(patch, tmp_path / f'{patch.stem}.cu').read_text()
    candidate = build_emulated(patch.stem, source, tmp_path)
    error, case, dtype = worst_case(candidate, forward)
    assert error <= 1, (error, case, dtype)
    generator = torch.Generator().manual_seed(1)
    for case in CASES:
        tensors, scalars = variants.edge_case_inputs(case, generator)
        for dtype in DTYPES:
            inputs = [t.to(dtype) for t in tensors]
            assert torch.equal(forward(candidate, inputs, scalars)[0],
                               forward(main_kernel, inputs, scalars)[0]), (case, dtype)


@pytest.mark.slow
def test_the_cuda_backward_alerts_that_it_is_not_deterministic(main_kernel):
    # Its atomics sum grad_input in a varying order: --deterministic (use_deterministic_algorithms
    # with warn_only) warned of nothing, and DCNv3 gradients still differed between runs.
    tensors, scalars = variants.edge_case_inputs(CASES[-1], torch.Generator().manual_seed(0))
    forward(main_kernel, tensors, scalars)  # the forward writes each output once: no alert
    try:
        torch.use_deterministic_algorithms(True)
        forward(main_kernel, tensors, scalars)
        with pytest.raises(RuntimeError, match='dcnv3_backward_cuda does not have a deterministic '
                                               'implementation'):
            backward(main_kernel, tensors, scalars)
        # In training it runs in autograd's backward, which turns the warning into Python's.
        class BackwardThroughAutograd(torch.autograd.Function):
            @staticmethod
            def forward(ctx, values):
                return values.clone()

            @staticmethod
            def backward(ctx, grad):
                backward(main_kernel, tensors, scalars)
                return grad

        torch.use_deterministic_algorithms(True, warn_only=True)
        values = tensors[0].clone().requires_grad_()
        with pytest.warns(UserWarning, match='dcnv3_backward_cuda does not have a deterministic'):
            BackwardThroughAutograd.apply(values).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
@pytest.mark.parametrize('softmax', [False, True])
def test_points_that_read_nothing_have_zero_offset_gradients(main_kernel, softmax):
    """Even where their weight is not finite (an inf mask, a NaN logit): the CUDA backward wrote
    0 * inf = NaN where the CPU op writes 0."""
    import ops_dcnv3  # noqa: F401  (torch.ops.dcnv3 with its CPU kernels)
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(1, 3, 3, 4, generator=generator)
    offset = torch.full((1, 3, 3, 18), 1e4)  # every point far outside the image
    mask = torch.full((1, 3, 3, 9), float('nan') if softmax else float('inf'))
    grad_output = torch.randn(1, 3, 3, 4, generator=generator)
    scalars = (3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 1.0, softmax)
    tensors = (values, offset, mask, grad_output)
    _, expected_offset, _ = backward(torch.ops.dcnv3, tensors, scalars)
    _, got_offset, _ = backward(main_kernel, tensors, scalars)
    assert torch.equal(expected_offset, torch.zeros_like(offset))
    assert torch.equal(got_offset, expected_offset)
