"""Where a training step's wall time goes, per phase, in the training log.

A GPU step of InternImage-T Mask R-CNN at 2 images per GPU is paced by the CPU that issues the
operator calls, not by the GPU (docs/benchmarks.md, GPU session 13). Which phase holds the host
back decides what is worth making faster, so this hook times each phase on the host and logs it
beside mmcv's ``time`` and ``data_time``.

Enable it in a config: ``custom_hooks = [..., dict(type='StepPhaseTimerHook')]``.
"""
import functools
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmcv.parallel import is_module_wrapper
from mmcv.runner import HOOKS, Hook, OptimizerHook

# Log keys, in step order, with what each times.
PHASES = {
    't_to_device': "the batch handed to the model's device (the model wrapper's scatter)",
    't_backbone_neck': "the detector's extract_feat: backbone and neck",
    't_rpn_head': "the RPN head's forward_train: its loss and the proposals",
    't_roi_head': "the RoI head's forward_train: assignment, sampling, box and mask branches",
    't_forward': "the detector's train_step: the forward, its losses and their parsing",
    't_backward': "the optimizer hook without the optimizer step: zero_grad, backward, clipping",
    't_optimizer_step': 'the optimizer step',
}


@HOOKS.register_module()
class StepPhaseTimerHook(Hook):
    """Adds each phase's seconds in the iteration (``PHASES``) to the training log.

    The times are the host's wall clock, with no synchronisation added: on a GPU, a phase's time
    is how long the CPU took to issue its work, plus any wait for the GPU inside it (a ``.item()``
    or a ``nonzero`` waits for all the work issued before it). ``t_to_device`` and ``t_backward``
    are differences of two timed calls, the rest are timed calls. The timed methods are wrapped on
    their objects in ``before_run`` and unwrapped in ``after_run``, which puts back any instance
    attribute a wrapper shadowed (train.py's bfloat16 autocast of ``extract_feat``); a phase the
    model does not have (no RPN) is not logged.
    """

    def __init__(self) -> None:
        self._elapsed: Dict[str, float] = {}
        # (object, method name, the instance attribute it had before, or None)
        self._wrapped: List[Tuple[object, str, Optional[Callable]]] = []

    def _time(self, obj, method: str, key: str) -> None:
        original: Callable = getattr(obj, method)
        shadowed = vars(obj).get(method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._elapsed[key] = self._elapsed.get(key, 0.0) + time.perf_counter() - start

        setattr(obj, method, timed)  # an instance attribute: shadows the method until removed
        self._wrapped.append((obj, method, shadowed))

    def before_run(self, runner) -> None:
        detector = runner.model.module if is_module_wrapper(runner.model) else runner.model
        if detector is not runner.model:
            self._time(runner.model, 'train_step', 'wrapper')
        self._time(detector, 'train_step', 't_forward')
        self._time(detector, 'extract_feat', 't_backbone_neck')
        for head, key in (('rpn_head', 't_rpn_head'), ('roi_head', 't_roi_head')):
            if getattr(detector, head, None) is not None:
                self._time(getattr(detector, head), 'forward_train', key)
        for hook in runner.hooks:
            if isinstance(hook, OptimizerHook):  # Fp16OptimizerHook included
                self._time(hook, 'after_train_iter', 'optimizer_hook')
                break
        if isinstance(runner.optimizer, torch.optim.Optimizer):  # not a dict of several
            self._time(runner.optimizer, 'step', 't_optimizer_step')

    def after_run(self, runner) -> None:
        for obj, method, shadowed in reversed(self._wrapped):
            if shadowed is None:
                del obj.__dict__[method]
            else:
                setattr(obj, method, shadowed)
        self._wrapped.clear()

    def before_train_iter(self, runner) -> None:
        self._elapsed.clear()

    def after_train_iter(self, runner) -> None:
        times = dict(self._elapsed)
        if 'wrapper' in times:
            times['t_to_device'] = times.pop('wrapper') - times.get('t_forward', 0.0)
        if 'optimizer_hook' in times:
            # An iteration without a step (gradients accumulating, a float16 overflow) logs 0:
            # mmcv's log averages each key over its last values, the previous step's included.
            times.setdefault('t_optimizer_step', 0.0)
            times['t_backward'] = times.pop('optimizer_hook') - times['t_optimizer_step']
        runner.log_buffer.update({key: times[key] for key in PHASES if key in times})
