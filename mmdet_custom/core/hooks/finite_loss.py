"""FiniteLossHook: training stops at the first loss that is not a finite number."""
import math

from mmcv.runner import HOOKS, Hook


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise NonFiniteLossError at the first iteration whose loss is NaN or infinite.

    Without it a diverged run trains on to its last epoch, exits 0, and its checkpoint rotation
    replaces every good checkpoint with NaN weights. Registered (by ``train_detector``) after the
    optimizer hook and before the checkpoint hook, so the bad weights are never saved. The loss
    is mmdet's logged value, already a host float (averaged over the processes of a distributed
    run, so all of them stop at the same iteration): checking it costs no wait for the GPU. With
    float16 loss scaling, overflowing gradients are the loss scaler's to skip; the loss itself is
    computed in float32 and stays finite.
    """

    def after_train_iter(self, runner):
        loss = (runner.outputs or {}).get('log_vars', {}).get('loss')
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(f'the loss is {loss} at epoch {runner.epoch + 1}, iteration '
                                     f'{runner.inner_iter + 1} (iteration {runner.iter + 1} overall)')
