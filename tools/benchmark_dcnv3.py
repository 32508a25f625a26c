"""Time the compiled DCNv3 op against the pure-PyTorch core on the InternImage-T stage shapes.

The shapes are those of a 1216x800 input (strides 4, 8, 16, 32), kernel 3, stride 1, pad 1,
16 channels per group, offsets of a few pixels and per-group softmaxed masks. Forward is timed
without autograd; backward is the autograd backward of one forward (the registered formula for
the compiled op, autograd through grid_sample for the core). Each figure is the median of
--repeats runs after --warmup runs; the baseline is measured in the same run, taking turns with
the compiled op.

Example:
    python tools/benchmark_dcnv3.py --device cpu --threads 2
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from ops_dcnv3.functions import DCNv3Function, dcnv3_core_pytorch  # noqa: E402
from ops_dcnv3.functions import dcnv3_func  # noqa: E402

# InternImage-T at 1216x800: (height, width, channels, groups) per stage.
STAGES = {1: (200, 304, 64, 4), 2: (100, 152, 128, 8), 3: (50, 76, 256, 16), 4: (25, 38, 512, 32)}
KERNEL = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
              dilation_w=1)
# Targets for stage 1 on CPU (compiled op / core speed-up).
CPU_TARGETS = {'forward': 5.0, 'backward': 4.0}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--dtype', choices=('float32', 'float64', 'float16', 'bfloat16'),
                        default='float32')
    parser.add_argument('--stages', type=int, nargs='+', choices=sorted(STAGES), default=sorted(STAGES))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per figure (median)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--check', action='store_true',
                        help='exit with status 1 if the stage-1 CPU targets (forward >= 5x, '
                             'backward >= 4x) are not met')
    return parser.parse_args()


def make_inputs(batch, height, width, channels, groups, dtype, device, generator):
    points = KERNEL['kernel_h'] * KERNEL['kernel_w']

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float32)

    values = rand(batch, height, width, channels) * 2 - 1
    offset = (rand(batch, height, width, groups * points * 2) * 2 - 1) * 3  # up to +-3 px
    mask = torch.softmax((rand(batch, height, width, groups, points) * 4 - 2), -1).flatten(3)
    grad_output = rand(batch, height, width, channels) * 2 - 1
    return [t.to(device=device, dtype=dtype) for t in (values, offset, mask, grad_output)]


def timer(device):
    """Return a function that times one call of fn() in milliseconds."""
    if device == 'cuda':
        def time_cuda(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
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


def median_ms(calls, device, warmup, repeats):
    """Median time in ms of each named call. The calls take turns within every repeat, so a
    change in machine load affects the compiled op and the baseline alike."""
    time_one = timer(device)
    for fn in calls.values():
        for _ in range(warmup):
            time_one(fn)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(time_one(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def no_grad_call(fn, *tensors):
    with torch.no_grad():
        return fn(*tensors)


def bench_stage(stage, args, dtype):
    height, width, channels, groups = STAGES[stage]
    generator = torch.Generator().manual_seed(args.seed + stage)
    values, offset, mask, grad_output = make_inputs(args.batch, height, width, channels, groups,
                                                    dtype, args.device, generator)
    scalars = dict(KERNEL, group=groups, group_channels=channels // groups, offset_scale=1.0)
    scalar_args = tuple(scalars.values())

    def compiled(v, o, m):
        return DCNv3Function.apply(v, o, m, *scalar_args, 256)

    def core(v, o, m):
        return dcnv3_core_pytorch(v, o, m, *scalar_args)

    row = {'stage': stage, 'shape': f'{args.batch}x{height}x{width}x{channels}/g{groups}'}
    with torch.no_grad():
        max_diff = (compiled(values, offset, mask).float() - core(values, offset, mask).float()).abs().max()
    row['max_abs_diff'] = max_diff.item()
    calls = {}
    for name, fn in (('core', core), ('op', compiled)):
        calls[f'fwd_{name}'] = lambda fn=fn: no_grad_call(fn, values, offset, mask)
        leaves = [t.detach().requires_grad_() for t in (values, offset, mask)]
        out = fn(*leaves)  # one graph, reused by every timed backward (retain_graph)
        calls[f'bwd_{name}'] = lambda out=out, leaves=leaves: torch.autograd.grad(
            out, leaves, grad_output, retain_graph=True)
    row.update(median_ms(calls, args.device, args.warmup, args.repeats))
    row['fwd_speedup'] = row['fwd_core'] / row['fwd_op']
    row['bwd_speedup'] = row['bwd_core'] / row['bwd_op']
    return row


def main():
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is available')
    if not (dcnv3_func.HAS_COMPILED_OP and args.device in dcnv3_func.COMPILED_DEVICE_TYPES):
        sys.exit(f'the compiled op has no {args.device} kernel here; build it first '
                 f'(python setup.py build_ext --inplace)')

    device_name = (torch.cuda.get_device_name() if args.device == 'cuda'
                   else f'cpu, {torch.get_num_threads()} threads')
    print(f'DCNv3 op vs dcnv3_core_pytorch: {device_name}, {args.dtype}, torch {torch.__version__}, '
          f'median of {args.repeats} after {args.warmup} warm-up')
    if args.device == 'cpu':
        print(f'load average before: {os.getloadavg()[0]:.2f} (1 min, {os.cpu_count()} CPUs)')
    header = (f'{"stage":>5} {"shape (NxHxWxC/groups)":>24} {"fwd core":>10} {"fwd op":>9} {"x":>6} '
              f'{"bwd core":>10} {"bwd op":>9} {"x":>6} {"max|diff|":>10}')
    print(header)
    print('-' * len(header))
    rows = []
    for stage in args.stages:
        row = bench_stage(stage, args, dtype)
        rows.append(row)
        print(f'{row["stage"]:>5} {row["shape"]:>24} {row["fwd_core"]:>8.2f}ms {row["fwd_op"]:>7.2f}ms '
              f'{row["fwd_speedup"]:>5.1f}x {row["bwd_core"]:>8.2f}ms {row["bwd_op"]:>7.2f}ms '
              f'{row["bwd_speedup"]:>5.1f}x {row["max_abs_diff"]:>10.2e}', flush=True)

    if args.device == 'cpu':
        print(f'load average after: {os.getloadavg()[0]:.2f}')
    stage1 = next((row for row in rows if row['stage'] == 1), None)
    if args.device == 'cpu' and stage1 is not None:
        met = (stage1['fwd_speedup'] >= CPU_TARGETS['forward']
               and stage1['bwd_speedup'] >= CPU_TARGETS['backward'])
        print(f'stage-1 CPU targets (forward >= {CPU_TARGETS["forward"]:g}x, backward >= '
              f'{CPU_TARGETS["backward"]:g}x): {"met" if met else "NOT met"}')
        if args.check and not met:
            sys.exit(1)


if __name__ == '__main__':
    main()
