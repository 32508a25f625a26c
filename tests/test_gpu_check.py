"""scripts/gpu_check.sh: its dry run on the CPU (so the GPU run does not fail on a typo), its
--prepare step, and the helper that times training runs and decides the verdict."""
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / 'scripts' / 'gpu_check.sh'


def _load_helper():
    spec = importlib.util.spec_from_file_location('gpu_check_helper',
                                                  ROOT / 'scripts' / 'gpu_check_helper.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _load_helper()


def _write_train_log(work_dir, times, memory=None, epoch=1, losses=None):
    work_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dict(env_info='...', seed=0))]
    for i, t in enumerate(times):
        entry = dict(mode='train', epoch=epoch, iter=i + 1, time=t, data_time=0.01,
                     loss=1.0 if losses is None else losses[i])
        if memory is not None:  # the peak in the middle of the run, not at its end
            entry['memory'] = memory + min(i, len(times) - 1 - i)
        # StepPhaseTimerHook's keys: the forward a third of the step, the backward half.
        entry.update(t_forward=t / 3, t_backward=t / 2)
        lines.append(json.dumps(entry))
    (work_dir / '20260101_000000.log.json').write_text('\n'.join(lines) + '\n')


def test_train_speed_is_the_median_after_the_warm_up(tmp_path):
    _write_train_log(tmp_path / 'run', [5.0, 4.0, 0.3, 0.5, 0.4, 9.0, 0.35], memory=1000)
    results = tmp_path / 'results.jsonl'
    helper.train_speed('float32', str(tmp_path / 'run'), skip=2, results=str(results))
    result = json.loads(results.read_text())
    assert result['s_per_iter'] == pytest.approx(0.4)  # median of the last five
    assert result['iters'] == 5 and result['peak_memory_mb'] == 1003


def test_train_speed_takes_each_phase_median_in_step_order(tmp_path, capsys):
    _write_train_log(tmp_path / 'run', [5.0, 0.3, 0.6, 0.9], memory=1000)
    results = tmp_path / 'results.jsonl'
    helper.train_speed('float32', str(tmp_path / 'run'), skip=1, results=str(results))
    phases = json.loads(results.read_text())['phases']
    assert list(phases) == ['t_forward', 't_backward']
    assert phases['t_forward'] == pytest.approx(0.2) and phases['t_backward'] == pytest.approx(0.3)
    out = capsys.readouterr().out
    assert 'host time per phase (median): forward 200.0 ms, backward 300.0 ms' in out


def test_check_resumed_wants_the_epochs_after_the_checkpoint_and_finite_losses(tmp_path, capsys):
    _write_train_log(tmp_path / 'resumed', [0.3, 0.3], epoch=6, losses=[1.5, 1.25])
    helper.check_resumed(str(tmp_path / 'resumed'), from_epoch=5)
    out = capsys.readouterr().out
    assert 'epochs [6] after epoch 5, 2 iterations, losses 1.5000 .. 1.2500' in out
    _write_train_log(tmp_path / 'restarted', [0.3, 0.3], epoch=1)
    with pytest.raises(SystemExit, match=r'trained epochs \[1\], expected the ones after epoch 5'):
        helper.check_resumed(str(tmp_path / 'restarted'), from_epoch=5)
    # A run that started over and trained on past the checkpoint's epoch logs that one too.
    log = tmp_path / 'restarted' / '20260101_000000.log.json'
    log.write_text(''.join(json.dumps(dict(mode='train', epoch=epoch, iter=1, time=0.3, loss=1.0))
                           + '\n' for epoch in range(1, 7)))
    with pytest.raises(SystemExit, match=r'trained epochs \[1, 2, 3, 4, 5, 6\], expected'):
        helper.check_resumed(str(tmp_path / 'restarted'), from_epoch=5)
    _write_train_log(tmp_path / 'diverged', [0.3, 0.3], epoch=6, losses=[1.0, float('nan')])
    with pytest.raises(SystemExit, match='losses not all finite'):
        helper.check_resumed(str(tmp_path / 'diverged'), from_epoch=5)
    with pytest.raises(SystemExit, match='no \\*.log.json'):
        helper.check_resumed(str(tmp_path / 'missing'), from_epoch=5)


