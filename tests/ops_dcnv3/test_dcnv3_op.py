"""Tests of the DCNv3 operator: the compiled op (CPU kernels), its registrations, and the
pure-PyTorch core, against the official reference data and an independent loop oracle."""
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ops_dcnv3.functions import DCNv3Function, dcnv3_core_pytorch, dcnv3_func, dcnv3_output_size

# The reference data sits in ../shared/reference beside the checkout, or in $DCNV3_REF_DIR.
REFERENCE_DIR = Path(os.environ.get('DCNV3_REF_DIR') or
                     Path(__file__).resolve().parents[2].parent / 'shared' / 'reference')
REFERENCE_FILE = REFERENCE_DIR / 'dcnv3_core_ref.pt'
REPO_ROOT = Path(__file__).resolve().parents[2]

requires_compiled_cpu = pytest.mark.skipif(
    not (dcnv3_func.HAS_COMPILED_OP and 'cpu' in dcnv3_func.COMPILED_DEVICE_TYPES),
    reason=f'ops_dcnv3._C has no CPU kernel here (build it: python setup.py build_ext --inplace); '
           f'import error: {dcnv3_func.COMPILED_OP_IMPORT_ERROR}')

SCALAR_NAMES = ('kernel_h', 'kernel_w', 'stride_h', 'stride_w', 'pad_h', 'pad_w', 'dilation_h',
                'dilation_w', 'group', 'group_channels', 'offset_scale')


def compiled_op(input, offset, mask, *scalars):
    return DCNv3Function.apply(input, offset, mask, *scalars, 64)


def compiled_op_on_logits(input, offset, mask_logits, *scalars):
    return DCNv3Function.apply(input, offset, mask_logits, *scalars, 64, softmax=True)


def core_on_logits(input, offset, mask_logits, *scalars):
    return dcnv3_core_pytorch(input, offset, mask_logits, *scalars, softmax=True)


def softmax_then(fn):
    """fn on the per-group softmax of mask logits, the softmax done by torch (and differentiated
    by autograd): what softmax=True must equal."""
    def call(input, offset, mask_logits, *scalars):
        group = scalars[8]
        mask = mask_logits.unflatten(-1, (group, -1)).softmax(-1).flatten(-2)
        return fn(input, offset, mask, *scalars)
    return call


def make_logits(mask, seed=5):
    """Mask logits shaped like ``mask``, spread enough that the softmax is far from uniform."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(mask.shape, generator=generator, dtype=mask.dtype) * 2


# --- helpers ---------------------------------------------------------------------------------------

def make_case(batch=2, height=6, width=7, group=2, group_channels=3, kernel_h=3, kernel_w=3,
              stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
              offset_scale=1.0, offset_range=2.5, dtype=torch.float64, seed=0):
    """Random channels-last arguments; offsets avoid landing on integer pixel positions."""
    generator = torch.Generator().manual_seed(seed)
    out_h, out_w = dcnv3_output_size(height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                     pad_w, dilation_h, dilation_w)
    points = kernel_h * kernel_w
    input = torch.randn(batch, height, width, group * group_channels, generator=generator, dtype=dtype)
    offset = (torch.rand(batch, out_h, out_w, group * points * 2, generator=generator, dtype=dtype)
              * 2 - 1) * offset_range
    mask = torch.softmax(torch.randn(batch, out_h, out_w, group, points, generator=generator,
                                     dtype=dtype), -1).flatten(3)
    scalars = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels, offset_scale)
    return input, offset, mask, scalars


def loop_oracle(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale):
    """DCNv3 written straight from the reference README's formulas, one sample at a time."""
    batch, height, width, channels = input.shape
    out_h, out_w = offset.shape[1:3]
    points = kernel_h * kernel_w
    centre_x, centre_y = (dilation_w * (kernel_w - 1)) // 2, (dilation_h * (kernel_h - 1)) // 2
    output = torch.zeros(batch, out_h, out_w, channels, dtype=input.dtype)

    def pixel(n, y, x, g):
        if 0 <= y < height and 0 <= x < width:
            return input[n, y, x, g * group_channels:(g + 1) * group_channels]
        return torch.zeros(group_channels, dtype=input.dtype)

    for n in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                for g in range(group):
                    for i in range(kernel_w):
                        for j in range(kernel_h):
                            p = i * kernel_h + j
                            dx, dy = offset[n, ho, wo, (g * points + p) * 2:(g * points + p) * 2 + 2].tolist()
                            x = (wo * stride_w - pad_w + centre_x
                                 + (i * dilation_w - centre_x + dx) * offset_scale)
                            y = (ho * stride_h - pad_h + centre_y
                                 + (j * dilation_h - centre_y + dy) * offset_scale)
                            x0, y0 = math.floor(x), math.floor(y)
                            lx, ly = x - x0, y - y0
                            value = ((1 - ly) * (1 - lx) * pixel(n, y0, x0, g)
                                     + (1 - ly) * lx * pixel(n, y0, x0 + 1, g)
                                     + ly * (1 - lx) * pixel(n, y0 + 1, x0, g)
                                     + ly * lx * pixel(n, y0 + 1, x0 + 1, g))
                            output[n, ho, wo, g * group_channels:(g + 1) * group_channels] += (
                                mask[n, ho, wo, g * points + p] * value)
    return output


