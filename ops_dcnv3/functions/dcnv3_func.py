"""The DCNv3 core: the compiled dispatcher op and its pure-PyTorch twin.

Everything is channels-last: ``input`` is (N, H, W, group*group_channels), ``offset`` is
(N, Ho, Wo, group*P*2) with (x, y) pairs, ``mask`` is (N, Ho, Wo, group*P), P = kernel_h*kernel_w,
and sampling point ``p = i*kernel_h + j`` has kernel column ``i`` (x) as the outer index.
With ``softmax=True`` the op takes mask *logits* and applies the per-group softmax over the P points
itself (in float32 or wider), and its backward returns the gradient with respect to the logits.

``DCNv3Function.apply`` calls ``torch.ops.dcnv3.dcnv3_forward`` (registered by loading
``ops_dcnv3._C``); its autograd formula and fake (meta) kernels are registered here, once, so the
op works under ``torch.compile(fullgraph=True)``. When the extension is missing, or has no kernel
for the tensors' device, the call falls back to :func:`dcnv3_core_pytorch` with a single warning.
"""
import importlib
import math
import numbers
import os
import warnings

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F

try:
    # Loading the library registers the dcnv3:: ops. import_module (not `from .. import _C`)
    # gives a plain "No module named 'ops_dcnv3._C'" when the extension is not built.
    importlib.import_module('ops_dcnv3._C')
    HAS_COMPILED_OP = True
    COMPILED_OP_IMPORT_ERROR = None
except (ImportError, OSError) as exc:  # never fail at import: the PyTorch core still works
    HAS_COMPILED_OP = False
    COMPILED_OP_IMPORT_ERROR = exc

__all__ = ['DCNv3Function', 'dcnv3_core_pytorch', 'dcnv3_output_size', 'check_dcnv3_args',
           'HAS_COMPILED_OP']


# --- argument checks (the Python copy of the rules in csrc/dcnv3.h, same wording) ------------------

def dcnv3_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                      dilation_h, dilation_w):
    """Return ``(Ho, Wo)``, the spatial size of the output (and of ``offset`` and ``mask``)."""
    out_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    return out_h, out_w


def _check(condition, message, error=ValueError):
    if not condition:
        raise error(message)


def _check_no_forward_mode_ad(*tensors):
    """Forward-mode AD (torch.func.jvp, jacfwd, forward_ad's dual tensors) is refused: the op
    registers a backward only, and a dual input came out of it without a tangent, a silent zero
    derivative."""
    if torch.compiler.is_compiling():  # traced graphs carry no dual tensors
        return
    _check(all(forward_ad.unpack_dual(t).tangent is None for t in tensors),
           'dcnv3: forward-mode AD (torch.func.jvp, jacfwd, dual tensors) is not supported; use '
           'backward() or torch.autograd.grad, or dcnv3_core_pytorch', NotImplementedError)


def _dtype_name(dtype):
    return str(dtype).replace('torch.', '')


