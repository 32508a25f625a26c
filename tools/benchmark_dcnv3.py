"""Time the compiled DCNv3 op against the pure-PyTorch core on the InternImage-T stage shapes.

The shapes are those of an --image-size input (default 800x1216) at strides 4, 8, 16, 32 (sizes
rounded up, as the stem and the downsamples do), kernel 3, stride 1, pad 1, 16 channels per
group, offsets of a few pixels. Both sides start from the mask *logits*, as the DCNv3 module
has them: the op takes them with softmax=True (the per-group softmax fused into its forward and
backward); the core gets the softmax computed in PyTorch inside the timed region, as
DCNv3_pytorch does. Forward is timed without autograd; backward is the autograd backward of one
forward (the registered formula for the op, autograd through softmax and grid_sample for the
core). Each figure is the median of --repeats runs after --warmup runs; the baseline is measured
in the same run, taking turns with the op.

On CUDA the table adds the kernels' GPU time ("gpu"): each op called directly (no autograd) 20
times in a CUDA graph, per call, median of the graph's replays. A call's wall time includes its
Python and launch overhead, which exceeds the kernel time at the small stages.

With --original DIR (CUDA only) the original InternImage CUDA op, built by DIR/load.py, is timed
on the same inputs too: its kernels called directly with the mask already softmaxed (so its time
excludes the softmax that ours includes) and im2col_step = batch. The ratios original / ours are
printed for the GPU times (the kernels) and for the wall times (ours through autograd, the
original called directly), and --check-original FWD BWD fails unless our kernels are that much
faster at every stage.

Example:
    python tools/benchmark_dcnv3.py --device cpu --threads 2
    python tools/benchmark_dcnv3.py --device cuda --batch 2 --image-size 800 1333 --original DIR
"""
import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import _bootstrap  # noqa: E402
from _timing import count_at_least, median_graph_ms, median_ms  # noqa: E402
from ops_dcnv3.functions import DCNv3Function, dcnv3_core_pytorch  # noqa: E402
from ops_dcnv3.functions import dcnv3_func  # noqa: E402

# InternImage-T: (channels, groups) per stage, and the stage's stride.
STAGES = {1: (64, 4, 4), 2: (128, 8, 8), 3: (256, 16, 16), 4: (512, 32, 32)}
KERNEL = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
              dilation_w=1)
# Targets for stage 1 on CPU (op with the fused softmax / core with its softmax, speed-up).
CPU_TARGETS = {'forward': 7.0, 'backward': 6.0}
ORIGINAL_DTYPES = ('float32', 'float64', 'float16')  # what the original op supports


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--threads', type=count_at_least(1), default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--dtype', choices=('float32', 'float64', 'float16', 'bfloat16'),
                        default='float32')
    parser.add_argument('--stages', type=int, nargs='+', choices=sorted(STAGES), default=sorted(STAGES))
    parser.add_argument('--image-size', type=count_at_least(1), nargs=2, default=(800, 1216),
                        metavar=('H', 'W'),
                        help='input image size; stage s works at ceil(H/stride) x ceil(W/stride)')
    parser.add_argument('--batch', type=count_at_least(1), default=1)
    parser.add_argument('--repeats', type=count_at_least(1), default=10,
                        help='timed runs per figure (median)')
    parser.add_argument('--warmup', type=count_at_least(0), default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--check', action='store_true',
                        help='exit with status 1 if the stage-1 CPU targets (forward >= '
                             f'{CPU_TARGETS["forward"]:g}x, backward >= {CPU_TARGETS["backward"]:g}x '
                             'over the core) are not met')
    parser.add_argument('--original', metavar='DIR',
                        help='also time the original InternImage CUDA op built by DIR/load.py '
                             '(CUDA only)')
    parser.add_argument('--check-original', type=float, nargs=2, metavar=('FWD', 'BWD'),
                        help='with --original: exit with status 1 unless ours is at least FWD '
                             'times faster (forward) and BWD times faster (backward) at every stage')
    args = parser.parse_args(argv)
    if args.check and (args.device != 'cpu' or 1 not in args.stages):
        parser.error('--check checks the stage-1 CPU targets: it needs --device cpu and stage 1')
    if args.check_original and not args.original:
        parser.error('--check-original needs --original DIR')
    if args.check_original and args.dtype not in ORIGINAL_DTYPES:  # else nothing would be checked
        parser.error(f'--check-original: the original op has no {args.dtype} kernels (it has '
                     f'{", ".join(ORIGINAL_DTYPES)})')
    if args.original:
        if args.device != 'cuda':
            parser.error('--original needs --device cuda: the original DCNv3 op has CUDA kernels '
                         'only')
        if not (Path(args.original) / 'load.py').is_file():
            parser.error(f'--original {args.original}: no load.py in that folder (expected the '
                         f'original DCNv3 op with a load.py whose build() compiles it)')
    return args


