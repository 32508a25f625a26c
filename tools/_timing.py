"""Timing shared by the benchmark tools: median wall time of calls that take turns.

Every candidate and its baseline run alternately within each repeat, so a change in machine load
(other jobs on a shared machine) moves them alike and their ratio stays meaningful.
"""
import statistics
import time
from typing import Callable, Dict

import torch


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Return a function that times one call of fn() in milliseconds (CUDA: with events)."""
    if device == 'cuda':
        def time_cuda(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        return time_cuda

    def time_cpu(fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return time_cpu


def median_ms(calls: Dict[str, Callable[[], object]], device: str, warmup: int,
              repeats: int) -> Dict[str, float]:
    """Median time in ms of each named call, after ``warmup`` untimed runs of each; the calls take
    turns within every repeat."""
    time_one = timer(device)
    for fn in calls.values():
        for _ in range(warmup):
            time_one(fn)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(time_one(fn))
    return {name: statistics.median(values) for name, values in times.items()}