def output_and_grads(fn, input, offset, mask, scalars, grad_output):
    leaves = [t.detach().clone().requires_grad_() for t in (input, offset, mask)]
    output = fn(*leaves, *scalars)
    grads = torch.autograd.grad(output, leaves, grad_output)
    return (output.detach(),) + grads


# --- reference data ----------------------------------------------------------------------------------

def load_reference_cases():
    if not REFERENCE_FILE.is_file():
        return []
    return torch.load(REFERENCE_FILE, weights_only=True)['cases']


REFERENCE_CASES = load_reference_cases()
reference_case_params = pytest.mark.parametrize(
    'case', REFERENCE_CASES or [pytest.param(None, marks=pytest.mark.skip(
        reason=f'reference data not found at {REFERENCE_FILE} (set DCNV3_REF_DIR)'))],
    ids=[case['name'] for case in REFERENCE_CASES] or None)


def case_arguments(case, dtype=torch.float64):
    scalars = tuple(case['args'][name] for name in SCALAR_NAMES)
    tensors = [case[key].to(dtype) for key in ('input', 'offset', 'mask', 'grad_output')]
    return tensors, scalars


def assert_reference(actual, case, suffix, rtol, atol):
    for value, key in zip(actual, ('output', 'grad_input', 'grad_offset', 'grad_mask')):
        expected = case[key + suffix]
        torch.testing.assert_close(value.to(expected.dtype), expected, rtol=rtol, atol=atol,
                                   msg=lambda m: f'{case["name"]} {key}: {m}')


@requires_compiled_cpu
@reference_case_params
def test_compiled_matches_reference_float64(case):
    (input, offset, mask, grad_output), scalars = case_arguments(case)
    actual = output_and_grads(compiled_op, input, offset, mask, scalars, grad_output)
    assert_reference(actual, case, '', rtol=1e-8, atol=1e-8)


@reference_case_params
def test_core_pytorch_matches_reference_float64(case):
    (input, offset, mask, grad_output), scalars = case_arguments(case)
    actual = output_and_grads(dcnv3_core_pytorch, input, offset, mask, scalars, grad_output)
    assert_reference(actual, case, '', rtol=1e-8, atol=1e-8)


@requires_compiled_cpu
@reference_case_params
def test_compiled_float32_matches_official_core(case):
    (input, offset, mask, grad_output), scalars = case_arguments(case, torch.float32)
    actual = output_and_grads(compiled_op, input, offset, mask, scalars, grad_output)
    # Float32 rounding plus the official core's float32 grid: ~1e-6 relative to the largest value.
    for value, key in zip(actual, ('output', 'grad_input', 'grad_offset', 'grad_mask')):
        expected = case[key + '_core_as_is']
        scale = expected.abs().max().item()
        torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=2e-5 * scale,
                                   msg=lambda m: f'{case["name"]} {key}: {m}')


@reference_case_params
def test_core_pytorch_float32_matches_official_core(case):
    (input, offset, mask, _), scalars = case_arguments(case, torch.float32)
    # Same arithmetic as the official core in float32: equal up to the float32 representation of
    # the float64 reference inputs.
    output = dcnv3_core_pytorch(input, offset, mask, *scalars)
    expected = case['output_core_as_is']
    torch.testing.assert_close(output.double(), expected, rtol=1e-4,
                               atol=2e-5 * expected.abs().max().item())


# --- semantics and agreement -------------------------------------------------------------------------

ORACLE_SETTINGS = [
    dict(),
    dict(pad_h=2, pad_w=0, kernel_h=3, kernel_w=2),  # asymmetric padding and an even kernel
    dict(stride_h=2, stride_w=1, dilation_h=1, dilation_w=2, offset_scale=2.0, group=1),
    dict(kernel_h=1, kernel_w=1, pad_h=0, pad_w=0, offset_range=6.0),
]


def settings_id(settings):
    return ','.join(f'{k}={v}' for k, v in settings.items()) or 'default'


@pytest.mark.parametrize('settings', ORACLE_SETTINGS, ids=settings_id)
@pytest.mark.parametrize('implementation', ['compiled', 'core_pytorch'])
def test_matches_loop_oracle(settings, implementation):
    if implementation == 'compiled' and not dcnv3_func.HAS_COMPILED_OP:
        pytest.skip('ops_dcnv3._C not built')
    fn = compiled_op if implementation == 'compiled' else dcnv3_core_pytorch
    input, offset, mask, scalars = make_case(batch=1, height=4, width=5, **settings)
    torch.testing.assert_close(fn(input, offset, mask, *scalars),
                               loop_oracle(input, offset, mask, *scalars), rtol=1e-10, atol=1e-10)


