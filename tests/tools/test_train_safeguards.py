"""What tools/train.py does when training cannot simply go on: a diverged loss, a disk that
refuses the checkpoint, and resuming under changed settings (batch size, optimizer, lr)."""
import errno
import fcntl
import logging
import multiprocessing
import os
import os.path as osp
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')
from mmcv.runner import HOOKS, Hook  # noqa: E402
from tools_testlib import (load_script, refused, training_lock_held,  # noqa: E402
                           write_tiny_config)

from mmdet_custom.apis import read_checkpoint  # noqa: E402


@HOOKS.register_module()
class PoisonWeightsAtEpochTwoHook(Hook):
    """Makes one weight infinite before the second epoch's first step: the loss diverges."""

    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 0:
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            with torch.no_grad():
                model.roi_head.bbox_head.fc_cls.weight[0, 0] = float('inf')


@HOOKS.register_module()
class NanGradientEndingEpochTwoHook(Hook):
    """Makes the gradients of one layer NaN in the last step of the second epoch: its loss is
    finite, its update is not."""

    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == len(runner.data_loader) - 1:
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            model.roi_head.bbox_head.fc_cls.weight.register_hook(
                lambda grad: torch.full_like(grad, float('nan')))


@HOOKS.register_module()
class CtrlCAtEpochTwoHook(Hook):
    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 1:
            raise KeyboardInterrupt


@HOOKS.register_module()
class SigtermAtEpochTwoHook(Hook):
    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@HOOKS.register_module()
class KillLoaderWorkerInEpochTwoHook(Hook):
    """SIGKILLs the training loader's worker in the second epoch, as the out-of-memory killer
    does."""

    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 1:
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGKILL)  # (torch's SIGCHLD handler finds it)


@HOOKS.register_module()
class RemoveFolderInEpochTwoHook(Hook):
    """Removes a folder in the second epoch: ``folder`` (default: the work dir)."""

    def __init__(self, folder=None):
        self.folder = folder

    def before_train_iter(self, runner):
        if runner.epoch == 1 and runner.inner_iter == 1:
            shutil.rmtree(self.folder or runner.work_dir)


@HOOKS.register_module()
class CheckTrainingLockHook(Hook):
    """Records, in training, whether another process could take the work dir's training lock and
    the pid the lock file names (in ``record``, emptied at the start of a run)."""

    record = []

    def before_run(self, runner):
        self.record.clear()

    def before_train_iter(self, runner):
        with open(osp.join(runner.work_dir, '.train.lock')) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                taken = False
            self.record.append((taken, lock.read().strip()))


@pytest.fixture(scope='module')
def train_tool():
    return load_script('tools/train.py', 'train_tool_safeguards')


