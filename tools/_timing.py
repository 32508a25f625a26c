"""Timing shared by the benchmark tools: median wall time of calls that take turns, and the
argument type of their counts (threads, repeats, warm-up runs, batch and image sizes).

Every candidate and its baseline run alternately within each repeat, so a change in machine load
(other jobs on a shared machine) moves them alike and their ratio stays meaningful.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, TypeVar

import torch

T = TypeVar('T')


def count_at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``least`` (threads, repeats, warm-up runs,
    batch and image sizes), else an argparse error naming the option, before anything is built or
    timed."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f'must be a whole number of at least {least}, got {text!r}')
        return value
    return count


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
    times = take_turns(calls, timer(device), warmup, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def take_turns(calls: Dict[str, Callable[[], object]], measure: Callable[[Callable[[], object]], T],
               warmup: int, repeats: int) -> Dict[str, List[T]]:
    """``repeats`` results of ``measure(fn)`` for each named call, after ``warmup`` unrecorded
    ones; the calls take turns within every repeat."""
    for fn in calls.values():
        for _ in range(warmup):
            measure(fn)
    results = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            results[name].append(measure(fn))
    return results


def median_graph_ms(calls: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                    calls_per_graph: int = 20) -> Dict[str, float]:
    """Median GPU time in ms of one call of each named fn, from replays of a CUDA graph that
    holds ``calls_per_graph`` calls back to back: launch and Python overhead drop out, so this
    compares kernels, which per-call timing cannot once a kernel takes less time than its call.
    Each graph is replayed ``warmup`` times untimed, then the graphs take turns within every
    repeat, as in :func:`median_ms`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graph asks
        for fn in calls.values():
            for _ in range(max(warmup, 1)):
                fn()
    torch.cuda.current_stream().wait_stream(side)
    graphs = {}
    for name, fn in calls.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls_per_graph):
                fn()
        graphs[name] = graph
    time_one = timer('cuda')
    # The warm-up replays keep each graph's first replay, which uploads it, out of the timed ones.
    times = take_turns({name: graph.replay for name, graph in graphs.items()},
                       lambda replay: time_one(replay) / calls_per_graph, warmup, repeats)
    return {name: statistics.median(values) for name, values in times.items()}
