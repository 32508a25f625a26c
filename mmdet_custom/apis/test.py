"""Distributed inference that also runs on CPU processes (gloo).

mmdet's ``multi_gpu_test`` collects the ranks' results through CUDA tensors. On CUDA we use it
unchanged; on CPU the per-rank results are gathered with ``torch.distributed.gather_object``.
"""
import os.path as osp

import mmcv
import numpy as np
import torch
import torch.distributed as dist
from mmcv.runner import get_dist_info
from mmdet.apis import multi_gpu_test
from mmdet.core import DistEvalHook, EvalHook, encode_mask_results
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils import error_summary

RANK_RESULTS_FOLDER = 'results_by_rank'


class ResultsNotGathered(RuntimeError):
    """The ranks' results could not be gathered: another process stopped (its own message says
    why); the tools report this in one line rather than the process group's traceback."""


def evaluate_kwargs(options):
    """``dataset.evaluate()``'s keyword arguments from a config or the command line, in the types
    mmdet's CocoDataset needs, where other forms failed once inference was done: ``iou_thrs`` an
    array (pycocotools compares it with ==, and takes its length), ``metric`` and
    ``metric_items`` lists (mmdet takes a tuple, as --cfg-options and --eval-options give (a,b),
    for one name)."""
    options = dict(options)
    iou_thrs = options.get('iou_thrs')
    if isinstance(iou_thrs, (list, tuple, int, float)) and not isinstance(iou_thrs, bool):
        options['iou_thrs'] = np.atleast_1d(np.asarray(iou_thrs, dtype=np.float64))
    for listed in ('metric', 'metric_items'):
        if isinstance(options.get(listed), tuple):
            options[listed] = list(options[listed])
    return options


def _gather_on_cpu(model, data_loader):
    model.eval()
    rank, world_size = get_dist_info()
    dataset = data_loader.dataset
    progress = mmcv.ProgressBar(len(dataset)) if rank == 0 else None
    local_results = []
    for data in data_loader:
        with torch.no_grad():
            batch_results = model(return_loss=False, rescale=True, **data)
        if isinstance(batch_results[0], tuple):  # (boxes, masks): store masks as RLE, as mmdet does
            batch_results = [(boxes, encode_mask_results(masks)) for boxes, masks in batch_results]
        local_results.extend(batch_results)
        if progress is not None:  # (the sampler pads the ranks' shares to the same length)
            for _ in range(min(len(batch_results) * world_size, len(dataset) - progress.completed)):
                progress.update()
    gathered = [None] * world_size if rank == 0 else None
    try:
        dist.gather_object(local_results, gathered, dst=0)
    except RuntimeError as error:  # e.g. gloo's "Connection closed by peer"
        raise ResultsNotGathered(f'process {rank} could not gather the results: another process '
                                 f'stopped ({type(error).__name__}: {error_summary(error)})'
                                 ) from None
    if rank != 0:
        return None
    # mmdet's DistributedSampler deals indices round-robin (rank r gets r, r + W, ...) and pads
    # the tail, so interleaving the parts restores dataset order; the padding is cut off.
    ordered = [result for round_ in zip(*gathered) for result in round_]
    return ordered[:len(dataset)]


def multi_process_test(model, data_loader, tmpdir=None, gpu_collect=False):
    """Test with one process per rank; returns all results on rank 0 and None elsewhere.

    On CUDA, without ``gpu_collect``, the ranks pass their results through a folder in
    ``tmpdir`` (``RANK_RESULTS_FOLDER``), which mmdet deletes afterwards: given ``tmpdir`` itself,
    it deleted everything else in it too."""
    if torch.cuda.is_available():
        if tmpdir is not None:
            tmpdir = osp.join(tmpdir, RANK_RESULTS_FOLDER)
        return multi_gpu_test(model, data_loader, tmpdir=tmpdir, gpu_collect=gpu_collect)
    return _gather_on_cpu(model, data_loader)


class BestCheckpointWrittenFirst:
    """An evaluation hook's ``save_best``, with the new best checkpoint written before the previous
    one is removed.

    mmcv's ``_save_ckpt`` removed the previous ``best_*.pth`` first: a write that then failed (a
    full disk) left no best checkpoint at all. The record in ``runner.meta['hook_msgs']``
    (``best_score``, ``best_ckpt``) is set for the write, since the new file's meta carries it
    (``restore_best_record`` reads it there on resume), and put back if the write fails, so that
    it never names a file that is not there.
    """

    def _save_ckpt(self, runner, key_score):
        if self.by_epoch:
            current, unit = runner.epoch + 1, 'epoch'
        else:
            current, unit = runner.iter + 1, 'iter'
        record = runner.meta['hook_msgs']
        best_score = record.get('best_score', self.init_value_map[self.rule])
        if not self.compare_func(key_score, best_score):
            return
        name = f'best_{self.key_indicator}_{unit}_{current}.pth'
        path = self.file_client.join_path(self.out_dir, name)
        kept = {key: record.pop(key) for key in ('best_score', 'best_ckpt') if key in record}
        record.update(best_score=key_score, best_ckpt=path)
        try:
            runner.save_checkpoint(self.out_dir, filename_tmpl=name, create_symlink=False)
        except BaseException:
            for key in ('best_score', 'best_ckpt'):
                del record[key]
            record.update(kept)
            raise
        previous, self.best_ckpt_path = self.best_ckpt_path, path
        if previous and previous != path and self.file_client.isfile(previous):
            self.file_client.remove(previous)
            runner.logger.info(f'The previous best checkpoint {previous} was removed')
        runner.logger.info(f'Now best checkpoint is saved as {name}.')
        runner.logger.info(f'Best {self.key_indicator} is {key_score:0.4f} at {current} {unit}.')


class BestWrittenFirstEvalHook(BestCheckpointWrittenFirst, EvalHook):
    """mmdet's EvalHook (one process), whose ``save_best`` writes the new best checkpoint before
    removing the old one."""


class DistEvalHookAnyDevice(BestCheckpointWrittenFirst, DistEvalHook):
    """mmdet's DistEvalHook, with results collected by ``multi_process_test`` (CPU or CUDA), whose
    ``save_best`` writes the new best checkpoint before removing the old one."""

    def _do_evaluate(self, runner):
        if self.broadcast_bn_buffer:
            # Evaluate every rank with rank 0's BatchNorm statistics (they drift apart in training).
            for module in runner.model.modules():
                if isinstance(module, _BatchNorm) and module.track_running_stats:
                    dist.broadcast(module.running_var, 0)
                    dist.broadcast(module.running_mean, 0)
        if not self._should_evaluate(runner):
            return
        tmpdir = self.tmpdir or osp.join(runner.work_dir, '.eval_hook')
        results = multi_process_test(runner.model, self.dataloader, tmpdir=tmpdir,
                                     gpu_collect=self.gpu_collect)
        self.latest_results = results
        if runner.rank != 0:
            return
        print('\n')
        runner.log_buffer.output['eval_iter_num'] = len(self.dataloader)
        key_score = self.evaluate(runner, results)
        if self.save_best and key_score:
            self._save_ckpt(runner, key_score)
