"""Why DCNv3 exports as GridSample: two standard-ONNX decompositions timed in ONNX Runtime.

    python tools/deployment/benchmark_dcnv3_onnx.py [--threads 2] [--repeats 3]

At the sizes of InternImage-T's four stages for an 800x1344 input, times one layer's sampling
core as exported by ``ops_dcnv3/onnx.py`` (one GridSample per layer, then a mask-weighted sum)
and as a gather-based alternative (bilinear corners as flat indices, four Gathers, weights
including the mask multiplied in), both in ONNX Runtime, next to the compiled C++ op. Both
decompositions are checked against the compiled op first.
"""
import argparse
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402,F401  (repository on sys.path, quiet imports)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import count_at_least, median_ms  # noqa: E402

from ops_dcnv3 import HAS_COMPILED_OP  # noqa: E402
from ops_dcnv3.onnx import register_dcnv3_onnx_symbolic  # noqa: E402

# (H, W, channels, groups) of InternImage-T's stages at stride 4..32 of an 800x1344 input.
STAGES = [(200, 336, 64, 4), (100, 168, 128, 8), (50, 84, 256, 16), (25, 42, 512, 32)]
KERNEL = 3


def gather_dcnv3(input, offset, mask, group):
    """DCNv3 (3x3, stride 1, pad 1, dilation 1, offset_scale 1) by explicit bilinear gathers."""
    batch, height, width, channels = input.shape
    points = KERNEL * KERNEL
    kernel = torch.arange(KERNEL, dtype=input.dtype) - 1
    kernel_x = kernel.repeat_interleave(KERNEL)  # point p = i*kernel_h + j has x index i
    kernel_y = kernel.repeat(KERNEL)
    offset = offset.reshape(batch, height, width, group, points, 2)
    xs = torch.arange(width, dtype=input.dtype)[:, None] + kernel_x
    ys = torch.arange(height, dtype=input.dtype)[:, None] + kernel_y
    x = offset[..., 0] + xs[None, None, :, None, :]
    y = offset[..., 1] + ys[None, :, None, None, :]
    mask = mask.reshape(batch, height, width, group, points)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    rows = input.reshape(batch * height * width * group, channels // group)
    first_row = (torch.arange(batch).reshape(batch, 1, 1, 1, 1) * height * width * group
                 + torch.arange(group).reshape(1, 1, 1, group, 1))
    output = 0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * mask
        weight = weight * ((xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)).to(weight.dtype)
        index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long() * group + first_row
        corner = rows[index.reshape(-1)].reshape(batch, height, width, group, points, -1)
        output = output + (corner * weight[..., None]).sum(4)
    return output.reshape(batch, height, width, channels)


class _Core(torch.nn.Module):
    def __init__(self, group, use_gather):
        super().__init__()
        self.group, self.use_gather = group, use_gather

    def forward(self, input, offset, mask):
        if self.use_gather:
            return gather_dcnv3(input, offset, mask, self.group)
        return torch.ops.dcnv3.dcnv3_forward(input, offset, mask, KERNEL, KERNEL, 1, 1, 1, 1, 1, 1,
                                             self.group, input.shape[-1] // self.group, 1.0)


def main(argv=None):
    import onnxruntime as ort
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=count_at_least(1), default=2)
    parser.add_argument('--repeats', type=count_at_least(1), default=3)
    args = parser.parse_args(argv)
    if not HAS_COMPILED_OP:  # the reference and the exported op (torch.ops.dcnv3 would not exist)
        sys.exit('benchmark_dcnv3_onnx.py: error: it exports and times the compiled op; build it '
                 'first (python setup.py build_ext --inplace)')
    register_dcnv3_onnx_symbolic()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    generator = torch.Generator().manual_seed(0)
    print(f'{"stage (H x W x C, groups)":28s} {"compiled op":>12s} {"GridSample":>12s} {"gathers":>12s}')
    with tempfile.TemporaryDirectory() as folder:
        for height, width, channels, group in STAGES:
            input = torch.randn(1, height, width, channels, generator=generator)
            offset = 2 * torch.randn(1, height, width, group * KERNEL * KERNEL * 2, generator=generator)
            mask = torch.rand(1, height, width, group * KERNEL * KERNEL, generator=generator)
            feeds = dict(input=input.numpy(), offset=offset.numpy(), mask=mask.numpy())
            compiled = _Core(group, use_gather=False)
            expected = compiled(input, offset, mask).numpy()
            calls = {'compiled op': lambda: compiled(input, offset, mask)}
            for name, use_gather in (('GridSample', False), ('gathers', True)):
                path = osp.join(folder, f'core_{name}.onnx')
                torch.onnx.export(_Core(group, use_gather), (input, offset, mask), path, dynamo=False,
                                  opset_version=17, input_names=list(feeds))
                session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
                np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-3, atol=1e-3)
                calls[name] = lambda session=session: session.run(None, feeds)
            row = median_ms(calls, 'cpu', warmup=1, repeats=args.repeats).values()
            name = f'{height} x {width} x {channels}, {group}'
            print(f'{name:28s} ' + ' '.join(f'{ms:9.1f} ms' for ms in row), flush=True)


if __name__ == '__main__':
    main()
