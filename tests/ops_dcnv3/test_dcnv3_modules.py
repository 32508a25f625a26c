"""DCNv3 / DCNv3_pytorch modules: parameter layout, init, forward semantics, dtype handling."""
import math

import pytest
import torch
import torch.nn.functional as F

from ops_dcnv3.modules import DCNv3, DCNv3_pytorch

MODULES = [DCNv3, DCNv3_pytorch]
PLAIN_KEYS = [
    'dw_conv.0.weight', 'dw_conv.0.bias', 'dw_conv.1.1.weight', 'dw_conv.1.1.bias',
    'offset.weight', 'offset.bias', 'mask.weight', 'mask.bias',
    'input_proj.weight', 'input_proj.bias', 'output_proj.weight', 'output_proj.bias']
GATE_KEYS = ['center_feature_scale_proj_weight', 'center_feature_scale_proj_bias']


def layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def randomise(module, seed=0):
    """Non-trivial weights everywhere (fresh init has zero offsets and uniform masks)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


@pytest.mark.parametrize('center_feature_scale', [False, True])
def test_both_modules_have_identical_parameter_layout(center_feature_scale):
    compiled = DCNv3(channels=32, group=2, center_feature_scale=center_feature_scale)
    reference = DCNv3_pytorch(channels=32, group=2, center_feature_scale=center_feature_scale)
    assert layout(compiled) == layout(reference)
    expected = (GATE_KEYS if center_feature_scale else []) + PLAIN_KEYS
    assert [k for k, _ in layout(compiled)] == expected
    shapes = dict(layout(compiled))
    assert shapes['offset.weight'] == (2 * 9 * 2, 32)
    assert shapes['mask.weight'] == (2 * 9, 32)
    assert shapes['dw_conv.0.weight'] == (32, 1, 3, 3)
    if center_feature_scale:
        assert shapes['center_feature_scale_proj_weight'] == (2, 32)
        assert shapes['center_feature_scale_proj_bias'] == (2,)


def test_dw_kernel_size_and_layernorm_eps():
    module = DCNv3_pytorch(channels=16, group=1, dw_kernel_size=5)
    assert module.dw_conv[0].weight.shape == (16, 1, 5, 5)
    assert module.dw_conv[0].padding == (2, 2)
    assert module.dw_conv[1][1].eps == 1e-6


@pytest.mark.parametrize('cls', MODULES)
def test_use_dcn_v4_op_is_accepted_but_dcnv4_is_not_provided(cls):
    cls(channels=16, group=1, use_dcn_v4_op=False)
    with pytest.raises(NotImplementedError, match='DCNv4'):
        cls(channels=16, group=1, use_dcn_v4_op=True)


@pytest.mark.parametrize('cls', MODULES)
def test_channels_must_divide_into_groups(cls):
    with pytest.raises(ValueError, match='divisible'):
        cls(channels=30, group=4)


@pytest.mark.parametrize('cls', MODULES)
@pytest.mark.parametrize('settings, message', [
    (dict(group=0), 'group must be a positive int, got 0'),
    (dict(channels=16.0), 'channels must be a positive int, got 16.0'),
    (dict(kernel_size=-1), 'kernel_size must be a positive int, got -1'),
    # These were built and failed in forward (or in a schema error of the compiled op).
    (dict(dilation=0, pad=0), 'dilation must be a positive int, got 0'),
    (dict(pad=1.0), 'pad must be an int of at least 0, got 1.0'),
    (dict(dw_kernel_size=-1), 'dw_kernel_size must be a positive int, got -1'),
    (dict(offset_scale=float('nan')), 'offset_scale must be a finite number, got nan'),
    (dict(offset_scale='a'), "offset_scale must be a finite number, got 'a'")])
def test_sizes_must_be_positive_ints(cls, settings, message):
    # They failed as a ZeroDivisionError, or in torch's parameter allocation.
    with pytest.raises(ValueError, match=message):
        cls(**dict(dict(channels=16, group=2), **settings))


@pytest.mark.parametrize('cls', MODULES)
@pytest.mark.parametrize('shape, hint', [
    ((1, 16, 5, 6), '; an NCHW tensor x is x.permute(0, 2, 3, 1)'),  # was a Linear's shape error
    ((5, 6, 16), ''),  # was an error of permute
    ((1, 5, 6, 8), '')])
def test_an_input_that_is_not_channels_last_is_named(cls, shape, hint):
    with pytest.raises(ValueError) as error:
        cls(channels=16, group=2)(torch.randn(shape))
    assert str(error.value) == (f'{cls.__name__}: expected a channels-last input (N, H, W, 16), '
                                f'got shape {shape}{hint}')


@pytest.mark.parametrize('cls', MODULES)
def test_an_empty_batch_gives_an_empty_output(cls):
    # The PyTorch module's mask reshape could not infer its -1 for no elements.
    layer = cls(channels=16, group=4)
    input = torch.randn(0, 7, 9, 16, requires_grad=True)
    output = layer(input)
    assert output.shape == (0, 7, 9, 16)
    output.sum().backward()
    assert input.grad.shape == input.shape


@pytest.mark.parametrize('cls', MODULES)
@pytest.mark.parametrize('settings, message', [
    (dict(stride=2), r'needs stride=1 and 2 \* pad == dilation \* \(kernel_size - 1\), got stride=2, '
                     r'pad=1, dilation=1, kernel_size=3'),
    (dict(dilation=2), r'got stride=1, pad=1, dilation=2, kernel_size=3'),
    (dict(kernel_size=5), r'got stride=1, pad=1, dilation=1, kernel_size=5'),
    (dict(dw_kernel_size=4), r'dw_kernel_size must be odd \(its conv keeps the input size\), got 4'),
], ids=['stride', 'dilation', 'kernel_size', 'even_dw_kernel_size'])
def test_settings_that_cannot_keep_the_input_size_are_refused(cls, settings, message):
    # Built, such a module used to fail only in forward, on offsets "of the wrong shape".
    with pytest.raises(ValueError, match=message):
        cls(channels=16, group=2, **settings)
    kept = dict(settings, pad=settings.get('dilation', 1) * (settings.get('kernel_size', 3) - 1) // 2)
    if 'stride' not in settings and 'dw_kernel_size' not in settings:  # the same, size-preserving
        assert cls(channels=16, group=2, **kept)(torch.randn(1, 5, 6, 16)).shape == (1, 5, 6, 16)


@pytest.mark.parametrize('cls', MODULES)
def test_fresh_init(cls):
    module = cls(channels=32, group=2, center_feature_scale=True)
    for name in ('offset', 'mask'):
        layer = getattr(module, name)
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    for name in ('input_proj', 'output_proj'):
        layer = getattr(module, name)
        bound = math.sqrt(6 / (32 + 32))  # xavier-uniform
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.abs().max() <= bound and layer.weight.std() > bound / 4


def _identity(linear):
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.weight.shape[0], dtype=linear.weight.dtype))
        linear.bias.zero_()


@pytest.mark.parametrize('cls', MODULES)
def test_zero_offsets_and_uniform_masks_average_a_3x3_window(cls):
    """At init every group samples its 3x3 neighbourhood with weight 1/9 (zero padding)."""
    torch.manual_seed(0)
    module = cls(channels=16, group=2).double()
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)
    values = module.input_proj(x).permute(0, 3, 1, 2)
    averaged = F.avg_pool2d(values, 3, stride=1, padding=1, count_include_pad=True)
    expected = module.output_proj(averaged.permute(0, 2, 3, 1))
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('cls', MODULES)
def test_mask_is_softmax_over_the_points_of_each_group(cls):
    """With zero offsets and position-independent mask logits the layer is a depth-wise conv whose
    kernel is the per-group softmax of the logits (point p = column * 3 + row)."""
    torch.manual_seed(0)
    group, channels = 2, 8
    module = cls(channels=channels, group=group).double()
    _identity(module.input_proj)
    _identity(module.output_proj)
    logits = torch.randn(group * 9, dtype=torch.float64)
    with torch.no_grad():
        module.mask.bias.copy_(logits)
    weights = logits.view(group, 9).softmax(-1)
    kernel = weights.view(group, 3, 3).transpose(1, 2)  # [g, column, row] -> [g, row, column]
    kernel = kernel.repeat_interleave(channels // group, 0).unsqueeze(1)
    x = torch.randn(1, 6, 5, channels, dtype=torch.float64)
    expected = F.conv2d(x.permute(0, 3, 1, 2), kernel, padding=1, groups=channels).permute(0, 2, 3, 1)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('cls', MODULES)
def test_center_feature_scale_blends_sampled_and_projected_values(cls):
    torch.manual_seed(0)
    plain = randomise(cls(channels=16, group=2)).double()
    gated = cls(channels=16, group=2, center_feature_scale=True).double()
    gated.load_state_dict(plain.state_dict(), strict=False)
    for module in (plain, gated):
        _identity(module.output_proj)
    gate_logits = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        gated.center_feature_scale_proj_bias.copy_(gate_logits)
    x = torch.randn(2, 4, 5, 16, dtype=torch.float64)
    gate = gate_logits.sigmoid().repeat_interleave(8)
    expected = plain(x) * (1 - gate) + plain.input_proj(x) * gate
    torch.testing.assert_close(gated(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('center_feature_scale', [False, True])
def test_compiled_and_pytorch_modules_agree(center_feature_scale):
    torch.manual_seed(0)
    reference = randomise(DCNv3_pytorch(channels=32, group=2, center_feature_scale=center_feature_scale))
    compiled = DCNv3(channels=32, group=2, center_feature_scale=center_feature_scale)
    compiled.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 9, 32)
    out = reference(x)
    assert out.shape == (2, 6, 9, 32)
    torch.testing.assert_close(compiled(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cls', MODULES)
def test_gradients_reach_all_parameters(cls):
    torch.manual_seed(0)
    module = randomise(cls(channels=16, group=2, center_feature_scale=True))
    x = torch.randn(1, 4, 4, 16, requires_grad=True)
    module(x).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert torch.count_nonzero(x.grad) > 0


@pytest.mark.parametrize('cls', MODULES)
def test_autocast_runs_in_low_precision(cls):
    """Under autocast the softmax gives float32 and the Linears bfloat16; the module reconciles them."""
    torch.manual_seed(0)
    module = randomise(cls(channels=16, group=1))
    x = torch.randn(1, 4, 5, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x), rtol=0.1, atol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('center_feature_scale', [False, True])
def test_cuda_compiled_module_matches_pytorch_module(center_feature_scale):
    torch.manual_seed(0)
    reference = randomise(DCNv3_pytorch(channels=64, group=4, center_feature_scale=center_feature_scale)).cuda()
    compiled = DCNv3(channels=64, group=4, center_feature_scale=center_feature_scale).cuda()
    compiled.load_state_dict(reference.state_dict())
    x = torch.randn(3, 13, 17, 64, device='cuda')
    torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)
    with torch.autocast('cuda', dtype=torch.float16):
        low = compiled(x)
    assert low.dtype == torch.float16
    torch.testing.assert_close(low.float(), reference(x), rtol=2e-2, atol=2e-2)


class _Recording:
    """Mixin: remembers the mask that reaches the core."""

    def _sample(self, values, offset, mask):
        self.seen_mask = mask
        return super()._sample(values, offset, mask)


class _RecordingPytorch(_Recording, DCNv3_pytorch):
    pass


class _RecordingFused(_Recording, DCNv3):
    pass


def test_fused_softmax_hook():
    """DCNv3 hands its core the mask logits (the softmax is fused into the op); a core with the
    default fuses_mask_softmax=False gets the per-group softmax; both compute the same layer."""
    assert DCNv3.fuses_mask_softmax and not DCNv3_pytorch.fuses_mask_softmax
    torch.manual_seed(0)
    reference = randomise(_RecordingPytorch(channels=16, group=2))
    fused = _RecordingFused(channels=16, group=2)
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 4, 16)
    expected = reference(x)
    output = fused(x)
    logits = reference.mask(reference.dw_conv(x.permute(0, 3, 1, 2)))
    torch.testing.assert_close(fused.seen_mask, logits)
    torch.testing.assert_close(reference.seen_mask, logits.unflatten(-1, (2, 9)).softmax(-1).flatten(-2))
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
