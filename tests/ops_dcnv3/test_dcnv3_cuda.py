"""The CUDA kernels of the compiled DCNv3 op (ops_dcnv3/csrc/cuda/dcnv3_kernel.cu).

Oracles: the compiled CPU op (dcnv3_core_pytorch where the CPU kernel is missing) on the same
values, and the float64 reference cases of the official core (dcnv3_core_ref.pt). That file is
looked up in $DCNV3_REF_DIR, else in ../shared/reference beside the checkout.

Everything here needs a CUDA device and an extension built with its CUDA kernels; the module is
skipped otherwise.
"""
import os
from pathlib import Path

import pytest
import torch

try:
    from ops_dcnv3.functions import DCNv3Function, dcnv3_core_pytorch
    from ops_dcnv3.functions import dcnv3_func
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - the package itself is broken
    _IMPORT_ERROR = exc


def _skip_reason():
    if _IMPORT_ERROR is not None:
        return f'ops_dcnv3.functions cannot be imported: {_IMPORT_ERROR}'
    if not torch.cuda.is_available():
        return 'no CUDA device available'
    if not dcnv3_func.HAS_COMPILED_OP:
        return f'ops_dcnv3._C is not built ({dcnv3_func.COMPILED_OP_IMPORT_ERROR})'
    if 'cuda' not in dcnv3_func.COMPILED_DEVICE_TYPES:
        return 'ops_dcnv3._C was built without CUDA kernels (no nvcc at build time?)'
    return None


_SKIP = _skip_reason()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or '')]

SCALAR_NAMES = ('kernel_h', 'kernel_w', 'stride_h', 'stride_w', 'pad_h', 'pad_w', 'dilation_h',
                'dilation_w', 'group', 'group_channels', 'offset_scale')


def _ref_file():
    env = os.environ.get('DCNV3_REF_DIR')
    base = Path(env) if env else Path(__file__).resolve().parents[2].parent / 'shared' / 'reference'
    return base / 'dcnv3_core_ref.pt'


# --- helpers --------------------------------------------------------------------------------------

def make_args(kernel=3, stride=1, pad=1, dilation=1, group=2, group_channels=4, offset_scale=1.0,
              kernel_w=None, stride_w=None, pad_w=None, dilation_w=None):
    """The eleven scalar arguments, in schema order."""
    return (kernel, kernel if kernel_w is None else kernel_w, stride,
            stride if stride_w is None else stride_w, pad, pad if pad_w is None else pad_w,
            dilation, dilation if dilation_w is None else dilation_w, group, group_channels,
            float(offset_scale))


def output_size(height, width, args):
    kh, kw, sh, sw, ph, pw, dh, dw = args[:8]
    return ((height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1,
            (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1)


def make_inputs(batch, height, width, args, *, max_offset=3.0, seed=0, dtype=torch.float64,
                device='cpu'):
    """Random (input, offset, mask, grad_output); offsets up to +-max_offset px, softmaxed masks."""
    kh, kw = args[0], args[1]
    group, group_channels = args[8], args[9]
    points = kh * kw
    out_h, out_w = output_size(height, width, args)
    gen = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, height, width, group * group_channels, generator=gen,
                        dtype=torch.float64)
    offset = (torch.rand(batch, out_h, out_w, group * points * 2, generator=gen,
                         dtype=torch.float64) * 2 - 1) * max_offset
    mask = torch.softmax(torch.randn(batch, out_h, out_w, group, points, generator=gen,
                                     dtype=torch.float64), -1).flatten(3)
    grad_output = torch.randn(batch, out_h, out_w, group * group_channels, generator=gen,
                              dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (value, offset, mask, grad_output)]


def _has_cpu_kernel():
    return 'cpu' in dcnv3_func.COMPILED_DEVICE_TYPES


def cpu_reference(value, offset, mask, grad_output, args):
    """(output, grad_input, grad_offset, grad_mask) on the CPU, in the inputs' dtype."""
    value, offset, mask, grad_output = (t.detach().cpu() for t in (value, offset, mask, grad_output))
    if _has_cpu_kernel():
        out = torch.ops.dcnv3.dcnv3_forward(value, offset, mask, *args)
        grads = torch.ops.dcnv3.dcnv3_backward(grad_output, value, offset, mask, *args)
        return (out, *grads)
    leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
    out = dcnv3_core_pytorch(*leaves, *args)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return (out.detach(), *grads)


def cuda_forward_backward(value, offset, mask, grad_output, args):
    """(output, grad_input, grad_offset, grad_mask) from the CUDA op, through autograd."""
    leaves = [t.detach().requires_grad_() for t in (value, offset, mask)]
    out = DCNv3Function.apply(*leaves, *args, 256)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return (out.detach(), *grads)


def assert_close_rel(actual, expected, rel, name=''):
    """|actual - expected| <= rel * (|expected| + max|expected|), elementwise, on the CPU."""
    actual = actual.detach().cpu().to(torch.float64)
    expected = expected.detach().cpu().to(torch.float64)
    assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != {expected.shape}'
    assert torch.isfinite(actual).all(), f'{name}: non-finite values'
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30),
                               msg=lambda m: f'{name}: {m}')


