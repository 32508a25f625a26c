"""Fast checks of the pieces that make training resumable: seeds, sampler order, checkpoints;
and of the epoch-transition sleeps single-process training skips."""
import errno
import json
import logging
import os
import os.path as osp
import time
import types
import unittest.mock

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
from mmcv import Config  # noqa: E402

from mmdet_custom.apis import (CheckpointError, EpochSeedHook, build_train_dataloader,  # noqa: E402
                               derive_seed, find_resumable_checkpoint, holds_backbone_weights,
                               load_detector_checkpoint,
                               load_weights_leniently, read_checkpoint, restore_best_record,
                               resume_checkpoint, stored_seed, train_loader_config)
from mmdet_custom.apis.train import (_batches_done, _epoch_length_then,  # noqa: E402
                                    _evaluated_epochs, _load_training_state,
                                    without_epoch_transition_sleeps)
from tools_testlib import PYTHON, ROOT, run_tool  # noqa: E402


class _FlaggedDataset(torch.utils.data.Dataset):
    """What mmdet's group sampler needs: a length and an aspect-ratio group flag per item."""

    def __init__(self, size=10):
        self.flag = np.array([i % 2 for i in range(size)], dtype=np.uint8)

    def __len__(self):
        return len(self.flag)

    def __getitem__(self, index):
        return dict(index=index, noise=float(np.random.rand()))


class _FakeRunner:
    def __init__(self, loader, epoch):
        self.data_loader, self.epoch = loader, epoch


def _epoch_draws(loader, epoch, seed=7):
    EpochSeedHook(seed).before_train_epoch(_FakeRunner(loader, epoch))
    batches = list(loader)
    return [b['index'].tolist() for b in batches], [b['noise'].tolist() for b in batches]


@pytest.mark.parametrize('workers', [0, 2])
def test_data_order_and_augmentation_randomness_depend_only_on_seed_and_epoch(workers):
    loader = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=workers, seed=7)
    epoch1 = _epoch_draws(loader, 1)
    _epoch_draws(loader, 0)  # whatever ran before must not matter
    np.random.rand(5), torch.rand(3)
    assert _epoch_draws(loader, 1) == epoch1
    assert _epoch_draws(loader, 2) != epoch1
    # Batches never mix the aspect-ratio groups.
    for batch in epoch1[0]:
        assert len({i % 2 for i in batch}) == 1


def test_a_resumed_epoch_goes_on_with_the_images_its_run_had_left():
    loader = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=0, seed=7)
    whole = _epoch_draws(loader, 1)[0]
    loader.sampler.skip_next(3 * 2)
    assert _epoch_draws(loader, 1)[0] == whole[3:]
    assert len(loader) == len(whole)  # the epoch's length, which mmcv counts iterations from
    assert _epoch_draws(loader, 1)[0] == whole  # once only


def test_a_mid_epoch_checkpoint_needs_the_runner_that_goes_on_in_its_epoch():
    from mmcv.runner import EpochBasedRunner
    from mmdet_custom.apis.train import _go_on_mid_epoch

    class ConfigsOwnRunner(EpochBasedRunner):  # e.g. registered by a config's custom_imports
        pass

    runner = object.__new__(ConfigsOwnRunner)
    runner._epoch = 0
    loader = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=0, seed=7)
    with pytest.raises(CheckpointError, match=r'^iter_3.pth was saved 3 batches into epoch 1: '
                                              r'going on there needs runner type '
                                              r'EpochBasedRunner \(train_detector builds it as '
                                              r'ResumableEpochBasedRunner\), not '
                                              r'ConfigsOwnRunner$'):
        _go_on_mid_epoch(runner, loader, 'iter_3.pth', 3, logging.getLogger('mid-epoch'))


def test_workers_from_a_forkserver_draw_what_forked_workers_draw():
    forked = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=2,
                                    seed=7)
    served = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=2,
                                    seed=7, multiprocessing_context='forkserver')
    assert served.multiprocessing_context.get_start_method() == 'forkserver'
    assert _epoch_draws(served, 1) == _epoch_draws(forked, 1)
    # Without workers there is nothing to start: the setting is dropped, not an error.
    in_process = build_train_dataloader(_FlaggedDataset(), samples_per_gpu=2, workers_per_gpu=0,
                                        seed=7, multiprocessing_context='forkserver')
    assert _epoch_draws(in_process, 1)[0] == _epoch_draws(forked, 1)[0]


