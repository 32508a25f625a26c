"""FiniteLossHook: a non-finite loss stops training at once, or after ``patience`` in a row."""
import logging
import types

import pytest

from mmdet_custom.core.hooks import FiniteLossHook, NonFiniteLossError


def _runner(losses):
    """A stand-in runner whose iterations log ``losses`` in turn."""
    runner = types.SimpleNamespace(epoch=0, inner_iter=0, iter=0, outputs=None,
                                   logger=logging.getLogger('finite_loss_test'))

    def steps(hook):
        for index, loss in enumerate(losses):
            runner.inner_iter = runner.iter = index
            runner.outputs = dict(log_vars=dict(loss=loss, loss_cls=0.5))
            hook.after_train_iter(runner)
    return steps


def test_the_first_non_finite_loss_stops_training():
    with pytest.raises(NonFiniteLossError, match=r'^the loss is nan at epoch 1, iteration 3 '
                                                 r'\(iteration 3 overall\)$'):
        _runner([1.0, 0.9, float('nan'), 0.8])(FiniteLossHook())


def test_patience_counts_non_finite_losses_in_a_row(caplog):
    # float16 loss scaling: an overflowing iteration is skipped; finite ones reset the count.
    hook = FiniteLossHook(patience=3)
    inf = float('inf')
    with caplog.at_level(logging.WARNING, logger='finite_loss_test'):
        _runner([1.0, inf, inf, 0.9, inf, 0.8])(hook)
    assert 'the loss scaler skips this step (2 of 3 in a row allowed)' in caplog.text
    with pytest.raises(NonFiniteLossError, match='the loss is inf at epoch 1, iteration 4 .* and '
                                                 'the 2 before it$'):
        _runner([1.0, inf, inf, inf])(hook)
    with pytest.raises(ValueError, match='patience must be at least 1'):
        FiniteLossHook(patience=0)


def test_iterations_without_a_loss_are_left_alone():
    hook = FiniteLossHook()
    runner = types.SimpleNamespace(outputs=None)
    hook.after_train_iter(runner)
    runner.outputs = dict(log_vars={})
    hook.after_train_iter(runner)


def test_weights_are_checked_where_a_checkpoint_is_due():
    # The loss comes before the update: a NaN update with a finite loss reached the checkpoint.
    import torch
    from mmcv.runner import CheckpointHook
    model = torch.nn.Linear(2, 2)
    runner = types.SimpleNamespace(hooks=[CheckpointHook(interval=2, by_epoch=False)], model=model,
                                   epoch=0, inner_iter=0, iter=0, _max_iters=10, _max_epochs=2,
                                   outputs=dict(log_vars=dict(loss=1.0)))
    hook = FiniteLossHook()
    hook.before_run(runner)
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    hook.after_train_iter(runner)  # no checkpoint after iteration 1: no wait for the weights
    runner.inner_iter = runner.iter = 1
    with pytest.raises(NonFiniteLossError, match=r"^the weights hold NaN or infinite values after "
                                                 r"epoch 1, iteration 2 \(iteration 2 overall\): an "
                                                 r"update's gradients were not finite, though its "
                                                 r"loss was$"):
        hook.after_train_iter(runner)
    runner.hooks = [CheckpointHook(interval=1)]
    hook.before_run(runner)
    with pytest.raises(NonFiniteLossError, match='values at the end of epoch 1: '):
        hook.after_train_epoch(runner)


def test_an_iteration_based_run_is_told_its_iteration():
    # IterBasedRunner resets its inner iteration every step: every loss was "iteration 1".
    from mmcv.runner import IterBasedRunner

    class Runner(IterBasedRunner):
        def __init__(self):  # only what the hook reads
            self._epoch, self._inner_iter, self._iter = 1, 0, 5
            self.outputs = dict(log_vars=dict(loss=float('nan')))

    with pytest.raises(NonFiniteLossError, match=r'^the loss is nan at iteration 6$'):
        FiniteLossHook().after_train_iter(Runner())
