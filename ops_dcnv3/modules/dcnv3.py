"""DCNv3 layers (InternImage): deformable sampling with softmax-normalised per-group masks.

Two modules with identical parameters (names, shapes, order) that differ only in the core they
call: ``DCNv3`` uses the compiled op through ``DCNv3Function`` and ``DCNv3_pytorch`` the
pure-PyTorch core. Checkpoints therefore load into either, and the names follow the original
implementation so released InternImage weights keep working.

All tensors are channels-last: the modules take and return (N, H, W, C).
"""
import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..functions import DCNv3Function, dcnv3_core_pytorch
from .linear import linear

__all__ = ['DCNv3', 'DCNv3_pytorch', 'build_norm', 'build_activation', 'ToChannelsFirst',
           'ToChannelsLast']


class ToChannelsLast(nn.Module):
    """(N, C, H, W) -> (N, H, W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """(N, H, W, C) -> (N, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


_LAYOUTS = ('channels_first', 'channels_last')


def build_norm(channels: int, norm_layer: str = 'LN', in_format: str = 'channels_last',
               out_format: str = 'channels_last', eps: float = 1e-6) -> nn.Sequential:
    """A norm wrapped in the permutes its layout needs, as one ``nn.Sequential``.

    LayerNorm normalises the last dim, so it runs channels-last; BatchNorm runs channels-first.
    The permutes are parameter-free children, which is why checkpoint keys read e.g.
    ``norm1.1.weight`` (permute, then LayerNorm). ``eps`` applies to LayerNorm only; InternImage
    uses 1e-6 throughout.
    """
    if in_format not in _LAYOUTS or out_format not in _LAYOUTS:
        raise ValueError(f'in_format/out_format must be one of {_LAYOUTS}, got {in_format!r}, {out_format!r}')
    layers = []
    if norm_layer == 'LN':
        if in_format == 'channels_first':
            layers.append(ToChannelsLast())
        layers.append(nn.LayerNorm(channels, eps=eps))
        if out_format == 'channels_first':
            layers.append(ToChannelsFirst())
    elif norm_layer == 'BN':
        if in_format == 'channels_last':
            layers.append(ToChannelsFirst())
        layers.append(nn.BatchNorm2d(channels))
        if out_format == 'channels_last':
            layers.append(ToChannelsLast())
    else:
        raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}")
    return nn.Sequential(*layers)


def build_activation(act_layer: str = 'GELU') -> nn.Module:
    """'GELU' (exact erf form), 'ReLU' or 'SiLU'."""
    activations = {'GELU': nn.GELU, 'ReLU': nn.ReLU, 'SiLU': nn.SiLU}
    if act_layer not in activations:
        raise ValueError(f'act_layer must be one of {sorted(activations)}, got {act_layer!r}')
    return activations[act_layer]()