def check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     dilation_h, dilation_w, group, group_channels, offset_scale):
    """Validate DCNv3 arguments as the C++ op does; return the output size ``(Ho, Wo)``.

    Raises ``ValueError`` (``TypeError`` for dtype problems) with a message naming the problem.
    """
    for name, tensor in (('input', input), ('offset', offset), ('mask', mask)):
        _check(isinstance(tensor, torch.Tensor),
               f'dcnv3: {name} must be a Tensor, got {type(tensor).__name__}', TypeError)
        _check(tensor.dim() == 4,
               f'dcnv3: {name} must be a 4-D channels-last (N, H, W, C) tensor, got {tensor.dim()}-D '
               f'shape {tuple(tensor.shape)}')
    integers = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w,
                    pad_h=pad_h, pad_w=pad_w, dilation_h=dilation_h, dilation_w=dilation_w,
                    group=group, group_channels=group_channels)
    for name, value in integers.items():  # (the C++ schema itself takes only ints)
        _check(isinstance(value, numbers.Integral) and not isinstance(value, bool),
               f'dcnv3: {name} must be an int, got {value!r}', TypeError)
    _check(kernel_h >= 1 and kernel_w >= 1,
           f'dcnv3: kernel size must be >= 1, got kernel_h={kernel_h}, kernel_w={kernel_w}')
    _check(stride_h >= 1 and stride_w >= 1,
           f'dcnv3: stride must be >= 1, got stride_h={stride_h}, stride_w={stride_w}')
    _check(pad_h >= 0 and pad_w >= 0, f'dcnv3: padding must be >= 0, got pad_h={pad_h}, pad_w={pad_w}')
    _check(dilation_h >= 1 and dilation_w >= 1,
           f'dcnv3: dilation must be >= 1, got dilation_h={dilation_h}, dilation_w={dilation_w}')
    _check(group >= 1, f'dcnv3: group must be >= 1, got {group}')
    _check(group_channels >= 1, f'dcnv3: group_channels must be >= 1, got {group_channels}')
    _check(max(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels) < 2**31,
           f'dcnv3: kernel size, stride, padding, dilation, group and group_channels must be below '
           f'2^31, got kernel {kernel_h}x{kernel_w}, stride {stride_h}x{stride_w}, pad {pad_h}x{pad_w}, '
           f'dilation {dilation_h}x{dilation_w}, group {group}, group_channels {group_channels}')
    _check(math.isfinite(offset_scale), f'dcnv3: offset_scale must be finite, got {offset_scale}')

    _check(input.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
           f'dcnv3: input must have a floating-point dtype (float16, bfloat16, float32 or float64), '
           f'got {_dtype_name(input.dtype)}', TypeError)
    _check(input.dtype == offset.dtype == mask.dtype,
           f'dcnv3: input, offset and mask must have the same dtype, got {_dtype_name(input.dtype)}, '
           f'{_dtype_name(offset.dtype)} and {_dtype_name(mask.dtype)}', TypeError)
    _check(input.dtype == torch.float64 or abs(offset_scale) <= torch.finfo(torch.float32).max,
           f"dcnv3: offset_scale must lie within float32's range (the kernels compute float32, "
           f'float16 and bfloat16 inputs in float32), got {offset_scale}')
    _check(input.device == offset.device == mask.device,
           f'dcnv3: input, offset and mask must be on the same device, got {input.device}, '
           f'{offset.device} and {mask.device}')

    batch, height, width, channels = input.shape
    _check(channels % group == 0,
           f'dcnv3: input channels ({channels}) must be divisible by group ({group})')
    _check(channels == group * group_channels,
           f'dcnv3: input channels ({channels}) must equal group * group_channels '
           f'({group} * {group_channels} = {group * group_channels})')
    int64_max = 2**63 - 1  # the C++ check's products saturate there
    mask_size = min(group * kernel_h * kernel_w, int64_max)
    offset_size = min(mask_size * 2, int64_max)
    _check(offset.shape[3] == offset_size,
           f'dcnv3: offset last dim must be group * kernel_h * kernel_w * 2 '
           f'({group} * {kernel_h} * {kernel_w} * 2 = {offset_size}), got {offset.shape[3]}')
    _check(mask.shape[3] == mask_size,
           f'dcnv3: mask last dim must be group * kernel_h * kernel_w '
           f'({group} * {kernel_h} * {kernel_w} = {mask_size}), got {mask.shape[3]}')

    out_h, out_w = dcnv3_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w,
                                     pad_h, pad_w, dilation_h, dilation_w)
    _check(out_h >= 1 and out_w >= 1,
           f'dcnv3: output size would be {out_h}x{out_w} (input {height}x{width}, kernel '
           f'{kernel_h}x{kernel_w}, stride {stride_h}x{stride_w}, pad {pad_h}x{pad_w}, dilation '
           f'{dilation_h}x{dilation_w}); it must be at least 1x1')
    padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
    _check(padded_h < 2**31 and padded_w < 2**31,
           f'dcnv3: the padded input (H + 2 * pad_h) x (W + 2 * pad_w) = {padded_h}x{padded_w} must '
           f'be below 2^31 on each side')
    for name, tensor in (('offset', offset), ('mask', mask)):
        _check(tensor.shape[0] == batch and tensor.shape[1] == out_h and tensor.shape[2] == out_w,
               f'dcnv3: {name} must have shape (N, Ho, Wo, ...) = ({batch}, {out_h}, {out_w}, ...) '
               f'for this input and kernel settings, got {tuple(tensor.shape)}')
    return out_h, out_w


