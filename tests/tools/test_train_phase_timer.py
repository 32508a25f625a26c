"""StepPhaseTimerHook: each training iteration's phases in tools/train.py's log."""
import json
import os.path as osp
import time
from types import SimpleNamespace

import pytest
from torch import nn

pytest.importorskip('mmdet')
from mmdet_custom.core.hooks import PHASES, StepPhaseTimerHook  # noqa: E402
from tools_testlib import PYTHON, ROOT, run_tool, write_tiny_config  # noqa: E402

TRAIN_TOOL = osp.join(ROOT, 'tools', 'train.py')

# Runs after every other hook's after_run: records which timed methods are still shadowed by an
# instance attribute, into work_dir/left_wrapped.json.
WRAP_PROBE = '''
import json
import os.path as osp

from mmcv.runner import HOOKS, Hook, OptimizerHook


@HOOKS.register_module()
class LeftWrappedProbeHook(Hook):
    def after_run(self, runner):
        detector = runner.model.module
        owners = dict(wrapper=runner.model, detector=detector, rpn_head=detector.rpn_head,
                      roi_head=detector.roi_head, optimizer=runner.optimizer,
                      optimizer_hook=next(h for h in runner.hooks if isinstance(h, OptimizerHook)))
        left = sorted(f'{owner}.{name}' for owner, obj in owners.items()
                      for name in ('train_step', 'extract_feat', 'forward_train', 'step',
                                   'after_train_iter') if name in vars(obj))
        with open(osp.join(runner.work_dir, 'left_wrapped.json'), 'w') as f:
            json.dump(left, f)
'''


@pytest.mark.slow
def test_every_phase_is_logged_each_iteration_and_fits_in_its_step(tmp_path, tiny_shapes):
    (tmp_path / 'wrap_probe.py').write_text(WRAP_PROBE)
    config = write_tiny_config(
        tmp_path / 'tiny.py', tiny_shapes,
        extra="custom_imports = dict(imports=['mmdet_custom', 'wrap_probe'])\n"
              "custom_hooks = [dict(type='NumClassCheckHook'), dict(type='StepPhaseTimerHook'),\n"
              "                dict(type='LeftWrappedProbeHook', priority='LOWEST')]\n")
    work = tmp_path / 'work'
    result = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(work), '--seed', '0',
                       '--no-validate'], pythonpath=[tmp_path], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    logs = [json.loads(line) for line in next(work.glob('*.log.json')).read_text().splitlines()]
    iterations = [entry for entry in logs if entry.get('mode') == 'train']
    assert len(iterations) == 4  # 8 images, 2 a batch, logged every iteration
    slack = 2e-4  # the json log rounds to 5 decimals
    for entry in iterations:
        times = {key: entry[key] for key in PHASES}  # KeyError: a phase not logged
        assert all(t >= -slack for t in times.values()), times
        # The parts of the forward lie inside it, and the step's phases inside the iteration.
        parts = times['t_backbone_neck'] + times['t_rpn_head'] + times['t_roi_head']
        assert 0 < parts <= times['t_forward'] + slack, times
        step = (times['t_to_device'] + times['t_forward'] + times['t_backward']
                + times['t_optimizer_step'])
        assert 0 < step <= entry['time'] + slack, (times, entry['time'])
        assert times['t_backward'] > 0 and times['t_optimizer_step'] > 0, times
    assert json.loads((work / 'left_wrapped.json').read_text()) == []


class _Detector(nn.Module):
    def train_step(self, data, optimizer):
        return self.extract_feat(data)

    def extract_feat(self, img):
        return img


def test_unwrapping_puts_back_the_instance_attribute_a_wrapper_shadowed():
    # train.py wraps extract_feat in bfloat16 autocast (an instance attribute) before the hooks
    # run: after_run used to delete the timer's wrapper and that one with it.
    detector = _Detector()
    autocast_wrapper = detector.extract_feat
    detector.extract_feat = autocast_wrapper
    logged = {}
    runner = SimpleNamespace(model=detector, hooks=[], optimizer=None,
                             log_buffer=SimpleNamespace(update=logged.update))
    hook = StepPhaseTimerHook()
    hook.before_run(runner)
    assert detector.extract_feat is not autocast_wrapper
    hook.before_train_iter(runner)
    assert detector.train_step(3, None) == 3
    hook.after_train_iter(runner)
    assert set(logged) == {'t_forward', 't_backbone_neck'}
    hook.after_run(runner)
    assert vars(detector)['extract_feat'] is autocast_wrapper
    assert 'train_step' not in vars(detector)  # a class method: no instance attribute left


def test_an_iteration_without_an_optimizer_step_logs_a_step_of_zero():
    # Accumulating gradients (or skipping a float16 overflow), the optimizer hook ran without
    # a step: the log showed the previous step's time again.
    import torch
    from mmcv.runner import OptimizerHook

    class AccumulatingHook(OptimizerHook):
        def after_train_iter(self, runner):
            time.sleep(0.01)  # the backward; no step

    detector = _Detector()
    logged = {}
    runner = SimpleNamespace(model=detector, hooks=[AccumulatingHook()],
                             optimizer=torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1),
                             log_buffer=SimpleNamespace(update=logged.update))
    hook = StepPhaseTimerHook()
    hook.before_run(runner)
    hook.before_train_iter(runner)
    runner.hooks[0].after_train_iter(runner)
    hook.after_train_iter(runner)
    hook.after_run(runner)
    assert logged['t_optimizer_step'] == 0.0 and logged['t_backward'] >= 0.01