@pytest.mark.slow
def test_the_worker_server_ends_with_the_training_process_however_it_ends():
    # A training killed (the out-of-memory killer's SIGKILL) left the forkserver and its
    # workers running for good, re-parented, with the dataset's memory.
    import signal
    import subprocess
    script = ('import multiprocessing.forkserver as fs, time, torch\n'
              'from mmdet_custom.apis import start_worker_server\n'
              "start_worker_server(dict(workers_per_gpu=1, multiprocessing_context='forkserver'))\n"
              'loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(9)),'
              " num_workers=1, multiprocessing_context='forkserver')\n"
              'batches = iter(loader); next(batches)  # a worker forked by the server, waiting\n'
              'print(fs._forkserver._forkserver_pid, batches._workers[0].pid, flush=True)\n'
              'time.sleep(600)\n')
    training = subprocess.Popen([PYTHON, '-c', script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server_and_worker = [int(pid) for pid in training.stdout.readline().split()]
        assert all(_running(pid) for pid in server_and_worker)
        training.send_signal(signal.SIGKILL)
        training.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in server_and_worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in server_and_worker)
    finally:
        training.kill()


@pytest.mark.slow
def test_a_training_process_of_pid_1_keeps_its_worker_server():
    # In a container without an init process the training process is pid 1: the server took a
    # parent of pid 1 for its parent having ended, left, and the first worker failed.
    import shutil
    import subprocess
    unshare = shutil.which('unshare')
    if unshare is None:
        pytest.skip('needs unshare')
    script = ('import torch\n'
              'from mmdet_custom.apis import start_worker_server\n'
              "start_worker_server(dict(workers_per_gpu=1, multiprocessing_context='forkserver'))\n"
              'loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(3)),'
              " num_workers=1, multiprocessing_context='forkserver')\n"
              'import os; print(os.getpid(), sum(1 for _ in loader))\n')
    probe = subprocess.run([unshare, '-Urpf', '--mount-proc', 'true'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f'unshare cannot make a pid namespace here: {probe.stderr.decode().strip()}')
    result = subprocess.run([unshare, '-Urpf', '--mount-proc', PYTHON, '-c', script], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ['1', '3'], result.stderr[-2000:]


def _running(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_train_loader_config_layers_defaults_counts_and_loader_dict():
    from mmcv import Config
    assert train_loader_config(Config(dict(data=dict()))) == dict(samples_per_gpu=2,
                                                                  workers_per_gpu=2)
    cfg = Config(dict(data=dict(samples_per_gpu=4, workers_per_gpu=3, train_dataloader=dict(
        workers_per_gpu=1, multiprocessing_context='forkserver'))))
    assert train_loader_config(cfg) == dict(samples_per_gpu=4, workers_per_gpu=1,
                                            multiprocessing_context='forkserver')


def test_derive_seed_mixes_every_input():
    seeds = {derive_seed(0, epoch, rank) for epoch in range(4) for rank in range(4)}
    assert len(seeds) == 16
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)


def _save(path, state_dict, meta=None):
    torch.save(dict(state_dict=state_dict, meta=meta or {}), path)


def test_find_resumable_checkpoint_skips_a_half_written_one(tmp_path):
    assert find_resumable_checkpoint(str(tmp_path)) is None
    for epoch in (1, 2, 10):
        _save(tmp_path / f'epoch_{epoch}.pth', {'w': torch.ones(3) * epoch},
              meta=dict(epoch=epoch, iter=4 * epoch))
    assert find_resumable_checkpoint(str(tmp_path)).endswith('epoch_10.pth')  # not text order
    data = (tmp_path / 'epoch_10.pth').read_bytes()
    (tmp_path / 'epoch_10.pth').write_bytes(data[:len(data) // 2])
    assert find_resumable_checkpoint(str(tmp_path)).endswith('epoch_2.pth')


def test_checkpoints_are_found_in_work_dirs_whose_names_glob_would_read_as_patterns(tmp_path):
    work = tmp_path / 'lr[0.1]*?'
    work.mkdir()
    for name in ('epoch_1.pth', 'epoch_2.pth', 'best_bbox_mAP_epoch_1.pth'):
        _save(work / name, {'w': torch.ones(1)}, meta=dict(hook_msgs=dict(best_score=0.5)))
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    meta = {}
    restore_best_record(meta, str(work), epoch=2)
    assert meta['hook_msgs']['best_ckpt'] == str(work / 'best_bbox_mAP_epoch_1.pth')


def _iteration_checkpoint(path, epochs_done, batches, world_size, samples_per_gpu, written):
    """As ResumableEpochBasedRunner saves one after ``batches`` of epoch ``epochs_done + 1``
    (4 images an epoch), with its modification time ``written`` seconds from now."""
    per_epoch = 4 // (world_size * samples_per_gpu)
    _save(path, {'w': torch.ones(1)}, meta=dict(
        epoch=epochs_done, iter=epochs_done * per_epoch + batches,
        epoch_position=dict(batches=batches, world_size=world_size, samples_per_gpu=samples_per_gpu,
                            epoch_batches=per_epoch)))
    os.utime(path, (time.time() + written,) * 2)


def test_the_newest_checkpoint_is_the_furthest_trained_not_the_highest_numbered(tmp_path):
    # A run of 1 image a batch saved iter_8 at the end of epoch 2, then was resumed with 4 a
    # batch: its files after epochs 3 and 4 are iter_3 and iter_4 (1 batch an epoch).
    _iteration_checkpoint(tmp_path / 'iter_8.pth', 1, 4, 1, 1, written=-30)
    _iteration_checkpoint(tmp_path / 'iter_3.pth', 2, 1, 1, 4, written=-20)
    _iteration_checkpoint(tmp_path / 'iter_4.pth', 3, 1, 1, 4, written=-10)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    # An epoch's end checkpoint comes after the iteration checkpoint of its last batch, and
    # epoch_5 after iter_4, though 5 < 8.
    _save(tmp_path / 'epoch_5.pth', {'w': torch.ones(1)}, meta=dict(epoch=5, iter=5))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_5.pth')
    _iteration_checkpoint(tmp_path / 'iter_5.pth', 4, 1, 1, 4, written=-5)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_5.pth')
    # Mid-epoch, images done count across layouts: 3 of 4 (3 batches of 1) after 2 of 4.
    _iteration_checkpoint(tmp_path / 'iter_23.pth', 5, 3, 1, 1, written=-3)
    _iteration_checkpoint(tmp_path / 'iter_11.pth', 5, 1, 2, 1, written=-1)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_23.pth')


def test_checkpoints_as_far_into_training_go_to_the_later_write(tmp_path):
    # 2 images into epoch 2 both: an abandoned run of 1 image a batch (iter_6), then a run
    # resumed from epoch_1 with 2 a batch (iter_3). The higher iteration count won.
    _iteration_checkpoint(tmp_path / 'iter_6.pth', 1, 2, 1, 1, written=-50)
    _iteration_checkpoint(tmp_path / 'iter_3.pth', 1, 1, 1, 2, written=-10)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_3.pth')
    # IterBasedRunner's files record no place in an epoch: their counts rank them.
    for iteration, written in ((200, -2), (100, -1)):
        _save(tmp_path / f'iter_{iteration}.pth', {'w': torch.ones(1)},
              meta=dict(epoch=3, iter=iteration))
        os.utime(tmp_path / f'iter_{iteration}.pth', (time.time() + written,) * 2)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_200.pth')


def test_an_iteration_checkpoint_after_an_epochs_last_batch_is_as_far_as_the_epochs(tmp_path):
    # A run's epoch_2, then a new run in the same work dir whose iteration checkpoints end epoch
    # 2 too: the later write goes on. Its position, 4 of 4 batches of epoch 2, ranked as part of
    # epoch 2 and lost to epoch_2 however old that was.
    _save(tmp_path / 'epoch_2.pth', {'w': torch.ones(1)}, meta=dict(epoch=2, iter=8))
    os.utime(tmp_path / 'epoch_2.pth', (time.time() - 20,) * 2)
    _iteration_checkpoint(tmp_path / 'iter_8.pth', 1, 4, 1, 1, written=-10)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_8.pth')
    os.utime(tmp_path / 'epoch_2.pth', (time.time(),) * 2)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')


def test_the_evaluated_epochs_are_those_in_the_logs_of_the_resumed_run(tmp_path):
    # An earlier run in the same work dir had evaluated epoch 2: a resumed run stopped between
    # its epoch-2 checkpoint and that epoch's evaluation took it for evaluated, and never was.
    def log(name, header, *val_epochs):
        lines = [header] + [json.dumps(dict(mode='val', epoch=e, bbox_mAP=0.5)) for e in val_epochs]
        (tmp_path / f'{name}.log.json').write_text('\n'.join(lines) + '\n')
    log('earlier', json.dumps(dict(seed=0, run_id='earlier')), 1, 2)
    log('resumed_1', json.dumps(dict(seed=0, run_id='resumed')), 1)
    log('resumed_2', json.dumps(dict(seed=0, run_id='resumed')))
    log('legacy', json.dumps(dict(seed=0)), 3)  # a run before runs had an id
    log('cut', '{"seed": 0, "run_', 4)  # its first line cut short
    assert _evaluated_epochs(str(tmp_path), 'resumed') == {1}
    assert _evaluated_epochs(str(tmp_path), 'earlier') == {1, 2}
    assert _evaluated_epochs(str(tmp_path)) == {1, 2, 3, 4}  # a checkpoint that names no run


def test_a_whole_epoch_saved_in_another_layout_goes_on_after_it_without_a_warning(caplog):
    # It warned that the epoch went on "after 2 batches, in another image order", though
    # nothing of it was left.
    loader = build_train_dataloader(_FlaggedDataset(8), samples_per_gpu=4, workers_per_gpu=0,
                                    seed=0)
    runner = types.SimpleNamespace(epoch=0)
    logger = logging.getLogger('test_batches_done')
    whole = dict(batches=8, world_size=1, samples_per_gpu=1, epoch_batches=8)
    with caplog.at_level(logging.WARNING, logger='test_batches_done'):
        assert _batches_done(runner, loader, 'iter_8.pth', whole, logger) == len(loader) == 2
        assert caplog.records == []
        part = dict(whole, batches=5)
        assert _batches_done(runner, loader, 'iter_5.pth', part, logger) == 2
        assert 'the epoch goes on after 2 batches, in another image order' in caplog.text


def test_the_epoch_length_a_checkpoint_was_counted_in_is_known_in_the_same_layout_only():
    # What tells a changed training set from another batch layout when resuming.
    loader = build_train_dataloader(_FlaggedDataset(16), samples_per_gpu=2, workers_per_gpu=0,
                                    seed=0)  # 8 batches an epoch
    runner = types.SimpleNamespace(epoch=2, iter=8)  # 2 epochs done in 8 iterations
    same = dict(world_size=1, samples_per_gpu=2)
    assert _epoch_length_then(runner, loader, batch_layout=same) == 4
    assert _epoch_length_then(runner, loader, batch_layout=dict(same, world_size=2)) is None
    assert _epoch_length_then(runner, loader) is None  # mmcv's epoch_N.pth: no layout recorded
    position = dict(batches=1, epoch_batches=4, **same)  # an iteration checkpoint's
    assert _epoch_length_then(runner, loader, epoch_position=position) == 4
    assert _epoch_length_then(runner, loader, dict(position, samples_per_gpu=4)) is None
    assert _epoch_length_then(runner, loader, dict(position, epoch_batches=None)) is None


def test_the_one_before_a_damaged_copied_checkpoint_goes_by_the_number_in_its_name(tmp_path):
    # `cp run/*.pth copy/` writes epoch_10..12 before epoch_2: by modification time, the one
    # before a damaged epoch_2 was epoch_12.
    for order, epoch in enumerate((1, 10, 11, 12, 2, 3)):  # in the order the copy wrote them
        _save(tmp_path / f'epoch_{epoch}.pth', {'w': torch.ones(1)}, meta=dict(epoch=epoch))
        os.utime(tmp_path / f'epoch_{epoch}.pth', (time.time() - 10 + order,) * 2)
    damaged = (tmp_path / 'epoch_2.pth').read_bytes()[:100]
    (tmp_path / 'epoch_2.pth').write_bytes(damaged)
    os.utime(tmp_path / 'epoch_2.pth', (time.time() - 6,) * 2)
    previous = find_resumable_checkpoint(str(tmp_path), older_than=str(tmp_path / 'epoch_2.pth'))
    assert previous == str(tmp_path / 'epoch_1.pth')
    # Of the other kind, what was written before it.
    _iteration_checkpoint(tmp_path / 'iter_6.pth', 1, 2, 1, 1, written=-9.5)
    _iteration_checkpoint(tmp_path / 'iter_7.pth', 1, 3, 1, 1, written=-5)
    previous = find_resumable_checkpoint(str(tmp_path), older_than=str(tmp_path / 'epoch_2.pth'))
    assert previous == str(tmp_path / 'iter_6.pth')


def test_the_one_before_a_damaged_latest_is_the_one_before_the_file_it_links_to(tmp_path):
    for epoch in (1, 2, 3):
        _save(tmp_path / f'epoch_{epoch}.pth', {'w': torch.ones(1)}, meta=dict(epoch=epoch))
    (tmp_path / 'epoch_2.pth').write_bytes(b'damaged')
    for epoch in (1, 2, 3):  # written in turn, a second apart
        os.utime(tmp_path / f'epoch_{epoch}.pth', (time.time() - 10 + epoch,) * 2)
    (tmp_path / 'latest.pth').symlink_to('epoch_2.pth')  # as mmcv's save_checkpoint links it
    previous = find_resumable_checkpoint(str(tmp_path), older_than=str(tmp_path / 'latest.pth'))
    assert previous == str(tmp_path / 'epoch_1.pth')


def test_a_run_resumes_from_where_its_checkpoint_hook_writes(tmp_path):
    work, out = tmp_path / 'work', tmp_path / 'out'
    (out / 'work').mkdir(parents=True)
    _save(out / 'work' / 'epoch_3.pth', {'w': torch.ones(1)}, meta=dict(seed=1234, epoch=3))
    cfg = Config(dict(work_dir=str(work), checkpoint_config=dict(interval=1, out_dir=str(out)),
                      resume_from=None, auto_resume=True))
    assert resume_checkpoint(cfg) == str(out / 'work' / 'epoch_3.pth')
    assert stored_seed(resume_checkpoint(cfg)) == 1234
    cfg.auto_resume = False
    assert resume_checkpoint(cfg) is None
    cfg.resume_from = 'given.pth'
    assert resume_checkpoint(cfg) == 'given.pth'
    # What a file does not say, or a file that cannot be read, gives no seed: resuming reports it.
    _save(tmp_path / 'no_seed.pth', {'w': torch.ones(1)})
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'no_seed.pth').read_bytes()[:50])
    assert stored_seed(str(tmp_path / 'no_seed.pth')) is None
    assert stored_seed(str(tmp_path / 'cut.pth')) is None


def test_numpy_values_in_a_checkpoint_meta_load_and_other_objects_are_named(tmp_path):
    import argparse
    meta = dict(seed=np.int64(7), hook_msgs=dict(best_score=np.float64(0.5)), shape=np.arange(3))
    _save(tmp_path / 'numpy.pth', {'w': torch.ones(1)}, meta=meta)
    loaded = read_checkpoint(str(tmp_path / 'numpy.pth'))['meta']
    assert loaded['hook_msgs']['best_score'] == 0.5 and loaded['shape'].tolist() == [0, 1, 2]
    assert stored_seed(str(tmp_path / 'numpy.pth')) == 7
    _save(tmp_path / 'args.pth', {'w': torch.ones(1)}, meta=dict(args=argparse.Namespace(lr=1)))
    with pytest.raises(CheckpointError, match=r'holds an object of type argparse.Namespace, which '
                                              r'the safe loader does not read'):
        read_checkpoint(str(tmp_path / 'args.pth'))


def test_holds_backbone_weights_reads_every_checkpoint_layout(tmp_path):
    backbone = torch.nn.Linear(3, 2)
    weights = {'backbone.weight': torch.zeros(2, 3), 'backbone.bias': torch.zeros(2),
               'neck.weight': torch.zeros(1)}
    cases = {'plain': (weights, True),
             'ddp': ({f'module.{k}': v for k, v in weights.items()}, True),
             'short': ({'backbone.weight': torch.zeros(2, 3)}, False),
             'other_shape': (dict(weights, **{'backbone.weight': torch.zeros(4, 3)}), False)}
    for name, (state_dict, held) in cases.items():
        _save(tmp_path / f'{name}.pth', state_dict)
        assert holds_backbone_weights(str(tmp_path / f'{name}.pth'), backbone) is held, name
    # torch maps zip files only: a legacy-format file was taken for one without the weights.
    torch.save(dict(state_dict=weights), tmp_path / 'legacy.pth',
               _use_new_zipfile_serialization=False)
    assert holds_backbone_weights(str(tmp_path / 'legacy.pth'), backbone)
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    assert not holds_backbone_weights(str(tmp_path / 'text.pth'), backbone)


@pytest.mark.parametrize('other_ratios', [False, True])
def test_a_checkpoint_of_another_class_count_is_told_from_another_architecture(tmp_path,
                                                                              tiny_config,
                                                                              other_ratios):
    # Any weights differing in their first dimension were called another class count, naming
    # the RPN's classifier for a checkpoint with other anchor ratios too.
    from mmdet.models import build_detector
    cfg = Config.fromfile(tiny_config)
    cfg.model.backbone.init_cfg = None
    model = build_detector(cfg.model)
    cfg.model.roi_head.bbox_head.num_classes = 5
    cfg.model.roi_head.mask_head.num_classes = 5
    if other_ratios:
        cfg.model.rpn_head.anchor_generator.ratios = [0.25, 0.5, 1.0, 2.0, 4.0]
    path = tmp_path / 'other.pth'
    _save(path, build_detector(cfg.model).state_dict())
    with pytest.raises(CheckpointError) as error:
        load_detector_checkpoint(model, str(path))
    if other_ratios:
        assert 'another architecture?' in str(error.value)
        assert 'first: rpn_head.rpn_cls.weight is (5, 64, 1, 1)' in str(error.value)
    else:
        assert str(error.value) == (
            f'checkpoint {path} predicts 5 classes, the model built from the config 3 '
            f'(roi_head.bbox_head.fc_cls.weight is (6, 256) in the checkpoint, (4, 256) in the '
            f'model): set num_classes=5 in every head of the config, and name the checkpoint\'s '
            f'classes in its dataset\'s classes')


def test_checkpoint_errors_name_the_problem(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        read_checkpoint(str(tmp_path / 'nope.pth'))
    good = tmp_path / 'good.pth'
    _save(good, {'module.0.weight': torch.zeros(2, 3), 'module.0.bias': torch.ones(2)})
    load_detector_checkpoint(model, str(good))  # 'module.' prefixes of DDP checkpoints are fine
    assert torch.equal(model[0].bias, torch.ones(2))
    extra = tmp_path / 'extra.pth'
    _save(extra, {'0.weight': torch.zeros(2, 3), '0.bias': torch.full((2,), 2.0),
                  'aux_head.weight': torch.zeros(1), 'aux_head.bias': torch.zeros(1)})
    logger = logging.getLogger('checkpoint-test')
    with unittest.mock.patch.object(logger, 'warning') as warning:
        load_detector_checkpoint(model, str(extra), logger=logger)  # loaded, the rest reported
    assert torch.equal(model[0].bias, torch.full((2,), 2.0))
    warning.assert_called_once_with('2 checkpoint weights are not used by the model '
                                    '(first: aux_head.weight)')
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        read_checkpoint(str(truncated))
    other = tmp_path / 'other.pth'
    _save(other, {'backbone.conv1.weight': torch.zeros(1)})
    with pytest.raises(CheckpointError, match='does not fit the model.*2 of the model'):
        load_detector_checkpoint(model, str(other))
    wrong_shape = tmp_path / 'wrong_shape.pth'
    _save(wrong_shape, {'0.weight': torch.zeros(5, 3), '0.bias': torch.ones(5)})
    with pytest.raises(CheckpointError, match=r'another shape.*\(5, 3\)'):
        load_detector_checkpoint(model, str(wrong_shape))


def test_resuming_reads_the_file_into_cpu_memory_whatever_map_location_mmcv_passes(tmp_path):
    # On a GPU, mmcv's resume passes a map_location that copies every tensor to the GPU; an error
    # there (out of memory, a busy device) was reported as a damaged checkpoint.
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                    meta=dict(epoch=1, iter=4)), path)

    def failing_gpu_copy(storage, location):
        raise RuntimeError('CUDA error: out of memory')

    checkpoint = _load_training_state(model, optimizer, str(path), map_location=failing_gpu_copy)
    assert checkpoint['meta'] == {'epoch': 1, 'iter': 4}
    state = checkpoint['optimizer']['state'][0]
    assert state['exp_avg'].device.type == 'cpu' and state['exp_avg'].shape == (2, 3)


def test_restore_best_record_takes_the_newest_best_checkpoint_up_to_the_resumed_epoch(tmp_path):
    # Epoch 2 evaluated best after epoch_2.pth was written: that file still names epoch 1's best
    # (already deleted); best_bbox_mAP_epoch_2.pth has the record. A later best (epoch 4, from a
    # run resumed further on) does not count when resuming from epoch 3.
    def best(epoch, score):  # as if written in another folder, then copied here
        path = str(tmp_path / f'best_bbox_mAP_epoch_{epoch}.pth')
        _save(path, {'w': torch.ones(1)}, meta=dict(hook_msgs=dict(
            best_score=score, best_ckpt=f'/elsewhere/best_bbox_mAP_epoch_{epoch}.pth')))
        return path

    epoch_2 = best(2, 0.31)
    best(4, 0.4)
    meta = dict(epoch=3, hook_msgs=dict(best_score=0.2,
                                        best_ckpt=str(tmp_path / 'best_bbox_mAP_epoch_1.pth')))
    restore_best_record(meta, str(tmp_path), epoch=3)
    assert meta['hook_msgs'] == dict(best_score=0.31, best_ckpt=epoch_2)
    untouched = dict(epoch=1, hook_msgs=dict(best_score=0.2))
    restore_best_record(untouched, str(tmp_path), epoch=1)  # no best checkpoint up to epoch 1
    assert untouched['hook_msgs'] == dict(best_score=0.2)


class _OneWeight(torch.nn.Module):
    """A model mmcv's runner accepts (it needs a train_step), whose checkpoints take no time."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def train_step(self, *args, **kwargs):
        raise NotImplementedError


@pytest.mark.parametrize('distributed', [False, True], ids=['one-process', 'distributed'])
def test_a_new_best_checkpoint_that_cannot_be_written_keeps_the_previous_one(
        tmp_path, tiny_config, monkeypatch, distributed):
    # mmcv's hook removed the previous best_*.pth before writing the new one: with the disk full,
    # no best checkpoint was left, and the record named the file that was never written.
    from mmcv.runner import EpochBasedRunner

    from mmdet_custom import mmcv_compat
    from mmdet_custom.apis.train import _build_eval_hook
    cfg = Config.fromfile(tiny_config)
    cfg.evaluation.save_best = 'bbox_mAP_50'
    hook = _build_eval_hook(cfg, distributed)
    work = tmp_path / 'work'
    runner = EpochBasedRunner(_OneWeight(), work_dir=str(work), meta={},
                              logger=logging.getLogger('test_best_checkpoint'))
    hook.before_run(runner)
    runner._epoch = 3  # evaluating epoch 4
    hook._save_ckpt(runner, 0.5)
    epoch_4 = str(work / 'best_bbox_mAP_50_epoch_4.pth')
    assert runner.meta['hook_msgs'] == dict(best_score=0.5, best_ckpt=epoch_4)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(mmcv_compat.os, 'fsync', full_disk)
        runner._epoch = 4
        with pytest.raises(OSError, match='No space left on device'):
            hook._save_ckpt(runner, 0.75)
    assert sorted(p.name for p in work.iterdir()) == ['best_bbox_mAP_50_epoch_4.pth']
    assert runner.meta['hook_msgs'] == dict(best_score=0.5, best_ckpt=epoch_4)

    runner._epoch = 5  # written, the new best replaces the old one, its record in its meta
    hook._save_ckpt(runner, 0.75)
    epoch_6 = str(work / 'best_bbox_mAP_50_epoch_6.pth')
    assert sorted(p.name for p in work.iterdir()) == ['best_bbox_mAP_50_epoch_6.pth']
    assert runner.meta['hook_msgs'] == dict(best_score=0.75, best_ckpt=epoch_6)
    resumed = {}
    restore_best_record(resumed, str(work), epoch=6)
    assert resumed['hook_msgs'] == dict(best_score=0.75, best_ckpt=epoch_6)


def test_fine_tuning_load_skips_weights_of_another_shape_but_not_a_bad_file(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    other_head = tmp_path / 'other_head.pth'  # as a checkpoint trained for another class count
    _save(other_head, {'module.0.weight': torch.ones(3, 3), 'module.0.bias': torch.ones(3),
                       'module.1.weight': torch.zeros(5, 3), 'module.1.bias': torch.zeros(5)})
    head_before = model[1].weight.detach().clone()
    logger = unittest.mock.Mock()
    load_weights_leniently(model, str(other_head), logger=logger)
    assert torch.equal(model[0].weight, torch.ones(3, 3)) and torch.equal(model[1].weight, head_before)
    logger.info.assert_called_once_with(f"load_from: 2 of the model's 4 weights set from {other_head}")
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_weights_leniently(model, str(tmp_path / 'nope.pth'))
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_weights_leniently(model, str(corrupt))


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def train_step(self, data_batch, optimizer):
        return dict(loss=self.weight.sum(), log_vars={}, num_samples=1)


def _sleeps_of_a_two_epoch_run(tmp_path, monkeypatch):
    """Runs mmcv's EpochBasedRunner for two epochs of two batches; returns the sleeps it took."""
    from mmcv.runner import EpochBasedRunner
    slept = []
    monkeypatch.setattr(time, 'sleep', slept.append)
    model = _TinyModel()
    runner = EpochBasedRunner(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                              work_dir=str(tmp_path), logger=logging.getLogger('tiny'),
                              max_epochs=2)
    runner.run([[0, 1]], [('train', 1)])
    return slept


def test_epoch_transition_sleeps_are_skipped_and_restored(tmp_path, monkeypatch):
    assert _sleeps_of_a_two_epoch_run(tmp_path, monkeypatch) == [2, 2, 1]  # mmcv's own
    monkeypatch.undo()
    with without_epoch_transition_sleeps():
        assert _sleeps_of_a_two_epoch_run(tmp_path, monkeypatch) == []
    monkeypatch.undo()
    assert _sleeps_of_a_two_epoch_run(tmp_path, monkeypatch) == [2, 2, 1]


def test_mmcv_scatter_gets_a_stream_for_a_gpu_index():
    # mmcv's Scatter passes an int GPU index to torch's _get_stream, which reads ``device.type``;
    # unpatched, every GPU training step failed with "'int' object has no attribute 'type'".
    # Without a GPU torch answers None (no stream) for a CUDA device, and must not raise.
    import mmdet_custom  # noqa: F401  (installs the fix: mmdet_custom/mmcv_compat.py)
    from mmcv.parallel import _functions
    stream = _functions._get_stream(0)
    assert stream is None or isinstance(stream, torch.cuda.Stream)


@pytest.mark.slow
def test_auto_scale_lr_scales_the_optimizer_learning_rates(tmp_path, tiny_config):
    # One process of 2 images against a base batch of 16: the linear rule gives 1/8 of the lr.
    work = tmp_path / 'work'
    result = run_tool([PYTHON, osp.join(ROOT, 'tools', 'train.py'), tiny_config, '--no-validate',
                       '--work-dir', str(work), '--auto-scale-lr',
                       '--cfg-options', 'auto_scale_lr.base_batch_size=16'], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'LR has been automatically scaled from 0.0014 to 0.000175' in result.stdout + result.stderr
    groups = read_checkpoint(str(work / 'epoch_1.pth'))['optimizer']['param_groups']
    assert [group['initial_lr'] for group in groups] == [pytest.approx(1.4e-3 / 8)]


def test_hook_output_dir_names_the_work_dir_as_mmcv_does(tmp_path, monkeypatch):
    # mmcv's hooks take the basename of the absolute work dir: `--work-dir .` writes into
    # out_dir/<current folder>, where --auto-resume looked into out_dir/. and found nothing.
    from mmdet_custom.apis.checkpoint import hook_output_dir
    (tmp_path / 'run').mkdir()
    monkeypatch.chdir(tmp_path / 'run')
    assert hook_output_dir('.', '/out') == '/out/run'
    assert hook_output_dir('a/b/', '/out') == '/out/b'
    assert hook_output_dir('.', None) == '.'


@pytest.mark.parametrize('evaluation', [
    dict(interval=1), dict(interval=2), dict(interval=2, start=1), dict(interval=3, start=4),
    dict(interval=3, dynamic_intervals=[(4, 1)]), dict(interval=2, start=1, dynamic_intervals=[(5, 3)])])
def test_the_epochs_named_unevaluated_are_those_the_eval_hook_evaluates(evaluation):
    # Resuming warned of epoch 2 "saved but not evaluated" with start=1, interval=2 (1, 3, 5, ...).
    from torch.utils.data import DataLoader

    from mmdet.core import EvalHook
    from mmdet_custom.apis.train import _evaluates_after
    hook = EvalHook(DataLoader([0]), **evaluation)
    for epoch in range(1, 13):
        runner = types.SimpleNamespace(epoch=epoch - 1, iter=0)  # as the hook sees it, 0-based
        hook.before_train_epoch(runner)
        assert _evaluates_after(epoch, evaluation) == hook._should_evaluate(runner), epoch
