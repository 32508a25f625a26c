"""FiniteLossHook: training stops at a loss that is not a finite number (the first one, or with
float16 loss scaling the tenth in a row), and before a checkpoint of weights that are not."""
import math

import torch
from mmcv.runner import HOOKS, CheckpointHook, Hook, IterBasedRunner


class NonFiniteLossError(ArithmeticError):
    """The training loss, or the weights it trains, became NaN or infinite."""


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise NonFiniteLossError once ``patience`` iterations in a row had a NaN or infinite loss,
    or before a checkpoint hook saves weights that hold one.

    Without it a diverged run trains on to its last epoch, exits 0, and its checkpoint rotation
    replaces every good checkpoint with NaN weights. Registered (by ``train_detector``) after the
    optimizer hook and before the checkpoint hook, so the bad weights are never saved. The loss
    is mmdet's logged value, already a host float (averaged over the processes of a distributed
    run, so all of them stop at the same iteration): checking it costs no wait for the GPU.
    The loss comes before the update, so an update whose gradients were not finite (a finite
    loss, a NaN backward) is caught by the weights instead, checked where a checkpoint hook is
    about to save them: one wait per checkpoint.

    ``patience`` is 1 unless float16 loss scaling guards the weights: its optimizer hook skips
    the update of an iteration whose gradients are not finite, so an occasional overflow in the
    float16 forward costs a step, not the run (``train_detector`` then passes 10).
    """

    def __init__(self, patience: int = 1):
        if patience < 1:
            raise ValueError(f'patience must be at least 1, got {patience}')
        self.patience = patience
        self._bad_in_a_row = 0
        self._checkpoint_hooks = []

    def before_run(self, runner):
        self._checkpoint_hooks = [hook for hook in runner.hooks if isinstance(hook, CheckpointHook)]

    def after_train_iter(self, runner):
        loss = (runner.outputs or {}).get('log_vars', {}).get('loss')
        if loss is not None and not math.isfinite(loss):
            self._bad_in_a_row += 1
            where = self._where(runner)
            if self._bad_in_a_row >= self.patience:
                in_a_row = f' and the {self._bad_in_a_row - 1} before it' if self._bad_in_a_row > 1 else ''
                raise NonFiniteLossError(f'the loss is {loss} at {where}{in_a_row}')
            runner.logger.warning(f'the loss is {loss} at {where}: the loss scaler skips this '
                                  f'step ({self._bad_in_a_row} of {self.patience} in a row allowed)')
            return
        self._bad_in_a_row = 0
        if any(not hook.by_epoch and (self.every_n_iters(runner, hook.interval)
                                      or (hook.save_last and self.is_last_iter(runner)))
               for hook in self._checkpoint_hooks):
            self._check_weights(runner, f'after {self._where(runner)}')

    def after_train_epoch(self, runner):
        if any(hook.by_epoch and (self.every_n_epochs(runner, hook.interval)
                                  or (hook.save_last and self.is_last_epoch(runner)))
               for hook in self._checkpoint_hooks):
            self._check_weights(runner, f'at the end of epoch {runner.epoch + 1}')

    @staticmethod
    def _where(runner):
        if isinstance(runner, IterBasedRunner):  # its inner iteration is always 0
            return f'iteration {runner.iter + 1}'
        return (f'epoch {runner.epoch + 1}, iteration {runner.inner_iter + 1} (iteration '
                f'{runner.iter + 1} overall)')

    @staticmethod
    def _check_weights(runner, when):
        parameters = [p for p in runner.model.parameters() if p.is_floating_point()]
        if parameters and not torch.stack([p.isfinite().all() for p in parameters]).all():
            raise NonFiniteLossError(f'the weights hold NaN or infinite values {when}: an update\'s '
                                     f'gradients were not finite, though its loss was')
