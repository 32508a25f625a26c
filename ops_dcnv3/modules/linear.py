"""``activation(layer(x))`` for an ``nn.Linear``, through oneDNN on the CPU where that is faster.

On the CPU, ``nn.Linear`` runs as ATen's addmm, which first copies the broadcast bias into the
whole output and then runs the GEMM on top of it. For InternImage's tall, thin GEMMs (a row per
pixel, 64 to 512 columns) that copy costs about as much as the GEMM itself. oneDNN's linear
primitive adds the bias, and can apply GELU/ReLU/SiLU, in the GEMM's epilogue instead: on 2 cores
(float32, 60800 x 64 -> 256, the stage-1 MLP) 40 ms instead of 52 ms for the Linear, and 48 ms
instead of 92 ms with the GELU.

The weights stay in the ``nn.Linear`` (state_dict keys unchanged), and the results equal the plain
layer's up to float rounding. The fast path is taken for float32 CPU tensors when torch has oneDNN
and it is enabled, outside autocast, torch.compile/export (inductor makes its own fusions) and
tracing (ONNX export knows aten::linear, not oneDNN's op), and only when the layer has no hooks,
so FLOP counters and feature hooks see the module called as usual, and only for a contiguous
bias (oneDNN reads the bias as contiguous, whatever its strides).
With gradients the activation runs as its own module (autograd needs its input); the backward
runs through oneDNN too: grad_input as a linear layer with the transposed weight, grad_weight and
grad_bias as oneDNN's inner-product backward (ATen's ``grad.t().mm(x)`` goes to MKL, which on the
AMD EPYC measured here runs at about half oneDNN's rate: for the InternImage-T backbone at 400x608,
one thread, 864 ms in ``aten::mm`` against 473 ms, plus 184 ms converting the operands). A
backward that builds a graph (``create_graph=True``, for gradients of gradients) runs as ATen's
differentiable matmuls instead: oneDNN's ops have no derivatives of their own.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ['linear']

_HAS_ONEDNN_LINEAR = (torch.backends.mkldnn.is_available()
                      and hasattr(torch.ops.mkldnn, '_linear_pointwise')
                      and hasattr(torch.ops.aten, 'mkldnn_linear_backward_weights'))


def _onednn_post_op(activation: Optional[nn.Module]):
    """(attr, algorithm) naming ``activation`` as a oneDNN post-op, or None if it has none."""
    if activation is None:
        return 'none', ''
    if type(activation) is nn.GELU:
        return 'gelu', 'none' if activation.approximate == 'none' else 'tanh'
    if type(activation) is nn.ReLU:
        return 'relu', ''
    if type(activation) is nn.SiLU:
        return 'swish', ''
    return None


def _has_hooks(layer: nn.Module) -> bool:
    module_hooks = nn.modules.module
    return bool(layer._forward_hooks or layer._forward_pre_hooks
                or module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)


def _onednn_applies(layer: nn.Linear, x: torch.Tensor) -> bool:
    # Tracing is asked first: the width comparison would be a TracerWarning. Input of another
    # width takes the module call, whose error names the shapes (oneDNN's says only that it could
    # not create a primitive).
    return (_HAS_ONEDNN_LINEAR and torch.backends.mkldnn.enabled and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled('cpu')
            and x.device.type == 'cpu' and x.dim() >= 1 and x.shape[-1] == layer.in_features
            and x.dtype == torch.float32 and layer.weight.dtype == torch.float32
            and (layer.bias is None or layer.bias.is_contiguous()) and not _has_hooks(layer))


class _OneDNNLinear(torch.autograd.Function):
    """The GEMM + bias through oneDNN. The backward computes what ATen's linear backward does, all
    in oneDNN (MKL's GEMMs took up to twice as long for these shapes): grad_input as a linear layer
    with the transposed weight, grad_weight and grad_bias in one inner-product backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = grad_weight = grad_bias = None
        wants_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if torch.is_grad_enabled():  # create_graph: autograd differentiates this backward again
            if ctx.needs_input_grad[0]:
                grad_x = grad_output.matmul(weight)
            if ctx.needs_input_grad[1]:
                grad_weight = grad_rows.t().mm(x.reshape(-1, x.shape[-1]))
            if wants_bias:
                grad_bias = grad_rows.sum(0)
            return grad_x, grad_weight, grad_bias
        if ctx.needs_input_grad[0]:  # grad_output @ weight, as a linear layer with weight^T
            grad_x = torch.ops.mkldnn._linear_pointwise(grad_output, weight.t().contiguous(), None,
                                                        'none', [], '')
        if ctx.needs_input_grad[1] and grad_rows.shape[0] > 0:
            # It takes oneDNN ("mkldnn") tensors: converting the rows is one plain copy (0.2 ms
            # for 30400 x 64), and the results come back dense because `weight` is.
            grad_weight, bias_sum = torch.ops.aten.mkldnn_linear_backward_weights(
                grad_rows.contiguous().to_mkldnn(),
                x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn(), weight, wants_bias)
            grad_bias = bias_sum if wants_bias else None
        elif ctx.needs_input_grad[1]:  # no rows (an empty batch): oneDNN wants at least one
            grad_weight = weight.new_zeros(weight.shape)
        if wants_bias and grad_bias is None:
            grad_bias = grad_rows.t().mv(grad_rows.new_ones(grad_rows.shape[0]))
        return grad_x, grad_weight, grad_bias


def linear(layer: nn.Linear, x: torch.Tensor, activation: Optional[nn.Module] = None) -> torch.Tensor:
    """``activation(layer(x))`` (``layer(x)`` without an activation), fused where it pays."""
    if not _onednn_applies(layer, x):
        out = layer(x)
        return out if activation is None else activation(out)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        out = _OneDNNLinear.apply(x, layer.weight, layer.bias)
    else:
        post_op = _onednn_post_op(activation)
        if post_op is not None:
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, post_op[0], [],
                                                      post_op[1])
        out = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, 'none', [], '')
    return out if activation is None else activation(out)