COMPARE_SETTINGS = [
    dict(),
    dict(height=9, width=11, group=4, group_channels=16, offset_range=4.0),  # InternImage-like
    dict(group=3, group_channels=5, kernel_h=5, kernel_w=3, pad_h=2, pad_w=1),
    dict(stride_h=2, stride_w=2, pad_h=0, pad_w=2, dilation_h=2, dilation_w=1, offset_scale=0.5),
    dict(group_channels=9, offset_range=20.0),  # 9 channels: one 4-wide block plus a remainder
]


@requires_compiled_cpu
@pytest.mark.parametrize('softmax', [False, True], ids=['mask', 'logits'])
@pytest.mark.parametrize('settings', COMPARE_SETTINGS, ids=settings_id)
def test_compiled_matches_core_pytorch_float32(settings, softmax):
    input, offset, mask, scalars = make_case(dtype=torch.float32, seed=1, **settings)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3])
    if softmax:
        mask = make_logits(mask)
    core, op = (core_on_logits, compiled_op_on_logits) if softmax else (dcnv3_core_pytorch, compiled_op)
    expected = output_and_grads(core, input, offset, mask, scalars, grad_output)
    actual = output_and_grads(op, input, offset, mask, scalars, grad_output)
    for name, a, e in zip(('output', 'grad_input', 'grad_offset', 'grad_mask'), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * max(1.0, e.abs().max().item()),
                                   msg=lambda m: f'{name}: {m}')


@requires_compiled_cpu
@pytest.mark.parametrize('softmax', [False, True], ids=['mask', 'logits'])
def test_gradcheck_compiled(softmax):
    op = compiled_op_on_logits if softmax else compiled_op
    settings = [dict(batch=2, height=4, width=5, group=2, group_channels=2),
                dict(batch=1, height=5, width=4, group=1, group_channels=3, kernel_h=3, kernel_w=2,
                     stride_h=2, pad_h=2, pad_w=0, offset_scale=1.5)]
    for setting in settings:
        input, offset, mask, scalars = make_case(**setting)
        if softmax:
            mask = make_logits(mask)
        leaves = tuple(t.requires_grad_() for t in (input, offset, mask))
        assert torch.autograd.gradcheck(lambda i, o, m: op(i, o, m, *scalars), leaves,
                                        eps=1e-6, atol=1e-7, rtol=1e-5)


# --- the fused mask softmax (softmax=True) ------------------------------------------------------------

@pytest.mark.parametrize('settings', ORACLE_SETTINGS[:3] + COMPARE_SETTINGS[1:3], ids=settings_id)
@pytest.mark.parametrize('implementation', ['compiled', 'core_pytorch'])
def test_softmax_flag_equals_softmax_then_op(settings, implementation):
    """softmax=True on logits gives the output of the op on torch's softmax of them, and the
    gradients through that softmax (float64, to rounding)."""
    if implementation == 'compiled' and not dcnv3_func.HAS_COMPILED_OP:
        pytest.skip('ops_dcnv3._C not built')
    fused, plain = ((compiled_op_on_logits, compiled_op) if implementation == 'compiled'
                    else (core_on_logits, dcnv3_core_pytorch))
    input, offset, mask, scalars = make_case(seed=3, **settings)
    logits = make_logits(mask)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3], dtype=torch.float64)
    expected = output_and_grads(softmax_then(plain), input, offset, logits, scalars, grad_output)
    actual = output_and_grads(fused, input, offset, logits, scalars, grad_output)
    for name, a, e in zip(('output', 'grad_input', 'grad_offset', 'grad_logits'), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=lambda m: f'{name}: {m}')


@requires_compiled_cpu
def test_softmax_flag_reaches_the_backward_op():
    """dcnv3_backward(softmax=True) returns gradients with respect to the logits; the mask
    gradient sums to zero over each group's points (softmax is shift-invariant)."""
    input, offset, mask, scalars = make_case(seed=4)
    logits = make_logits(mask)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3], dtype=torch.float64)
    _, _, grad_logits = torch.ops.dcnv3.dcnv3_backward(grad_output, input, offset, logits, *scalars,
                                                       softmax=True)
    torch.testing.assert_close(grad_logits.unflatten(-1, (scalars[8], -1)).sum(-1),
                               torch.zeros(grad_logits.shape[:3] + (scalars[8],), dtype=torch.float64),
                               rtol=0, atol=1e-12)
    expected = output_and_grads(softmax_then(compiled_op), input, offset, logits, scalars, grad_output)
    torch.testing.assert_close(grad_logits, expected[3], rtol=1e-10, atol=1e-12)


