"""tools/benchmark_dcnv3.py: the CPU run end to end on small shapes, the option checks, and the
code path that times the original op (exercised here with a stand-in for it, since the original
has CUDA kernels only)."""
import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ops_dcnv3.functions import dcnv3_core_pytorch, dcnv3_func

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / 'tests' / 'tools'))
from tools_testlib import load_script  # noqa: E402
SCRIPT = REPO_ROOT / 'tools' / 'benchmark_dcnv3.py'
requires_compiled_cpu = pytest.mark.skipif(
    not (dcnv3_func.HAS_COMPILED_OP and 'cpu' in dcnv3_func.COMPILED_DEVICE_TYPES),
    reason='ops_dcnv3._C has no CPU kernel here')


@pytest.fixture(scope='module')
def benchmark():
    return load_script('tools/benchmark_dcnv3.py', 'benchmark_dcnv3')


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


@requires_compiled_cpu
@pytest.mark.slow
def test_cpu_run_on_small_shapes():
    result = run_script('--device', 'cpu', '--threads', '1', '--repeats', '1', '--warmup', '0',
                        '--image-size', '40', '72', '--stages', '1', '4')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'image 40x72' in lines[0]
    assert f'1 threads, {torch.ops.dcnv3.cpu_kernel_variant()} kernels' in lines[0]
    rows = [line.split() for line in lines if line.split() and line.split()[0] in ('1', '4')]
    # Stage sizes are ceil(H / stride) x ceil(W / stride): 40x72 -> 10x18 and 2x3.
    assert [row[1] for row in rows] == ['1x10x18x64/g4', '1x2x3x512/g32']
    assert all(float(row[-1]) < 1e-4 for row in rows)  # max|diff| between op and core
    assert 'stage-1 CPU targets' in result.stdout


def test_stage_shapes_round_up(benchmark):
    assert benchmark.stage_shape(1, (800, 1333)) == (200, 334, 64, 4)
    assert benchmark.stage_shape(4, (800, 1333)) == (25, 42, 512, 32)
    assert benchmark.stage_shape(2, (800, 1216)) == (100, 152, 128, 8)


@pytest.mark.parametrize('argv, message', [
    (['--original', '.'], '--original needs --device cuda'),
    (['--check-original', '2', '2'], '--check-original needs --original DIR'),
    (['--device', 'cuda', '--original', '/nonexistent/original'], 'no load.py in that folder'),
    (['--batch', '0'], "argument --batch: must be a whole number of at least 1, got '0'"),
    (['--repeats', '0'], "argument --repeats: must be a whole number of at least 1, got '0'"),
    (['--warmup', '-1'], "argument --warmup: must be a whole number of at least 0, got '-1'"),
    (['--image-size', '0', '8'], "argument --image-size: must be a whole number of at least 1, "
                                 "got '0'"),
])
def test_bad_options_are_named(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_check_original_refuses_a_dtype_the_original_lacks(benchmark, capsys, tmp_path):
    (tmp_path / 'load.py').write_text('')
    argv = ['--device', 'cuda', '--original', str(tmp_path), '--check-original', '2', '2']
    benchmark.parse_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv + ['--dtype', 'bfloat16'])
    assert exit_info.value.code == 2 and ('--check-original: the original op has no bfloat16 '
                                          'kernels (it has float32, float64, float16)'
                                          in capsys.readouterr().err)


class _StandIn:
    """Has the original op's two entry points (argument order and im2col_step included), computed
    by the PyTorch core; checks that it gets an already-softmaxed mask."""

    def __init__(self):
        self.calls = []

    def dcnv3_forward(self, input, offset, mask, *args):
        *scalars, im2col_step = args
        self.calls.append(('forward', im2col_step))
        group = scalars[8]
        torch.testing.assert_close(mask.unflatten(-1, (group, -1)).sum(-1),
                                   torch.ones(mask.shape[:3] + (group,)))
        return dcnv3_core_pytorch(input, offset, mask, *scalars)

    def dcnv3_backward(self, input, offset, mask, *args):
        *scalars, grad_output, im2col_step = args
        self.calls.append(('backward', im2col_step))
        leaves = [t.detach().requires_grad_() for t in (input, offset, mask)]
        return torch.autograd.grad(dcnv3_core_pytorch(*leaves, *scalars), leaves, grad_output)