@pytest.fixture
def mmdet_log():
    """The mmdet logger's messages (in process an earlier test may have set its handlers)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('mmdet').addHandler(handler)
    yield records
    logging.getLogger('mmdet').removeHandler(handler)


def _text(records):
    return '\n'.join(record.getMessage() for record in records)


@pytest.mark.parametrize('poison, what', [
    ('PoisonWeightsAtEpochTwoHook', 'the loss is nan at epoch 2, iteration 1 (iteration 5 overall)'),
    # The loss comes before the update: a finite loss with NaN gradients ended the epoch, its
    # checkpoint held NaN weights, and the next iteration's error recommended resuming from it.
    ('NanGradientEndingEpochTwoHook', "the weights hold NaN or infinite values at the end of "
                                      "epoch 2: an update's gradients were not finite, though its "
                                      "loss was")], ids=['loss', 'update'])
def test_diverged_weights_are_never_saved(train_tool, tmp_path, tiny_shapes, poison, what):
    config = write_tiny_config(tmp_path / 'diverging.py', tiny_shapes, epochs=3,
                               extra=f"custom_hooks = [dict(type='{poison}')]")
    work = tmp_path / 'work'
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(work))
    assert message.endswith(
        f'training stopped: {what}, before a checkpoint of those weights was saved; the newest '
        f'complete checkpoint is {work}/epoch_1.pth (--auto-resume goes on from it), with a lower '
        'optimizer.lr or a lower optimizer_config.grad_clip.max_norm (now 10.0)')
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_1.pth', 'latest.pth']


def test_a_diverged_run_without_clipping_is_told_to_clip(train_tool, tmp_path, tiny_shapes):
    # The tests above clip (the shapes config's max_norm 10), as the COCO configs do not.
    config = write_tiny_config(tmp_path / 'unclipped.py', tiny_shapes, epochs=3, extra=(
        "custom_hooks = [dict(type='PoisonWeightsAtEpochTwoHook')]\n"
        "optimizer_config = dict(grad_clip=None)"))
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'))
    assert message.endswith('(--auto-resume goes on from it), with a lower optimizer.lr or '
                            'gradient clipping (optimizer_config.grad_clip)')


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(train_tool, tmp_path,
                                                                   tiny_config, monkeypatch):
    from mmdet_custom import mmcv_compat
    written = []

    def fsync_until_the_disk_fills(fd):
        written.append(fd)
        if len(written) == 2:  # the second checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mmcv_compat.os, 'fsync', fsync_until_the_disk_fills)
    work = tmp_path / 'work'
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(work),
                      '--cfg-options', 'runner.max_epochs=2')
    assert message.endswith(
        f'training stopped: cannot write {work}/epoch_2.pth: No space left on device; the newest '
        f'complete checkpoint is {work}/epoch_1.pth (--auto-resume goes on from it)')
    assert sorted(p.name for p in work.iterdir() if 'pth' in p.name) == ['epoch_1.pth', 'latest.pth']


def test_a_folder_refusing_the_checkpoint_is_named_not_its_partial_file(train_tool, tmp_path,
                                                                      tiny_config, monkeypatch):
    # open() of the hidden partial file failed first, and that name was what the message gave.
    from mmdet_custom import mmcv_compat
    opened = []

    def open_until_refused(path, *args, **kwargs):
        opened.append(path)
        if len(opened) == 2:  # the second checkpoint
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(mmcv_compat, 'open', open_until_refused, raising=False)
    work = tmp_path / 'work'
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(work),
                      '--cfg-options', 'runner.max_epochs=2')
    assert f'training stopped: cannot write {work}/epoch_2.pth: Permission denied; ' in message


def test_a_full_disk_under_the_log_names_the_work_dir(train_tool, tmp_path, tiny_config,
                                                      monkeypatch):
    # A buffered write fails at its flush, with no file name: "cannot write None".
    import mmcv
    dump = mmcv.dump

    def dump_until_the_disk_fills(obj, file=None, *args, **kwargs):
        if getattr(file, 'name', '').endswith('.log.json'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return dump(obj, file, *args, **kwargs)

    monkeypatch.setattr(mmcv, 'dump', dump_until_the_disk_fills)
    work = tmp_path / 'work'
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(work))
    assert f'training stopped: cannot write in {work}: No space left on device; ' in message


def test_a_killed_loader_worker_is_one_line(train_tool, tmp_path, tiny_shapes):
    # torch's "DataLoader worker (pid N) is killed by signal: Killed." ended a 70-line traceback.
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes, epochs=2, workers=1,
                               extra="custom_hooks = [dict(type='KillLoaderWorkerInEpochTwoHook')]")
    work = tmp_path / 'work'
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(work))
    assert message.endswith(
        'training stopped: a data-loader worker was killed (by signal SIGKILL: out of memory? '
        'fewer data.workers_per_gpu or a smaller data.samples_per_gpu); the newest complete '
        f'checkpoint is {work}/epoch_1.pth (--auto-resume goes on from it)')


def test_a_work_dir_removed_while_training_is_named(train_tool, tmp_path, tiny_shapes):
    # The text log's next write ended in a traceback: FileNotFoundError ... .log.json.
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes, epochs=2,
                               extra="custom_hooks = [dict(type='RemoveFolderInEpochTwoHook')]")
    work = tmp_path / 'work'
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(work))
    assert re.fullmatch(
        rf'tools/train.py: error: training stopped: the work dir {work} was removed or moved '
        rf'while it trained \(cannot write {work}/\d+_\d+\.log\.json: No such file or '
        r'directory\); its newest checkpoint, epoch_1.pth, went with it \(if it was moved: '
        r'--resume-from NEW_PLACE/epoch_1.pth goes on from it\)', message), message


def test_an_image_removed_while_training_is_still_named_as_an_image(train_tool, tmp_path,
                                                                     tiny_shapes):
    # Not taken for a removed work dir: the image that cannot be read is named.
    data = _copy_of(tiny_shapes, tmp_path)
    config = write_tiny_config(tmp_path / 'tiny.py', str(data), epochs=2, extra=(
        f"custom_hooks = [dict(type='RemoveFolderInEpochTwoHook', folder='{data}/train')]"))
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'))
    assert re.search(rf'error: {data}/train/\d+\.png \(image id \d+\): FileNotFoundError: '
                     r'\[Errno 2\] No such file or directory', message), message


def test_a_second_training_in_the_same_work_dir_is_refused(train_tool, tmp_path, tiny_config):
    # Both ran to the end, with status 0, each overwriting the other's checkpoints.
    work = tmp_path / 'work'
    work.mkdir()
    with training_lock_held(work):
        message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(work))
    assert message == (f'tools/train.py: error: another training (pid 4242) is running in '
                       f'{work}; wait for it or use another --work-dir')
    assert [p.name for p in work.iterdir()] == ['.train.lock']  # nothing written there


def test_a_training_holds_its_work_dir_until_it_ends(train_tool, tmp_path, tiny_shapes):
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes,
                               extra="custom_hooks = [dict(type='CheckTrainingLockHook')]")
    work = tmp_path / 'work'
    train_tool.main([config, '--no-validate', '--work-dir', str(work)])
    assert CheckTrainingLockHook.record == [(False, str(os.getpid()))] * 4  # every iteration
    with open(work / '.train.lock') as lock:  # released at its end
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _train_one_epoch(train_tool, config, work, *options):
    train_tool.main([config, '--no-validate', '--seed', '0', '--work-dir', str(work)]
                    + (['--cfg-options', *options] if options else []))


def test_resuming_with_another_batch_size_recounts_the_iterations(train_tool, tmp_path,
                                                                   tiny_config, mmdet_log):
    # 8 images: 4 iterations an epoch at batch 2, 2 at batch 4. mmcv kept the stored 4 and the lr
    # schedule (which reads the iteration) ran past its end.
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work, 'data.samples_per_gpu=2')
    train_tool.main([tiny_config, '--no-validate', '--auto-resume', '--work-dir', str(work),
                     '--cfg-options', 'data.samples_per_gpu=4', 'runner.max_epochs=2'])
    assert (f'{work}/epoch_1.pth: 4 iterations were counted with another batch size or number of '
            'processes; going on from 2 (1 epochs of 2)') in _text(mmdet_log)
    assert read_checkpoint(str(work / 'epoch_2.pth'))['meta']['iter'] == 4


@pytest.mark.parametrize('epoch, stored_iter, batch_layout, message', [
    # mmcv's EpochBasedRunner saves after an iteration as epoch_N.pth, N the epoch under way,
    # before counting that iteration (its meta as a plain mmcv run with 4 batches an epoch and
    # checkpoint_config.by_epoch=False wrote it). The recount blamed another batch size.
    (2, 4, None, 'records 4 iterations: with 4 batches an epoch, that is batch 1 of epoch 2. If '
                 'mmcv\'s EpochBasedRunner saved it there (after an iteration, with '
                 'checkpoint_config.by_epoch=False, naming the file after the epoch under way), '
                 'resuming it as a finished epoch skips the rest of that epoch; if a run of more '
                 'processes or larger batches saved it, that epoch was finished. Going on from 8 '
                 '(2 epochs of 4)'),
    (1, 2, None, 'records 2 iterations: with 4 batches an epoch, that is batch 3 of epoch 1. If'),
    # Our runner's epoch checkpoints say how they were counted: this one, by 2 processes, is a
    # finished epoch, which the check above took for a part-way one.
    (2, 4, dict(world_size=2, samples_per_gpu=2),
     ': 4 iterations were counted with another batch size or number of processes; going on from '
     '8 (2 epochs of 4)'),
])
def test_a_checkpoint_mmcv_saved_mid_epoch_is_named_as_such(train_tool, tmp_path, tiny_config,
                                                            mmdet_log, epoch, stored_iter,
                                                            batch_layout, message):
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work)
    checkpoint = read_checkpoint(str(work / 'epoch_1.pth'))
    assert checkpoint['meta'].pop('batch_layout') == dict(world_size=1, samples_per_gpu=2)
    checkpoint['meta'].update(epoch=epoch, iter=stored_iter)
    if batch_layout:
        checkpoint['meta']['batch_layout'] = batch_layout
    torch.save(checkpoint, tmp_path / f'epoch_{epoch}.pth')
    train_tool.main([tiny_config, '--no-validate', '--resume-from',
                     str(tmp_path / f'epoch_{epoch}.pth'), '--work-dir', str(tmp_path / 'resumed'),
                     '--cfg-options', 'runner.max_epochs=3'])
    assert f'{tmp_path}/epoch_{epoch}.pth{"" if batch_layout else " "}{message}' in _text(mmdet_log)
    other = 'that is batch' if batch_layout else 'counted with another batch size'
    assert other not in _text(mmdet_log)
    assert read_checkpoint(str(tmp_path / 'resumed' / 'epoch_3.pth'))['meta']['iter'] == 12


@pytest.fixture(scope='module')
def sixteen_shapes(tmp_path_factory):
    """16 train images: twice tiny_shapes' 8."""
    from mmdet_custom.datasets.synthetic_shapes import generate
    out = tmp_path_factory.mktemp('shapes16')
    generate(str(out), num_train=16, num_val=4, size=64, seed=0)
    return str(out)