def test_train_speed_leaves_out_the_profiled_iterations(tmp_path):
    _write_train_log(tmp_path / 'run', [5.0, 0.3, 0.5, 0.4, 9.0, 9.5], memory=1000)
    results = tmp_path / 'results.jsonl'
    helper.train_speed('amp', str(tmp_path / 'run'), skip=1, results=str(results), until=4)
    result = json.loads(results.read_text())
    assert result['s_per_iter'] == pytest.approx(0.4) and result['iters'] == 3


def test_train_speed_needs_iterations_past_the_warm_up(tmp_path):
    _write_train_log(tmp_path / 'run', [1.0, 1.0])
    with pytest.raises(SystemExit, match='none between the 2 warm-up iterations'):
        helper.train_speed('x', str(tmp_path / 'run'), skip=2, results=str(tmp_path / 'r.jsonl'))
    with pytest.raises(SystemExit, match='none between the 1 warm-up iterations and iteration 1'):
        helper.train_speed('x', str(tmp_path / 'run'), skip=1, results=str(tmp_path / 'r.jsonl'),
                           until=1)


OP_TARGETS_MET = 'at least 3x (forward) and 2x (backward) faster at every stage'


def _summary(tmp_path, steps, runs, mode, phases=None, losses=None, op_verdicts=None):
    """The summary of these steps and training runs; ``op_verdicts``: {dtype: the benchmark's
    "vs the original:" line, or None for a log without one} (default: both targets met)."""
    (tmp_path / 'steps.tsv').write_text(''.join(f'{n}\t{s}\t1\n' for n, s in steps))
    if op_verdicts is None:
        op_verdicts = dict(float32=OP_TARGETS_MET, float16=OP_TARGETS_MET)
    for dtype, verdict in op_verdicts.items():
        (tmp_path / f'benchmark-{dtype}.log').write_text(
            'stage  fwd ...\n' + (f'vs the original: {verdict}\n' if verdict else ''))
    (tmp_path / 'results.jsonl').write_text(''.join(
        json.dumps(dict(name=n, s_per_iter=t, data_time=0.0, iters=30, skipped=10,
                        peak_memory_mb=None, last_loss=(losses or {}).get(n, 1.0),
                        phases=(phases or {}).get(n, {}))) + '\n'
        for n, t in runs.items()))
    return helper.summary(str(tmp_path / 'steps.tsv'), str(tmp_path / 'results.jsonl'),
                          str(tmp_path), mode, 1)


def test_summary_passes_when_steps_pass_and_targets_are_met(tmp_path, capsys):
    runs = dict(float32=0.30, amp=0.18, original=0.42)
    assert _summary(tmp_path, [('train-float32', 'passed')], runs, 'gpu') == 0
    out = capsys.readouterr().out
    assert '1.40x' in out and '1.67x' in out and 'MISSED' not in out
    assert out.rstrip().endswith('gpu_check: passed')


def test_summary_sets_the_runs_phases_side_by_side(tmp_path, capsys):
    runs = dict(float32=0.30, amp=0.18, original=0.42)
    phases = dict(float32=dict(t_forward=0.1, t_backward=0.15),
                  amp=dict(t_forward=0.05, t_backward=0.08, t_optimizer_step=0.01))
    assert _summary(tmp_path, [('train-float32', 'passed')], runs, 'gpu', phases) == 0
    table = capsys.readouterr().out.split('Host time per phase')[1].splitlines()
    assert [line.split() for line in table[2:3] + table[4:7]] == [
        ['phase', 'float32', 'amp'], ['forward', '100.0', '50.0'], ['backward', '150.0', '80.0'],
        ['optimizer_step', 'n/a', '10.0']]


def test_summary_fails_on_a_missed_target_on_the_gpu_only(tmp_path, capsys):
    runs = dict(float32=0.30, amp=0.25, original=0.42)
    assert _summary(tmp_path, [('train-amp', 'passed')], runs, 'gpu') == 1
    assert 'targets missed: mixed precision vs float32' in capsys.readouterr().out
    assert _summary(tmp_path, [('train-amp', 'passed')], runs, 'dry-run') == 0