@requires_compiled_cpu
def test_softmax_flag_with_large_and_nan_logits():
    """Large logits do not overflow (the max is subtracted); a NaN logit makes its group NaN, as
    torch.softmax does, and leaves the other groups finite."""
    input, offset, mask, scalars = make_case(batch=1, seed=6, dtype=torch.float32)
    logits = make_logits(mask) * 50 + 500
    torch.testing.assert_close(compiled_op_on_logits(input, offset, logits, *scalars),
                               softmax_then(compiled_op)(input, offset, logits, *scalars),
                               rtol=1e-5, atol=1e-5)
    logits[0, 0, 0, 0] = float('nan')
    output = compiled_op_on_logits(input, offset, logits, *scalars)
    group_channels = scalars[9]
    assert output[0, 0, 0, :group_channels].isnan().all()
    assert output[0, 0, 0, group_channels:].isfinite().all() and output[0, 1:].isfinite().all()


@requires_compiled_cpu
def test_softmax_flag_float32_exp_is_accurate():
    """The float32 kernels take the softmax's exp in vector blocks (their own polynomial): the
    output and the logits' gradient agree with torch's softmax to float32 rounding, for spreads up
    to hundreds and for -inf logits (weight 0)."""
    input, offset, mask, scalars = make_case(batch=1, seed=7, dtype=torch.float32)
    logits = make_logits(mask)
    logits[0, :, :, :9] *= 40  # group 0: a spread of hundreds (exp of values below -87)
    logits[0, 0, :, 9] = float('-inf')  # group 1, point 0 masked out in the first output row
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3])
    expected = output_and_grads(softmax_then(compiled_op), input, offset, logits, scalars, grad_output)
    actual = output_and_grads(compiled_op_on_logits, input, offset, logits, scalars, grad_output)
    for name, a, e in zip(('output', 'grad_input', 'grad_offset', 'grad_logits'), actual, expected):
        torch.testing.assert_close(a, e, rtol=2e-6, atol=2e-6 * e.abs().max().item(),
                                   msg=lambda m: f'{name}: {m}')


@requires_compiled_cpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_softmax_flag_in_reduced_precision(dtype):
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    logits = make_logits(mask)
    expected = compiled_op_on_logits(input, offset, logits, *scalars)
    output = compiled_op_on_logits(input.to(dtype), offset.to(dtype), logits.to(dtype), *scalars)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize('flag', [1, None, 'yes'])
@pytest.mark.parametrize('implementation', ['function', 'core_pytorch'])
def test_softmax_flag_must_be_bool(implementation, flag):
    input, offset, mask, scalars = make_case()
    with pytest.raises(TypeError, match='dcnv3: softmax must be a bool'):
        if implementation == 'function':
            DCNv3Function.apply(input, offset, mask, *scalars, 64, softmax=flag)
        else:
            dcnv3_core_pytorch(input, offset, mask, *scalars, softmax=flag)


@requires_compiled_cpu
def test_backward_consistent_across_thread_counts():
    """One thread takes the direct path, several threads the per-chunk buffers; same gradients,
    and repeated runs are bitwise identical."""
    input, offset, mask, scalars = make_case(batch=2, height=9, width=8, group=2, group_channels=4,
                                             offset_range=5.0)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3], dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        results = {}
        for count in (1, 3):
            torch.set_num_threads(count)
            results[count] = torch.ops.dcnv3.dcnv3_backward(grad_output, input, offset, mask, *scalars)
            again = torch.ops.dcnv3.dcnv3_backward(grad_output, input, offset, mask, *scalars)
            for first, second in zip(results[count], again):
                assert torch.equal(first, second)
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(results[1], results[3]):
        torch.testing.assert_close(one, three, rtol=1e-12, atol=1e-12)


@requires_compiled_cpu
def test_non_contiguous_inputs():
    input, offset, mask, scalars = make_case()
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3], dtype=torch.float64)
    # Same values, other strides: a transposed copy transposed back, and a slice of a wider tensor.
    input_nc = input.transpose(1, 2).contiguous().transpose(1, 2)
    offset_nc = torch.cat([offset, offset], -1)[..., :offset.shape[-1]]
    assert not input_nc.is_contiguous() and not offset_nc.is_contiguous()
    expected = output_and_grads(compiled_op, input, offset, mask, scalars, grad_output)
    actual = output_and_grads(compiled_op, input_nc, offset_nc, mask, scalars, grad_output)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@requires_compiled_cpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reduced_precision_runs_in_float32(dtype):
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    expected = compiled_op(input, offset, mask, *scalars)
    output = compiled_op(input.to(dtype), offset.to(dtype), mask.to(dtype), *scalars)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)