@pytest.mark.parametrize('grown, warning, recount, goes_on', [
    # 8 images, then 16: iter_5.pth is batch 1 of 4 of epoch 2. The recount blamed the batch
    # size or the number of processes, neither of which changed.
    (True, 'the training set changed: 4 batches an epoch then, 8 now; the iterations are '
           'recounted in epochs of the new length',
     '5 iterations were counted with epochs of 4 batches; going on from 9 (1 epochs of 8 and 1 '
     'batches)', 'was saved in epoch 2: it goes on from batch 2 of 8'),
    # 16 images, then 8: iter_5.pth is batch 5 of 8 of epoch 1, more than the 4 it has now. It
    # was said to be "saved after the last batch of epoch 1".
    (False, 'the training set changed: 8 batches an epoch then, 4 now; epoch 1 was saved after '
            'batch 5 of 8 and now ends at batch 4: what follows that epoch comes next',
     '5 iterations were counted with epochs of 8 batches; going on from 4 (1 epochs of 4)', None),
], ids=['grown', 'shrunk'])
def test_resuming_on_a_changed_training_set_says_so(train_tool, tmp_path, tiny_shapes,
                                                   sixteen_shapes, mmdet_log, grown, warning,
                                                   recount, goes_on):
    saved_on, resumed_on = (tiny_shapes, sixteen_shapes) if grown else (sixteen_shapes, tiny_shapes)
    every_5_iterations = ['checkpoint_config.by_epoch=False', 'checkpoint_config.interval=5']
    work = tmp_path / 'work'
    train_tool.main([write_tiny_config(tmp_path / 'saved.py', saved_on, epochs=2 if grown else 1),
                     '--no-validate', '--seed', '0', '--work-dir', str(work), '--cfg-options',
                     *every_5_iterations])
    mmdet_log.clear()
    resumed = tmp_path / 'resumed'
    train_tool.main([write_tiny_config(tmp_path / 'resumed.py', resumed_on, epochs=2),
                     '--no-validate', '--resume-from', str(work / 'iter_5.pth'), '--work-dir',
                     str(resumed), '--cfg-options', *every_5_iterations])
    log = _text(mmdet_log)
    assert f'{work}/iter_5.pth: {warning}\n' in log + '\n', log
    assert f'{work}/iter_5.pth: {recount}\n' in log + '\n', log
    assert (goes_on is None) == ('goes on from batch' not in log)
    if goes_on:
        assert f'{work}/iter_5.pth {goes_on}' in log
    assert 'another batch size' not in log and 'after the last batch' not in log
    # Epoch 2 trained whole (8 batches, or 4), after the rest of epoch 2 or after epoch 1.
    last = read_checkpoint(str(resumed / 'latest.pth'))['meta']
    assert last['iter'] == (16 if grown else 8)
    assert last['epoch_position'] == dict(batches=last['iter'] // 2, world_size=1,
                                          samples_per_gpu=2, epoch_batches=last['iter'] // 2)


def test_a_resumed_runs_checkpoints_record_that_run(train_tool, tmp_path, tiny_config):
    # mmcv's resume replaced the run's meta with the checkpoint's: later checkpoints had no
    # config and the first segment's seed, which the next --auto-resume then took. (Another seed
    # by name: --auto-resume refuses one.)
    work = tmp_path / 'work'
    train_tool.main([tiny_config, '--no-validate', '--seed', '1', '--work-dir', str(work)])
    train_tool.main([tiny_config, '--no-validate', '--seed', '7', '--resume-from',
                     str(work / 'epoch_1.pth'), '--work-dir', str(work), '--cfg-options',
                     'runner.max_epochs=2'])
    meta = read_checkpoint(str(work / 'epoch_2.pth'))['meta']
    assert meta['seed'] == 7 and 'runner' in meta['config'] and meta['epoch'] == 2


def test_an_iteration_based_run_resumes_on_the_cpu(train_tool, tmp_path, tiny_shapes):
    # mmcv's IterBasedRunner.resume asked CUDA for its device: "Found no NVIDIA driver".
    config = write_tiny_config(tmp_path / 'iterations.py', tiny_shapes, extra=(
        "runner = dict(type='IterBasedRunner', max_iters=3)\n"
        "checkpoint_config = dict(interval=3, by_epoch=False)\n"
        "log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook', by_epoch=False)])"))
    work = tmp_path / 'work'
    train_tool.main([config, '--no-validate', '--work-dir', str(work)])
    train_tool.main([config, '--no-validate', '--auto-resume', '--work-dir', str(work),
                     '--cfg-options', 'runner.max_iters=6'])
    meta = read_checkpoint(str(work / 'iter_6.pth'))['meta']
    assert 'config' in meta  # (mmcv numbers iter_6.pth's meta iteration 5)


def test_auto_resume_looks_where_checkpoints_go_and_keeps_the_run_seed(train_tool, tmp_path,
                                                                      tiny_config, mmdet_log):
    # A work dir name glob reads as a pattern, checkpoints in checkpoint_config.out_dir, and no
    # --seed when going on: each made --auto-resume start over, or resume with another seed.
    work, out = tmp_path / 'lr[1e-4]', tmp_path / 'checkpoints'
    saved_to = out / 'lr[1e-4]'  # mmcv's CheckpointHook: out_dir / the work dir's name
    train_tool.main([tiny_config, '--no-validate', '--seed', '7', '--work-dir', str(work),
                     '--cfg-options', f'checkpoint_config.out_dir={out}'])
    assert (saved_to / 'epoch_1.pth').is_file()
    train_tool.main([tiny_config, '--no-validate', '--auto-resume', '--work-dir', str(work),
                     '--cfg-options', f'checkpoint_config.out_dir={out}', 'runner.max_epochs=2'])
    assert 'resumed epoch 1, iter 4' in _text(mmdet_log)
    assert f'Set random seed to 7 (that of {saved_to}/epoch_1.pth)' in _text(mmdet_log)
    # Every weight comes from the checkpoint: the backbone's init (and a pretrained download) is
    # skipped, and with it the first run's notice that training starts from scratch.
    assert _text(mmdet_log).count('training starts from scratch') == 1
    assert read_checkpoint(str(saved_to / 'epoch_2.pth'))['meta']['seed'] == 7


def test_resuming_under_another_optimizer_or_lr(train_tool, tmp_path, tiny_shapes, tiny_config,
                                                mmdet_log):
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work)
    # Another optimizer type: its first step failed on a missing 'momentum' (a traceback).
    sgd = write_tiny_config(tmp_path / 'sgd.py', tiny_shapes, epochs=2,
                            extra="optimizer = dict(type='SGD', lr=0.01, momentum=0.9)")
    message = refused(train_tool, sgd, '--no-validate', '--auto-resume', '--work-dir', str(work))
    assert message.endswith(
        f"cannot resume from {work}/epoch_1.pth: its optimizer state lacks dampening, momentum, "
        "nesterov, which the config's SGD needs: it was saved by another optimizer (start from "
        f"its weights with --cfg-options load_from={work}/epoch_1.pth)")
    # Another lr: the checkpoint's state wins, as in mmdet, and now says so.
    train_tool.main([tiny_config, '--no-validate', '--auto-resume', '--work-dir', str(work),
                     '--cfg-options', 'runner.max_epochs=2', 'optimizer.lr=0.01'])
    assert (f'{work}/epoch_1.pth resumes its own optimizer settings (base lr 0.0014, weight decay '
            '0.05; the config says 0.01 and 0.05): to train on with the config\'s, start from its '
            f'weights with --cfg-options load_from={work}/epoch_1.pth') in _text(mmdet_log)
    groups = read_checkpoint(str(work / 'epoch_2.pth'))['optimizer']['param_groups']
    assert groups[0]['initial_lr'] == pytest.approx(1.4e-3)