def test_summary_fails_on_a_target_not_measured_on_the_gpu_only(tmp_path, capsys):
    # e.g. the original kernel's run left out with GPU_CHECK_SKIP: its target was not checked.
    runs = dict(float32=0.30, amp=0.18)
    steps = [('train-original', 'skipped (GPU_CHECK_SKIP)')]
    assert _summary(tmp_path, steps, runs, 'gpu') == 1
    out = capsys.readouterr().out
    assert 'not measured' in out
    assert out.rstrip().endswith('targets missed: float32 with our op vs with the original kernel')
    assert _summary(tmp_path, steps, runs, 'dry-run') == 0


def test_summary_fails_on_an_op_target_missed_or_not_measured_on_the_gpu_only(tmp_path, capsys):
    # Left out (GPU_CHECK_SKIP), or run without the original kernel (its build failed), the
    # benchmarks passed, and so did the run.
    runs = dict(float32=0.30, amp=0.18, original=0.42)
    missed = ('stage 1: forward 2.44x (need 3x), backward 2.34x (need 2x); stage 3: forward '
              '2.23x (need 3x), backward 2.23x (need 2x)')
    for folder in ('missed', 'left_out'):
        (tmp_path / folder).mkdir()
    assert _summary(tmp_path / 'missed', [('benchmark-float16', 'FAILED (exit 1)')], runs, 'gpu',
                    op_verdicts=dict(float32=OP_TARGETS_MET, float16=missed)) == 1
    out = capsys.readouterr().out
    assert [line.split(None, 7)[-1] for line in out.splitlines()
            if line.startswith('our op vs')] == ['met', 'MISSED at stage(s) 1, 3']
    assert 'targets missed: our op vs the original kernel, float16' in out
    steps = [('benchmark-float32', 'skipped (GPU_CHECK_SKIP)'), ('benchmark-float16', 'passed')]
    assert _summary(tmp_path / 'left_out', steps, runs, 'gpu',
                    op_verdicts=dict(float16=None)) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith('targets missed: our op vs the original kernel, float32; our op '
                                 'vs the original kernel, float16')
    assert out.count('not measured') == 2
    assert _summary(tmp_path / 'left_out', steps, runs, 'dry-run', op_verdicts={}) == 0
    assert 'op target' not in capsys.readouterr().out


def test_summary_fails_on_a_run_whose_loss_is_not_finite(tmp_path, capsys):
    runs = dict(float32=0.30, amp=0.18, original=0.42)
    assert _summary(tmp_path, [('train-amp', 'passed')], runs, 'gpu',
                    losses=dict(amp=float('nan'))) == 1
    assert 'failed steps: train-amp (last loss nan)' in capsys.readouterr().out


def test_summary_fails_on_a_failed_step(tmp_path, capsys):
    assert _summary(tmp_path, [('dist-train', 'FAILED (exit 1)')], {}, 'dry-run') == 1
    assert 'failed steps: dist-train' in capsys.readouterr().out


def test_summary_fails_on_a_step_the_time_budget_left_out(tmp_path, capsys):
    steps = [('build-original', 'skipped (dry-run: CUDA only)'),
             ('test-eval', 'skipped (time budget)')]
    assert _summary(tmp_path, steps, {}, 'dry-run') == 1
    assert 'failed steps: test-eval' in capsys.readouterr().out


