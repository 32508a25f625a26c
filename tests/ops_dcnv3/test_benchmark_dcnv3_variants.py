"""tools/benchmark_dcnv3_variants.py: naming and reading the variants, the op library renaming,
and (with a CUDA toolkit) building a variant into an op library of its own. The timing itself
needs a GPU: scripts/gpu_check.sh's machine."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from tools_testlib import (CUDA_KERNEL, KERNEL_CANDIDATES, apply_kernel_candidate,  # noqa: E402
                           load_script)
SCRIPT = REPO_ROOT / 'tools' / 'benchmark_dcnv3_variants.py'
KERNEL = Path(CUDA_KERNEL)  # the kernel the candidates patch


@pytest.fixture(scope='module')
def variants():
    return load_script('tools/benchmark_dcnv3_variants.py', 'benchmark_dcnv3_variants')


def _has_git_checkout():
    return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT,
                          capture_output=True).returncode == 0


@pytest.mark.parametrize('argv,message', [
    (['previous'], 'expected NAME=REV or NAME=PATH'),
    (['1st=HEAD'], 'expected NAME=REV or NAME=PATH'),
    (['a=HEAD', 'a=HEAD~1'], 'variant names must differ'),
])
def test_bad_variant_names_are_rejected(variants, capsys, argv, message):
    with pytest.raises(SystemExit):
        variants.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('option,value,least', [
    ('--repeats', '0', 1), ('--batch', '-1', 1), ('--warmup', '-1', 0), ('--image-size', '0', 1)])
def test_bad_counts_are_refused_before_any_build(variants, capsys, option, value, least):
    argv = ['a=HEAD', option, value] + (['8'] if option == '--image-size' else [])
    with pytest.raises(SystemExit) as exit_info:
        variants.parse_args(argv)
    assert exit_info.value.code == 2
    assert (f'argument {option}: must be a whole number of at least {least}, got {value!r}'
            in capsys.readouterr().err)


def test_a_variant_is_a_file_or_a_git_revision(variants, tmp_path):
    kernel = tmp_path / 'kernel.cu'
    kernel.write_text('// a kernel\n')
    assert variants.kernel_source(str(kernel)) == '// a kernel\n'
    if _has_git_checkout():
        assert 'dcnv3_forward_kernel' in variants.kernel_source('HEAD')
    with pytest.raises(SystemExit, match='neither a file nor a git revision'):
        variants.kernel_source('no-such-revision-or-file')


def test_renamed_sources_register_their_own_library(variants):
    cpp = variants._renamed((REPO_ROOT / 'ops_dcnv3' / 'csrc' / 'dcnv3.cpp').read_text(), 'dcnv3_v')
    cuda = variants._renamed(KERNEL.read_text(), 'dcnv3_v')
    for text in (cpp, cuda):
        assert 'TORCH_LIBRARY(dcnv3,' not in text and 'TORCH_LIBRARY_IMPL(dcnv3,' not in text
        assert '"dcnv3::' not in text
    assert 'TORCH_LIBRARY(dcnv3_v, m)' in cpp and 'TORCH_LIBRARY_IMPL(dcnv3_v, AutocastCUDA' in cpp
    assert '"dcnv3_v::dcnv3_forward"' in cpp
    assert 'TORCH_LIBRARY_IMPL(dcnv3_v, CUDA, m)' in cuda


def test_a_variant_beyond_max_diff_is_named(variants):
    diffs = {'main': 0.0, 'close': 4e-7, 'far': 0.5, 'broken': float('nan')}
    assert variants.beyond(diffs, None, 1) == []
    assert variants.beyond(diffs, 1e-4, 'stage 2') == ['far at stage 2 (5.00e-01)',
                                                       'broken at stage 2 (nan)']


def test_edge_cases_are_valid_calls_and_tell_variants_apart(variants):
    """On the CPU kernels: every configuration is a valid call whose outputs a variant repeats
    exactly, and a variant that computes something else stands out in each."""
    import ops_dcnv3  # noqa: F401  (registers torch.ops.dcnv3 with its CPU kernels)
    op = torch.ops.dcnv3

    class Off:  # the same op with its forward output shifted by a hair
        @staticmethod
        def dcnv3_forward(*args):
            return op.dcnv3_forward(*args) + 1e-3

        dcnv3_backward = op.dcnv3_backward

    rows = variants.edge_case_diffs({'main': op, 'same': op, 'off': Off}, torch.float32, seed=0,
                                    device='cpu')
    assert len(rows) == len(variants.EDGE_CASES)
    for description, diffs in rows:
        assert diffs['main'] == 0 and diffs['same'] == 0, description
        assert diffs['off'] == pytest.approx(1e-3, rel=1e-3), description
        assert variants.beyond(diffs, 1e-4, description) == [f'off at {description} (1.00e-03)']
    assert rows[1][0] == 'g2 c16 k3x3 s1 p1 d1 scale 1 mask'
    assert rows[9][0] == 'g2 c16 k3x5 s2 p1 d2 scale 0.5 softmax'


def test_timing_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: the script would time, not refuse')
    result = subprocess.run([sys.executable, str(SCRIPT), f'x={KERNEL}', '--build-dir',
                             str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120)
    assert result.returncode != 0 and 'needs a CUDA device' in result.stderr


def _schemas_of_built_variant(name, source, build_dir):
    """Builds kernel file ``source`` as variant ``name`` in a fresh process, which then prints
    the schemas it finds under torch.ops.dcnv3_NAME."""
    check = ('import sys, torch; sys.argv[1:] = []; import benchmark_dcnv3_variants as v; '
             f'op = v.build_all([({name!r}, {str(source)!r})], {str(build_dir)!r})[{name!r}]; '
             'print(op.dcnv3_forward.default._schema); print(op.dcnv3_backward.default._schema)')
    result = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True,
                            cwd=SCRIPT.parent, timeout=900,
                            env={**os.environ, 'TORCH_CUDA_ARCH_LIST': '9.0'})
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('nvcc') is None, reason='no nvcc: no CUDA toolkit to build with')
def test_a_variant_builds_into_an_op_library_of_its_own(tmp_path):
    schemas = _schemas_of_built_variant('mine', KERNEL, tmp_path)
    assert 'dcnv3_mine::dcnv3_forward(Tensor input' in schemas
    assert 'dcnv3_mine::dcnv3_backward(Tensor grad_output' in schemas


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('nvcc') is None, reason='no nvcc: no CUDA toolkit to build with')
@pytest.mark.skipif(shutil.which('patch') is None, reason='no patch command')
@pytest.mark.parametrize('candidate', KERNEL_CANDIDATES,
                         ids=[path.stem for path in KERNEL_CANDIDATES])
def test_kernel_candidate_applies_and_builds(tmp_path, candidate):
    """What scripts/gpu_check.sh --prepare makes of a candidate, and its GPU run then builds."""
    source = apply_kernel_candidate(candidate, tmp_path / f'{candidate.stem}.cu')
    schemas = _schemas_of_built_variant('candidate', source, tmp_path / 'build')
    assert 'dcnv3_candidate::dcnv3_forward(Tensor input' in schemas