NAMES = ('output', 'grad_input', 'grad_offset', 'grad_mask')

# (batch, height, width, args): cover every vector width and sub-warp size of the kernels.
CONFIGS = {
    'internimage': (2, 9, 11, make_args(3, 1, 1, 1, group=4, group_channels=16)),
    'k1': (1, 6, 7, make_args(1, 1, 0, 1, group=2, group_channels=8)),
    'k3x5_s2_d2_p2': (2, 11, 9, make_args(3, 2, 2, 2, group=2, group_channels=6, kernel_w=5,
                                           stride_w=1, dilation_w=1, pad_w=1)),
    'k5_p4_scale2_c7': (1, 8, 10, make_args(5, 1, 4, 1, group=3, group_channels=7,
                                              offset_scale=2.0)),
    'odd_c3_scale_half': (2, 7, 5, make_args(3, 1, 1, 1, group=1, group_channels=3,
                                               offset_scale=0.5)),
    'c24_lanes_idle': (1, 6, 6, make_args(3, 1, 1, 1, group=2, group_channels=24)),
    'c132_lanes_loop': (1, 5, 6, make_args(3, 1, 1, 1, group=1, group_channels=132)),
    'c33_vec1_lanes32': (1, 5, 4, make_args(3, 1, 1, 1, group=2, group_channels=33)),
}


# --- float32 / float64 against the CPU op ----------------------------------------------------------

@pytest.mark.parametrize('dtype,rel', [(torch.float32, 1e-5), (torch.float64, 1e-10)],
                         ids=['float32', 'float64'])
@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_matches_cpu(config, dtype, rel):
    batch, height, width, args = CONFIGS[config]
    value, offset, mask, grad_output = make_inputs(batch, height, width, args, dtype=dtype)
    expected = cpu_reference(value, offset, mask, grad_output, args)
    actual = cuda_forward_backward(*(t.cuda() for t in (value, offset, mask, grad_output)), args)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype and a.device.type == 'cuda', name
        assert_close_rel(a, e, rel, f'{config}/{name}')


@pytest.mark.parametrize('dtype,rel', [(torch.float32, 1e-5), (torch.float64, 1e-10)],
                         ids=['float32', 'float64'])
@pytest.mark.parametrize('max_offset', [0.0, 12.0], ids=['zero_offsets', 'offsets_12px'])
def test_zero_and_far_offsets_match_cpu(max_offset, dtype, rel):
    """Zero offsets, as training starts (every sample on an integer position, neighbouring pixels
    scattering into the same input elements), and offsets of up to 12 px, on an InternImage-like
    layer larger than the CONFIGS cases."""
    args = make_args(3, 1, 1, 1, group=4, group_channels=16)
    value, offset, mask, grad_output = make_inputs(2, 21, 30, args, max_offset=max_offset, seed=5,
                                                   dtype=dtype)
    expected = cpu_reference(value, offset, mask, grad_output, args)
    actual = cuda_forward_backward(*(t.cuda() for t in (value, offset, mask, grad_output)), args)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close_rel(a, e, rel, f'max_offset={max_offset}/{name}')