def _check_grad_output(grad_output, input, out_h, out_w):
    expected = (input.shape[0], out_h, out_w, input.shape[3])
    _check(tuple(grad_output.shape) == expected,
           f'dcnv3: grad_output must have the output shape {expected}, got {tuple(grad_output.shape)}')
    _check(grad_output.dtype == input.dtype,
           f'dcnv3: grad_output must have the input dtype {_dtype_name(input.dtype)}, '
           f'got {_dtype_name(grad_output.dtype)}', TypeError)
    _check(grad_output.device == input.device,
           f'dcnv3: grad_output must be on the input device {input.device}, got {grad_output.device}')


# --- pure-PyTorch core ----------------------------------------------------------------------------

def _reference_points(padded_h, padded_w, out_h, out_w, kernel_h, kernel_w, dilation_h, dilation_w,
                      stride_h, stride_w, dtype, device):
    """Kernel-centre sampling positions, normalised to [0, 1] of the padded input: (1, Ho, Wo, 1, 2)."""
    centre_y = (dilation_h * (kernel_h - 1)) // 2 + 0.5  # +0.5: pixel centres (align_corners=False)
    centre_x = (dilation_w * (kernel_w - 1)) // 2 + 0.5
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(centre_y, centre_y + (out_h - 1) * stride_h, out_h, dtype=dtype, device=device),
        torch.linspace(centre_x, centre_x + (out_w - 1) * stride_w, out_w, dtype=dtype, device=device),
        indexing='ij')
    ref_y = ref_y.reshape(-1)[None] / padded_h
    ref_x = ref_x.reshape(-1)[None] / padded_w
    return torch.stack((ref_x, ref_y), -1).reshape(1, out_h, out_w, 1, 2)


