"""ResumableEpochBasedRunner: mmcv's EpochBasedRunner whose checkpoints saved after an iteration
resume where they were saved."""
import os.path as osp
import platform
import shutil
from typing import Optional

import mmcv
from mmcv.runner import RUNNERS, EpochBasedRunner, get_dist_info
from mmcv.runner import save_checkpoint as save_checkpoint_file


@RUNNERS.register_module()
class ResumableEpochBasedRunner(EpochBasedRunner):
    """EpochBasedRunner, except for checkpoints saved by an ``after_train_iter`` hook (mmcv's
    CheckpointHook with ``by_epoch=False``).

    mmcv names those after the epoch under way and records that epoch as finished: the weights
    after 3 of an epoch's 4 iterations became ``epoch_1.pth``, evaluated and resumed as if the
    epoch were over, so a resumed run skipped the rest of it. Here they are ``iter_N.pth`` (N
    iterations done: the name mmcv's CheckpointHook records as the last checkpoint and prunes by
    ``max_keep_ckpts``), and their meta holds the finished epochs, the iterations done and
    ``epoch_position``: the batches of the epoch under way each process has trained on, of how
    many, and the batch layout they were counted in, from which ``train_detector`` resumes
    (``go_on_in_epoch``).
    Epoch checkpoints record their ``batch_layout`` too: with it, a finished epoch of a run with
    more processes is not taken for one of mmcv's part-way files.
    ``train_detector`` builds this runner where the config names EpochBasedRunner.
    """

    _hook_being_called: Optional[str] = None
    _batches_done_in_epoch = 0  # of the resumed epoch, self.epoch at go_on_in_epoch
    _resumed_epoch: Optional[int] = None

    def go_on_in_epoch(self, batches_done: int) -> None:
        """The epoch under way goes on after ``batches_done`` batches (the loader's sampler leaves
        them out): its iterations keep their place in it (``inner_iter``, which the logger shows
        and mmcv's end-of-epoch checks read), where mmcv would count them from 0."""
        self._resumed_epoch, self._batches_done_in_epoch = self.epoch, batches_done

    def call_hook(self, fn_name: str) -> None:
        if fn_name == 'before_train_iter' and self.epoch == self._resumed_epoch:
            self._inner_iter += self._batches_done_in_epoch
        self._hook_being_called = fn_name
        try:
            super().call_hook(fn_name)
        finally:
            self._hook_being_called = None

    def save_checkpoint(self, out_dir: str, filename_tmpl: Optional[str] = None,
                        save_optimizer: bool = True, meta: Optional[dict] = None,
                        create_symlink: bool = True) -> None:
        _, world_size = get_dist_info()
        samples_per_gpu = getattr(self.data_loader, 'batch_size', None)  # None: not a DataLoader
        if self._hook_being_called != 'after_train_iter':
            # The layout its iterations were counted in: with more processes or larger batches,
            # a finished epoch records as few iterations as mmcv's part-way epoch_N.pth would.
            meta = dict(meta or {}, batch_layout=dict(world_size=world_size,
                                                      samples_per_gpu=samples_per_gpu))
            return super().save_checkpoint(out_dir, filename_tmpl or 'epoch_{}.pth',
                                           save_optimizer, meta, create_symlink)
        iterations_done = self.iter + 1  # self.iter counts this iteration once its hooks ran
        meta = dict(meta or {}, **(self.meta or {}))
        meta.update(epoch=self.epoch, iter=iterations_done,
                    epoch_position=dict(batches=self.inner_iter + 1, world_size=world_size,
                                        samples_per_gpu=samples_per_gpu,
                                        epoch_batches=len(self.data_loader)))
        filename = (filename_tmpl or 'iter_{}.pth').format(iterations_done)
        filepath = osp.join(out_dir, filename)
        save_checkpoint_file(self.model, filepath,
                             optimizer=self.optimizer if save_optimizer else None, meta=meta)
        if create_symlink:  # as EpochBasedRunner does
            latest = osp.join(out_dir, 'latest.pth')
            if platform.system() != 'Windows':
                mmcv.symlink(filename, latest)
            else:
                shutil.copy(filepath, latest)