@requires_compiled_cpu
def test_original_code_path_with_a_stand_in(benchmark):
    args = argparse.Namespace(image_size=(24, 40), batch=2, seed=0, device='cpu', warmup=0,
                              repeats=1)
    stand_in = _StandIn()
    row = benchmark.bench_stage(1, args, torch.float32, stand_in)
    assert {'forward', 'backward'} == {name for name, _ in stand_in.calls}
    assert {step for _, step in stand_in.calls} == {2}  # im2col_step = batch
    assert row['original_max_abs_diff'] < 1e-5
    assert row['fwd_speedup'] == pytest.approx(row['fwd_core'] / row['fwd_op'])  # core / op
    assert row['bwd_speedup'] == pytest.approx(row['bwd_core'] / row['bwd_op'])
    assert row['fwd_vs_original'] == pytest.approx(row['fwd_original'] / row['fwd_op'])
    assert row['bwd_vs_original'] == pytest.approx(row['bwd_original'] / row['bwd_op'])


@requires_compiled_cpu
@pytest.mark.parametrize('target, met', [(0.0, True), (1e9, False)])
def test_check_fails_on_a_missed_cpu_target_only(benchmark, monkeypatch, capsys, target, met):
    monkeypatch.setattr(benchmark, 'CPU_TARGETS', dict(forward=target, backward=target))
    argv = ['--device', 'cpu', '--threads', '1', '--repeats', '1', '--warmup', '0',
            '--image-size', '24', '40', '--stages', '1']
    benchmark.main(argv)  # without --check a missed target is only reported
    assert f'x): {"met" if met else "NOT met"}' in capsys.readouterr().out
    if met:
        benchmark.main(argv + ['--check'])
    else:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(argv + ['--check'])
        assert exit_info.value.code == 1


@pytest.mark.parametrize('argv, message', [
    (['--stages', '4', '--check'], '--check checks the stage-1 CPU targets: it needs --device cpu '
                                   'and stage 1'),
    (['--threads', '0'], "argument --threads: must be a whole number of at least 1, got '0'")])
def test_options_it_cannot_honour_are_argparse_errors(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_graph_timing_leaves_the_warm_up_replays_out(benchmark, monkeypatch):
    """median_graph_ms with torch.cuda's streams and graphs stubbed: its graph's n-th replay
    takes n ms, so the time says which replay was timed (the first uploads the graph)."""
    timing = sys.modules[benchmark.median_graph_ms.__module__]
    replays = []

    class _CudaStandIn:  # a stream and a graph
        def wait_stream(self, other):
            pass

        def replay(self):
            replays.append(None)

    for name in ('Stream', 'current_stream', 'CUDAGraph'):
        monkeypatch.setattr(torch.cuda, name, _CudaStandIn)
    for name in ('stream', 'graph'):
        monkeypatch.setattr(torch.cuda, name, lambda _: contextlib.nullcontext())
    monkeypatch.setattr(timing, 'timer', lambda device: lambda fn: (fn(), len(replays))[1])
    times = benchmark.median_graph_ms({'op': lambda: None}, warmup=2, repeats=1, calls_per_graph=1)
    assert times == {'op': 3.0} and len(replays) == 3


def test_original_failures_lists_slow_stages(benchmark):
    rows = [dict(stage=1, fwd_vs_original=3.0, bwd_vs_original=1.5),
            dict(stage=2, fwd_vs_original=0.9, bwd_vs_original=2.0)]
    assert benchmark.original_failures(rows, 1.0, 1.0) == [
        'stage 2: forward 0.90x (need 1x), backward 2.00x (need 1x)']
    assert len(benchmark.original_failures(rows, 1.0, 1.6)) == 2
    assert benchmark.original_failures(rows, 0.5, 1.0) == []