def stage_shape(stage, image_size):
    """(height, width, channels, groups) of an InternImage-T stage for this input size."""
    channels, groups, stride = STAGES[stage]
    height, width = (math.ceil(size / stride) for size in image_size)
    return height, width, channels, groups


def make_inputs(batch, height, width, channels, groups, dtype, device, generator, max_offset=3.0):
    """(values, offset, mask logits, grad_output); offsets within +-max_offset px."""
    points = KERNEL['kernel_h'] * KERNEL['kernel_w']

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float32)

    values = rand(batch, height, width, channels) * 2 - 1
    offset = (rand(batch, height, width, groups * points * 2) * 2 - 1) * max_offset
    mask_logits = rand(batch, height, width, groups * points) * 4 - 2
    grad_output = rand(batch, height, width, channels) * 2 - 1
    return [t.to(device=device, dtype=dtype) for t in (values, offset, mask_logits, grad_output)]


def load_original(folder):
    """The original op's extension module, compiled by folder/load.py's build()."""
    spec = importlib.util.spec_from_file_location('original_dcnv3_load', Path(folder) / 'load.py')
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.build()


def no_grad_call(fn, *tensors):
    with torch.no_grad():
        return fn(*tensors)


def bench_stage(stage, args, dtype, original=None):
    height, width, channels, groups = stage_shape(stage, args.image_size)
    generator = torch.Generator().manual_seed(args.seed + stage)
    values, offset, mask_logits, grad_output = make_inputs(args.batch, height, width, channels,
                                                           groups, dtype, args.device, generator)
    scalar_args = tuple(dict(KERNEL, group=groups, group_channels=channels // groups,
                             offset_scale=1.0).values())

    def op(v, o, logits):
        return DCNv3Function.apply(v, o, logits, *scalar_args, 256, softmax=True)

    def core(v, o, logits):
        return dcnv3_core_pytorch(v, o, logits, *scalar_args, softmax=True)

    row = {'stage': stage, 'shape': f'{args.batch}x{height}x{width}x{channels}/g{groups}'}
    with torch.no_grad():
        expected = core(values, offset, mask_logits).float()
        row['max_abs_diff'] = (op(values, offset, mask_logits).float() - expected).abs().max().item()
    calls = {}
    for name, fn in (('core', core), ('op', op)):
        calls[f'fwd_{name}'] = lambda fn=fn: no_grad_call(fn, values, offset, mask_logits)
        leaves = [t.detach().requires_grad_() for t in (values, offset, mask_logits)]
        out = fn(*leaves)  # one graph, reused by every timed backward (retain_graph)
        calls[f'bwd_{name}'] = lambda out=out, leaves=leaves: torch.autograd.grad(
            out, leaves, grad_output, retain_graph=True)
    if original is not None:
        mask = mask_logits.unflatten(-1, (groups, -1)).softmax(-1).flatten(-2)
        original_args = (values, offset, mask, *scalar_args)
        calls['fwd_original'] = lambda: original.dcnv3_forward(*original_args, args.batch)
        calls['bwd_original'] = lambda: original.dcnv3_backward(*original_args, grad_output,
                                                                args.batch)
        with torch.no_grad():
            row['original_max_abs_diff'] = (
                original.dcnv3_forward(*original_args, args.batch).float() - expected).abs().max().item()
    row.update(median_ms(calls, args.device, args.warmup, args.repeats))
    row['fwd_speedup'] = row['fwd_core'] / row['fwd_op']
    row['bwd_speedup'] = row['bwd_core'] / row['bwd_op']
    if args.device == 'cuda':
        # The kernels alone: the ops called directly (no autograd), replayed from CUDA graphs.
        kernel_calls = {
            'fwd_op': lambda: torch.ops.dcnv3.dcnv3_forward(values, offset, mask_logits,
                                                            *scalar_args, True),
            'bwd_op': lambda: torch.ops.dcnv3.dcnv3_backward(grad_output, values, offset,
                                                             mask_logits, *scalar_args, True)}
        if original is not None:
            kernel_calls['fwd_original'] = calls['fwd_original']
            kernel_calls['bwd_original'] = calls['bwd_original']
        gpu = median_graph_ms(kernel_calls, args.warmup, args.repeats)
        row.update({f'gpu_{name}': value for name, value in gpu.items()})
    if original is not None:
        row['wall_fwd_vs_original'] = row['fwd_original'] / row['fwd_op']
        row['wall_bwd_vs_original'] = row['bwd_original'] / row['bwd_op']
        # The targets compare kernels: GPU times where there are any.
        kind = 'gpu_' if args.device == 'cuda' else ''
        row['fwd_vs_original'] = row[f'{kind}fwd_original'] / row[f'{kind}fwd_op']
        row['bwd_vs_original'] = row[f'{kind}bwd_original'] / row[f'{kind}bwd_op']
    return row