def test_backward_op_called_directly():
    batch, height, width, args = CONFIGS['internimage']
    tensors = make_inputs(batch, height, width, args, dtype=torch.float32)
    value, offset, mask, grad_output = (t.cuda() for t in tensors)
    expected = cpu_reference(*tensors, args)
    out = torch.ops.dcnv3.dcnv3_forward(value, offset, mask, *args)
    grads = torch.ops.dcnv3.dcnv3_backward(grad_output, value, offset, mask, *args)
    for name, a, e in zip(NAMES, (out, *grads), expected):
        assert_close_rel(a, e, 1e-5, name)


# --- half precision against float32 ------------------------------------------------------------------

@pytest.mark.parametrize('dtype,rel', [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)],
                         ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('config', ['internimage', 'k3x5_s2_d2_p2', 'c24_lanes_idle',
                                    'c33_vec1_lanes32'])
def test_half_precision_matches_float32(config, dtype, rel):
    batch, height, width, args = CONFIGS[config]
    tensors = [t.to(dtype) for t in make_inputs(batch, height, width, args, dtype=torch.float32)]
    # The float32 oracle sees exactly the rounded values the half kernel sees.
    expected = cpu_reference(*(t.float() for t in tensors), args)
    actual = cuda_forward_backward(*(t.cuda() for t in tensors), args)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, f'{name}: dtype {a.dtype}'
        assert_close_rel(a, e, rel, f'{config}/{name}')


# --- the official core's float64 reference cases ---------------------------------------------------

def _load_reference():
    path = _ref_file()
    if not path.is_file():
        pytest.skip(f'{path} not found (set DCNV3_REF_DIR to the folder holding dcnv3_core_ref.pt)')
    return torch.load(path, weights_only=True)


def test_reference_cases_float64():
    ref = _load_reference()
    cases = ref['cases']
    assert len(cases) == 12
    for case in cases:
        args = tuple(case['args'][name] for name in SCALAR_NAMES)
        args = tuple(int(a) for a in args[:-1]) + (float(args[-1]),)
        tensors = [case[k].to(device='cuda', dtype=torch.float64)
                   for k in ('input', 'offset', 'mask', 'grad_output')]
        actual = cuda_forward_backward(*tensors, args)
        for name, a in zip(NAMES, actual):
            assert_close_rel(a, case[name], 1e-8, f'{case["name"]}/{name}')


# --- gradcheck -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('args', [make_args(3, 1, 1, 1, group=2, group_channels=3),
                                  make_args(3, 2, 2, 2, group=1, group_channels=4, kernel_w=2,
                                            stride_w=1, pad_w=0, offset_scale=1.5)],
                         ids=['k3_c3', 'k3x2_c4_scale1.5'])
def test_gradcheck_float64(args):
    value, offset, mask, _ = make_inputs(1, 5, 6, args, max_offset=2.0, seed=3,
                                         dtype=torch.float64, device='cuda')
    leaves = [t.requires_grad_() for t in (value, offset, mask)]
    # grad_input is an atomic scatter: summation order varies between runs by an ulp or so.
    assert torch.autograd.gradcheck(lambda v, o, m: DCNv3Function.apply(v, o, m, *args, 256),
                                    leaves, eps=1e-6, atol=1e-7, rtol=1e-5, nondet_tol=1e-12)