def test_an_epoch_saved_but_not_evaluated_is_named_on_resume(train_tool, tmp_path, tiny_config,
                                                             mmdet_log):
    # A run stopped between writing epoch 1 and evaluating it (here: trained without validation).
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work)
    train_tool.main([tiny_config, '--auto-resume', '--work-dir', str(work)])
    missed = 'was saved but not evaluated'
    assert (f'epoch 1 {missed} (the run stopped in between): tools/test.py with '
            f'{work}/epoch_1.pth evaluates it') in _text(mmdet_log)
    # An epoch that was evaluated (its record in the json log) is not named.
    evaluated = tmp_path / 'evaluated'
    train_tool.main([tiny_config, '--seed', '0', '--work-dir', str(evaluated)])
    mmdet_log.clear()
    train_tool.main([tiny_config, '--auto-resume', '--work-dir', str(evaluated)])
    assert 'nothing left to train' in _text(mmdet_log) and missed not in _text(mmdet_log)


def _evaluations(records):
    """How many times the evaluation hook scored the weights."""
    return _text(records).count('Evaluating bbox...')


def test_evaluation_start_scores_a_resumed_epoch_only_where_the_log_lacks_it(
        train_tool, tmp_path, tiny_config, mmdet_log):
    # With evaluation.start set, mmcv's eval hook scores the resumed weights before the first
    # epoch: it scored an epoch whose evaluation was in the log once more.
    options = ['--cfg-options', 'evaluation.start=1', 'evaluation.interval=1',
               'runner.max_epochs=2']
    evaluated = tmp_path / 'evaluated'
    train_tool.main([tiny_config, '--seed', '0', '--work-dir', str(evaluated)])
    mmdet_log.clear()
    train_tool.main([tiny_config, '--auto-resume', '--work-dir', str(evaluated), *options])
    assert _evaluations(mmdet_log) == 1  # epoch 2's
    # Trained without evaluation, epoch 1 is scored on resuming (not named as left out).
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work)
    mmdet_log.clear()
    train_tool.main([tiny_config, '--auto-resume', '--work-dir', str(work), *options])
    assert _evaluations(mmdet_log) == 2
    assert 'was saved but not evaluated' not in _text(mmdet_log)


