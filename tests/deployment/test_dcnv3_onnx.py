"""The DCNv3 ONNX translation, run in ONNX Runtime, against the PyTorch core and the compiled op."""
import numpy as np
import pytest
import torch

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')

from ops_dcnv3 import HAS_COMPILED_OP  # noqa: E402
from ops_dcnv3.functions import dcnv3_core_pytorch, dcnv3_output_size  # noqa: E402
from ops_dcnv3.modules import DCNv3  # noqa: E402
from ops_dcnv3.onnx import (MIN_OPSET, dcnv3_forward_symbolic,  # noqa: E402
                            register_dcnv3_onnx_symbolic)

# The op schema after the softmax change (mask holds logits, softmax over each group's points),
# defined in a test namespace with the PyTorch core as its kernel, so the translation of the
# trailing flag is tested whichever schema ops_dcnv3._C has.
_SOFTMAX_SCHEMA = ('dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, '
                   'int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, '
                   'int group, int group_channels, float offset_scale, bool softmax=False) -> Tensor')
_library = torch.library.Library('dcnv3_onnx_test', 'DEF')
_library.define(_SOFTMAX_SCHEMA)


def _softmax_per_group(logits, group):
    n, h, w, c = logits.shape
    return logits.reshape(n, h, w, group, c // group).softmax(-1).reshape(n, h, w, c)


def _core_with_softmax(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, group, group_channels, offset_scale, softmax=False):
    if softmax:
        mask = _softmax_per_group(mask, group)
    return dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                              pad_w, dilation_h, dilation_w, group, group_channels, offset_scale)


_library.impl('dcnv3_forward', _core_with_softmax, 'CPU')
torch.onnx.register_custom_op_symbolic('dcnv3_onnx_test::dcnv3_forward', dcnv3_forward_symbolic, MIN_OPSET)

# kernel, stride, pad, dilation, group, group_channels, offset_scale
CASES = [
    (3, 1, 1, 1, 2, 4, 1.0),
    (3, 2, 1, 1, 4, 2, 0.5),
    (3, 1, 2, 2, 1, 3, 2.0),
    (5, 1, 2, 1, 2, 2, 1.0),
    (1, 1, 0, 1, 2, 2, 1.0),
]


class _Op(torch.nn.Module):
    def __init__(self, op, args, **kwargs):
        super().__init__()
        self.op, self.args, self.kwargs = op, args, kwargs

    def forward(self, input, offset, mask):
        return self.op(input, offset, mask, *self.args, **self.kwargs)


def _inputs(case, height, width, batch=2, seed=0):
    kernel, stride, pad, dilation, group, group_channels, _ = case
    out_h, out_w = dcnv3_output_size(height, width, kernel, kernel, stride, stride, pad, pad,
                                     dilation, dilation)
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(batch, height, width, group * group_channels, generator=generator)
    # Offsets of a few pixels, so that samples fall between pixels and off the border.
    offset = 3 * torch.randn(batch, out_h, out_w, group * kernel * kernel * 2, generator=generator)
    mask = torch.randn(batch, out_h, out_w, group * kernel * kernel, generator=generator)
    return input, offset, mask


def _args(case):
    kernel, stride, pad, dilation, group, group_channels, offset_scale = case
    return (kernel, kernel, stride, stride, pad, pad, dilation, dilation, group, group_channels,
            offset_scale)


def _export(module, inputs, path, opset=17):
    torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=opset,
                      input_names=['input', 'offset', 'mask'], output_names=['output'],
                      dynamic_axes={'input': {0: 'n', 1: 'h', 2: 'w'}, 'offset': {0: 'n', 1: 'ho', 2: 'wo'},
                                    'mask': {0: 'n', 1: 'ho', 2: 'wo'}})
    model = onnx.load(str(path))
    assert {node.domain for node in model.graph.node} <= {'', 'ai.onnx'}
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def _run(session, input, offset, mask):
    return session.run(None, {'input': input.numpy(), 'offset': offset.numpy(), 'mask': mask.numpy()})[0]


