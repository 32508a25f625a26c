"""DCNv3 in standard ONNX operators, for ``torch.onnx.export(..., dynamo=False)``.

``register_dcnv3_onnx_symbolic()`` teaches the TorchScript-based exporter to write
``dcnv3::dcnv3_forward`` as plain ONNX (opset >= 16), so an exported model runs in any ONNX
runtime without a plugin. It is registered on demand by the export tool, not at
``import ops_dcnv3``.

The decomposition samples the projected input with one ``GridSample`` per layer: the sampling
positions are the regular kernel grid plus the learned offsets, in the unpadded input's
coordinates (GridSample's zero padding stands in for the op's zero padding), and the per-point
masks weight the samples before a ``ReduceSum`` over the kernel points. Of the decompositions
measured in ONNX Runtime it is the fastest and needs the least memory (docs/benchmarks.md).

Both op schemas are accepted: today's, whose trailing ``softmax`` flag says ``mask`` holds logits
(the op softmaxes each group's kernel points first), and the older one without the flag.
"""
import torch
from torch.onnx import symbolic_helper

__all__ = ['MIN_OPSET', 'register_dcnv3_onnx_symbolic', 'dcnv3_forward_symbolic']

# GridSample (and so the whole decomposition) exists from opset 16 on.
MIN_OPSET = 16
OP_NAME = 'dcnv3::dcnv3_forward'


def _ints(g, values):
    return g.op('Constant', value_t=torch.tensor(values, dtype=torch.int64))


def _floats(g, values):
    return g.op('Constant', value_t=torch.tensor(values, dtype=torch.float32))


def _dims(g, shape, indices):
    """The dims ``indices`` of a Shape output, as a 1-D int64 tensor."""
    return g.op('Gather', shape, _ints(g, indices), axis_i=0)


def _kernel_positions(kernel_h, kernel_w, pad_h, pad_w, dilation_h, dilation_w, offset_scale):
    """Per kernel point p = i*kernel_h + j (x outer), the position relative to ``o * stride``.

    In pixel indices of the unpadded input, as the C++/CUDA kernels compute them: the kernel
    centre, minus the padding, plus the regular displacement scaled by ``offset_scale``.
    """
    centre_x, centre_y = (dilation_w * (kernel_w - 1)) // 2, (dilation_h * (kernel_h - 1)) // 2
    xs, ys = [], []
    for i in range(kernel_w):
        for j in range(kernel_h):
            xs.append(centre_x - pad_w + (i * dilation_w - centre_x) * offset_scale)
            ys.append(centre_y - pad_h + (j * dilation_h - centre_y) * offset_scale)
    return xs, ys