class _DCNv3Base(nn.Module):
    """Shared body of the DCNv3 modules; subclasses only choose the core in ``_sample``.

    Values come from ``input_proj(input)``; the offsets and the per-group softmax masks come from
    a depth-wise conv branch (conv -> norm -> activation) on the same input. A subclass whose core
    takes the softmax itself sets ``fuses_mask_softmax = True``: its ``_sample`` then receives the
    mask logits instead of the normalised mask.

    Args:
        channels: input and output channels; must be divisible by ``group``.
        kernel_size: sampling kernel (square); P = kernel_size ** 2 points per group.
        dw_kernel_size: kernel of the depth-wise conv that predicts offsets/masks
            (defaults to ``kernel_size``).
        stride, pad, dilation: of the sampling kernel.
        group: number of groups; each has its own offsets and masks.
        offset_scale: scales both the kernel displacements and the learned offsets.
        act_layer, norm_layer: of the depth-wise branch ('GELU'/'ReLU'/'SiLU', 'LN'/'BN').
        center_feature_scale: learn a per-group sigmoid gate that blends the sampled output with
            the projected input (used by InternImage-H/G).
        use_dcn_v4_op: accepted for config compatibility; DCNv4 is not provided here.
    """

    fuses_mask_softmax: bool = False

    def __init__(self,
                 channels: int = 64,
                 kernel_size: int = 3,
                 dw_kernel_size: Optional[int] = None,
                 stride: int = 1,
                 pad: int = 1,
                 dilation: int = 1,
                 group: int = 4,
                 offset_scale: float = 1.0,
                 act_layer: str = 'GELU',
                 norm_layer: str = 'LN',
                 center_feature_scale: bool = False,
                 use_dcn_v4_op: bool = False):
        super().__init__()
        if use_dcn_v4_op:
            raise NotImplementedError(
                'use_dcn_v4_op=True needs the DCNv4 operator, which this package does not provide; '
                'set use_dcn_v4_op=False (DCNv4 checkpoints have the same keys and load into DCNv3).')
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        for name, value, least in (('channels', channels, 1), ('kernel_size', kernel_size, 1),
                                   ('group', group, 1), ('dw_kernel_size', dw_kernel_size, 1),
                                   ('stride', stride, 1), ('dilation', dilation, 1),
                                   ('pad', pad, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                kind = 'a positive int' if least else 'an int of at least 0'
                raise ValueError(f'{name} must be {kind}, got {value!r}')
        if (isinstance(offset_scale, bool) or not isinstance(offset_scale, numbers.Real)
                or not math.isfinite(offset_scale)):
            raise ValueError(f'offset_scale must be a finite number, got {offset_scale!r}')
        if channels % group != 0:
            raise ValueError(f'channels ({channels}) must be divisible by group ({group})')
        # The offsets come from a depth-wise conv that keeps the input's height and width, so the
        # sampling kernel must keep them too (else the core refuses offsets of the wrong size).
        if dw_kernel_size % 2 == 0:
            raise ValueError(f'dw_kernel_size must be odd (its conv keeps the input size), got '
                             f'{dw_kernel_size}')
        if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
            raise ValueError(f'DCNv3 keeps the input size: it needs stride=1 and 2 * pad == '
                             f'dilation * (kernel_size - 1), got stride={stride}, pad={pad}, '
                             f'dilation={dilation}, kernel_size={kernel_size}')

        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        points = kernel_size * kernel_size

        if center_feature_scale:
            # Plain Parameters (not a Linear), so the keys match released H/G checkpoints.
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, stride=1, padding=(dw_kernel_size - 1) // 2,
                      groups=channels),
            build_norm(channels, norm_layer, 'channels_first', 'channels_last'),
            build_activation(act_layer))
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Zero offsets and uniform masks at start: the layer begins as a regular (averaging) kernel.
        # (InternImage.init_weights draws them again when training from scratch, as the original.)
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def _sample(self, values: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The DCNv3 core on (values, offset, mask): mask logits if ``fuses_mask_softmax``, else
        the per-group softmaxed mask."""
        raise NotImplementedError

    def _core_args(self) -> tuple:
        """The scalar arguments of the core, in its signature order."""
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        return (k, k, s, s, p, p, d, d, self.group, self.group_channels, self.offset_scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) -> (N, Ho, Wo, C)."""
        # An NCHW or 3-D input failed inside the first Linear or permute, naming neither.
        if input.dim() != 4 or input.shape[-1] != self.channels:
            nchw = input.dim() == 4 and input.shape[1] == self.channels
            raise ValueError(f'{type(self).__name__}: expected a channels-last input (N, H, W, '
                             f'{self.channels}), got shape {tuple(input.shape)}'
                             + ('; an NCHW tensor x is x.permute(0, 2, 3, 1)' if nchw else ''))
        values = linear(self.input_proj, input)
        features = self.dw_conv(input.permute(0, 3, 1, 2))  # back to channels-last after its norm
        offset = linear(self.offset, features)
        mask = linear(self.mask, features)
        if not self.fuses_mask_softmax:
            # (unflatten: a reshape to (N, H, W, group, -1) cannot infer -1 for an empty batch)
            mask = mask.unflatten(-1, (self.group, -1)).softmax(-1).flatten(-2)
        # Under autocast the softmax runs in float32 while the Linears give half; the core wants
        # one dtype (a fused softmax still runs in float32 inside the core).
        mask = mask.to(values.dtype)
        output = self._sample(values, offset, mask)
        if self.center_feature_scale:
            gate = F.linear(features, self.center_feature_scale_proj_weight,
                            self.center_feature_scale_proj_bias).sigmoid()
            gate = gate.repeat_interleave(self.group_channels, dim=-1)  # one gate per group
            output = output * (1 - gate) + values * gate
        return linear(self.output_proj, output)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, '
                f'stride={self.stride}, pad={self.pad}, dilation={self.dilation}, '
                f'offset_scale={self.offset_scale}, center_feature_scale={self.center_feature_scale}')


class DCNv3(_DCNv3Base):
    """DCNv3 on the compiled operator (falls back to the PyTorch core where it is not built),
    with the mask softmax fused into the op."""

    fuses_mask_softmax = True
    # The compiled kernels do not chunk the batch; the value only has to be a valid step.
    im2col_step = 256

    def _sample(self, values, offset, mask_logits):
        return DCNv3Function.apply(values, offset, mask_logits, *self._core_args(), self.im2col_step,
                                   softmax=True)


class DCNv3_pytorch(_DCNv3Base):
    """DCNv3 on the pure-PyTorch core (reference implementation; no compiled code needed)."""

    def _sample(self, values, offset, mask):
        return dcnv3_core_pytorch(values, offset, mask, *self._core_args())