def _copy_of(tiny_shapes, tmp_path):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(tiny_shapes, data)
    return data


def _edit_annotations(data, edit):
    import json
    path = data / 'annotations' / 'instances_train.json'
    annotations = json.loads(path.read_text())
    edit(annotations)
    path.write_text(json.dumps(annotations))


@pytest.mark.parametrize('workers', [0, 1])
def test_a_corrupt_image_met_in_training_is_named(train_tool, tmp_path, tiny_shapes, workers):
    # It ended in "'NoneType' object has no attribute 'shape'" deep in a transform (wrapped in a
    # DataLoader worker's traceback), no file named.
    data = _copy_of(tiny_shapes, tmp_path)
    image = sorted((data / 'train').iterdir())[3]
    image.write_bytes(image.read_bytes()[:40])  # truncated
    config = write_tiny_config(tmp_path / 'tiny.py', str(data), workers=workers)
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'))
    assert f'{image} (image id ' in message
    assert message.endswith("AttributeError: 'NoneType' object has no attribute 'shape'")


def _load_train_set(config):
    from mmcv import Config

    from mmdet_custom.apis import load_dataset
    return load_dataset(Config.fromfile(config).data.train, 'data.train')


def _set_first(key, value):
    def edit(annotations):
        if value is None:
            del annotations['annotations'][0][key]
        else:
            annotations['annotations'][0][key] = value
    return edit