# --- autocast ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('amp_dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
def test_autocast(amp_dtype):
    """As in the DCNv3 module: Linear projections (autocast to amp_dtype) and a float32 softmax."""
    batch, height, width, args = CONFIGS['internimage']
    group, group_channels = args[8], args[9]
    points = args[0] * args[1]
    channels = group * group_channels
    torch.manual_seed(0)
    x = torch.randn(batch, height, width, channels, device='cuda')
    input_proj = torch.nn.Linear(channels, channels).cuda()
    offset_proj = torch.nn.Linear(channels, group * points * 2).cuda()
    mask_proj = torch.nn.Linear(channels, group * points).cuda()

    def run():
        value = input_proj(x)
        offset = offset_proj(x)
        mask = torch.softmax(mask_proj(x).view(batch, height, width, group, points), -1).flatten(3)
        return DCNv3Function.apply(value, offset, mask, *args, 256)

    expected = run()
    with torch.autocast('cuda', dtype=amp_dtype):
        out = run()
        assert out.dtype == amp_dtype
        # float32 tensors stay float32 under autocast (the op follows its input's dtype).
        float_inputs = make_inputs(batch, height, width, args, dtype=torch.float32, device='cuda')
        assert DCNv3Function.apply(*float_inputs[:3], *args, 256).dtype == torch.float32
    assert_close_rel(out, expected, 3e-2 if amp_dtype == torch.float16 else 1e-1, 'output')
    out.float().square().sum().backward()
    for module in (input_proj, offset_proj, mask_proj):
        assert module.weight.grad is not None and module.weight.grad.dtype == torch.float32
        assert torch.isfinite(module.weight.grad).all()


# --- errors ----------------------------------------------------------------------------------------------

def test_mixed_devices_raise_clear_error():
    batch, height, width, args = CONFIGS['internimage']
    value, offset, mask, grad_output = make_inputs(batch, height, width, args, dtype=torch.float32,
                                                   device='cuda')
    with pytest.raises((ValueError, RuntimeError), match='same device'):
        torch.ops.dcnv3.dcnv3_forward(value, offset, mask.cpu(), *args)
    with pytest.raises((ValueError, RuntimeError), match='same device'):
        DCNv3Function.apply(value, offset.cpu(), mask, *args, 256)
    with pytest.raises((ValueError, RuntimeError), match='same device'):
        torch.ops.dcnv3.dcnv3_backward(grad_output, value, offset, mask.cpu(), *args)
    with pytest.raises((ValueError, RuntimeError), match='device'):
        torch.ops.dcnv3.dcnv3_backward(grad_output.cpu(), value, offset, mask, *args)


def test_shape_and_dtype_errors():
    batch, height, width, args = CONFIGS['internimage']
    value, offset, mask, _ = make_inputs(batch, height, width, args, dtype=torch.float32,
                                         device='cuda')
    with pytest.raises((ValueError, RuntimeError), match='mask'):
        torch.ops.dcnv3.dcnv3_forward(value, offset, mask[..., :-1], *args)
    with pytest.raises((TypeError, RuntimeError), match='dtype'):
        torch.ops.dcnv3.dcnv3_forward(value, offset.double(), mask, *args)


# --- layouts, sizes, streams ------------------------------------------------------------------------

def test_non_contiguous_and_misaligned_inputs():
    batch, height, width, args = CONFIGS['internimage']
    tensors = make_inputs(batch, height, width, args, dtype=torch.float32, device='cuda')
    expected = cuda_forward_backward(*tensors, args)

    # Channels-last views of channels-first storage (non-contiguous).
    views = [t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) for t in tensors]
    assert not any(v.is_contiguous() for v in views)
    for name, a, e in zip(NAMES, cuda_forward_backward(*views, args), expected):
        if name != 'grad_input':  # no atomics: bitwise reproducible
            assert torch.equal(a, e), f'permuted/{name}'
        assert_close_rel(a, e, 1e-6, f'permuted/{name}')

    # Contiguous tensors whose data pointer is not 16-byte aligned: the kernels must fall back
    # to narrower vectors.
    def misaligned(t):
        storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        assert view.is_contiguous() and view.data_ptr() % 16 != 0
        return view

    shifted = [misaligned(t) for t in tensors]
    for name, a, e in zip(NAMES, cuda_forward_backward(*shifted, args), expected):
        assert_close_rel(a, e, 1e-6, f'misaligned/{name}')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_every_output_element_is_written(dtype):
    """Fill the caching allocator's blocks with NaN first: an unwritten element would stay NaN."""
    batch, height, width = 2, 37, 41
    args = make_args(3, 1, 1, 1, group=4, group_channels=16)
    tensors = make_inputs(batch, height, width, args, dtype=torch.float32, max_offset=4.0, seed=7)
    tensors = [t.to(dtype) for t in tensors]
    expected = cpu_reference(*(t.float() for t in tensors), args)
    cuda_tensors = [t.cuda() for t in tensors]
    for _ in range(3):
        poison = [torch.full((t.numel(),), float('nan'), dtype=dtype, device='cuda')
                  for t in cuda_tensors]
        del poison  # blocks go back to the allocator, NaN-filled, to be reused for the outputs
        actual = cuda_forward_backward(*cuda_tensors, args)
        for name, a, e in zip(NAMES, actual, expected):
            assert torch.isfinite(a).all(), f'{name}: unwritten (NaN) elements'
            assert_close_rel(a, e, 1e-5 if dtype == torch.float32 else 1e-2, name)


