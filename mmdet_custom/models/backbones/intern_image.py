"""InternImage backbone for mmdet 2.x ("InternImage: Exploring Large-Scale Vision Foundation Models
with Deformable Convolutions").

A conv stem, then four stages of DCNv3 blocks with a strided-conv downsample between stages. Inside
the stages everything is channels-last (N, H, W, C); the outputs are NCHW feature maps, one per
entry of ``out_indices``, each taken before its stage's downsample.

Module and parameter names follow the original implementation so that released ImageNet and COCO
checkpoints load unchanged (e.g. ``levels.2.blocks.5.dcn.offset.weight``).
"""
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint as checkpoint
from mmcv.cnn.bricks import DropPath
from mmcv.runner import BaseModule, _load_checkpoint
from mmdet.models.builder import BACKBONES
from mmdet.utils import get_root_logger
from torch import nn

from ops_dcnv3.modules import DCNv3, DCNv3_pytorch
from ops_dcnv3.modules.dcnv3 import build_activation, build_norm
from ops_dcnv3.modules.linear import linear

from ...utils import error_summary, numpy_pickle_globals, unsupported_pickle_global

__all__ = ['InternImage', 'PretrainedCheckpointError']

class PretrainedCheckpointError(RuntimeError):
    """The pretrained checkpoint named by ``init_cfg`` could not be fetched or read."""


# core_op names as the original configs spell them.
CORE_OPS = {'DCNv3': DCNv3, 'DCNv3_pytorch': DCNv3_pytorch}