@pytest.mark.parametrize('edit, problem', [
    # pycocotools read 4 numbers as a box, not a polygon: a TypeError mid-epoch, no annotation named
    (_set_first('segmentation', [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]),
     'has a first polygon of 4 numbers, which pycocotools cannot read (a polygon has 3 points, '
     '6 numbers, or more)'),
    (_set_first('segmentation', [[]]), 'has a first polygon of 0 numbers, which pycocotools '
                                       'cannot read (a polygon has 3 points, 6 numbers, or more)'),
    # An IndexError and a TypeError in the mask loading, after training had started.
    (_set_first('segmentation', []), 'has no segmentation to read its mask from'),
    (_set_first('segmentation', None), 'has no segmentation to read its mask from'),
    (_set_first('segmentation', dict(size=[32, 32], counts='PPYo0')),
     'has a run-length segmentation of size [32, 32] (with counts: True) on an image of size '
     '[64, 64]'),
    # A KeyError traceback at the first batch (mmdet) or after inference (pycocotools).
    (_set_first('area', None), "has no area (a number), which mmdet's training and pycocotools' "
                               "evaluation read: area None"),
])
def test_an_annotation_that_cannot_be_read_is_named_before_training(tmp_path, tiny_shapes, edit,
                                                                    problem):
    from mmdet_custom.apis import DatasetError
    data = _copy_of(tiny_shapes, tmp_path)
    _edit_annotations(data, edit)
    config = write_tiny_config(tmp_path / 'tiny.py', str(data))
    with pytest.raises(DatasetError) as error:
        _load_train_set(config)
    assert str(error.value) == (f'data.train: annotation 1 (image 1) {problem} (ann_file '
                                f'{data}/annotations/instances_train.json)')


def test_training_reads_the_segmentations_of_the_annotations_it_keeps_only(tmp_path,
                                                                          tiny_shapes):
    # A line-shaped object: an empty box and a 4-number polygon, which mmdet skips unread; and
    # an annotation marked ignore, which it skips before reading its box.
    data = _copy_of(tiny_shapes, tmp_path)
    _edit_annotations(data, lambda coco: coco['annotations'][0].update(
        bbox=[3, 3, 0.5, 0], area=0, segmentation=[[3, 3, 3.5, 3]]))
    _edit_annotations(data, lambda coco: coco['annotations'][1].update(iscrowd=1,
                                                                      segmentation=[[1, 2]]))
    _edit_annotations(data, lambda coco: coco['annotations'][2].update(ignore=True, bbox=None))
    config = write_tiny_config(tmp_path / 'tiny.py', str(data))
    assert len(_load_train_set(config)) == 8


def test_training_reads_the_annotations_of_other_categories_too(tmp_path, tiny_shapes):
    # mmdet reads the box and area of every annotation of an image before it looks at its
    # category: a KeyError at the first batch, no image named.
    from mmdet_custom.apis import DatasetError

    def other_category(coco):
        coco['categories'].append(dict(id=9, name='hexagon'))
        coco['annotations'].append(dict(id=99, image_id=1, category_id=9, bbox=[1, 1, 9, 9],
                                        iscrowd=0, segmentation=[[1, 1, 9, 1, 9, 9]]))
    data = _copy_of(tiny_shapes, tmp_path)
    _edit_annotations(data, other_category)
    config = write_tiny_config(tmp_path / 'tiny.py', str(data))
    with pytest.raises(DatasetError, match=r"^data.train: annotation 99 \(image 1\) has no area "
                                           r"\(a number\), which mmdet's training"):
        _load_train_set(config)


def test_a_metric_tuple_is_a_list_of_metrics():
    # mmdet's evaluate takes a tuple for one metric's name: "metric ('bbox', 'segm') is not
    # supported", after the first epoch's training.
    from mmdet_custom.apis import evaluate_kwargs
    assert evaluate_kwargs(dict(metric=('bbox', 'segm'), interval=1)) == dict(
        metric=['bbox', 'segm'], interval=1)


def _load_val_set(tiny_shapes, tmp_path, edit, metrics, dataset_type='CocoDataset'):
    import json

    from mmcv import ConfigDict

    from mmdet_custom.apis import load_dataset
    coco = json.loads((Path(tiny_shapes) / 'annotations' / 'instances_val.json').read_text())
    edit(coco)
    ann_file = tmp_path / 'val.json'
    ann_file.write_text(json.dumps(coco))
    return load_dataset(ConfigDict(type=dataset_type, ann_file=str(ann_file), pipeline=[],
                                   img_prefix=str(Path(tiny_shapes) / 'val'), test_mode=True,
                                   classes=('circle', 'triangle', 'rectangle')),
                        'data.val', metrics=metrics), ann_file


