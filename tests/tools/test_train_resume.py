"""A run killed mid-epoch and continued with --auto-resume ends with the weights of an
uninterrupted run with the same seed; iteration checkpoints of an epoch-based run resume in
their epoch."""
import json
import os.path as osp
import re
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


def _run_id_of_log(path):
    with open(path) as f:
        return json.loads(f.readline())['run_id']


def _trained_iterations(log):
    """(epoch, batch, batches per epoch, lr) of each training iteration the text log shows."""
    return [(int(e), int(b), int(n), float(lr)) for e, b, n, lr in
            re.findall(r'Epoch \[(\d+)\]\[(\d+)/(\d+)\]\s+lr: ([0-9.e+-]+)', log)]


@pytest.mark.slow
def test_iteration_checkpoints_of_an_epoch_based_run_resume_mid_epoch(tmp_path, tiny_shapes):
    # 4 iterations per epoch, a checkpoint every 2: iter_4.pth ends epoch 1, iter_6.pth is
    # half-way through epoch 2. mmcv's own hook saved those as epoch_1.pth and epoch_2.pth, and
    # resuming from the second skipped the rest of epoch 2.
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes, epochs=2)

    def train(work_dir, *args, options=()):
        run = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(work_dir), '--seed', '3',
                        *args, '--cfg-options', 'checkpoint_config.by_epoch=False',
                        'checkpoint_config.interval=2', *options], timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout + run.stderr

    straight_dir = tmp_path / 'straight'
    straight = _trained_iterations(train(straight_dir, '--no-validate'))
    assert sorted(p.name for p in straight_dir.glob('*.pth')) == [  # max_keep_ckpts=3
        'iter_4.pth', 'iter_6.pth', 'iter_8.pth', 'latest.pth']
    meta = _weights(straight_dir / 'iter_6.pth')['meta']
    assert (meta['epoch'], meta['iter']) == (1, 6)  # 1 epoch finished, 6 iterations done
    assert meta['epoch_position'] == dict(batches=2, world_size=1, samples_per_gpu=2,
                                          epoch_batches=4)
    run_id = meta['run_id']  # the run's, in its log's first line too: what a resume reads
    assert [_run_id_of_log(log) for log in straight_dir.glob('*.log.json')] == [run_id]

    # The rest of epoch 2, at the learning rates of the uninterrupted run, then its evaluation:
    # with evaluation.start, mmcv also scored the half-trained weights first, as epoch 2's.
    log = train(tmp_path / 'rest', '--resume-from', str(straight_dir / 'iter_6.pth'),
                options=['evaluation.start=1', 'evaluation.interval=1'])
    assert 'goes on from batch 3 of 4' in log
    assert _trained_iterations(log) == straight[-2:]
    assert log.count('Evaluating bbox') == 1 and 'Epoch(val) [2][4]' in log
    assert _weights(tmp_path / 'rest' / 'iter_8.pth')['meta']['iter'] == 8
    # A resumed run is a run of its own: resumed from an older checkpoint of the same run, its
    # epochs are other weights than those the first run's log scored.
    resumed_id = _weights(tmp_path / 'rest' / 'iter_8.pth')['meta']['run_id']
    assert resumed_id != run_id
    assert [_run_id_of_log(log) for log in (tmp_path / 'rest').glob('*.log.json')] == [resumed_id]

    # Saved after epoch 1's last batch: epoch 1's evaluation comes next, then all of epoch 2.
    log = train(tmp_path / 'end', '--resume-from', str(straight_dir / 'iter_4.pth'),
                options=['evaluation.interval=1'])
    assert 'after the last batch of epoch 1' in log
    assert 'saved but not evaluated' not in log  # it is evaluated now
    assert 'Epoch(val) [1][4]' in log and 'Epoch(val) [2][4]' in log
    assert _trained_iterations(log) == straight[4:]
    # That run is finished: going on from its last checkpoint, saved before epoch 2's
    # evaluation, evaluated epoch 2 once more.
    log = train(tmp_path / 'end', '--auto-resume', options=['evaluation.interval=1'])
    assert ('iter_8.pth was saved after the last batch of epoch 2, whose evaluation is in the '
            'log: going on after it') in log
    assert 'nothing left to train' in log and 'Evaluating bbox' not in log
    # Trained longer, with evaluation.start set: mmcv's eval hook scored epoch 2 again first.
    log = train(tmp_path / 'end', '--auto-resume', options=['evaluation.interval=1',
                                                            'evaluation.start=1',
                                                            'runner.max_epochs=3'])
    assert 'going on after it' in log
    assert log.count('Evaluating bbox') == 1 and 'Epoch(val) [3][4]' in log
    log = train(tmp_path / 'straight', '--no-validate', '--auto-resume')
    assert 'after the last batch of epoch 2, and no evaluation is due: going on after it' in log
    assert 'nothing left to train' in log

    # With 1 image per batch (8 per epoch), epoch 2 goes on after the 4 images done.
    log = train(tmp_path / 'relaid', '--no-validate', '--resume-from',
                str(straight_dir / 'iter_6.pth'), options=['data.samples_per_gpu=1'])
    assert ('by 1 process(es) of 2 images each; with 1 of 1, the epoch goes on after 4 batches'
            in log)
    assert [(e, b, n) for e, b, n, _ in _trained_iterations(log)] == [(2, 5, 8), (2, 6, 8),
                                                                       (2, 7, 8), (2, 8, 8)]
    assert _weights(tmp_path / 'relaid' / 'iter_16.pth')['meta']['iter'] == 16


@pytest.mark.slow
def test_a_branch_resumed_from_an_older_checkpoint_has_its_epochs_evaluated(tmp_path, tiny_shapes):
    # Resumed from iter_2.pth in the work dir of the run that saved it, a branch trains other
    # weights to the end of epoch 1 (iter_4.pth). The first run's log holds an evaluation of its
    # own epoch 1: resuming the branch took that for the branch's and never evaluated it.
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes, epochs=1)
    work_dir = tmp_path / 'work'

    def train(*args, evaluation_interval=1):
        run = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(work_dir), *args,
                        '--cfg-options', 'checkpoint_config.by_epoch=False',
                        'checkpoint_config.interval=2',
                        f'evaluation.interval={evaluation_interval}'], timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout + run.stderr

    assert 'Epoch(val) [1][4]' in train()
    # The branch stops before its evaluation (here: none is due with interval 2).
    assert 'Epoch(val)' not in train('--resume-from', str(work_dir / 'iter_2.pth'),
                                     evaluation_interval=2)
    log = train('--resume-from', str(work_dir / 'iter_4.pth'))
    assert 'whose evaluation is in the log' not in log
    assert 'Epoch(val) [1][4]' in log
