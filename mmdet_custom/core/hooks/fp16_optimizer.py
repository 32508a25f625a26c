"""mmcv's float16 optimizer hook without its per-iteration wait for the GPU.

mmcv 1.7's ``Fp16OptimizerHook`` copies the loss scaler's state into ``runner.meta`` after every
iteration, so that checkpoints carry it. ``GradScaler.state_dict()`` reads the scale and the growth
counter back to the CPU (``.item()``), so each iteration ends waiting for all the GPU work issued
so far. Without that wait the CPU goes on to the next batch and its forward while the GPU finishes
the backward and the update, which is what a host-paced step needs (docs/benchmarks.md, GPU
session 13: float16 trained slower than float32). The state is only needed when a checkpoint is
written, so it is copied then.
"""
import inspect
import math
from typing import Optional, Union

from mmcv.runner import HOOKS, Fp16OptimizerHook
from torch.amp import GradScaler


def checked_loss_scale(loss_scale) -> Union[float, str, dict]:
    """``loss_scale`` as mmcv's hook takes it: 'dynamic', a static scale (a positive number, an int
    made a float: mmcv took only floats, and ``--cfg-options fp16.loss_scale=512`` gives an int)
    or a dict of GradScaler's arguments. Anything else is a ValueError naming what is allowed,
    raised before training starts rather than from the hook's constructor."""
    if loss_scale == 'dynamic':
        return loss_scale
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        if math.isfinite(loss_scale) and loss_scale > 0:
            return float(loss_scale)
    elif isinstance(loss_scale, dict):
        arguments = [name for name in inspect.signature(GradScaler).parameters if name != 'device']
        unknown = [name for name in loss_scale if name not in arguments]
        if not unknown:
            return loss_scale
        raise ValueError(f'fp16.loss_scale: {", ".join(map(str, unknown))} not among GradScaler\'s '
                         f'arguments ({", ".join(arguments)})')
    raise ValueError(f"fp16.loss_scale must be 'dynamic', a static scale (a positive number) or a "
                     f"dict of GradScaler's arguments, got {loss_scale!r}")


@HOOKS.register_module()
class SyncFreeFp16OptimizerHook(Fp16OptimizerHook):
    """``Fp16OptimizerHook`` (dynamic or static loss scaling through torch's GradScaler) whose
    iterations add no CPU-GPU synchronisation: the scaler's state goes into ``runner.meta`` right
    before each ``runner.save_checkpoint``, whoever calls it, instead of after every iteration.

    The update is mmcv's, step for step. torch's ``GradScaler.step`` itself still waits for the
    GPU (to skip a step whose gradients overflowed) unless the optimizer applies the scale and the
    skip on the GPU itself, as ``fused=True`` AdamW does (the COCO configs' setting).
    """

    def __init__(self, *, grad_clip: Optional[dict] = None, coalesce: bool = True,
                 bucket_size_mb: int = -1, loss_scale: Union[float, str, dict] = 512.,
                 distributed: bool = True) -> None:
        # mmcv's constructor, but with torch.amp's scaler: mmcv builds torch.cuda.amp's, whose
        # construction warns that it is deprecated (a FutureWarning in every float16 run).
        self.grad_clip = grad_clip
        self.coalesce = coalesce
        self.bucket_size_mb = bucket_size_mb
        self.distributed = distributed
        loss_scale = checked_loss_scale(loss_scale)
        self._scale_update_param = loss_scale if isinstance(loss_scale, float) else None
        if loss_scale == 'dynamic':
            self.loss_scaler = GradScaler('cuda')
        elif isinstance(loss_scale, float):
            self.loss_scaler = GradScaler('cuda', init_scale=loss_scale)
        else:
            self.loss_scaler = GradScaler('cuda', **loss_scale)

    def before_run(self, runner) -> None:
        super().before_run(runner)  # marks the model fp16-enabled, restores a resumed scaler
        save_checkpoint = runner.save_checkpoint

        def save_with_scaler_state(*args, **kwargs):
            self._record_scaler_state(runner)
            return save_checkpoint(*args, **kwargs)

        runner.save_checkpoint = save_with_scaler_state  # an instance attribute, removed after_run
        self._runner_patched = runner

    def after_run(self, runner) -> None:
        if getattr(self, '_runner_patched', None) is runner:
            del runner.__dict__['save_checkpoint']
            self._runner_patched = None

    def _record_scaler_state(self, runner) -> None:
        runner.meta.setdefault('fp16', {})['loss_scaler'] = self.loss_scaler.state_dict()

    def after_train_iter(self, runner) -> None:
        # mmcv's Fp16OptimizerHook.after_train_iter without its closing copy of the scaler state.
        runner.model.zero_grad()
        runner.optimizer.zero_grad()
        self.loss_scaler.scale(runner.outputs['loss']).backward()
        self.loss_scaler.unscale_(runner.optimizer)
        if self.grad_clip is not None:
            grad_norm = self.clip_grads(runner.model.parameters())
            if grad_norm is not None:
                runner.log_buffer.update({'grad_norm': float(grad_norm)},
                                         runner.outputs['num_samples'])
        self.loss_scaler.step(runner.optimizer)
        self.loss_scaler.update(self._scale_update_param)