def test_evaluation_needs_iscrowd_and_image_sizes_and_one_image_per_id(tmp_path, tiny_shapes):
    # pycocotools' evaluation read them after the whole inference (KeyError tracebacks); of
    # images sharing an id, mmdet kept one, with the annotations of both.
    from mmdet_custom.apis import DatasetError

    def message(edit, metrics=('bbox',), dataset_type='CocoDataset'):
        with pytest.raises(DatasetError) as error:
            _load_val_set(tiny_shapes, tmp_path, edit, metrics, dataset_type)
        suffix = f' (ann_file {tmp_path / "val.json"})'
        assert str(error.value).endswith(suffix)
        return str(error.value)[:-len(suffix)]

    def without_iscrowd_and_area(coco):
        for annotation in coco['annotations']:
            del annotation['iscrowd'], annotation['area']

    assert message(lambda coco: coco['annotations'][0].pop('iscrowd')) == (
        "data.val: annotation 1 (image 1) has no iscrowd of 0 or 1, which pycocotools' "
        'evaluation reads: iscrowd None')
    assert message(without_iscrowd_and_area).startswith('data.val: annotation 1 (image 1) has no '
                                                        'area')
    # mmdet's proposal_fast reads boxes and iscrowd (not areas); Cityscapes' evaluate runs
    # CocoDataset's for bbox and segm.
    assert 'has no iscrowd of 0 or 1' in message(without_iscrowd_and_area, 'proposal_fast')
    assert 'has no iscrowd of 0 or 1' in message(lambda coco: coco['annotations'][0].pop(
        'iscrowd'), 'bbox', 'CityscapesDataset')
    assert len(_load_val_set(tiny_shapes, tmp_path, lambda coco: coco['annotations'][0].pop(
        'area'), 'proposal_fast')[0]) == 4
    assert message(lambda coco: coco['annotations'][0].update(segmentation=[[1, 2, 3, 4]]),
                   metrics='segm').startswith('data.val: annotation 1 (image 1) has a first '
                                              'polygon of 4 numbers')
    # Results written (--out), drawn or evaluated for boxes only do not read them.
    assert len(_load_val_set(tiny_shapes, tmp_path, without_iscrowd_and_area, None)[0]) == 4
    assert len(_load_val_set(tiny_shapes, tmp_path, lambda coco: coco['annotations'][0].update(
        segmentation=[[1, 2, 3, 4]]), 'bbox')[0]) == 4
    # Sizes written as floats: mmdet's masks took only whole numbers (a TypeError mid-epoch).
    dataset, _ = _load_val_set(tiny_shapes, tmp_path, lambda coco: coco['images'][0].update(
        width=64.0, height=64.0), 'bbox')
    assert dataset.data_infos[0]['width'] == 64 and isinstance(dataset.data_infos[0]['width'], int)
    assert message(lambda coco: coco['images'][1].update(width=63.5)) == (
        'data.val: image id 2 (000001.png) has no width and height in pixels (width 63.5, '
        'height 64)')
    assert message(lambda coco: coco['images'][1].pop('width')) == (
        'data.val: image id 2 (000001.png) has no width and height in pixels (width None, '
        'height 64)')
    assert message(lambda coco: coco['images'][1].update(id=1)) == (
        'data.val: image id 1 (000001.png): image 000000.png has that id too; mmdet would keep '
        'one of them with the annotations of both')


def test_annotations_training_leaves_out_are_counted_or_refused(tmp_path, tiny_shapes, mmdet_log):
    from mmdet_custom.apis import DatasetError
    data = _copy_of(tiny_shapes, tmp_path)
    config = write_tiny_config(tmp_path / 'tiny.py', str(data))

    def edit_all(change, count=None):
        def edit(annotations):
            for annotation in annotations['annotations'][:count]:
                change(annotation)
        _edit_annotations(data, edit)

    edit_all(lambda annotation: annotation['bbox'].__setitem__(3, 0.5), count=2)
    edit_all(lambda annotation: annotation['bbox'].__setitem__(0, 70), count=1)  # (64 px wide)
    _load_train_set(config)
    assert ('data.train: 1 of 29 annotations have an empty box (under 1 px wide or high, or area '
            '0) and are ignored, as mmdet ignores them') in _text(mmdet_log)
    assert ('data.train: 1 of 29 annotations have a box outside its image and are ignored, as '
            'mmdet ignores them') in _text(mmdet_log)
    # Crowd annotations only: training ran on nothing, its losses falling, with no word.
    edit_all(lambda annotation: annotation.update(iscrowd=1))
    with pytest.raises(DatasetError, match=r"^data.train: mmdet's training leaves out every "
                                           r'annotation \(1 with an empty box, under 1 px wide '
                                           r'or high or of area 0; 1 with a box outside its image; '
                                           r'27 crowd, iscrowd 1; 0 marked ignore\): nothing to '
                                           r'train on'):
        _load_train_set(config)