def original_failures(rows, forward, backward):
    """Stages at which ours is not at least forward/backward times faster than the original."""
    return [f'stage {row["stage"]}: forward {row["fwd_vs_original"]:.2f}x (need {forward:g}x), '
            f'backward {row["bwd_vs_original"]:.2f}x (need {backward:g}x)'
            for row in rows
            if row['fwd_vs_original'] < forward or row['bwd_vs_original'] < backward]


def main(argv=None):
    args = parse_args(argv)
    # As in the tools that run models: without it the PyTorch core's large intermediates are
    # faulted in anew on every call, which doubled its CPU time (docs/benchmarks.md).
    _bootstrap.reuse_freed_memory()
    dtype = getattr(torch, args.dtype)
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is available')
    if not (dcnv3_func.HAS_COMPILED_OP and args.device in dcnv3_func.COMPILED_DEVICE_TYPES):
        sys.exit(f'the compiled op has no {args.device} kernel here; build it first '
                 f'(python setup.py build_ext --inplace)')
    original = None
    if args.original:
        if args.dtype in ORIGINAL_DTYPES:
            original = load_original(args.original)
        else:
            print(f'note: the original op has no {args.dtype} kernels; timing ours only')

    device_name = (torch.cuda.get_device_name() if args.device == 'cuda'
                   else f'cpu, {torch.get_num_threads()} threads, '
                        f'{torch.ops.dcnv3.cpu_kernel_variant()} kernels')
    print(f'DCNv3 op (fused softmax) vs dcnv3_core_pytorch (+ softmax): {device_name}, {args.dtype}, '
          f'torch {torch.__version__}, image {args.image_size[0]}x{args.image_size[1]}, '
          f'median of {args.repeats} after {args.warmup} warm-up')
    print(f'load average before: {os.getloadavg()[0]:.2f} (1 min, {os.cpu_count()} CPUs)')
    header = (f'{"stage":>5} {"shape (NxHxWxC/groups)":>24} {"fwd core":>10} {"fwd op":>9} {"x":>6} '
              f'{"bwd core":>10} {"bwd op":>9} {"x":>6} {"max|diff|":>10}')
    if args.device == 'cuda':
        header += f' | {"gpu fwd":>8} {"gpu bwd":>8}'
    if original is not None:
        header += (f' | {"orig fwd":>8} {"orig/op":>7} {"orig bwd":>8} {"orig/op":>7}'
                   f' | {"wall fwd":>8} {"orig/op":>7} {"wall bwd":>8} {"orig/op":>7}')
    print(header)
    print('-' * len(header))
    rows = []
    for stage in args.stages:
        row = bench_stage(stage, args, dtype, original)
        rows.append(row)
        line = (f'{row["stage"]:>5} {row["shape"]:>24} {row["fwd_core"]:>8.2f}ms {row["fwd_op"]:>7.2f}ms '
                f'{row["fwd_speedup"]:>5.1f}x {row["bwd_core"]:>8.2f}ms {row["bwd_op"]:>7.2f}ms '
                f'{row["bwd_speedup"]:>5.1f}x {row["max_abs_diff"]:>10.2e}')
        if args.device == 'cuda':
            line += f' | {row["gpu_fwd_op"]:>6.3f}ms {row["gpu_bwd_op"]:>6.3f}ms'
        if original is not None:
            line += (f' | {row["gpu_fwd_original"]:>6.3f}ms {row["fwd_vs_original"]:>6.2f}x '
                     f'{row["gpu_bwd_original"]:>6.3f}ms {row["bwd_vs_original"]:>6.2f}x'
                     f' | {row["fwd_original"]:>6.3f}ms {row["wall_fwd_vs_original"]:>6.2f}x '
                     f'{row["bwd_original"]:>6.3f}ms {row["wall_bwd_vs_original"]:>6.2f}x')
        print(line, flush=True)
    print(f'load average after: {os.getloadavg()[0]:.2f}')
    if original is not None:
        print(f'original op max|diff| vs the core: '
              f'{max(row["original_max_abs_diff"] for row in rows):.2e}')

    failed = False
    stage1 = next((row for row in rows if row['stage'] == 1), None)
    if args.device == 'cpu' and stage1 is not None:
        met = (stage1['fwd_speedup'] >= CPU_TARGETS['forward']
               and stage1['bwd_speedup'] >= CPU_TARGETS['backward'])
        print(f'stage-1 CPU targets (forward >= {CPU_TARGETS["forward"]:g}x, backward >= '
              f'{CPU_TARGETS["backward"]:g}x): {"met" if met else "NOT met"}')
        failed = args.check and not met
    if original is not None and args.check_original:
        failures = original_failures(rows, *args.check_original)
        print('vs the original: ' + ('; '.join(failures) if failures else
                                     f'at least {args.check_original[0]:g}x (forward) and '
                                     f'{args.check_original[1]:g}x (backward) faster at every stage'))
        failed = failed or bool(failures)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