@requires_compiled_cpu
def test_autocast_runs_in_input_dtype():
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    expected = compiled_op(input, offset, mask, *scalars)
    with pytest.raises(TypeError, match='same dtype'):
        compiled_op(input.bfloat16(), offset.bfloat16(), mask, *scalars)
    # Under autocast a float32 mask (softmax output) next to bfloat16 values is cast to bfloat16.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output = compiled_op(input.bfloat16(), offset.bfloat16(), mask, *scalars)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize('implementation', ['compiled', 'core_pytorch'])
def test_far_and_nan_offsets_do_not_crash(implementation):
    if implementation == 'compiled' and not dcnv3_func.HAS_COMPILED_OP:
        pytest.skip('ops_dcnv3._C not built')
    fn = compiled_op if implementation == 'compiled' else dcnv3_core_pytorch
    input, offset, mask, scalars = make_case()
    far = torch.full_like(offset, 1e30)
    zeros = torch.zeros(input.shape[0], *offset.shape[1:3], input.shape[3], dtype=input.dtype)
    assert torch.equal(fn(input, far, mask, *scalars), zeros)
    nan = offset.clone()
    nan[0, 0, 0, 0] = float('nan')
    assert fn(input, nan, mask, *scalars).shape[1:3] == offset.shape[1:3]


@pytest.mark.parametrize('implementation', ['compiled', 'core_pytorch'])
def test_empty_batch(implementation):
    if implementation == 'compiled' and not dcnv3_func.HAS_COMPILED_OP:
        pytest.skip('ops_dcnv3._C not built')
    fn = compiled_op if implementation == 'compiled' else dcnv3_core_pytorch
    input, offset, mask, scalars = make_case(batch=0)
    leaves = [t.requires_grad_() for t in (input, offset, mask)]
    output = fn(*leaves, *scalars)
    assert output.shape == (0, *offset.shape[1:3], input.shape[3])
    output.sum().backward()
    assert input.grad.shape == input.shape


def test_output_size_formula():
    assert dcnv3_output_size(200, 304, 3, 3, 1, 1, 1, 1, 1, 1) == (200, 304)
    assert dcnv3_output_size(11, 9, 5, 5, 2, 2, 4, 4, 2, 2) == (6, 5)
    assert dcnv3_output_size(7, 9, 3, 3, 1, 2, 1, 1, 2, 1) == (5, 5)
    assert dcnv3_output_size(1, 1, 3, 3, 2, 2, 0, 0, 1, 1) == (0, 0)  # floor, not truncation


# --- registrations: opcheck and torch.compile -----------------------------------------------------

@requires_compiled_cpu
@pytest.mark.parametrize('softmax', [False, True], ids=['mask', 'logits'])
def test_opcheck_forward(softmax):
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    for t in (input, offset, mask):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.dcnv3.dcnv3_forward.default,
                          (input, offset, mask, *scalars, softmax))
    torch.library.opcheck(torch.ops.dcnv3.dcnv3_forward.default,
                          (input.detach(), offset.detach(), mask.detach(), *scalars),
                          {'softmax': softmax})


@requires_compiled_cpu
@pytest.mark.parametrize('softmax', [False, True], ids=['mask', 'logits'])
def test_opcheck_backward(softmax):
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3])
    torch.library.opcheck(torch.ops.dcnv3.dcnv3_backward.default,
                          (grad_output, input, offset, mask, *scalars, softmax))


def _compiled_forward_backward(backend):
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3])

    def fn(i, o, m):
        with_mask = DCNv3Function.apply(i, o * 1.0, m, *scalars, 256)
        with_logits = DCNv3Function.apply(i, o, m * 3.0, *scalars, 256, softmax=True)
        return with_mask.relu() * 2 + with_logits

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    expected = output_and_grads(lambda i, o, m, *s: fn(i, o, m), input, offset, mask, (), grad_output)
    actual = output_and_grads(lambda i, o, m, *s: compiled(i, o, m), input, offset, mask, (), grad_output)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@requires_compiled_cpu
def test_torch_compile_fullgraph_aot_eager():
    _compiled_forward_backward('aot_eager')


@requires_compiled_cpu
@pytest.mark.slow
def test_torch_compile_fullgraph_inductor():
    _compiled_forward_backward('inductor')


@requires_compiled_cpu
@pytest.mark.slow
def test_torch_compile_inductor_with_dynamic_shapes():
    # One graph for inputs of any size: the fake kernels compute the output size symbolically.
    def fn(input, offset, mask):
        return DCNv3Function.apply(input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256,
                                   softmax=True)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 5, 6), (2, 7, 4)]:
        tensors = [torch.randn(*shape, channels, generator=gen, requires_grad=True)
                   for channels in (8, 36, 18)]
        grad_output = torch.randn(*shape, 8, generator=gen)
        expected = output_and_grads(lambda i, o, m, *s: fn(i, o, m), *tensors, (), grad_output)
        actual = output_and_grads(lambda i, o, m, *s: compiled(i, o, m), *tensors, (), grad_output)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