def _kernel_displacements(padded_h, padded_w, kernel_h, kernel_w, dilation_h, dilation_w, group,
                          dtype, device):
    """Regular kernel displacements, normalised like the reference points: (1, 1, 1, group*P, 2).

    ``indexing='ij'`` with x first gives the point order p = i*kernel_h + j (x outer).
    """
    first_x = -((dilation_w * (kernel_w - 1)) // 2)
    first_y = -((dilation_h * (kernel_h - 1)) // 2)
    x, y = torch.meshgrid(
        torch.linspace(first_x, first_x + (kernel_w - 1) * dilation_w, kernel_w, dtype=dtype, device=device),
        torch.linspace(first_y, first_y + (kernel_h - 1) * dilation_h, kernel_h, dtype=dtype, device=device),
        indexing='ij')
    grid = torch.stack([x / padded_w, y / padded_h], -1).reshape(-1, 1, 2)
    grid = grid.repeat(1, group, 1).permute(1, 0, 2)
    return grid.reshape(1, 1, 1, group * kernel_h * kernel_w, 2)


def _check_softmax_flag(softmax):
    _check(isinstance(softmax, bool), f'dcnv3: softmax must be a bool, got {softmax!r}', TypeError)


def dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, group, group_channels, offset_scale, softmax=False):
    """DCNv3 in plain PyTorch (pad, then ``grid_sample``); the fallback and the test oracle.

    ``softmax=True``: ``mask`` holds logits, softmaxed here over the points of each group (in
    float32 or wider), as the compiled op does with the same flag.

    Follows the official core's arithmetic step by step, so float32 results match it, with two
    deliberate differences: the sampling grid is built in float64 for float64 inputs (the official
    core always uses float32, costing ~1e-7 relative), and ``pad_h != pad_w`` pads the right axes.
    Half/bfloat16 inputs are computed in float32 and the result cast back.
    """
    out_h, out_w = check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                                    pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                                    offset_scale)
    _check_softmax_flag(softmax)
    out_dtype = input.dtype
    # grid_sample needs one dtype for values and grid, and positions need at least float32.
    dtype = torch.promote_types(input.dtype, torch.float32)
    input, offset, mask = input.to(dtype), offset.to(dtype), mask.to(dtype)
    device = input.device
    if softmax:
        mask = mask.unflatten(-1, (group, -1)).softmax(-1).flatten(-2)

    input = F.pad(input, [0, 0, pad_w, pad_w, pad_h, pad_h])  # (C, W, H) from the last dim backwards
    batch, padded_h, padded_w, _ = input.shape
    points = kernel_h * kernel_w

    ref = _reference_points(padded_h, padded_w, out_h, out_w, kernel_h, kernel_w, dilation_h,
                            dilation_w, stride_h, stride_w, dtype, device)
    displacement = _kernel_displacements(padded_h, padded_w, kernel_h, kernel_w, dilation_h,
                                         dilation_w, group, dtype, device)
    # An integer tensor, as in the official core, so the division rounds exactly the same way.
    spatial_norm = torch.tensor([padded_w, padded_h], device=device).repeat(group * points)
    locations = (ref + displacement * offset_scale).flatten(3, 4) + offset * offset_scale / spatial_norm
    sampling_grid = 2 * locations - 1  # grid_sample's [-1, 1]

    values = (input.reshape(batch, padded_h * padded_w, group * group_channels).transpose(1, 2)
              .reshape(batch * group, group_channels, padded_h, padded_w))
    sampling_grid = (sampling_grid.reshape(batch, out_h * out_w, group, points, 2).transpose(1, 2)
                     .flatten(0, 1))
    sampled = F.grid_sample(values, sampling_grid, mode='bilinear', padding_mode='zeros',
                            align_corners=False)  # (N*G, Cg, Ho*Wo, P)
    mask = (mask.reshape(batch, out_h * out_w, group, points).transpose(1, 2)
            .reshape(batch * group, 1, out_h * out_w, points))
    output = (sampled * mask).sum(-1).view(batch, group * group_channels, out_h * out_w)
    output = output.transpose(1, 2).reshape(batch, out_h, out_w, group * group_channels).contiguous()
    return output.to(out_dtype)


# --- the compiled op: fake kernels and autograd, registered once ----------------------------------

def _device_types_with_kernel():
    if not HAS_COMPILED_OP:
        return frozenset()
    # Meta: the fake kernel below also serves meta tensors (shapes without data).
    dispatch_keys = {'cpu': 'CPU', 'cuda': 'CUDA', 'meta': 'Meta'}
    return frozenset(device_type for device_type, key in dispatch_keys.items()
                     if torch._C._dispatch_has_kernel_for_dispatch_key('dcnv3::dcnv3_forward', key))


