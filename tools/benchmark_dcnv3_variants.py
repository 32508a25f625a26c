"""Time versions of the DCNv3 CUDA kernels against each other on one GPU (for kernel work).

Each variant is a version of ops_dcnv3/csrc/cuda/dcnv3_kernel.cu, named NAME=REV (that git
revision's file) or NAME=PATH (a file). It is built as an op library of its own,
``torch.ops.dcnv3_NAME``, together with this checkout's dcnv3.cpp and dcnv3.h (the op schema and
the argument checks), so that every variant runs in the same process on the same inputs. The
builds run in parallel and are cached in --build-dir.

On the InternImage-T stage shapes (as tools/benchmark_dcnv3.py: kernel 3, 16 channels per group,
mask logits with softmax=True, batch and image size as given) each variant's forward and backward
are called directly (no autograd) and timed two ways, medians of --repeats after --warmup:
  gpu   GPU time per call, from replays of a CUDA graph of 20 calls (launch overhead drops out,
        the inputs stay in L2 where they fit);
  cold  one call between CUDA events after 256 MB were written to the GPU, so that the inputs
        come from memory as they do when other layers ran in between.
Ratios are against the first variant, and max|diff| is each variant's forward output and
gradients against the first's (over the largest magnitude, where that exceeds 1). With
--max-diff the variants are first compared on small configurations that reach every path of the
kernels (EDGE_CASES: other channel counts, kernel sizes, stride, dilation, offset scale, the mask
without the softmax), and the run fails when a variant differs by more there or on a stage: it
computes something else. --max-offset sets the offsets' range in pixels (training starts from
zero offsets; the benchmark's default is 3).

Example (the previous commit's kernels against the working tree's):
    python tools/benchmark_dcnv3_variants.py previous=HEAD~1 current=ops_dcnv3/csrc/cuda/dcnv3_kernel.cu
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / 'tools'))

from _timing import count_at_least, median_graph_ms, timer  # noqa: E402
from benchmark_dcnv3 import KERNEL, STAGES, make_inputs, stage_shape  # noqa: E402

CSRC = ROOT / 'ops_dcnv3' / 'csrc'
KERNEL_FILE = 'ops_dcnv3/csrc/cuda/dcnv3_kernel.cu'
NAME_PATTERN = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
FLUSH_BYTES = 256 * 2 ** 20

# Configurations beside the InternImage-T stages (which all have 16 channels a group and 3x3
# kernels): 1 to 4 lanes of one or two chunks, vectors of 1, 2, 4 and 8 elements, kernels other
# than 3x3, stride, dilation, offset scale, and the mask as given. Each on 2 images of 9x11 with
# offsets within +-3 px, so that points fall outside the image.
# (group, group_channels, (kernel_h, kernel_w), stride, pad, dilation, offset_scale, softmax)
EDGE_CASES = (
    (2, 16, (3, 3), 1, 1, 1, 1.0, True),
    (2, 16, (3, 3), 1, 1, 1, 1.0, False),
    (1, 24, (3, 3), 1, 1, 1, 1.0, True),
    (2, 32, (3, 3), 1, 1, 1, 1.0, True),
    (4, 8, (3, 3), 1, 1, 1, 1.0, True),
    (3, 12, (3, 3), 1, 1, 1, 1.0, True),
    (2, 6, (3, 3), 1, 1, 1, 1.0, True),
    (1, 5, (3, 3), 1, 1, 1, 1.0, True),
    (2, 16, (5, 5), 1, 2, 1, 1.0, True),
    (2, 16, (3, 5), 2, 1, 2, 0.5, True),
    (2, 16, (1, 1), 1, 0, 1, 1.0, True),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('variants', nargs='+', metavar='NAME=REV|PATH',
                        help='kernel versions to compare; the first is the baseline')
    parser.add_argument('--dtype', choices=('float32', 'float16', 'bfloat16', 'float64'),
                        default='float32')
    parser.add_argument('--stages', type=int, nargs='+', choices=sorted(STAGES), default=sorted(STAGES))
    # The counts are checked here, before the variants take minutes to build.
    parser.add_argument('--image-size', type=count_at_least(1), nargs=2, default=(800, 1333),
                        metavar=('H', 'W'))
    parser.add_argument('--batch', type=count_at_least(1), default=2)
    parser.add_argument('--max-offset', type=float, default=3.0, help='offsets within +-this, px')
    parser.add_argument('--repeats', type=count_at_least(1), default=10)
    parser.add_argument('--warmup', type=count_at_least(0), default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--build-dir', default=str(ROOT / 'build' / 'dcnv3_variants'))
    parser.add_argument('--build-only', action='store_true', help='build the variants and stop')
    parser.add_argument('--max-diff', type=float,
                        help='fail when a variant\'s outputs or gradients differ from the '
                             'first\'s by more than this')
    args = parser.parse_args(argv)
    args.variants = [_parse_variant(parser, text) for text in args.variants]
    names = [name for name, _ in args.variants]
    if len(set(names)) != len(names):
        parser.error(f'variant names must differ, got {names}')
    return args


def _parse_variant(parser, text):
    name, sep, where = text.partition('=')
    if not sep or not NAME_PATTERN.match(name) or not where:
        parser.error(f'variant {text!r}: expected NAME=REV or NAME=PATH, NAME a Python identifier')
    return name, where


def kernel_source(where):
    """The text of a kernel version: a file, or KERNEL_FILE at a git revision."""
    path = Path(where)
    if path.is_file():
        return path.read_text()
    result = subprocess.run(['git', 'show', f'{where}:{KERNEL_FILE}'], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'variant source {where!r}: neither a file nor a git revision with '
                         f'{KERNEL_FILE} ({result.stderr.strip()})')
    return result.stdout


def _renamed(text, library):
    """Source text whose op registrations and lookups use namespace ``library``, not dcnv3."""
    return (text.replace('TORCH_LIBRARY(dcnv3,', f'TORCH_LIBRARY({library},')
            .replace('TORCH_LIBRARY_IMPL(dcnv3,', f'TORCH_LIBRARY_IMPL({library},')
            .replace('"dcnv3::', f'"{library}::'))


def _build_includes():
    """The CUDA toolkit and header folders setup.py builds the op with (torch's nvidia-* wheels
    hold headers, such as cuSPARSE's, that some toolkits lack)."""
    import setup  # ROOT is on sys.path; importing it builds nothing
    if not os.environ.get('CUDA_HOME'):
        cuda_home = setup.find_cuda_home()
        if cuda_home:
            os.environ['CUDA_HOME'] = cuda_home  # before torch.utils.cpp_extension is imported
    return setup._nvidia_wheel_includes()


def build_variant(name, source, build_dir):
    """Build (or load, when up to date) variant ``name``; returns its ``torch.ops`` namespace."""
    includes = _build_includes()
    from torch.utils.cpp_extension import load

    library = f'dcnv3_{name}'
    folder = Path(build_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for file_name, text in (('dcnv3.cpp', (CSRC / 'dcnv3.cpp').read_text()),
                            ('dcnv3_kernel.cu', source)):
        path = folder / file_name
        text = _renamed(text, library)
        if not path.is_file() or path.read_text() != text:  # keep the timestamps of unchanged files
            path.write_text(text)
        sources.append(str(path))
    load(name=library, sources=sources, extra_include_paths=[str(CSRC), *includes],
         extra_cflags=['-O3', '-std=c++20'],
         extra_cuda_cflags=['-O3', '-std=c++20', '--expt-relaxed-constexpr'],
         build_directory=str(folder), is_python_module=False, verbose=False)
    return getattr(torch.ops, library)


def _build_in_worker(item):
    name, source, build_dir = item
    build_variant(name, source, build_dir)
    return name


def build_all(variants, build_dir):
    """Build every variant, in parallel processes; then load them here."""
    items = [(name, kernel_source(where), build_dir) for name, where in variants]
    with ProcessPoolExecutor(max_workers=len(items)) as pool:
        for name in pool.map(_build_in_worker, items):
            print(f'built {name}', flush=True)
    return {name: build_variant(name, source, build_dir) for name, source, _ in items}


def median_cold_ms(calls, warmup, repeats):
    """Median ms of one call after FLUSH_BYTES were written to the GPU (inputs out of L2)."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device='cuda')
    time_one = timer('cuda')  # synchronizes first: the flush is done before the clock starts
    times = {name: [] for name in calls}
    for repeat in range(warmup + repeats):
        for name, fn in calls.items():
            flush.fill_(repeat & 0xff)
            elapsed = time_one(fn)
            if repeat >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_stage(stage, ops, args, dtype):
    height, width, channels, groups = stage_shape(stage, args.image_size)
    generator = torch.Generator().manual_seed(args.seed + stage)
    values, offset, logits, grad_output = make_inputs(args.batch, height, width, channels, groups,
                                                      dtype, 'cuda', generator, args.max_offset)
    scalars = tuple(dict(KERNEL, group=groups, group_channels=channels // groups,
                         offset_scale=1.0).values()) + (True,)
    calls, results = {}, {}
    for name, op in ops.items():
        calls[f'fwd_{name}'] = lambda op=op: op.dcnv3_forward(values, offset, logits, *scalars)
        calls[f'bwd_{name}'] = lambda op=op: op.dcnv3_backward(grad_output, values, offset,
                                                               logits, *scalars)
        results[name] = [calls[f'fwd_{name}'](), *calls[f'bwd_{name}']()]
    diffs = max_diffs(results)
    del results
    gpu = median_graph_ms(calls, args.warmup, args.repeats)
    cold = median_cold_ms(calls, args.warmup, args.repeats)
    return f'{args.batch}x{height}x{width}x{channels}/g{groups}', gpu, cold, diffs


def max_diffs(results):
    """{variant: max over its tensors of max|a - b| / max(1, max|b|)}, b the first variant's."""
    base = next(iter(results.values()))
    return {name: max(((a.double() - b.double()).abs().max() /
                       b.double().abs().max().clamp(min=1)).item() for a, b in zip(tensors, base))
            for name, tensors in results.items()}


def edge_case_inputs(case, generator):
    """((values, offset, mask, grad_output), scalars) of one of EDGE_CASES: float32 CPU tensors
    and the op's arguments after the tensors."""
    group, group_channels, (kernel_h, kernel_w), stride, pad, dilation, scale, softmax = case
    height, width, points = 9, 11, kernel_h * kernel_w
    out_h = (height + 2 * pad - dilation * (kernel_h - 1) - 1) // stride + 1
    out_w = (width + 2 * pad - dilation * (kernel_w - 1) - 1) // stride + 1

    def rand(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    values = rand(2, height, width, group * group_channels)
    offset = rand(2, out_h, out_w, group * points * 2) * 3
    mask = rand(2, out_h, out_w, group, points) * 2
    if not softmax:  # weights as the layer gives them: softmaxed over each group's points
        mask = mask.softmax(-1)
    grad_output = rand(2, out_h, out_w, group * group_channels)
    scalars = (kernel_h, kernel_w, stride, stride, pad, pad, dilation, dilation, group,
               group_channels, scale, softmax)
    return (values, offset, mask.reshape(2, out_h, out_w, -1), grad_output), scalars


def edge_case_diffs(ops, dtype, seed, device='cuda'):
    """[(description, max_diffs)] of the variants' forward and backward on EDGE_CASES."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for case in EDGE_CASES:
        tensors, scalars = edge_case_inputs(case, generator)
        values, offset, mask, grad_output = (t.to(device, dtype) for t in tensors)
        results = {name: [op.dcnv3_forward(values, offset, mask, *scalars),
                          *op.dcnv3_backward(grad_output, values, offset, mask, *scalars)]
                   for name, op in ops.items()}
        group, group_channels, (kernel_h, kernel_w), stride, pad, dilation, scale, softmax = case
        rows.append((f'g{group} c{group_channels} k{kernel_h}x{kernel_w} s{stride} p{pad} '
                     f'd{dilation} scale {scale:g} {"softmax" if softmax else "mask"}',
                     max_diffs(results)))
    return rows


def beyond(diffs, max_diff, where):
    """The variants whose max|diff| (NaN included) exceeds ``max_diff``, named for the message."""
    if max_diff is None:
        return []
    return [f'{name} at {where} ({diff:.2e})' for name, diff in diffs.items()
            if not diff <= max_diff]


def main(argv=None):
    args = parse_args(argv)
    if not args.build_only and not torch.cuda.is_available():
        sys.exit('benchmark_dcnv3_variants: needs a CUDA device (use --build-only to only build)')
    if 'TORCH_CUDA_ARCH_LIST' not in os.environ:
        # Reading the device starts CUDA before the build workers fork: with the list given (as
        # gpu_check gives it), this process starts it only after they are done.
        os.environ['TORCH_CUDA_ARCH_LIST'] = ('.'.join(map(str, torch.cuda.get_device_capability()))
                                              if torch.cuda.is_available() else '9.0')
    ops = build_all(args.variants, args.build_dir)
    if args.build_only:
        return
    dtype = getattr(torch, args.dtype)
    names = list(ops)
    print(f'DCNv3 kernel variants: {torch.cuda.get_device_name()}, {args.dtype}, torch '
          f'{torch.__version__}, image {args.image_size[0]}x{args.image_size[1]}, batch '
          f'{args.batch}, offsets within +-{args.max_offset:g} px, median of {args.repeats}; '
          f'ratios: {names[0]} time / variant time')
    for name, where in args.variants:
        print(f'  {name} = {where}')
    too_far = []
    if args.max_diff is not None:
        print(f'max|diff| against {names[0]} on small configurations (limit {args.max_diff:g}):')
        for description, diffs in edge_case_diffs(ops, dtype, args.seed):
            too_far += beyond(diffs, args.max_diff, description)
            print(f'  {description:<40} ' + ' '.join(
                f'{name} {diff:.2e}' for name, diff in diffs.items() if name != names[0]))
    header = f'{"stage":>5} {"variant":>12} ' + ' '.join(
        f'{label:>9} {"x":>5}' for label in ('gpu fwd', 'gpu bwd', 'cold fwd', 'cold bwd')) + \
        f' {"max|diff|":>10}'
    print(header)
    print('-' * len(header))
    for stage in args.stages:
        shape, gpu, cold, diffs = bench_stage(stage, ops, args, dtype)
        too_far += beyond(diffs, args.max_diff, f'stage {stage}')
        for name in names:
            cells = []
            for times in (gpu, cold):
                for kind in ('fwd', 'bwd'):
                    ms = times[f'{kind}_{name}']
                    cells.append(f'{ms:>7.3f}ms {times[f"{kind}_{names[0]}"] / ms:>4.2f}x')
            print(f'{stage:>5} {name:>12} ' + ' '.join(cells) + f' {diffs[name]:>10.2e}',
                  flush=True)
        print(f'{"":>5} {shape}')
    if too_far:
        sys.exit(f'benchmark_dcnv3_variants: max|diff| against {names[0]} above '
                 f'{args.max_diff:g}: ' + ', '.join(too_far))


if __name__ == '__main__':
    main()
