"""SyncFreeFp16OptimizerHook: mmcv's float16 update, with the loss scaler's state read back only
when a checkpoint is written (each read waits for the GPU)."""
import logging

import pytest
import torch
from torch import nn

pytest.importorskip('mmcv')
# mmcv builds a CUDA GradScaler, which warns and turns itself off here; the tests replace it.
pytestmark = pytest.mark.filterwarnings('ignore:.*GradScaler')
from mmcv.runner import CheckpointHook, EpochBasedRunner, Fp16OptimizerHook  # noqa: E402

from mmdet_custom.apis.train import without_epoch_transition_sleeps  # noqa: E402
from mmdet_custom.core import ResumableEpochBasedRunner  # noqa: E402
from mmdet_custom.core.hooks import SyncFreeFp16OptimizerHook  # noqa: E402

ITERS_PER_EPOCH = 3


class _Regressor(nn.Module):
    """The smallest model mmcv's runner trains: train_step gives the loss and its log."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)

    def train_step(self, batch, optimizer):
        inputs, targets = batch
        loss = ((self.layer(inputs) - targets) ** 2).mean()
        return dict(loss=loss, log_vars=dict(loss=float(loss.detach())), num_samples=len(inputs))


def _train(hook_type, work_dir, epochs=2, resume_from=None, by_epoch=True, grad_clip=None,
           runner_type=EpochBasedRunner):
    """Train _Regressor under ``hook_type`` with an enabled CPU GradScaler that doubles its scale
    every step; returns (runner, hook, number of scaler state reads)."""
    torch.manual_seed(1)
    data = [(torch.randn(2, 4), torch.randn(2, 1)) for _ in range(ITERS_PER_EPOCH)]
    model = _Regressor()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    runner = runner_type(model, optimizer=optimizer, work_dir=str(work_dir),
                              logger=logging.getLogger('fp16-hook-test'), meta=dict(),
                              max_epochs=epochs)
    hook = hook_type(grad_clip=grad_clip, loss_scale=dict(init_scale=256.0, growth_interval=1))
    # mmcv builds torch.cuda.amp.GradScaler, which is off without CUDA: an enabled CPU one.
    hook.loss_scaler = torch.amp.GradScaler('cpu', init_scale=256.0, growth_interval=1)
    reads = []
    state_dict = hook.loss_scaler.state_dict
    hook.loss_scaler.state_dict = lambda: reads.append(1) or state_dict()
    runner.register_hook(hook, priority='ABOVE_NORMAL')
    runner.register_hook(CheckpointHook(interval=1, by_epoch=by_epoch), priority='NORMAL')
    if resume_from is not None:
        runner.resume(resume_from)
    with without_epoch_transition_sleeps():
        runner.run([data], [('train', 1)])
    return runner, hook, len(reads)


def _saved(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def test_scaler_state_is_read_once_per_checkpoint_and_saved_current(tmp_path):
    runner, hook, reads = _train(SyncFreeFp16OptimizerHook, tmp_path)
    assert reads == 2  # epoch_1.pth and epoch_2.pth; mmcv's hook reads it every iteration
    for epoch in (1, 2):
        saved = _saved(tmp_path / f'epoch_{epoch}.pth')['meta']['fp16']['loss_scaler']
        assert saved['scale'] == 256.0 * 2 ** (epoch * ITERS_PER_EPOCH)  # no overflow: doubled
    assert 'save_checkpoint' not in vars(runner)  # the runner's own method again


def test_iteration_checkpoints_get_the_current_state_too(tmp_path):
    _, _, reads = _train(SyncFreeFp16OptimizerHook, tmp_path, epochs=1, by_epoch=False)
    assert reads == ITERS_PER_EPOCH
    # (An epoch-based runner names every save after the epoch: the last one is kept.)
    saved = _saved(tmp_path / 'epoch_1.pth')['meta']['fp16']['loss_scaler']
    assert saved['scale'] == 256.0 * 2 ** ITERS_PER_EPOCH


def test_mid_epoch_checkpoints_of_the_resumable_runner_get_the_current_state(tmp_path):
    runner, _, reads = _train(SyncFreeFp16OptimizerHook, tmp_path, epochs=1, by_epoch=False,
                              runner_type=ResumableEpochBasedRunner)
    assert reads == ITERS_PER_EPOCH
    for iteration in range(1, ITERS_PER_EPOCH + 1):
        meta = _saved(tmp_path / f'iter_{iteration}.pth')['meta']
        assert meta['fp16']['loss_scaler']['scale'] == 256.0 * 2 ** iteration
        assert (meta['epoch'], meta['iter'], meta['epoch_position']['batches']) == (0, iteration,
                                                                                   iteration)
    assert 'save_checkpoint' not in vars(runner)


@pytest.mark.parametrize('grad_clip', [None, dict(max_norm=0.05)])
def test_same_update_and_checkpoint_as_mmcvs_hook(tmp_path, grad_clip):
    ours, _, _ = _train(SyncFreeFp16OptimizerHook, tmp_path / 'ours', grad_clip=grad_clip)
    mmcvs, _, mmcv_reads = _train(Fp16OptimizerHook, tmp_path / 'mmcv', grad_clip=grad_clip)
    assert mmcv_reads == 2 * ITERS_PER_EPOCH  # every iteration
    for name, value in mmcvs.model.state_dict().items():
        assert torch.equal(ours.model.state_dict()[name], value), name
    if grad_clip is not None:  # the norm is clipped, and so the update differs from unclipped
        unclipped, _, _ = _train(SyncFreeFp16OptimizerHook, tmp_path / 'unclipped')
        assert 'grad_norm' in ours.log_buffer.output or 'grad_norm' in ours.log_buffer.val_history
        assert not torch.equal(unclipped.model.layer.weight, ours.model.layer.weight)
    for epoch in (1, 2):
        assert (_saved(tmp_path / 'ours' / f'epoch_{epoch}.pth')['meta']['fp16']
                == _saved(tmp_path / 'mmcv' / f'epoch_{epoch}.pth')['meta']['fp16'])


def test_resuming_restores_the_saved_scale(tmp_path):
    _train(SyncFreeFp16OptimizerHook, tmp_path / 'first', epochs=1)
    runner, hook, _ = _train(SyncFreeFp16OptimizerHook, tmp_path / 'resumed', epochs=2,
                             resume_from=str(tmp_path / 'first' / 'epoch_1.pth'))
    assert runner.epoch == 2
    # Restored at 256 * 2^3 and doubled through the second epoch's 3 steps.
    assert hook.loss_scaler.get_scale() == 256.0 * 2 ** (2 * ITERS_PER_EPOCH)


@pytest.mark.parametrize('loss_scale', ['dynamic', 256.0, dict(init_scale=64.0, growth_interval=7)])
def test_scaler_is_mmcvs_without_its_deprecation_warning(loss_scale, recwarn, monkeypatch):
    # mmcv builds torch.cuda.amp.GradScaler, whose construction is deprecated in favour of
    # torch.amp.GradScaler('cuda'): every float16 run printed a FutureWarning. (A CUDA scaler
    # keeps its settings only where CUDA looks available.)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    hook = SyncFreeFp16OptimizerHook(loss_scale=loss_scale, grad_clip=dict(max_norm=1.0),
                                     distributed=False)
    assert not [w for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    mmcvs = Fp16OptimizerHook(loss_scale=loss_scale, grad_clip=dict(max_norm=1.0),
                              distributed=False)
    assert type(hook.loss_scaler) is torch.amp.GradScaler
    assert hook.loss_scaler._device == 'cuda'
    for setting in ('_init_scale', '_growth_factor', '_backoff_factor', '_growth_interval'):
        assert getattr(hook.loss_scaler, setting) == getattr(mmcvs.loss_scaler, setting), setting
    for attribute in ('grad_clip', 'coalesce', 'bucket_size_mb', 'distributed',
                      '_scale_update_param'):
        assert getattr(hook, attribute) == getattr(mmcvs, attribute), attribute