if HAS_COMPILED_OP:
    @torch.library.register_fake('dcnv3::dcnv3_forward')
    def _dcnv3_forward_fake(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                            pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                            softmax=False):
        out_h, out_w = check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                                        pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                                        offset_scale)
        return input.new_empty((input.shape[0], out_h, out_w, input.shape[3]))

    @torch.library.register_fake('dcnv3::dcnv3_backward')
    def _dcnv3_backward_fake(grad_output, input, offset, mask, kernel_h, kernel_w, stride_h,
                             stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                             offset_scale, softmax=False):
        out_h, out_w = check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                                        pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                                        offset_scale)
        _check_grad_output(grad_output, input, out_h, out_w)
        # The kernels return contiguous gradients whatever the inputs' strides.
        return (input.new_empty(input.shape), offset.new_empty(offset.shape),
                mask.new_empty(mask.shape))

    def _setup_context(ctx, inputs, output):
        # scalar_args ends with the softmax flag, so the backward sees the logits it was given.
        input, offset, mask, *scalar_args = inputs
        ctx.save_for_backward(input, offset, mask)
        ctx.scalar_args = scalar_args

    def _backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_mask = torch.ops.dcnv3.dcnv3_backward(
            grad_output, input, offset, mask, *ctx.scalar_args)
        return (grad_input, grad_offset, grad_mask) + (None,) * len(ctx.scalar_args)

    torch.library.register_autograd('dcnv3::dcnv3_forward', _backward, setup_context=_setup_context)

    def _double_backward(ctx, *grads):
        raise NotImplementedError('dcnv3: double backward (differentiating the gradients) is not '
                                  'supported; use dcnv3_core_pytorch for that')

    # Without this, autograd's fallback would only warn and silently return no gradient.
    torch.library.register_autograd('dcnv3::dcnv3_backward', _double_backward,
                                    setup_context=lambda ctx, inputs, output: None)

COMPILED_DEVICE_TYPES = _device_types_with_kernel()  # after the fake kernel's registration


# --- the public entry point -----------------------------------------------------------------------

_fallback_warned = False


def _warn_fallback_once(device_type):
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    if HAS_COMPILED_OP:
        reason = f'ops_dcnv3._C was built without a {device_type} kernel'
    else:
        reason = f'ops_dcnv3._C could not be loaded ({COMPILED_OP_IMPORT_ERROR})'
    # The repository's tools import the checkout's package even where a built copy is installed.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    warnings.warn(f'{reason}; DCNv3 falls back to the much slower pure-PyTorch core '
                  f'dcnv3_core_pytorch. This ops_dcnv3 is {package}: in a checkout, build the '
                  f'extension with `python setup.py build_ext --inplace`; an installed copy, '
                  f'install again', RuntimeWarning, stacklevel=3)


class DCNv3Function:
    """DCNv3 with the original ``DCNv3Function.apply`` call; differentiable w.r.t. the three tensors.

    Gradients come from the autograd formula registered on ``dcnv3::dcnv3_forward``, so this class
    needs no ``forward``/``backward`` of its own.
    """

    @staticmethod
    def apply(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
              dilation_w, group, group_channels, offset_scale, im2col_step, *, softmax=False):
        """The original call takes an already-normalised ``mask``; ``softmax=True`` takes logits
        and fuses the per-group softmax into the op (forward and backward)."""
        # The kernels need no batch chunking, so im2col_step only has to be valid: any batch works.
        _check(isinstance(im2col_step, numbers.Integral) and not isinstance(im2col_step, bool)
               and im2col_step >= 1, f'dcnv3: im2col_step must be a positive int, got {im2col_step!r}')
        _check_softmax_flag(softmax)
        for name, value in (('input', input), ('offset', offset), ('mask', mask)):
            _check(isinstance(value, torch.Tensor),
                   f'dcnv3: {name} must be a Tensor, got {type(value).__name__}', TypeError)
        _check_no_forward_mode_ad(input, offset, mask)
        _check(isinstance(offset_scale, numbers.Real) and not isinstance(offset_scale, bool),
               f'dcnv3: offset_scale must be a number, got {offset_scale!r}', TypeError)
        args = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                group_channels, float(offset_scale), softmax)
        if HAS_COMPILED_OP and input.device.type in COMPILED_DEVICE_TYPES:
            return torch.ops.dcnv3.dcnv3_forward(input, offset, mask, *args)
        _warn_fallback_once(input.device.type)
        return dcnv3_core_pytorch(input, offset, mask, *args)
