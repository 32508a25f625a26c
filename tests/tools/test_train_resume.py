"""A run killed mid-epoch and continued with --auto-resume ends with the weights of an
uninterrupted run with the same seed."""
import os.path as osp
import signal

import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import PYTHON, ROOT, run_tool, write_tiny_config  # noqa: E402

TRAIN_TOOL = osp.join(ROOT, 'tools', 'train.py')

# Registered by the killed run only: in the middle of the second epoch, after the first epoch's
# checkpoint was written, SIGKILL the run's process group (trainer and loader workers, as when a
# job is killed), leaving no chance to clean up.
KILL_HOOK = '''
import os
import signal
from mmcv.runner import HOOKS, Hook


@HOOKS.register_module()
class KillMidEpochHook(Hook):
    def after_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 1:
            os.killpg(os.getpgrp(), signal.SIGKILL)
'''


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_killed_and_auto_resumed_run_matches_uninterrupted_run(tmp_path, tiny_shapes):
    # 8 images, batch 2: 4 iterations per epoch; loader workers and DropPath are in play.
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes, epochs=3, workers=1)
    (tmp_path / 'kill_hook.py').write_text(KILL_HOOK)
    killed_config = write_tiny_config(
        tmp_path / 'tiny_killed.py', tiny_shapes, epochs=3, workers=1,
        extra="custom_imports = dict(imports=['mmdet_custom', 'kill_hook'])\n"
              "custom_hooks = [dict(type='NumClassCheckHook'), dict(type='KillMidEpochHook')]\n")

    straight = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(tmp_path / 'straight'),
                         '--seed', '3', '--no-validate'], timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / 'interrupted'
    killed = run_tool([PYTHON, TRAIN_TOOL, killed_config, '--work-dir', str(interrupted),
                       '--seed', '3', '--no-validate'],
                      pythonpath=[tmp_path],  # finds kill_hook
                      timeout=900, start_new_session=True)  # its own process group to kill
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in interrupted.glob('epoch_*.pth')) == ['epoch_1.pth']

    # kill_hook is no longer importable: mmcv's resume re-parsed the checkpoint's config, its
    # custom_imports included, and failed on it; the stored config is no longer read.
    resumed = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(interrupted), '--seed', '3',
                        '--no-validate', '--auto-resume'], timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch 1, iter 4' in resumed.stderr + resumed.stdout

    expected = _weights(tmp_path / 'straight' / 'epoch_3.pth')
    actual = _weights(interrupted / 'epoch_3.pth')
    assert actual['meta']['iter'] == expected['meta']['iter'] == 12
    assert expected['state_dict'].keys() == actual['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(actual['state_dict'][key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f'{key}: {m}')
    # The optimizer state (AdamW moments, step counts) continued as well.
    for key, state in expected['optimizer']['state'].items():
        torch.testing.assert_close(actual['optimizer']['state'][key]['exp_avg'], state['exp_avg'],
                                   rtol=1e-5, atol=1e-7)