# --- bad inputs -------------------------------------------------------------------------------------

def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


def _bad_cases():
    """(id, arguments of dcnv3_forward, exception type, message pattern)."""
    input, offset, mask, scalars = make_case(batch=1, height=5, width=5, group=2, group_channels=3,
                                             dtype=torch.float32)
    good = [input, offset, mask, *scalars]
    kh, kw, sh, sw, ph, pw, dh, dw, grp, gc = range(3, 13)  # argument positions
    return [
        ('input_3d', _replace(good, 0, input[0]), ValueError, r'input must be a 4-D channels-last'),
        ('offset_5d', _replace(good, 1, offset[None]), ValueError, r'offset must be a 4-D'),
        ('mask_3d', _replace(good, 2, mask[0]), ValueError, r'mask must be a 4-D'),
        ('kernel_0', _replace(good, kh, 0), ValueError, r'kernel size must be >= 1'),
        ('stride_0', _replace(good, sw, 0), ValueError, r'stride must be >= 1'),
        ('pad_negative', _replace(good, ph, -1), ValueError, r'padding must be >= 0'),
        ('dilation_0', _replace(good, dw, 0), ValueError, r'dilation must be >= 1'),
        ('group_0', _replace(good, grp, 0), ValueError, r'group must be >= 1'),
        ('group_channels_0', _replace(good, gc, 0), ValueError, r'group_channels must be >= 1'),
        # The CUDA kernel keeps these in int: beyond it they were truncated (or products wrapped).
        ('pad_over_int32', _replace(good, ph, 2**31), ValueError,
         r'kernel size, stride, padding, dilation, group and group_channels must be below 2\^31, '
         r'got kernel 3x3, stride 1x1, pad 2147483648x1, dilation 1x1, group 2, group_channels 3'),
        ('group_channels_over_int32', _replace(good, gc, 2**62 + 2), ValueError,
         r'must be below 2\^31, got .*group_channels 4611686018427387906'),
        ('offset_size_overflows', _replace(_replace(good, kh, 2**31 - 1), kw, 2**31 - 1), ValueError,
         r'offset last dim must be group \* kernel_h \* kernel_w \* 2 '
         r'\(2 \* 2147483647 \* 2147483647 \* 2 = 9223372036854775807\), got 36'),
        ('offset_scale_nan', _replace(good, 13, float('nan')), ValueError,
         r'offset_scale must be finite, got nan'),
        ('offset_scale_inf', _replace(good, 13, float('-inf')), ValueError,
         r'offset_scale must be finite, got -inf'),
        # Finite as a double, infinite in float32: the op's output was all zeros, the core's NaN.
        ('offset_scale_over_float32', _replace(good, 13, -1e39), ValueError,
         r"offset_scale must lie within float32's range \(the kernels compute float32, float16 and "
         r'bfloat16 inputs in float32\), got -1e\+39'),
        # The CUDA kernels' sampling positions are ints: a pad of 2^30 wrapped them.
        ('padded_input_over_int32', _replace(good, pw, 2**30), ValueError,
         r'the padded input \(H \+ 2 \* pad_h\) x \(W \+ 2 \* pad_w\) = 7x2147483653 must be '
         r'below 2\^31 on each side'),
        ('channels_not_divisible', _replace(_replace(good, grp, 4), 0, input[..., :5]), ValueError,
         r'input channels \(5\) must be divisible by group \(4\)'),
        ('channels_mismatch', _replace(good, gc, 2), ValueError,
         r'input channels \(6\) must equal group \* group_channels \(2 \* 2 = 4\)'),
        ('offset_last_dim', _replace(good, 1, offset[..., :-2]), ValueError,
         r'offset last dim must be group \* kernel_h \* kernel_w \* 2 \(2 \* 3 \* 3 \* 2 = 36\), got 34'),
        ('mask_last_dim', _replace(good, 2, mask[..., :-1]), ValueError,
         r'mask last dim must be group \* kernel_h \* kernel_w \(2 \* 3 \* 3 = 18\), got 17'),
        ('offset_spatial', _replace(good, 1, offset[:, :4]), ValueError,
         r'offset must have shape \(N, Ho, Wo, \.\.\.\) = \(1, 5, 5, \.\.\.\)'),
        ('mask_spatial', _replace(good, 2, mask[:, :, :3]), ValueError,
         r'mask must have shape \(N, Ho, Wo, \.\.\.\) = \(1, 5, 5, \.\.\.\)'),
        ('mask_batch', _replace(good, 2, torch.cat([mask, mask])), ValueError,
         r'mask must have shape \(N, Ho, Wo, \.\.\.\) = \(1, 5, 5, \.\.\.\)'),
        ('output_empty', [input, offset.new_zeros(1, 1, 1, 196), mask.new_zeros(1, 1, 1, 98),
                          7, 7, 1, 1, 0, 0, 1, 1, 2, 3, 1.0], ValueError,
         r'output size would be -1x-1 .*it must be at least 1x1'),
        ('dtype_mismatch', _replace(good, 2, mask.double()), TypeError,
         r'input, offset and mask must have the same dtype'),
        ('integer_dtype', [input.long(), offset.long(), mask.long(), *scalars], TypeError,
         r'input must have a floating-point dtype \(float16, bfloat16, float32 or float64\)'),
        ('float8_dtype', [t.to(torch.float8_e4m3fn) for t in (input, offset, mask)] + list(scalars),
         TypeError, r'input must have a floating-point dtype \(float16, bfloat16, float32 or float64\), '
         r'got (F|f)loat8_e4m3fn'),
        ('device_mismatch', _replace(good, 2, mask.to('meta')), ValueError,
         r'input, offset and mask must be on the same device'),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize('args, error, pattern', [case[1:] for case in BAD_CASES],
                         ids=[case[0] for case in BAD_CASES])
@pytest.mark.parametrize('implementation', ['compiled_op', 'core_pytorch'])
def test_bad_arguments_raise_clear_errors(implementation, args, error, pattern):
    if implementation == 'compiled_op':
        if not dcnv3_func.HAS_COMPILED_OP:
            pytest.skip('ops_dcnv3._C not built')
        fn = torch.ops.dcnv3.dcnv3_forward
    else:
        fn = dcnv3_core_pytorch
    with pytest.raises(error, match=pattern):
        fn(*args)


@requires_compiled_cpu
@pytest.mark.parametrize('op', ['dcnv3_forward', 'dcnv3_backward'])
def test_cpu_kernels_reject_images_over_int32_pixels(op):
    """The CPU kernels index pixels with int32; larger images get an error, not wrong addresses
    (the tensors are stride-0 expansions: nothing that size is allocated)."""
    side = 50000
    input = torch.zeros(1, 1, 1, 16).expand(1, side, side, 16)
    offset = torch.zeros(1, 1, 1, 18).expand(1, side, side, 18)
    mask = torch.zeros(1, 1, 1, 9).expand(1, side, side, 9)
    args = (input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 1, 16, 1.0, True)
    if op == 'dcnv3_backward':
        args = (input,) + args
    with pytest.raises(RuntimeError, match='the CPU kernels take images of at most 2147483647 '
                                           'pixels, got 50000x50000'):
        getattr(torch.ops.dcnv3, op)(*args)


@requires_compiled_cpu
def test_bad_arguments_to_backward():
    input, offset, mask, scalars = make_case(dtype=torch.float32)
    grad_output = torch.randn(input.shape[0], *offset.shape[1:3], input.shape[3])
    with pytest.raises(ValueError,
                       match=r'grad_output must have the output shape \[2, 6, 7, 6\], got \[2, 6, 7, 5\]'):
        torch.ops.dcnv3.dcnv3_backward(grad_output[..., :5], input, offset, mask, *scalars)
    with pytest.raises(TypeError, match=r'grad_output must have the input dtype'):
        torch.ops.dcnv3.dcnv3_backward(grad_output.double(), input, offset, mask, *scalars)
    with pytest.raises(ValueError, match=r'mask last dim must be'):
        torch.ops.dcnv3.dcnv3_backward(grad_output, input, offset, mask[..., :-1], *scalars)


def test_core_pytorch_names_a_float_where_an_int_belongs():
    # (The compiled op's schema refuses it: "Expected a value of type 'int' for argument ...")
    input, offset, mask, scalars = make_case()
    with pytest.raises(TypeError, match=r'dcnv3: stride_h must be an int, got 1\.0'):
        dcnv3_core_pytorch(input, offset, mask, *_replace(list(scalars), 2, 1.0))
    # bool is an Integral to Python: it failed later, in torch.linspace
    with pytest.raises(TypeError, match=r'dcnv3: kernel_w must be an int, got True'):
        dcnv3_core_pytorch(input, offset, mask, *_replace(list(scalars), 1, True))


def test_apply_takes_numpy_integers_and_meta_tensors_and_names_a_non_tensor(recwarn):
    input, offset, mask, scalars = make_case()
    expected = dcnv3_core_pytorch(input, offset, mask, *scalars)
    torch.testing.assert_close(DCNv3Function.apply(input, offset, mask, *scalars, np.int64(64)),
                               expected)
    if dcnv3_func.HAS_COMPILED_OP:  # shapes only, through the fake kernel: no fallback warning
        meta = [t.to('meta') for t in (input, offset, mask)]
        assert DCNv3Function.apply(*meta, *scalars, 64).shape == expected.shape
        assert not [w for w in recwarn if 'falls back' in str(w.message)]
    with pytest.raises(TypeError, match='dcnv3: input must be a Tensor, got list'):
        DCNv3Function.apply(input.tolist(), offset, mask, *scalars, 64)
    with pytest.raises(TypeError, match='dcnv3: offset must be a Tensor, got ndarray'):
        DCNv3Function.apply(input, offset.numpy(), mask, *scalars, 64)
    with pytest.raises(TypeError, match="dcnv3: offset_scale must be a number, got 'x'"):
        DCNv3Function.apply(input, offset, mask, *scalars[:-1], 'x', 64)


@pytest.mark.parametrize('step', [0, -1, 2.0, True, None])
def test_bad_im2col_step(step):
    input, offset, mask, scalars = make_case()
    with pytest.raises(ValueError, match='im2col_step must be a positive int'):
        DCNv3Function.apply(input, offset, mask, *scalars, step)


def test_any_batch_size_with_any_im2col_step():
    input, offset, mask, scalars = make_case(batch=3)
    expected = dcnv3_core_pytorch(input, offset, mask, *scalars)
    for step in (1, 2, 64):
        torch.testing.assert_close(DCNv3Function.apply(input, offset, mask, *scalars, step), expected)


# --- fallback when the extension is missing --------------------------------------------------------

def test_fallback_warns_once_and_matches_core(monkeypatch):
    monkeypatch.setattr(dcnv3_func, 'HAS_COMPILED_OP', False)
    monkeypatch.setattr(dcnv3_func, 'COMPILED_OP_IMPORT_ERROR', ImportError('simulated'))
    monkeypatch.setattr(dcnv3_func, '_fallback_warned', False)
    input, offset, mask, scalars = make_case()
    with pytest.warns(RuntimeWarning, match=r'could not be loaded \(simulated\).*falls back') as seen:
        output = DCNv3Function.apply(input, offset, mask, *scalars, 64)
    # Which copy has no extension (the tools import the checkout's, even beside an installed one).
    package = os.path.dirname(os.path.dirname(os.path.abspath(dcnv3_func.__file__)))
    assert str(seen[0].message).endswith(
        f'This ops_dcnv3 is {package}: in a checkout, build the extension with `python setup.py '
        f'build_ext --inplace`; an installed copy, install again')
    torch.testing.assert_close(output, dcnv3_core_pytorch(input, offset, mask, *scalars), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a second warning would raise here
        DCNv3Function.apply(input, offset, mask, *scalars, 64)


def test_package_imports_and_falls_back_without_extension():
    """A fresh interpreter in which ops_dcnv3._C cannot be imported: import succeeds, the call
    warns once and returns the core's result."""
    script = (
        "import sys, warnings\n"
        "sys.modules['ops_dcnv3._C'] = None  # makes `import ops_dcnv3._C` fail\n"
        "import torch\n"
        "from ops_dcnv3.functions import DCNv3Function, HAS_COMPILED_OP, dcnv3_core_pytorch\n"
        "assert not HAS_COMPILED_OP\n"
        "x = torch.rand(1, 4, 4, 4); o = torch.rand(1, 4, 4, 36); m = torch.rand(1, 4, 4, 18)\n"
        "args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 1.0)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = DCNv3Function.apply(x, o, m, *args, 64)\n"
        "    DCNv3Function.apply(x, o, m, *args, 64)\n"
        "assert len(caught) == 1 and 'falls back' in str(caught[0].message), caught\n"
        "assert torch.equal(out, dcnv3_core_pytorch(x, o, m, *args))\n"
        "print('ok')\n")
    python_path = [str(REPO_ROOT), os.environ.get('PYTHONPATH')]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, python_path)))
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr


@requires_compiled_cpu
def test_forward_mode_ad_is_refused_not_a_zero_derivative():
    # The op registers a backward only: jvp and jacfwd got the output without its tangent, a
    # derivative of zero with no error.
    import torch.autograd.forward_ad as forward_ad
    input, offset, mask, scalars = make_case()

    def call(x):
        return DCNv3Function.apply(x, offset, mask, *scalars, 64)

    for transform in (lambda: torch.func.jvp(call, (input,), (torch.ones_like(input),)),
                      lambda: torch.func.jacfwd(call)(input)):
        with pytest.raises(NotImplementedError, match=r'^dcnv3: forward-mode AD .* not supported'):
            transform()
    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match='forward-mode AD'):
        call(forward_ad.make_dual(input, torch.ones_like(input)))
    call(input)  # outside forward mode, as before


@requires_compiled_cpu
def test_double_backward_raises_clearly():
    input, offset, mask, scalars = make_case()
    leaves = [t.requires_grad_() for t in (input, offset, mask)]
    output = compiled_op(*leaves, *scalars)
    grads = torch.autograd.grad(output.square().sum(), leaves, create_graph=True)
    with pytest.raises(NotImplementedError, match='double backward'):
        torch.autograd.grad(grads[1].sum(), leaves)
