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