class StemLayer(nn.Module):
    """Two stride-2 3x3 convs: (N, 3, H, W) -> (N, H/4, W/4, C), channels-last."""

    def __init__(self, in_chans: int = 3, out_chans: int = 96, act_layer: str = 'GELU',
                 norm_layer: str = 'BN'):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = build_norm(out_chans // 2, norm_layer, 'channels_first', 'channels_first')
        self.act = build_activation(act_layer)
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = build_norm(out_chans, norm_layer, 'channels_first', 'channels_last')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """Stride-2 3x3 conv that doubles the channels: (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, channels: int, norm_layer: str = 'LN'):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = build_norm(2 * channels, norm_layer, 'channels_first', 'channels_last')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    """fc1 -> activation -> fc2, channels-last."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: str = 'GELU',
                 drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = build_activation(act_layer)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # linear() fuses the activation into fc1's GEMM where it can (module doc of linear.py).
        return self.drop(linear(self.fc2, self.drop(linear(self.fc1, x, self.act))))


class InternImageBlock(nn.Module):
    """One residual block: a DCNv3 branch, then an MLP branch.

    Pre-norm (``post_norm=False``): ``x + gamma * f(norm(x))``; post-norm: ``x + gamma * norm(f(x))``;
    ``res_post_norm``: pre-norm plus an extra LayerNorm on each branch output, applied only
    without ``layer_scale``, as in the original (with it, the norms exist but are unused). The
    gammas exist only when ``layer_scale`` is set.
    """

    def __init__(self,
                 core_op: type,
                 channels: int,
                 groups: int,
                 mlp_ratio: float = 4.0,
                 drop: float = 0.0,
                 drop_path: float = 0.0,
                 act_layer: str = 'GELU',
                 norm_layer: str = 'LN',
                 post_norm: bool = False,
                 layer_scale: Optional[float] = None,
                 offset_scale: float = 1.0,
                 with_cp: bool = False,
                 dw_kernel_size: Optional[int] = None,
                 res_post_norm: bool = False,
                 center_feature_scale: bool = False,
                 use_dcn_v4_op: bool = False):
        super().__init__()
        if post_norm and res_post_norm:
            raise ValueError('post_norm and res_post_norm are alternatives; set at most one')
        self.post_norm = post_norm
        self.with_cp = with_cp
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))
        else:
            self.gamma1 = self.gamma2 = None
        # The block norms are LayerNorms whatever norm_layer says (norm_layer applies to the
        # dw-conv branch and the downsample), as in the original.
        self.norm1 = build_norm(channels, 'LN')
        self.dcn = core_op(channels=channels, kernel_size=3, stride=1, pad=1, dilation=1, group=groups,
                           offset_scale=offset_scale, act_layer=act_layer, norm_layer=norm_layer,
                           dw_kernel_size=dw_kernel_size, center_feature_scale=center_feature_scale,
                           use_dcn_v4_op=use_dcn_v4_op)
        # _add_residual applies the drop-path (folded into the residual scale); the module only
        # names the rate, as in the original.
        self.drop_path_rate = drop_path
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = build_norm(channels, 'LN')
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio), act_layer=act_layer, drop=drop)
        if res_post_norm:
            self.res_post_norm1 = build_norm(channels, 'LN')
            self.res_post_norm2 = build_norm(channels, 'LN')
        else:
            self.res_post_norm1 = self.res_post_norm2 = None

    def _add_residual(self, x, branch, norm, res_norm, gamma):
        """x + drop_path(gamma * branch output), as one addcmul: a single pass over the feature
        map (and one in the backward) instead of up to four."""
        out = norm(branch(x)) if self.post_norm else branch(norm(x))
        if res_norm is not None and gamma is None:
            out = res_norm(out)
        scale = gamma
        if self.training and self.drop_path_rate > 0:
            # mmcv's DropPath (the same random draw): keep each sample's branch with probability
            # keep, scaled by 1 / keep, folded into the per-channel scale. A rate of 1 drops
            # every branch (mmcv's 0 / 0 would make it NaN).
            keep = 1 - self.drop_path_rate
            shape = (x.shape[0],) + (1,) * (x.dim() - 1)
            if keep == 0:
                sample_scale = x.new_zeros(shape)
            else:
                sample_scale = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_() / keep
            scale = sample_scale if gamma is None else sample_scale * gamma
        return x + out if scale is None else torch.addcmul(x, scale, out)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._add_residual(x, self.dcn, self.norm1, self.res_post_norm1, self.gamma1)
        x = self._add_residual(x, self.mlp, self.norm2, self.res_post_norm2, self.gamma2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and torch.is_grad_enabled():
            # Recompute activations in backward to save memory; non-reentrant so that parameter
            # gradients flow even when x itself needs no gradient.
            return checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class InternImageStage(nn.Module):
    """A stage (``levels.L`` in checkpoints): blocks, optional norms, optional downsample.

    ``forward`` returns ``(features, downsampled)``: the stage output before the downsample (what
    the backbone emits) and the input of the next stage (None for the last stage).
    """

    def __init__(self,
                 core_op: type,
                 channels: int,
                 depth: int,
                 groups: int,
                 downsample: bool = True,
                 mlp_ratio: float = 4.0,
                 drop: float = 0.0,
                 drop_path: Sequence[float] = (),
                 act_layer: str = 'GELU',
                 norm_layer: str = 'LN',
                 post_norm: bool = False,
                 offset_scale: float = 1.0,
                 layer_scale: Optional[float] = None,
                 with_cp: bool = False,
                 dw_kernel_size: Optional[int] = None,
                 post_norm_block_ids: Optional[Sequence[int]] = None,
                 res_post_norm: bool = False,
                 center_feature_scale: bool = False,
                 use_dcn_v4_op: bool = False):
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        if len(drop_path) != depth:
            raise ValueError(f'need one drop-path rate per block ({depth}), got {len(drop_path)}')
        self.blocks = nn.ModuleList([
            InternImageBlock(core_op, channels, groups, mlp_ratio=mlp_ratio, drop=drop,
                             drop_path=drop_path[i], act_layer=act_layer, norm_layer=norm_layer,
                             post_norm=post_norm, layer_scale=layer_scale,
                             offset_scale=offset_scale, with_cp=with_cp,
                             dw_kernel_size=dw_kernel_size, res_post_norm=res_post_norm,
                             center_feature_scale=center_feature_scale,
                             use_dcn_v4_op=use_dcn_v4_op)
            for i in range(depth)])
        # Pre-norm blocks leave the residual stream unnormalised, so the stage ends with a norm.
        self.has_stage_norm = not post_norm or center_feature_scale
        if self.has_stage_norm:
            self.norm = build_norm(channels, 'LN')
        # Extra LayerNorms after selected blocks (level 2 of the large models) keep deep stacks stable.
        self.post_norm_block_ids = list(post_norm_block_ids or [])
        bad_ids = [i for i in self.post_norm_block_ids if not 0 <= i < depth]
        if bad_ids:
            raise ValueError(f'post-norm block ids {bad_ids} are outside 0..{depth - 1}')
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList([build_norm(channels, 'LN') for _ in self.post_norm_block_ids])
        self.downsample = DownsampleLayer(channels, norm_layer) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        if self.has_stage_norm:
            x = self.norm(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


@BACKBONES.register_module()
class InternImage(BaseModule):
    """InternImage backbone.

    Args:
        core_op: 'DCNv3' (compiled op) or 'DCNv3_pytorch' (pure PyTorch); same parameters.
        channels: width of the first stage; stage i has ``channels * 2**i``.
        depths: blocks per stage.
        groups: DCNv3 groups per stage.
        mlp_ratio: MLP hidden width / channels.
        drop_rate: dropout after the stem and inside the MLPs.
        drop_path_rate: stochastic depth of the last block, in [0, 1].
        drop_path_type: 'linear' (0 -> drop_path_rate over all blocks) or 'uniform'.
        act_layer, norm_layer: activation ('GELU', 'ReLU', 'SiLU') and norm ('LN', 'BN') of the
            stem, the DCN offset branch and the downsamples.
        layer_scale: initial value of the per-channel residual scales (None: no scales).
        offset_scale: DCNv3 offset scale.
        post_norm: normalise branch outputs instead of inputs (S/B/L/XL models).
        with_cp: gradient checkpointing per block (saves memory, costs a second forward).
        dw_kernel_size: kernel of the DCN offset branch's depth-wise conv (None: 3).
        level2_post_norm, level2_post_norm_block_ids: LayerNorms after these blocks of stage 2.
        res_post_norm: extra LayerNorm on each pre-norm branch output (H/G models); as in the
            original, not applied when ``layer_scale`` is set (the norms are built all the same,
            so checkpoint keys match), with a warning.
        center_feature_scale: DCNv3 centre feature gate (H/G models); also keeps the stage norms.
        use_dcn_v4_op: not supported (DCNv4 is not provided); must be False.
        out_indices: stages whose outputs are returned.
        frozen_stages: k > 0 freezes stages 0..k-1 (not the stem, as in the original); -1 and 0
            freeze nothing.
        init_cfg: mmcv init config; ``dict(type='Pretrained', checkpoint=...)`` loads an ImageNet
            classification or detection checkpoint (head and non-backbone keys are ignored);
            None trains from scratch as the original does: ``init_weights()`` draws every Linear
            again (the DCNv3 offset and mask ones too) and resets the LayerNorms, with a warning.
    """

    def __init__(self,
                 core_op: str = 'DCNv3',
                 channels: int = 64,
                 depths: Sequence[int] = (3, 4, 18, 5),
                 groups: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2,
                 drop_path_type: str = 'linear',
                 act_layer: str = 'GELU',
                 norm_layer: str = 'LN',
                 layer_scale: Optional[float] = None,
                 offset_scale: float = 1.0,
                 post_norm: bool = False,
                 with_cp: bool = False,
                 dw_kernel_size: Optional[int] = None,
                 level2_post_norm: bool = False,
                 level2_post_norm_block_ids: Optional[Sequence[int]] = None,
                 res_post_norm: bool = False,
                 center_feature_scale: bool = False,
                 use_dcn_v4_op: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if core_op not in CORE_OPS:
            raise ValueError(f'core_op must be one of {sorted(CORE_OPS)}, got {core_op!r}')
        if len(depths) != len(groups):
            raise ValueError(f'depths and groups need one entry per stage, got {list(depths)} and {list(groups)}')
        if drop_path_type not in ('linear', 'uniform'):
            raise ValueError(f"drop_path_type must be 'linear' or 'uniform', got {drop_path_type!r}")
        if not 0 <= drop_path_rate <= 1:
            raise ValueError(f'drop_path_rate is a probability, in [0, 1], got {drop_path_rate}')
        num_stages = len(depths)
        if not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f'out_indices {list(out_indices)} must lie in 0..{num_stages - 1}')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must lie in -1..{num_stages}, got {frozen_stages}')
        if level2_post_norm and not level2_post_norm_block_ids:
            raise ValueError('level2_post_norm=True needs level2_post_norm_block_ids')
        if res_post_norm and layer_scale is not None:
            get_root_logger().warning(
                'InternImage: res_post_norm has no effect with layer_scale set, as in the original '
                '(its norms are built, so checkpoints load, but not applied)')

        self.core_op = core_op
        self.channels = channels
        self.depths = list(depths)
        self.num_levels = num_stages
        self.num_features = int(channels * 2 ** (num_stages - 1))
        self.out_indices = tuple(out_indices)
        # The channels of each output, in order (forward gives the stages' maps in stage order,
        # once each, whatever the order of out_indices): what a neck's in_channels must list.
        self.out_channels = [channels * 2 ** i for i in range(num_stages) if i in self.out_indices]
        self.frozen_stages = frozen_stages

        self.patch_embed = StemLayer(3, channels, act_layer=act_layer, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(p=drop_rate)
        if drop_path_type == 'linear':
            rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        else:
            rates = [drop_path_rate] * sum(depths)
        self.levels = nn.ModuleList()
        for i in range(num_stages):
            first = sum(depths[:i])
            self.levels.append(InternImageStage(
                core_op=CORE_OPS[core_op], channels=int(channels * 2 ** i), depth=depths[i],
                groups=groups[i], downsample=i < num_stages - 1, mlp_ratio=mlp_ratio,
                drop=drop_rate, drop_path=rates[first:first + depths[i]], act_layer=act_layer,
                norm_layer=norm_layer, post_norm=post_norm, offset_scale=offset_scale,
                layer_scale=layer_scale, with_cp=with_cp, dw_kernel_size=dw_kernel_size,
                post_norm_block_ids=level2_post_norm_block_ids if level2_post_norm and i == 2 else None,
                res_post_norm=res_post_norm, center_feature_scale=center_feature_scale,
                use_dcn_v4_op=use_dcn_v4_op))

        self.apply(self._init_layer)
        self._freeze_stages()

    @staticmethod
    def _init_linear_and_norm(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def _init_layer(cls, m: nn.Module) -> None:
        cls._init_linear_and_norm(m)
        if isinstance(m, (DCNv3, DCNv3_pytorch)):
            m.reset_parameters()  # after its Linears were visited: DCN keeps its own init

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> NCHW feature maps at strides 4, 8, 16, 32 (those in ``out_indices``)."""
        if x.dim() != 4:  # a single (3, H, W) image passed the stem and failed deep in DCNv3
            raise ValueError(f'InternImage: expected a batch of images (N, 3, H, W), got shape '
                             f'{tuple(x.shape)}')
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, level in enumerate(self.levels):
            features, x = level(x)
            if i in self.out_indices:
                outs.append(features.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # --- training mode and freezing -----------------------------------------------------------

    def _frozen_modules(self) -> List[nn.Module]:
        # Stages only: the original never freezes the stem (mmdet's ResNet would, from 0 on).
        return list(self.levels[:self.frozen_stages]) if self.frozen_stages > 0 else []

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'InternImage':
        super().train(mode)
        self._freeze_stages()  # frozen parts stay in eval mode (dropout, drop-path off)
        return self

    # --- pretrained weights -------------------------------------------------------------------

    def init_weights(self) -> None:
        init_cfg = self.init_cfg
        if init_cfg is None:
            # Training from scratch starts as the original's does: every Linear drawn again, the
            # DCNv3 offset and mask ones included (random, where construction zeroes them). A
            # config says so on purpose (the quick start's does): a note, not a warning.
            get_root_logger().info('InternImage: no pretrained weights (init_cfg is None), '
                                   'training starts from scratch')
            self.apply(self._init_linear_and_norm)
            return
        if not (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        self.load_pretrained(init_cfg['checkpoint'], map_location=init_cfg.get('map_location', 'cpu'))
        self._is_init = True

    def load_pretrained(self, path: str, map_location: str = 'cpu') -> Tuple[List[str], List[str]]:
        """Load backbone weights from a classification or detection checkpoint.

        Accepts a bare state_dict or one under 'state_dict' or 'model', with or without
        'module.'/'backbone.' prefixes. A weight of another shape than the model's (a checkpoint of
        another model size) is a PretrainedCheckpointError. Keys the model has no place for are
        skipped: those under the backbone's own modules (a checkpoint with other depths or
        layer_scale) with a warning, the rest (the classifier head, a detector's neck and heads)
        with an info line. Returns ``(missing, skipped)``, missing parameters being warned of.
        """
        logger = get_root_logger()
        if '://' not in path and not osp.isfile(osp.expanduser(path)):  # mmcv expands ~ too
            raise FileNotFoundError(f'InternImage: pretrained checkpoint not found: {path}')
        try:
            # torch's weights-only loader, reading numpy values in the meta as detector checkpoints'
            # loader does (mmcv's reads a URL's file with the full unpickler)
            with torch.serialization.safe_globals(numpy_pickle_globals()):
                ckpt = _load_checkpoint(path, map_location=map_location, logger=logger)
        except Exception as exc:
            raise PretrainedCheckpointError(_unreadable_checkpoint_message(path, exc)) from exc
        state_dict = _backbone_state_dict(ckpt, path)

        own_state = self.state_dict()
        _check_shapes(state_dict, own_state, path)
        skipped = [k for k in state_dict if k not in own_state]
        missing = [k for k in own_state if k not in state_dict]
        self.load_state_dict(OrderedDict((k, v) for k, v in state_dict.items() if k in own_state),
                             strict=False)
        logger.info(f'InternImage: loaded {len(state_dict) - len(skipped)} tensors from {path}')
        own_modules = {k.split('.')[0] for k in own_state} | dict(self.named_children()).keys()
        unplaced = [k for k in skipped if k.split('.')[0] in own_modules]
        others = [k for k in skipped if k not in unplaced]
        if unplaced:
            # Dropping them changes what the blocks compute (a gamma, a whole block).
            logger.warning(f'InternImage: {len(unplaced)} backbone weights in {path} this model '
                           f'has no place for: does its layer_scale / depths differ from the '
                           f"checkpoint's? (first: {', '.join(unplaced[:5])})")
        if others:
            logger.info(f'InternImage: skipped {len(others)} keys that are not backbone parameters '
                        f"(a classifier head, a detector's neck and heads; first: "
                        f"{', '.join(others[:5])})")
        if missing:
            logger.warning(f'InternImage: {len(missing)} backbone parameters are not in {path} and keep '
                           f'their initial values: {sorted(missing)}')
        return sorted(missing), skipped


def _unreadable_checkpoint_message(path: str, error: Exception) -> str:
    """Why ``path`` could not be loaded, worded as read_checkpoint (mmdet_custom/apis/checkpoint.py)
    words a damaged file: torch's own error for one (an OSError, a KeyError) names no cause."""
    refused_by_safe_loader = 'Weights only load failed' in str(error)
    unsupported = unsupported_pickle_global(error)
    if refused_by_safe_loader and unsupported:
        return (f'InternImage: pretrained checkpoint {path} holds an object of type '
                f'{unsupported}, which the safe loader does not read (only tensors, plain '
                f'Python values and numpy data): save its state_dict alone')
    damaged = '://' not in path and not refused_by_safe_loader  # a URL may fail to download
    hint = ' (truncated or not a PyTorch checkpoint?)' if damaged else ''
    return f'InternImage: could not load pretrained checkpoint {path}{hint}: {error_summary(error)}'


def _check_shapes(state_dict: Dict[str, torch.Tensor], own_state: Dict[str, torch.Tensor],
                  path: str) -> None:
    """Refuse a checkpoint whose weights have other shapes than the model's (load_state_dict's
    error lists every one of them, in a traceback)."""
    wrong = [k for k, v in state_dict.items() if k in own_state and v.shape != own_state[k].shape]
    if wrong:
        key = wrong[0]
        raise PretrainedCheckpointError(
            f'InternImage: pretrained checkpoint {path} does not fit this backbone (saved for '
            f'another model size?): {len(wrong)} of its weights have another shape (first: {key} '
            f'is {tuple(state_dict[key].shape)} in the checkpoint, {tuple(own_state[key].shape)} '
            f'in the model)')


def _backbone_state_dict(ckpt, path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint with wrapper prefixes removed."""
    if not isinstance(ckpt, dict):
        raise PretrainedCheckpointError(
            f'InternImage: checkpoint {path} holds a {type(ckpt).__name__}, not a dict')
    for container in ('state_dict', 'model'):
        if isinstance(ckpt.get(container), dict):
            ckpt = ckpt[container]
            break
    state_dict = OrderedDict()
    for key, value in ckpt.items():
        if not isinstance(value, torch.Tensor):
            continue
        changed = True
        while changed:  # 'module.backbone.' and 'backbone.module.' both occur in the wild
            changed = False
            for prefix in ('module.', 'backbone.'):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        state_dict[key] = value
    return state_dict
