"""mmcv's text logger without a wait for the GPU at each logged iteration of a one-process run.

mmcv 1.7's ``TextLoggerHook`` reports the peak GPU memory by putting it into a GPU tensor (to
reduce it over processes) and reading it back with ``.item()``: the CPU waits for every kernel
issued so far. At the COCO configs' interval of 50 iterations that costs little; logging every
iteration, as ``scripts/gpu_check.sh`` does to time each one, it adds a wait to every step.
"""
import torch
from mmcv.runner import HOOKS, TextLoggerHook


@HOOKS.register_module()
class SyncFreeTextLoggerHook(TextLoggerHook):
    """``TextLoggerHook`` (same arguments, same log) whose peak-memory figure is read from the
    allocator's counters when one process trains; with several, mmcv's cross-process maximum
    (through the GPU) is kept."""

    def _get_max_memory(self, runner) -> int:
        if runner.world_size > 1:
            return super()._get_max_memory(runner)
        device = getattr(runner.model, 'output_device', None)
        return int(torch.cuda.max_memory_allocated(device=device)) // (1024 * 1024)