@pytest.mark.parametrize('softmax', [False, True])
@pytest.mark.parametrize('case', CASES)
def test_translation_matches_pytorch_core_at_other_sizes(case, softmax, tmp_path):
    """Exported at one size, run at others (dynamic N, H, W), with and without the softmax flag,
    and on an empty batch (whose reshapes cannot infer a -1)."""
    module = _Op(torch.ops.dcnv3_onnx_test.dcnv3_forward, _args(case), softmax=softmax)
    session = _export(module, _inputs(case, 7, 9), tmp_path / 'dcnv3.onnx')
    for height, width, batch in ((7, 9, 2), (12, 5, 1), (16, 16, 3), (8, 6, 0)):
        input, offset, mask = _inputs(case, height, width, batch, seed=height)
        expected = _core_with_softmax(input, offset, mask, *_args(case), softmax=softmax)
        np.testing.assert_allclose(_run(session, input, offset, mask), expected.numpy(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('opset', [16, 20])
def test_translation_at_lowest_and_highest_opset(opset, tmp_path):
    # Opset 20 renamed GridSample's mode 'bilinear' to 'linear'.
    case = CASES[1]
    module = _Op(torch.ops.dcnv3_onnx_test.dcnv3_forward, _args(case), softmax=True)
    inputs = _inputs(case, 8, 6)
    session = _export(module, inputs, tmp_path / 'dcnv3.onnx', opset=opset)
    expected = _core_with_softmax(*inputs, *_args(case), softmax=True)
    np.testing.assert_allclose(_run(session, *inputs), expected.numpy(), rtol=1e-4, atol=1e-4)


_COMPILED_HAS_SOFTMAX = HAS_COMPILED_OP and 'softmax' in str(torch.ops.dcnv3.dcnv3_forward.default._schema)


@pytest.mark.skipif(not HAS_COMPILED_OP, reason='ops_dcnv3._C is not built')
@pytest.mark.parametrize('softmax', [False, True] if _COMPILED_HAS_SOFTMAX else [False])
@pytest.mark.parametrize('case', CASES[:3])
def test_compiled_op_exports_and_matches_itself(case, softmax, tmp_path):
    register_dcnv3_onnx_symbolic()
    kwargs = dict(softmax=True) if softmax else {}
    module = _Op(torch.ops.dcnv3.dcnv3_forward, _args(case), **kwargs)
    session = _export(module, _inputs(case, 9, 7), tmp_path / 'dcnv3.onnx')
    input, offset, mask = _inputs(case, 11, 10, seed=1)
    if not softmax:
        mask = _softmax_per_group(mask, case[4])  # the weights the module would pass
    expected = module(input, offset, mask)
    np.testing.assert_allclose(_run(session, input, offset, mask), expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_COMPILED_OP, reason='ops_dcnv3._C is not built')
def test_dcnv3_module_exports_in_standard_ops(tmp_path):
    register_dcnv3_onnx_symbolic()
    torch.manual_seed(0)
    layer = DCNv3(channels=16, group=2, offset_scale=1.0).eval()
    for parameter in (layer.offset.weight, layer.mask.weight):  # non-trivial offsets and masks
        torch.nn.init.normal_(parameter, std=0.5)
    x = torch.randn(1, 10, 12, 16)
    path = tmp_path / 'layer.onnx'
    torch.onnx.export(layer, (x,), str(path), dynamo=False, opset_version=17, input_names=['x'],
                      dynamic_axes={'x': {0: 'n', 1: 'h', 2: 'w'}})
    ops = {(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node}
    assert ('', 'GridSample') in ops and all(domain == '' for domain, _ in ops)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for shape in ((1, 10, 12, 16), (2, 7, 13, 16)):
        x = torch.randn(shape)
        with torch.no_grad():
            expected = layer(x)
        np.testing.assert_allclose(session.run(None, {'x': x.numpy()})[0], expected.numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_register_rejects_an_opset_without_gridsample():
    with pytest.raises(ValueError, match='needs opset >= 16'):
        register_dcnv3_onnx_symbolic(11)

