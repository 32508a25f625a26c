"""ops_dcnv3.modules.linear: activation(layer(x)) through oneDNN equals the plain layers, with
and without gradients, and steps aside where it must (hooks, other dtypes, autocast)."""
import warnings

import pytest
import torch
from torch import nn

from ops_dcnv3.modules import linear as linear_module
from ops_dcnv3.modules.linear import linear

requires_onednn = pytest.mark.skipif(not linear_module._HAS_ONEDNN_LINEAR,
                                     reason='torch was built without oneDNN')
ACTIVATIONS = [None, nn.GELU(), nn.GELU(approximate='tanh'), nn.ReLU(), nn.SiLU(), nn.Tanh()]


def plain(layer, x, activation):
    out = layer(x)
    return out if activation is None else activation(out)


def count_onednn_calls(fn):
    with torch.profiler.profile() as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key == 'mkldnn::_linear_pointwise')


@requires_onednn
@pytest.mark.parametrize('activation', ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_inference_matches_plain_layers(activation):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(2, 5, 7, 24)
    with torch.no_grad():
        assert count_onednn_calls(lambda: linear(layer, x, activation)) == 1
        torch.testing.assert_close(linear(layer, x, activation), plain(layer, x, activation),
                                   rtol=1e-5, atol=1e-5)
        no_bias = nn.Linear(24, 40, bias=False)
        torch.testing.assert_close(linear(no_bias, x, activation), plain(no_bias, x, activation),
                                   rtol=1e-5, atol=1e-5)


@requires_onednn
@pytest.mark.parametrize('bias', [True, False])
def test_gradients_match_plain_layers(bias):
    torch.manual_seed(0)
    layer = nn.Linear(16, 12, bias=bias)
    x = torch.randn(3, 4, 16, requires_grad=True)
    grad = torch.randn(3, 4, 12)
    params = [x] + list(layer.parameters())
    assert count_onednn_calls(lambda: linear(layer, x, nn.GELU())) == 1
    expected = torch.autograd.grad(plain(layer, x, nn.GELU()), params, grad)
    actual = torch.autograd.grad(linear(layer, x, nn.GELU()), params, grad)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    # Frozen weights, trainable input (and the reverse): only the needed gradients.
    layer.requires_grad_(False)
    (grad_x,) = torch.autograd.grad(linear(layer, x), [x], grad)
    torch.testing.assert_close(grad_x, grad @ layer.weight)


@requires_onednn
def test_weight_gradient_goes_through_onednn():
    """grad_weight and grad_bias come from oneDNN's inner-product backward, not ATen's mm."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 12)
    x = torch.randn(50, 16, requires_grad=True)
    out = linear(layer, x)
    with torch.profiler.profile() as prof:
        out.backward(torch.randn(50, 12))
    ops = {event.key for event in prof.key_averages()}
    assert 'aten::mkldnn_linear_backward_weights' in ops and 'aten::mm' not in ops
    expected = torch.autograd.grad(layer(x), list(layer.parameters()), torch.ones(50, 12))
    layer.zero_grad()
    linear(layer, x).backward(torch.ones(50, 12))
    torch.testing.assert_close(layer.weight.grad, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, expected[1], rtol=1e-5, atol=1e-5)


@requires_onednn
@pytest.mark.parametrize('case', ['empty batch', 'frozen weight', 'frozen bias'])
def test_gradients_in_edge_cases(case):
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(0 if case == 'empty batch' else 5, 8, requires_grad=True)
    if case == 'frozen weight':
        layer.weight.requires_grad_(False)
    if case == 'frozen bias':
        layer.bias.requires_grad_(False)
    params = [x] + [p for p in layer.parameters() if p.requires_grad]
    grad = torch.randn(x.shape[0], 6)
    expected = torch.autograd.grad(layer(x), params, grad)
    actual = torch.autograd.grad(linear(layer, x), params, grad)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@requires_onednn
def test_gradients_of_gradients_match_plain_layers():
    # oneDNN's ops have no derivatives: a backward with create_graph=True (a gradient penalty, a
    # Hessian-vector product) gave zeros with only torch's warning. It runs as ATen's matmuls now.
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(2, 5, 8)

    def penalty_gradients(fn):
        xx = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(fn(xx).pow(2).sum(), xx, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), [xx, *layer.parameters()])

    expected = penalty_gradients(layer)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # torch warns of an op without an autograd kernel
        actual = penalty_gradients(lambda t: linear(layer, t))
    assert expected[1].norm() > 1
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bias', ['strided', 'expanded'])
def test_non_contiguous_bias_takes_the_module_call(bias):
    # oneDNN read such a bias as contiguous: [0, 1, 2, ...] for a bias of [0, 2, 4, ...].
    layer = nn.Linear(4, 6)
    layer.bias = nn.Parameter(torch.arange(12.)[::2] if bias == 'strided' else torch.ones(1).expand(6))
    x = torch.zeros(3, 4)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            assert count_onednn_calls(lambda: linear(layer, x, nn.GELU())) == 0
            torch.testing.assert_close(linear(layer, x), layer(x))


def test_tracing_records_the_plain_linear():
    """torch.jit.trace (the ONNX exporter's front end) sees aten::linear, which ONNX knows."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(8, 6), nn.GELU()

        def forward(self, x):
            return linear(self.fc, x, self.act)

    with warnings.catch_warnings():
        warnings.simplefilter('error', torch.jit.TracerWarning)  # the width check was one per layer
        traced = torch.jit.trace(Block(), torch.randn(4, 8))
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert 'aten::linear' in kinds and not any(kind.startswith('mkldnn::') for kind in kinds)


@pytest.mark.parametrize('case', ['float64', 'hooked', 'autocast'])
def test_falls_back_to_the_module_call(case):
    """Other dtypes, hooked layers (FLOP counters) and autocast get the plain module call."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(4, 8)
    calls = []
    if case == 'float64':
        layer, x = layer.double(), x.double()
    elif case == 'hooked':
        layer.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=case == 'autocast'):
        assert count_onednn_calls(lambda: linear(layer, x, nn.GELU())) == 0
        out = linear(layer, x, nn.GELU())
        torch.testing.assert_close(out, plain(layer, x, nn.GELU()))
    if case == 'hooked':
        assert calls and calls[-1] == (4, 6)
    if case == 'autocast':
        assert out.dtype == torch.bfloat16