def test_unknown_argument_is_named():
    result = subprocess.run(['bash', str(GPU_CHECK), '--bogus'], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr


def _fake_checkout(tmp_path, with_shared=True):
    """A checkout (scripts/gpu_check.sh, .device ignored) with ../shared beside it."""
    repo = tmp_path / 'repo'
    (repo / 'scripts').mkdir(parents=True)
    shutil.copy(GPU_CHECK, repo / 'scripts' / 'gpu_check.sh')
    (repo / '.gitignore').write_text('/.device/\n')
    subprocess.run(['git', 'init', '-q', str(repo)], check=True)
    if with_shared:
        for part in ('gpu-kit', 'anchors/original_dcnv3', 'reference'):
            folder = tmp_path / 'shared' / part
            folder.mkdir(parents=True)
            (folder / 'marker.txt').write_text(part)
    return repo


def test_prepare_copies_what_the_gpu_machine_cannot_reach(tmp_path):
    repo = _fake_checkout(tmp_path)
    result = subprocess.run(['bash', str(repo / 'scripts' / 'gpu_check.sh'), '--prepare'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for part, copied in (('gpu-kit', 'gpu-kit'), ('anchors/original_dcnv3', 'original_dcnv3'),
                         ('reference', 'reference')):
        assert (repo / '.device' / copied / 'marker.txt').read_text() == part


KERNEL_TEXT = 'one\ntwo\nthree\n'
CANDIDATE_PATCH = '''A candidate: its description comes first, as in tools/kernel_candidates/.

--- a/ops_dcnv3/csrc/cuda/dcnv3_kernel.cu
+++ b/ops_dcnv3/csrc/cuda/dcnv3_kernel.cu
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
'''


def _with_candidate(repo, patch_text):
    kernel = repo / 'ops_dcnv3' / 'csrc' / 'cuda' / 'dcnv3_kernel.cu'
    kernel.parent.mkdir(parents=True)
    kernel.write_text(KERNEL_TEXT)
    (repo / 'tools' / 'kernel_candidates').mkdir(parents=True)
    (repo / 'tools' / 'kernel_candidates' / 'upper.patch').write_text(patch_text)
    return kernel


@pytest.mark.skipif(shutil.which('patch') is None, reason='no patch command')
def test_prepare_writes_each_kernel_candidate(tmp_path):
    repo = _fake_checkout(tmp_path)
    kernel = _with_candidate(repo, CANDIDATE_PATCH)
    result = subprocess.run(['bash', str(repo / 'scripts' / 'gpu_check.sh'), '--prepare'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'reference data, 1 kernel candidates' in result.stdout
    assert (repo / '.device' / 'candidates' / 'upper.cu').read_text() == 'one\nTWO\nthree\n'
    assert kernel.read_text() == KERNEL_TEXT  # the checkout's kernel is left as it is
    # The kernel they were made from, which the GPU run compares with its own.
    recorded = (repo / '.device' / 'candidates' / '.kernel.sha256').read_text().strip()
    assert recorded == hashlib.sha256(KERNEL_TEXT.encode()).hexdigest()


def test_a_gpu_run_refuses_too_few_epochs_to_time(tmp_path):
    result = subprocess.run(['bash', str(GPU_CHECK), '--out', str(tmp_path)], capture_output=True,
                            text=True, env=dict(os.environ, GPU_CHECK_TRAIN_EPOCHS='2'))
    assert result.returncode == 2
    assert 'GPU_CHECK_TRAIN_EPOCHS must be at least 3' in result.stderr
    assert not (tmp_path / 'gpu_check.log').exists()  # refused before anything ran


@pytest.mark.skipif(shutil.which('patch') is None, reason='no patch command')
def test_prepare_names_a_candidate_that_no_longer_applies(tmp_path):
    repo = _fake_checkout(tmp_path)
    _with_candidate(repo, CANDIDATE_PATCH.replace('-two', '-deux'))
    result = subprocess.run(['bash', str(repo / 'scripts' / 'gpu_check.sh'), '--prepare'],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert ('tools/kernel_candidates/upper.patch does not apply to '
            'ops_dcnv3/csrc/cuda/dcnv3_kernel.cu; refresh it or delete it') in result.stderr
    assert not list((repo / '.device').rglob('*.rej'))


def test_prepare_names_what_is_missing(tmp_path):
    repo = _fake_checkout(tmp_path, with_shared=False)
    result = subprocess.run(['bash', str(repo / 'scripts' / 'gpu_check.sh'), '--prepare'],
                            capture_output=True, text=True)
    assert result.returncode != 0 and 'shared/gpu-kit not found' in result.stderr


@pytest.mark.slow
def test_dry_run_passes_every_step_it_can_on_the_cpu(tmp_path):
    pytest.importorskip('mmdet')
    built = sorted(ROOT.glob('ops_dcnv3/_C*.so'))
    before = {path: path.stat().st_mtime_ns for path in built}
    result = subprocess.run(['bash', str(GPU_CHECK), '--dry-run', '--out', str(tmp_path)],
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', PYTHON=sys.executable))
    summary = (tmp_path / 'summary.txt').read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:]
    assert summary.rstrip().endswith('gpu_check: passed')
    for step in ('cuda-tests', 'benchmark-float32', 'benchmark-bfloat16', 'dataset', 'config',
                 'original-core-op', 'train-float32', 'train-amp', 'dist-train', 'dist-resumed',
                 'test-eval'):
        assert any(line.split()[:2] == [step, 'passed'] for line in summary.splitlines()), (step, summary)
    for step in ('build-dcnv3', 'build-original', 'train-original'):
        assert any(line.startswith(step) and 'skipped' in line for line in summary.splitlines())
    log = (tmp_path / 'gpu_check.log').read_text()
    assert 'bbox_mAP' in log and 'segm_mAP' in log  # the COCO evaluation ran
    # The scratch folder (datasets, checkpoints: about 1 GB) is gone; the log and summary stay.
    scratch = re.search(r'synthetic_shapes --out (\S+)/shapes ', log).group(1)
    assert scratch.startswith('/tmp/gpu_check_dry.') and not os.path.exists(scratch)
    # Each run's host time per phase, side by side.
    table = summary.split('Host time per phase')[1].splitlines()
    assert table[2].split() == ['phase', 'float32', 'amp']
    assert [line.split()[0] for line in table[4:11]] == [
        'to_device', 'backbone_neck', 'rpn_head', 'roi_head', 'forward', 'backward',
        'optimizer_step']
    # The extension built in place was not rebuilt under other processes.
    assert {path: path.stat().st_mtime_ns for path in built} == before


@pytest.mark.slow
def test_dry_run_leaves_out_named_steps_and_the_profiles(tmp_path):
    """GPU_CHECK_SKIP and GPU_CHECK_PROFILE=0, which fit the check into a short lease."""
    pytest.importorskip('mmdet')
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1', GPU_CHECK_PROFILE='0',
               GPU_CHECK_SKIP='benchmark-bfloat16 dist-train test-eval')
    result = subprocess.run(['bash', str(GPU_CHECK), '--dry-run', '--out', str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env=env)
    summary = (tmp_path / 'summary.txt').read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:]
    lines = summary.splitlines()
    for step in ('benchmark-bfloat16', 'dist-train', 'test-eval'):
        assert any(line.startswith(step) and 'skipped (GPU_CHECK_SKIP)' in line for line in lines)
    for step in ('train-float32', 'train-amp'):
        assert any(line.split()[:2] == [step, 'passed'] for line in lines), (step, summary)
    log = (tmp_path / 'gpu_check.log').read_text()
    assert 'profiler is profiling' not in log and 'Self CPU time total' not in log
    # Without profiled iterations every iteration after the warm-up is timed (2 epochs of 2).
    assert 'train-float32: ' in log and '(median of 4 after 0' in log


@pytest.mark.slow
def test_a_training_speed_that_cannot_be_read_fails_the_run_with_the_reason(tmp_path):
    # The reason went to stderr only, and the summary showed the training step as passed.
    pytest.importorskip('mmdet')
    python = tmp_path / 'python'
    python.write_text('#!/usr/bin/env bash\n'
                      'if [ "$2" = train-speed ]; then echo "train-speed: no iterations" >&2; '
                      'exit 1; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), PYTHONUNBUFFERED='1', GPU_CHECK_PROFILE='0',
               GPU_CHECK_SKIP='cuda-tests benchmark-float32 benchmark-bfloat16 dist-train test-eval')
    result = subprocess.run(['bash', str(GPU_CHECK), '--dry-run', '--out', str(tmp_path / 'out')],
                            capture_output=True, text=True, timeout=900, env=env)
    summary = (tmp_path / 'out' / 'summary.txt').read_text()
    assert result.returncode == 1, summary
    for name in ('float32', 'amp'):
        assert re.search(rf'^train-{name} +passed ', summary, re.M), summary
        assert re.search(rf'^speed-{name} +FAILED \(train-speed: no iterations\) ', summary,
                         re.M), summary
    assert summary.rstrip().endswith('failed steps: speed-float32, speed-amp')
    assert 'train-speed: no iterations' in (tmp_path / 'out' / 'gpu_check.log').read_text()


def _processes_marked(marker, running=''):
    """{pid: command line} of the processes whose environment holds ``marker`` (what a run
    started and left behind) and whose command line holds ``running``."""
    found = {}
    for process in Path('/proc').glob('[0-9]*'):
        try:
            if marker.encode() in (process / 'environ').read_bytes():
                command = (process / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
                if running in command:
                    found[int(process.name)] = command
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


def _start_dry_run_until_the_cuda_tests(out):
    """A dry run whose CUDA tests last until they are stopped (its interpreter sleeps instead of
    running pytest), returned once they have begun and the dataset (a background step, not yet
    waited for) has been written."""
    marker = f'gpu_check_test_{os.getpid()}_{time.monotonic_ns()}'
    python = out / 'python'
    python.write_text('#!/usr/bin/env bash\n'
                      'if [ "$1 $2" = "-m pytest" ]; then exec sleep 600; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    run = subprocess.Popen(['bash', str(GPU_CHECK), '--dry-run', '--out', str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True,
                           env=dict(os.environ, PYTHON=str(python), PYTHONUNBUFFERED='1',
                                    GPU_CHECK_TEST_MARKER=marker))
    log = out / 'gpu_check.log'
    deadline = time.monotonic() + 300
    while True:
        text = log.read_text() if log.exists() else ''
        scratch = re.search(r'synthetic_shapes --out (\S+)/shapes ', text)
        dataset_log = Path(scratch.group(1)) / 'logs' / 'dataset.log' if scratch else None
        if ('=== cuda-tests (limit' in text and dataset_log.exists()
                and 'Done in' in dataset_log.read_text()
                and not _processes_marked(marker, running='synthetic_shapes')):
            return run, marker
        assert run.poll() is None and time.monotonic() < deadline, 'cuda-tests never started'
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize('whom', ['group', 'script'])
def test_a_stopped_run_stops_its_steps_writes_its_summary_and_fails(tmp_path, whom):
    """As a lease's time limit stops it (SIGTERM to the whole process group), or `kill PID`.
    Each step runs in a process group of its own, which neither signal reached: the steps went
    on after the summary; the script alone waited for its foreground step to end first; and
    steps that had passed in the background were counted as stopped."""
    pytest.importorskip('mmdet')
    run, marker = _start_dry_run_until_the_cuda_tests(tmp_path)
    try:
        (os.killpg if whom == 'group' else os.kill)(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) != 0  # not at the step's time limit (150 s)
        assert _processes_marked(marker) == {}
    finally:  # what a failed run leaves
        for pid in _processes_marked(marker):
            os.kill(pid, signal.SIGKILL)
    summary = (tmp_path / 'summary.txt').read_text()
    lines = summary.splitlines()
    assert any(line.split()[:3] == ['gpu_check', 'FAILED', '(stopped'] for line in lines), summary
    assert any(line.split()[:3] == ['cuda-tests', 'FAILED', '(stopped'] for line in lines), summary
    assert any(line.split()[:2] == ['dataset', 'passed'] for line in lines), summary
    assert 'gpu_check: stopped by a signal' in (tmp_path / 'gpu_check.log').read_text()


def test_profiled_iterations_must_fit_in_the_run(tmp_path):
    pytest.importorskip('mmcv')
    with pytest.raises(SystemExit, match='2 \\+ 4 profiled iterations do not fit in 4'):
        helper.write_config(str(tmp_path / 'shapes'), 1, str(tmp_path / 'config.py'),
                            profile=(4, 2, 4))


@pytest.mark.parametrize('tiny', [None, (160, 96)])
def test_training_config_is_the_t_config_on_the_generated_data(tmp_path, tiny):
    mmcv = pytest.importorskip('mmcv')
    out = tmp_path / 'config.py'
    helper.write_config(str(tmp_path / 'shapes'), 5, str(out), tiny, profile=(40, 2, 4))
    cfg = mmcv.Config.fromfile(str(out))
    assert cfg.model.backbone.type == 'InternImage' and cfg.model.backbone.channels == 64
    assert cfg.model.backbone.init_cfg is None  # no network on the GPU machine
    hooks = [hook['type'] for hook in cfg.custom_hooks]
    assert hooks == ['NumClassCheckHook', 'StepPhaseTimerHook']
    assert cfg.log_config == dict(interval=1, hooks=[dict(type='SyncFreeTextLoggerHook')])
    assert cfg.model.roi_head.bbox_head.num_classes == cfg.model.roi_head.mask_head.num_classes == 3
    assert cfg.data.samples_per_gpu == 2 and cfg.runner.max_epochs == 5
    for split in ('train', 'val', 'test'):
        assert cfg.data[split].classes == ('circle', 'triangle', 'rectangle')
        assert cfg.data[split].ann_file.startswith(str(tmp_path / 'shapes'))
    resize = cfg.data.train.pipeline[2]
    if tiny is None:
        assert cfg.model.backbone.depths == [4, 4, 18, 4]
        assert resize.img_scale == (1333, 800) and cfg.data.test.pipeline[1].img_scale == (1333, 800)
    else:
        assert cfg.model.backbone.depths == cfg.optimizer.paramwise_cfg.depths == [1, 1, 2, 1]
        assert resize.img_scale == tiny and cfg.data.test.pipeline[1].img_scale == tiny
    # Its twin with the original kernel: the same, but for the core op and the import of it.
    original = mmcv.Config.fromfile(helper.original_config_path(str(out)), import_custom_modules=False)
    assert original.model.backbone.core_op == 'DCNv3_original'
    assert 'original_dcnv3_core' in original.custom_imports.imports
    original.model.backbone.core_op = cfg.model.backbone.core_op
    original.pop('custom_imports')
    cfg.pop('custom_imports')
    assert original.pretty_text == cfg.pretty_text
    # The profiling twins: the same configs plus mmcv's ProfilerHook over the last 6 of 40
    # iterations (GPU time first on the GPU, CPU time in the CPU-sized dry run).
    for config in (str(out), helper.original_config_path(str(out))):
        profiled = mmcv.Config.fromfile(helper.profile_config_path(config),
                                        import_custom_modules=False)
        hooks = {hook['type']: hook for hook in profiled.custom_hooks}
        assert set(hooks) == {'NumClassCheckHook', 'StepPhaseTimerHook', 'ProfilerHook'}
        assert hooks['ProfilerHook']['profile_iters'] == 40
        assert hooks['ProfilerHook']['schedule'] == dict(wait=34, warmup=2, active=4)
        assert ('cuda' in hooks['ProfilerHook']['activities']) == (tiny is None)
        profiled.pop('custom_hooks')
        plain = mmcv.Config.fromfile(config, import_custom_modules=False)
        plain.pop('custom_hooks')
        assert profiled.pretty_text == plain.pretty_text


def test_check_core_op_names_a_config_that_builds_another_core(tmp_path, capsys):
    # The original kernel's run must not time our op against itself.
    pytest.importorskip('mmdet')
    config = tmp_path / 'config.py'
    helper.write_config(str(tmp_path / 'shapes'), 1, str(config), (160, 96))
    helper.check_core_op(str(config), 'DCNv3')
    assert 'all 5 DCNv3 cores are DCNv3 (DCNv3)' in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"builds \['DCNv3'\] DCNv3 cores, not DCNv3_pytorch"):
        helper.check_core_op(str(config), 'DCNv3_pytorch')