def test_images_training_leaves_out_for_their_size_are_counted(tmp_path, tiny_shapes, mmdet_log):
    # mmdet's training drops images under 32 pixels a side without a word.
    data = _copy_of(tiny_shapes, tmp_path)
    _edit_annotations(data, lambda coco: coco['images'][0].update(width=20, height=20))
    dataset = _load_train_set(write_tiny_config(tmp_path / 'tiny.py', str(data)))
    assert len(dataset) == 7
    assert ('data.train: 1 of 8 images are under 32 pixels a side and left out of training, as '
            'mmdet leaves them out') in _text(mmdet_log)
    # All of them: the refusal blamed the classes, which every image has.
    from mmdet_custom.apis import DatasetError
    _edit_annotations(data, lambda coco: [image.update(width=20, height=20)
                                          for image in coco['images']])
    with pytest.raises(DatasetError, match=r"^data.train: no images in the dataset that mmdet's "
                                           r'training keeps: it leaves out images under 32 pixels '
                                           r'a side \(8 of 8 here\) and those without annotations '
                                           r'of the classes circle, triangle, rectangle '
                                           r'\(ann_file'):
        _load_train_set(write_tiny_config(tmp_path / 'tiny.py', str(data)))


def test_an_image_of_another_size_than_its_annotations_is_named(train_tool, tmp_path, tiny_shapes):
    # Its boxes were clipped to nothing: training stopped on a NaN loss blaming the learning
    # rate, and testing scored shifted boxes, silently.
    import cv2
    data = _copy_of(tiny_shapes, tmp_path)
    image = data / 'train' / '000002.png'
    cv2.imwrite(str(image), cv2.imread(str(image))[:48])
    config = write_tiny_config(tmp_path / 'tiny.py', str(data))
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'))
    assert message.endswith(f'{image} (image id 3): the image is 64x48 pixels, the annotation '
                            f'file says 64x64: its boxes and masks do not fit it (a resized copy, '
                            f'or a JPEG its EXIF orientation turns when loaded?)')


def test_ctrl_c_says_where_to_go_on_from(train_tool, tmp_path, tiny_shapes, capsys):
    config = write_tiny_config(tmp_path / 'interrupted.py', tiny_shapes, epochs=2,
                               extra="custom_hooks = [dict(type='CtrlCAtEpochTwoHook')]")
    work = tmp_path / 'work'
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([config, '--no-validate', '--work-dir', str(work)])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.endswith(
        f'tools/train.py: interrupted; the newest complete checkpoint is {work}/epoch_1.pth '
        '(--auto-resume goes on from it)\n')


def test_each_run_in_one_process_writes_its_own_log(train_tool, tmp_path, tiny_config, capsys):
    # mmcv sets its logger up once per process: a second main() wrote its text log into the
    # first run's file, in the first run's work dir, which stayed open; after another tool's
    # get_root_logger() in between, into no file, and its console lines came twice.
    from mmdet.utils import get_root_logger
    for run in ('first', 'second'):
        train_tool.main([tiny_config, '--no-validate', '--work-dir', str(tmp_path / run)])
        get_root_logger().info(f'after the {run} run')  # as tools/test.py's main() would
    for run in ('first', 'second'):
        (log,) = (tmp_path / run).glob('*.log')
        assert log.read_text().count(f'work_dir = \'{tmp_path / run}\'') == 1, run
        assert 'after the' not in log.read_text()
    assert capsys.readouterr().err.count('Epoch [1][4/4]') == 2  # once a run
    kinds = [type(h) for h in logging.getLogger('mmdet').handlers]
    assert logging.FileHandler not in kinds and kinds.count(logging.StreamHandler) <= 1


def test_sigterm_says_where_to_go_on_from(train_tool, tmp_path, tiny_shapes, capsys):
    # kill, scancel or a preemption ended the run at once, saying nothing (exit status 143).
    config = write_tiny_config(tmp_path / 'terminated.py', tiny_shapes, epochs=2,
                               extra="custom_hooks = [dict(type='SigtermAtEpochTwoHook')]")
    work = tmp_path / 'work'
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([config, '--no-validate', '--work-dir', str(work)])
    assert exit_info.value.code == 143
    assert capsys.readouterr().err.endswith(
        f'tools/train.py: terminated (SIGTERM); the newest complete checkpoint is '
        f'{work}/epoch_1.pth (--auto-resume goes on from it)\n')
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_damaged_newest_checkpoint_points_to_the_one_before(train_tool, tmp_path, tiny_config,
                                                              capsys):
    work = tmp_path / 'work'
    _train_one_epoch(train_tool, tiny_config, work, 'runner.max_epochs=2')
    newest = work / 'epoch_2.pth'
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # damaged inside; the zip directory at the end intact
    newest.write_bytes(bytes(data))
    message = refused(train_tool, tiny_config, '--no-validate', '--auto-resume', '--work-dir',
                      str(work), '--cfg-options', 'runner.max_epochs=3')
    assert message.startswith(f'tools/train.py: error: cannot resume from {newest}: ')
    assert 'is damaged: its entry ' in message and 'fails its checksum' in message
    assert message.endswith(f' (the one before it: --resume-from {work}/epoch_1.pth)')
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([tiny_config, '--auto-resume', '--resume-from', str(newest)])
    assert exit_info.value.code == 2
    assert 'give --resume-from or --auto-resume, not both' in capsys.readouterr().err