def dcnv3_forward_symbolic(g, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                           pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                           softmax=None):
    """ONNX graph of ``dcnv3_forward``: (N, H, W, C) -> (N, Ho, Wo, C), all sizes may be dynamic."""
    def const(value, kind, name):
        return symbolic_helper._get_const(value, kind, name)

    kernel_h, kernel_w = const(kernel_h, 'i', 'kernel_h'), const(kernel_w, 'i', 'kernel_w')
    stride_h, stride_w = const(stride_h, 'i', 'stride_h'), const(stride_w, 'i', 'stride_w')
    pad_h, pad_w = const(pad_h, 'i', 'pad_h'), const(pad_w, 'i', 'pad_w')
    dilation_h, dilation_w = const(dilation_h, 'i', 'dilation_h'), const(dilation_w, 'i', 'dilation_w')
    group, group_channels = const(group, 'i', 'group'), const(group_channels, 'i', 'group_channels')
    offset_scale = const(offset_scale, 'f', 'offset_scale')
    softmax = False if softmax is None or symbolic_helper._is_none(softmax) else bool(
        const(softmax, 'b', 'softmax'))
    points = kernel_h * kernel_w
    channels = group * group_channels

    in_shape, out_shape = g.op('Shape', input), g.op('Shape', offset)  # (N, H, W, C), (N, Ho, Wo, .)
    out_hw = _dims(g, out_shape, [1, 2])
    out_locations = g.op('ReduceProd', out_hw, keepdims_i=1)  # Ho*Wo, as a 1-element tensor
    # Reshapes spell every size out: a -1 cannot be inferred for an empty batch.
    batch, out_nhw = _dims(g, in_shape, [0]), _dims(g, out_shape, [0, 1, 2])
    batch_groups = g.op('Mul', batch, _ints(g, [group]))  # N*G

    # Sampling positions, normalised for GridSample (align_corners=0): x_norm = (2x + 1)/W - 1,
    # written as x * a + b with per-axis (a, b) that depend on the (dynamic) input size.
    in_wh = g.op('Cast', _dims(g, in_shape, [2, 1]), to_i=1)  # (W, H) as float32
    norm_scale = g.op('Div', _floats(g, [2.0, 2.0]), in_wh)
    norm_shift = g.op('Sub', g.op('Div', _floats(g, [1.0, 1.0]), in_wh), _floats(g, [1.0, 1.0]))

    # The regular grid: out index * stride + kernel position, (Ho, Wo, P, 2) in pixels.
    def positions(size_index, stride):  # o * stride for o in range(size), as float32
        size = g.op('Squeeze', _dims(g, out_shape, [size_index]))
        steps = g.op('Range', _ints(g, 0), size, _ints(g, 1))  # int64: Range needs one input type
        return g.op('Mul', g.op('Cast', steps, to_i=1), _floats(g, float(stride)))

    rows, cols = positions(1, stride_h), positions(2, stride_w)
    kernel_x, kernel_y = _kernel_positions(kernel_h, kernel_w, pad_h, pad_w, dilation_h, dilation_w,
                                           offset_scale)
    grid_x = g.op('Add', g.op('Unsqueeze', cols, _ints(g, [1])), _floats(g, [kernel_x]))  # (Wo, P)
    grid_y = g.op('Add', g.op('Unsqueeze', rows, _ints(g, [1])), _floats(g, [kernel_y]))  # (Ho, P)
    grid_shape = g.op('Concat', out_hw, _ints(g, [points, 1]), axis_i=0)
    grid_x = g.op('Expand', g.op('Unsqueeze', grid_x, _ints(g, [0, 3])), grid_shape)
    grid_y = g.op('Expand', g.op('Unsqueeze', grid_y, _ints(g, [1, 3])), grid_shape)
    grid = g.op('Concat', grid_x, grid_y, axis_i=3)  # (Ho, Wo, P, 2), (x, y) as the offsets
    grid = g.op('Add', g.op('Mul', grid, norm_scale), norm_shift)
    grid = g.op('Unsqueeze', grid, _ints(g, [0, 3]))  # (1, Ho, Wo, 1, P, 2)

    # Learned offsets, scaled and normalised the same way, added to the regular grid.
    offset = g.op('Reshape', offset, g.op('Concat', out_nhw, _ints(g, [group, points, 2]), axis_i=0))
    grid = g.op('Add', g.op('Mul', offset, g.op('Mul', norm_scale, _floats(g, offset_scale))), grid)
    grid = g.op('Transpose', grid, perm_i=[0, 3, 1, 2, 4, 5])  # (N, G, Ho, Wo, P, 2)
    grid = g.op('Reshape', grid, g.op('Concat', batch_groups, out_locations, _ints(g, [points, 2]),
                                      axis_i=0))

    # Values per group as images: (N*G, Cg, H, W).
    values = g.op('Reshape', input, g.op('Concat', _dims(g, in_shape, [0, 1, 2]),
                                         _ints(g, [group, group_channels]), axis_i=0))
    values = g.op('Transpose', values, perm_i=[0, 3, 4, 1, 2])
    values = g.op('Reshape', values, g.op('Concat', batch_groups, _ints(g, [group_channels]),
                                          _dims(g, in_shape, [1, 2]), axis_i=0))
    # Opset 20 renamed GridSample's 'bilinear' to 'linear'.
    mode = 'linear' if g.opset >= 20 else 'bilinear'
    sampled = g.op('GridSample', values, grid, mode_s=mode, padding_mode_s='zeros',
                   align_corners_i=0)  # (N*G, Cg, Ho*Wo, P)

    mask = g.op('Reshape', mask, g.op('Concat', out_nhw, _ints(g, [group, points]), axis_i=0))
    if softmax:
        mask = g.op('Softmax', mask, axis_i=-1)
    mask = g.op('Transpose', mask, perm_i=[0, 3, 1, 2, 4])  # (N, G, Ho, Wo, P)
    mask = g.op('Reshape', mask, g.op('Concat', batch_groups, _ints(g, [1]), out_locations,
                                      _ints(g, [points]), axis_i=0))
    output = g.op('ReduceSum', g.op('Mul', sampled, mask), _ints(g, [3]), keepdims_i=0)

    # (N*G, Cg, Ho*Wo) -> (N, Ho, Wo, G*Cg): channel g*Cg + c, as the op orders them.
    output = g.op('Reshape', output, g.op('Concat', batch, _ints(g, [channels]), out_locations,
                                        axis_i=0))
    output = g.op('Transpose', output, perm_i=[0, 2, 1])
    return g.op('Reshape', output, g.op('Concat', out_nhw, _ints(g, [channels]), axis_i=0))


def register_dcnv3_onnx_symbolic(opset_version: int = MIN_OPSET) -> None:
    """Register the translation of ``dcnv3::dcnv3_forward`` for opsets >= ``opset_version``.

    Idempotent. Needs the compiled op (``ops_dcnv3._C``): without it DCNv3 runs on the
    pure-PyTorch core, whose export ONNX Runtime refuses (no GridSample kernel fits it), which
    is why ``export_mask_rcnn`` requires the extension.
    """
    if opset_version < MIN_OPSET:
        raise ValueError(f'the DCNv3 ONNX translation needs opset >= {MIN_OPSET} (GridSample), '
                         f'got {opset_version}')
    torch.onnx.register_custom_op_symbolic(OP_NAME, dcnv3_forward_symbolic, opset_version)
