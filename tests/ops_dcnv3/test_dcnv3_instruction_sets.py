"""The DCNv3 CPU kernels are compiled once per instruction set (baseline, and with GCC on x86-64
AVX2 and AVX-512) and pick the one ATen runs with, which ATEN_CPU_CAPABILITY overrides. Every
variant the machine can run must equal the pure-PyTorch core, forward and backward."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ops_dcnv3.functions import dcnv3_func

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not (dcnv3_func.HAS_COMPILED_OP and 'cpu' in dcnv3_func.COMPILED_DEVICE_TYPES),
    reason='ops_dcnv3._C has no CPU kernel here')

# Runs in a fresh interpreter (ATen reads ATEN_CPU_CAPABILITY once); prints the capability ATen
# took and, per case, the largest error of the op against the core relative to the core's range.
# Channel counts cover one AVX-512 block of floats (16), blocks of every width plus a scalar tail
# (29 = 16 + 8 + 4 + 1 floats; 63 = 7 * 8 + 4 + 2 + 1 doubles, 3 * 16 + 8 + 4 + 3 floats) and
# fewer channels than the narrowest block (3).
SCRIPT = r'''
import json, torch
from ops_dcnv3.functions import DCNv3Function, dcnv3_core_pytorch

def run(fn, tensors, scalars, grad_output, softmax):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    output = fn(*leaves, *scalars, softmax)
    return [output] + list(torch.autograd.grad(output, leaves, grad_output))

errors = {}
for dtype in (torch.float32, torch.float64):
    for group_channels in (16, 29, 63, 3):
        for softmax in (False, True):
            generator = torch.Generator().manual_seed(group_channels)
            group, height, width = 2, 7, 6
            input = torch.randn(2, height, width, group * group_channels, generator=generator, dtype=dtype)
            offset = torch.randn(2, height, width, group * 18, generator=generator, dtype=dtype) * 2
            mask = torch.rand(2, height, width, group * 9, generator=generator, dtype=dtype)
            grad_output = torch.randn(input.shape, generator=generator, dtype=dtype)
            scalars = (3, 3, 1, 1, 1, 1, 1, 1, group, group_channels, 1.0)
            op = lambda *args: DCNv3Function.apply(*args[:-1], 64, softmax=args[-1])
            actual = run(op, (input, offset, mask), scalars, grad_output, softmax)
            expected = run(dcnv3_core_pytorch, (input, offset, mask), scalars, grad_output, softmax)
            key = f'{dtype} channels={group_channels} softmax={softmax}'
            errors[key] = max(((a - e).abs().max() / e.abs().max().clamp_min(1)).item()
                              for a, e in zip(actual, expected))
print(json.dumps({'capability': torch.backends.cpu.get_cpu_capability(),
                  'variant': torch.ops.dcnv3.cpu_kernel_variant(), 'errors': errors}))
'''
# The kernel variant each capability runs where the build has the x86-64 variants.
VARIANTS = {'DEFAULT': 'baseline', 'AVX2': 'avx2', 'AVX512': 'avx512'}


def _builds_x86_variants():
    """Whether the extension's compiler (torch's choice: $CXX, else c++) compiles the AVX2 and
    AVX-512 variants: GCC on x86-64, as dcnv3_kernel.cpp's preprocessor test."""
    if platform.machine() not in ('x86_64', 'AMD64'):
        return False
    macros = subprocess.run([os.environ.get('CXX', 'c++'), '-dM', '-E', '-x', 'c++', os.devnull],
                            capture_output=True, text=True).stdout
    return '#define __GNUC__' in macros and '#define __clang__' not in macros


@pytest.mark.parametrize('capability', ['DEFAULT', 'AVX2', 'AVX512'])
def test_instruction_set_variant_matches_core(capability):
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower(), PYTHONPATH=python_path)
    result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report['capability'] != capability:  # ATen ignores a capability the CPU lacks
        pytest.skip(f'this CPU cannot run {capability} (ATen runs {report["capability"]})')
    assert report['variant'] == (VARIANTS[capability] if _builds_x86_variants() else 'baseline')
    for case, error in report['errors'].items():
        tolerance = 1e-5 if 'float32' in case else 1e-12
        assert error < tolerance, f'{capability}, {case}: relative error {error:.3g}'
