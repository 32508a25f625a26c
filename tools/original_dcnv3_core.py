"""DCNv3 on the original InternImage CUDA kernel, to time training against it (scripts/gpu_check.sh).

Importing this module registers ``core_op='DCNv3_original'`` for the InternImage backbone, a
module with the same parameters as ``DCNv3`` whose core is the original implementation's op. A
config selects it like this (``custom_imports`` is read when the config file loads; ``tools/``
is on ``sys.path`` when a tool runs, so ``original_dcnv3_core`` imports from here)::

    _base_ = 'some_internimage_config.py'
    custom_imports = dict(imports=['mmdet_custom', 'original_dcnv3_core'], allow_failed_imports=False)
    model = dict(backbone=dict(core_op='DCNv3_original'))

The original's code is not part of this project. It is loaded from ``$ORIGINAL_DCNV3_DIR``
(default ``.device/original_dcnv3`` in the checkout, where ``scripts/gpu_check.sh --prepare``
copies ``../shared/anchors/original_dcnv3``), whose ``load.py`` compiles it on first use and
caches the build in ``$ORIGINAL_DCNV3_BUILD``; every process that loads it needs the first
build's CUDA_HOME and CPATH (``cuda_build_env`` in scripts/_build_common.sh), or torch's loader
rebuilds it. It has CUDA kernels only, for float32, float64 and float16.
"""
import importlib.util
import os
import os.path as osp

import torch
from torch.autograd.function import once_differentiable

from mmdet_custom.models.backbones.intern_image import CORE_OPS
from ops_dcnv3.modules.dcnv3 import _DCNv3Base

__all__ = ['CORE_OP_NAME', 'DCNv3Original', 'OriginalDCNv3Function', 'original_extension']

CORE_OP_NAME = 'DCNv3_original'
DEFAULT_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.device', 'original_dcnv3')
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16)

_extension = None


def original_extension():
    """The compiled original op (``dcnv3_forward``/``dcnv3_backward``), built once per process."""
    global _extension
    if _extension is None:
        folder = os.environ.get('ORIGINAL_DCNV3_DIR') or DEFAULT_DIR
        loader = osp.join(folder, 'load.py')
        if not osp.isfile(loader):
            raise FileNotFoundError(
                f'the original DCNv3 code is not at {folder} (no load.py): run '
                f'`bash scripts/gpu_check.sh --prepare` to copy ../shared/anchors/original_dcnv3 '
                f'there, or set ORIGINAL_DCNV3_DIR to such a copy')
        spec = importlib.util.spec_from_file_location('original_dcnv3_load', loader)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _extension = module.build()
    return _extension


class OriginalDCNv3Function(torch.autograd.Function):
    """The original op's forward and backward as one differentiable function (inputs as ours)."""

    @staticmethod
    def forward(ctx, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step):
        if input.device.type != 'cuda':
            raise RuntimeError(f'{CORE_OP_NAME}: the original DCNv3 kernel runs on CUDA only (its CPU '
                               f'entry points are not implemented); got tensors on {input.device}')
        if input.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f'{CORE_OP_NAME}: the original DCNv3 kernel supports float32, float64 and '
                            f'float16, not {str(input.dtype).replace("torch.", "")}')
        ctx.args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                    group, group_channels, offset_scale)
        ctx.im2col_step = im2col_step
        # The original asserts contiguous inputs.
        input, offset, mask = input.contiguous(), offset.contiguous(), mask.contiguous()
        ctx.save_for_backward(input, offset, mask)
        return original_extension().dcnv3_forward(input, offset, mask, *ctx.args, im2col_step)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_mask = original_extension().dcnv3_backward(
            input, offset, mask, *ctx.args, grad_output.contiguous(), ctx.im2col_step)
        return (grad_input, grad_offset, grad_mask) + (None,) * (len(ctx.args) + 1)


class DCNv3Original(_DCNv3Base):
    """``DCNv3`` with the original kernel as its core (same parameters and checkpoint keys)."""

    # The original module's value; the kernel clamps it to the batch, which it must divide.
    im2col_step = 256

    def _sample(self, values, offset, mask):
        return OriginalDCNv3Function.apply(values, offset, mask, *self._core_args(), self.im2col_step)


CORE_OPS.setdefault(CORE_OP_NAME, DCNv3Original)
