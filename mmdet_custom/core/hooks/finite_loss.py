"""FiniteLossHook: training stops at a loss that is not a finite number (the first one, or with
float16 loss scaling the tenth in a row)."""
import math

from mmcv.runner import HOOKS, Hook


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise NonFiniteLossError once ``patience`` iterations in a row had a NaN or infinite loss.

    Without it a diverged run trains on to its last epoch, exits 0, and its checkpoint rotation
    replaces every good checkpoint with NaN weights. Registered (by ``train_detector``) after the
    optimizer hook and before the checkpoint hook, so the bad weights are never saved. The loss
    is mmdet's logged value, already a host float (averaged over the processes of a distributed
    run, so all of them stop at the same iteration): checking it costs no wait for the GPU.

    ``patience`` is 1 unless float16 loss scaling guards the weights: its optimizer hook skips
    the update of an iteration whose gradients are not finite, so an occasional overflow in the
    float16 forward costs a step, not the run (``train_detector`` then passes 10).
    """

    def __init__(self, patience: int = 1):
        if patience < 1:
            raise ValueError(f'patience must be at least 1, got {patience}')
        self.patience = patience
        self._bad_in_a_row = 0

    def after_train_iter(self, runner):
        loss = (runner.outputs or {}).get('log_vars', {}).get('loss')
        if loss is None or math.isfinite(loss):
            self._bad_in_a_row = 0
            return
        self._bad_in_a_row += 1
        where = (f'epoch {runner.epoch + 1}, iteration {runner.inner_iter + 1} (iteration '
                 f'{runner.iter + 1} overall)')
        if self._bad_in_a_row >= self.patience:
            in_a_row = f' and the {self._bad_in_a_row - 1} before it' if self._bad_in_a_row > 1 else ''
            raise NonFiniteLossError(f'the loss is {loss} at {where}{in_a_row}')
        runner.logger.warning(f'the loss is {loss} at {where}: the loss scaler skips this step '
                              f'({self._bad_in_a_row} of {self.patience} in a row allowed)')