def test_empty_batch():
    args = make_args(3, 1, 1, 1, group=2, group_channels=8)
    value, offset, mask, grad_output = make_inputs(0, 5, 6, args, dtype=torch.float32,
                                                   device='cuda')
    out, grad_input, grad_offset, grad_mask = cuda_forward_backward(value, offset, mask,
                                                                    grad_output, args)
    assert out.shape == (0, 5, 6, 16)
    assert grad_input.shape == value.shape
    assert grad_offset.shape == offset.shape
    assert grad_mask.shape == mask.shape


def test_samples_far_outside_are_zero():
    """Every point displaced out of the image reads zero and gets zero offset/mask gradients."""
    batch, height, width, args = CONFIGS['internimage']
    value, offset, mask, grad_output = make_inputs(batch, height, width, args,
                                                   dtype=torch.float32, device='cuda')
    offset = torch.full_like(offset, 100.0)
    out, grad_input, grad_offset, grad_mask = cuda_forward_backward(value, offset, mask,
                                                                    grad_output, args)
    for name, t in zip(NAMES, (out, grad_input, grad_offset, grad_mask)):
        assert torch.count_nonzero(t) == 0, name


def test_side_stream():
    batch, height, width, args = CONFIGS['internimage']
    tensors = make_inputs(batch, height, width, args, dtype=torch.float32, device='cuda')
    expected = cuda_forward_backward(*tensors, args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        actual = cuda_forward_backward(*tensors, args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for name, a, e in zip(NAMES, actual, expected):
        assert_close_rel(a, e, 1e-6, name)


@pytest.mark.slow
def test_64bit_indexing():
    """An input of more than 2**31 elements takes the 64-bit index path of both kernels.

    Kernel 1x1 at stride 64 with offset (0.25, 0.5) and mask 1 reads the four pixels
    (64*ho + {0, 1}, 64*wo + {0, 1}) with weights (0.375, 0.125, 0.375, 0.125), which the test
    checks directly, far into the tensor.
    """
    stride, height, width, channels = 64, 2 ** 15, 2 ** 12, 16
    needed = 2 ** 31 * (2 + 4 + 2) + 2 ** 30  # half input, float32 grad buffer, half grad_input
    if torch.cuda.mem_get_info()[0] < needed:
        pytest.skip('needs about 18 GB of free GPU memory')
    args = make_args(1, stride, 0, 1, group=1, group_channels=channels)
    value = torch.randn(1, height, width, channels, device='cuda', dtype=torch.float16)
    assert value.numel() > 2 ** 31 - 1
    out_h, out_w = output_size(height, width, args)
    offset = torch.tensor([0.25, 0.5], device='cuda', dtype=torch.float16).expand(
        1, out_h, out_w, 2).contiguous()
    mask = torch.ones(1, out_h, out_w, 1, device='cuda', dtype=torch.float16)
    rows = torch.arange(out_h, device='cuda') * stride
    cols = torch.arange(out_w, device='cuda') * stride
    corner = lambda dy, dx: value[0, rows[:, None] + dy, cols[None, :] + dx].float()  # noqa: E731
    expected = (0.375 * corner(0, 0) + 0.125 * corner(0, 1) + 0.375 * corner(1, 0)
                + 0.125 * corner(1, 1))
    out = torch.ops.dcnv3.dcnv3_forward(value, offset, mask, *args)
    assert_close_rel(out[0].float(), expected, 1e-2, 'output')

    grad_output = torch.randn_like(out)
    grad_input, _, grad_mask = torch.ops.dcnv3.dcnv3_backward(grad_output, value, offset, mask,
                                                              *args)
    for (dy, dx), weight in (((0, 0), 0.375), ((0, 1), 0.125), ((1, 0), 0.375), ((1, 1), 0.125)):
        got = grad_input[0, rows[:, None] + dy, cols[None, :] + dx].float()
        assert_close_rel(got, weight * grad_output[0].float(), 1e-2, f'grad_input{dy, dx}')
    assert_close_rel(grad_mask[0, ..., 0].float(), (grad_output[0].float() * expected).sum(-1),
                     2e-2, 'grad_mask')


# --- the fused mask softmax (softmax=True) -----------------------------------------------------------

def _logits_like(mask, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(mask.shape, generator=gen, dtype=torch.float64) * 2).to(mask.dtype)


def cuda_forward_backward_on_logits(value, offset, logits, grad_output, args):
    leaves = [t.detach().requires_grad_() for t in (value, offset, logits)]
    out = DCNv3Function.apply(*leaves, *args, 256, softmax=True)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return (out.detach(), *grads)


def cpu_reference_on_logits(value, offset, logits, grad_output, args):
    """The CPU op (or core) on torch's softmax of the logits, differentiated through it."""
    group = args[8]
    leaves = [t.detach().cpu().clone().requires_grad_() for t in (value, offset, logits)]
    mask = leaves[2].unflatten(-1, (group, -1)).softmax(-1).flatten(-2)
    fn = torch.ops.dcnv3.dcnv3_forward if _has_cpu_kernel() else dcnv3_core_pytorch
    out = fn(leaves[0], leaves[1], mask, *args)
    grads = torch.autograd.grad(out, leaves, grad_output.cpu())
    return (out.detach(), *grads)


@pytest.mark.parametrize('dtype,rel', [(torch.float32, 1e-5), (torch.float64, 1e-10)],
                         ids=['float32', 'float64'])
@pytest.mark.parametrize('config', ['internimage', 'k1', 'k3x5_s2_d2_p2', 'c24_lanes_idle',
                                    'c132_lanes_loop', 'c33_vec1_lanes32'])
def test_softmax_flag_matches_softmax_then_cpu_op(config, dtype, rel):
    """Every sub-warp size (the backward's second pass over the points each lane wrote)."""
    batch, height, width, args = CONFIGS[config]
    value, offset, mask, grad_output = make_inputs(batch, height, width, args, dtype=dtype)
    logits = _logits_like(mask)
    expected = cpu_reference_on_logits(value, offset, logits, grad_output, args)
    actual = cuda_forward_backward_on_logits(
        *(t.cuda() for t in (value, offset, logits, grad_output)), args)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype and a.device.type == 'cuda', name
        assert_close_rel(a, e, rel, f'{config}/{name}')


@pytest.mark.parametrize('dtype,rel', [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)],
                         ids=['float16', 'bfloat16'])
def test_softmax_flag_half_precision(dtype, rel):
    batch, height, width, args = CONFIGS['internimage']
    value, offset, mask, grad_output = make_inputs(batch, height, width, args, dtype=torch.float32)
    tensors = [t.to(dtype) for t in (value, offset, _logits_like(mask), grad_output)]
    expected = cpu_reference_on_logits(*(t.float() for t in tensors), args)
    actual = cuda_forward_backward_on_logits(*(t.cuda() for t in tensors), args)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, f'{name}: dtype {a.dtype}'
        assert_close_rel(a, e, rel, name)


def test_softmax_flag_gradcheck_float64():
    args = make_args(3, 1, 1, 1, group=2, group_channels=3)
    value, offset, mask, _ = make_inputs(1, 5, 6, args, max_offset=2.0, seed=3,
                                         dtype=torch.float64, device='cuda')
    leaves = [t.requires_grad_() for t in (value, offset, _logits_like(mask).cuda())]
    assert torch.autograd.gradcheck(
        lambda v, o, m: DCNv3Function.apply(v, o, m, *args, 256, softmax=True),
        leaves, eps=1e-6, atol=1e-7, rtol=1e-5, nondet_tol=1e-12)
