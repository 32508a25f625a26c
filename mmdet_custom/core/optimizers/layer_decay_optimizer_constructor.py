"""Layer-wise learning-rate decay for InternImage detectors, grouped as the original
implementation groups parameters, so that configs and optimizer states carry over.

Each parameter gets a layer id. With ``n = num_layers`` (the number of blocks, ``sum(depths)``):

- the stem (``backbone.patch_embed``) is 0, and so is any parameter named ``level_embeds``,
  wherever it is (e.g. a DINO head's transformer);
- block ``b`` of stage ``L`` (``backbone.levels.L.blocks.b``) is ``1 + sum(depths[:L]) + b``; the
  stage's other numbered children (``post_norms.k``) count the same way, by their own index;
- a stage's downsample and final norm (``levels.L.downsample``, ``levels.L.norm``) take the id of
  the next stage's first block, the last stage's norm that of its own first block;
- everything else (neck, heads) is ``n + 1``.

A parameter's learning rate is scaled by ``layer_decay_rate ** (n + 1 - layer_id)``: the heads
train at the base rate, earlier layers progressively slower. One-dimensional parameters, biases
and parameters whose names contain ``norm`` (or Swin's ``relative_position`` and Deformable
DETR's ``sampling_offsets``) get no weight decay.

Config::

    optimizer = dict(type='AdamW', lr=1e-4, weight_decay=0.05,
                     constructor='CustomLayerDecayOptimizerConstructor',
                     paramwise_cfg=dict(num_layers=30, layer_decay_rate=1.0, depths=[4, 4, 18, 4]))

The original's options for DETR-style heads are understood too: ``offset_lr_scale`` scales the lr
of parameters named ``sampling_offsets``/``reference_points`` (InternImage's own DCNv3 offsets are
named ``offset`` and are not affected), ``dino_head=True`` gives those parameters of the heads 0.1x,
and ``backbone_small_lr=True`` gives 0.1x to every group whose decayed scale is below 1.

A ``paramwise_cfg`` with other keys, with ``depths`` that are not the model's backbone's, or with
``num_layers`` other than ``sum(depths)`` is a ParamwiseConfigError (tools/train.py: one line).
"""
from typing import Dict, List, Sequence

from mmcv.parallel import is_module_wrapper
from mmcv.runner import OPTIMIZER_BUILDERS, DefaultOptimizerConstructor
from mmdet.utils import get_root_logger

from ...models.backbones.intern_image import InternImage

__all__ = ['CustomLayerDecayOptimizerConstructor', 'ParamwiseConfigError', 'get_layer_id']

# Substrings of names that get no weight decay besides vectors and biases (the last two are Swin's
# and Deformable DETR's parameters; kept so that any model groups as in the original).
_NO_DECAY_NAME_PARTS = ('norm', 'relative_position', 'sampling_offsets')
_OFFSET_NAME_PARTS = ('sampling_offsets', 'reference_points')
# What add_params reads; mmcv's own options (custom_keys, norm_decay_mult, ...) it does not apply.
_REQUIRED_KEYS = ('num_layers', 'depths')
_OPTIONAL_KEYS = ('layer_decay_rate', 'offset_lr_scale', 'backbone_small_lr', 'dino_head')


class ParamwiseConfigError(ValueError):
    """``optimizer.paramwise_cfg`` cannot group this model's parameters; the message says why."""


def get_layer_id(name: str, depths: Sequence[int], backbone_prefix: str = 'backbone.') -> int:
    """Layer id of parameter ``name`` (see the module docstring); ``backbone_prefix`` is how
    backbone parameter names start ('' when the model is the backbone itself)."""
    num_layers = sum(depths)
    if 'level_embeds' in name:  # the original's rule, checked first: it holds outside the backbone too
        return 0
    if not name.startswith(backbone_prefix):
        return num_layers + 1
    parts = name[len(backbone_prefix):].split('.')
    if parts[0] == 'patch_embed':
        return 0
    if parts[0] not in ('levels', 'layers') or len(parts) < 4:  # 'layers': Swin's name
        return num_layers + 1

    def first_block(stage: int) -> int:
        return 1 + sum(depths[:stage])

    stage = int(parts[1])
    if parts[2] in ('downsample', 'norm'):
        return first_block(min(stage + 1, len(depths) - 1))
    if not parts[3].isdigit():
        raise ValueError(f'cannot assign a layer id to backbone parameter {name!r}: expected '
                         f'levels.STAGE.CHILD.INDEX')
    return first_block(stage) + int(parts[3])


def _is_whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_depths_fit(depths: List[int], model) -> None:
    """Refuse depths other than the backbone's: with them, blocks of different stages would share
    layer ids (a config that inherits T's and builds S keeps T's depths)."""
    if is_module_wrapper(model):
        model = model.module
    backbone = model if isinstance(model, InternImage) else getattr(model, 'backbone', None)
    backbone_depths = getattr(backbone, 'depths', None)
    if backbone_depths is not None and list(backbone_depths) != depths:
        raise ParamwiseConfigError(
            f'optimizer.paramwise_cfg: depths {depths} are not model.backbone.depths '
            f'{list(backbone_depths)}: set optimizer.paramwise_cfg.depths and num_layers to match '
            f'model.backbone.depths')


def _group_name(name: str, param, layer_id: int, num_layers: int, dino_head: bool) -> str:
    no_decay = (param.ndim == 1 or name.endswith('.bias')
                or any(part in name for part in _NO_DECAY_NAME_PARTS))
    group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
    if any(part in name for part in _OFFSET_NAME_PARTS):
        heads = layer_id == num_layers + 1
        group_name += '_0.1x' if dino_head and heads else '_offset_lr_scale'
    return group_name


@OPTIMIZER_BUILDERS.register_module()
class CustomLayerDecayOptimizerConstructor(DefaultOptimizerConstructor):
    """Parameter groups per (layer id, decay or not), in the order their first parameter comes in
    ``named_parameters()``; see the module docstring."""

    def _validate_cfg(self) -> None:
        # mmcv's checks are of options this constructor refuses. Ours run in __call__: the registry
        # that builds the constructor would prefix an error raised here with the class name.
        pass

    def __call__(self, model):
        self._check_paramwise_cfg()
        return super().__call__(model)

    def _check_paramwise_cfg(self) -> None:
        cfg = self.paramwise_cfg
        if not isinstance(cfg, dict):
            raise ParamwiseConfigError(f'optimizer.paramwise_cfg: expected a dict, got {cfg!r}')
        unknown = sorted(set(cfg) - set(_REQUIRED_KEYS + _OPTIONAL_KEYS))
        if unknown:
            raise ParamwiseConfigError(
                f'optimizer.paramwise_cfg: unknown keys {unknown} (the layer-decay constructor '
                f'reads only {list(_REQUIRED_KEYS + _OPTIONAL_KEYS)})')
        missing = [key for key in _REQUIRED_KEYS if key not in cfg]
        if missing:
            raise ParamwiseConfigError(f'optimizer.paramwise_cfg: the layer-decay constructor '
                                       f'needs {missing} (model.backbone.depths and their sum)')
        depths, num_layers = cfg['depths'], cfg['num_layers']
        if not (isinstance(depths, (list, tuple))
                and all(_is_whole_number(d) and d >= 0 for d in depths)):
            raise ParamwiseConfigError(
                f'optimizer.paramwise_cfg: depths must be a list of whole numbers of at least 0 '
                f'(the blocks per backbone stage, as model.backbone.depths), got {depths!r}: set '
                f'optimizer.paramwise_cfg.depths')
        if not _is_whole_number(num_layers) or num_layers != sum(depths):
            raise ParamwiseConfigError(
                f'optimizer.paramwise_cfg: num_layers ({num_layers!r}) must equal sum(depths) '
                f'({sum(depths)}, depths={list(depths)})')

    def add_params(self, params: List[dict], module, prefix: str = '', is_dcn_module=None) -> None:
        cfg = self.paramwise_cfg
        depths = list(cfg['depths'])
        num_layers = cfg['num_layers']
        _check_depths_fit(depths, module)
        decay_rate = cfg.get('layer_decay_rate', 1.0)
        offset_lr_scale = cfg.get('offset_lr_scale', 1.0)
        backbone_small_lr = cfg.get('backbone_small_lr', False)
        dino_head = cfg.get('dino_head', False)
        backbone_prefix = '' if isinstance(module, InternImage) else 'backbone.'

        groups: Dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = get_layer_id(name, depths, backbone_prefix)
            group_name = _group_name(name, param, layer_id, num_layers, dino_head)
            if group_name not in groups:
                lr_scale = decay_rate ** (num_layers + 1 - layer_id)
                if backbone_small_lr and lr_scale < 1:
                    lr_scale *= 0.1
                if group_name.endswith('_0.1x'):
                    lr_scale *= 0.1
                elif group_name.endswith('_offset_lr_scale'):
                    lr_scale *= offset_lr_scale
                groups[group_name] = dict(
                    group_name=group_name, lr_scale=lr_scale, lr=lr_scale * self.base_lr,
                    weight_decay=0.0 if '_no_decay' in group_name else self.base_wd or 0.0,
                    params=[], param_names=[])
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)

        params.extend(groups.values())
        self._log_groups(list(groups.values()), num_layers, decay_rate)

    @staticmethod
    def _log_groups(groups: List[dict], num_layers: int, decay_rate: float) -> None:
        lines = [f'layer-wise lr decay: num_layers={num_layers}, layer_decay_rate={decay_rate}, '
                 f'{len(groups)} parameter groups',
                 f"{'group':<34}{'lr_scale':>12}{'lr':>12}{'weight_decay':>14}{'tensors':>9}{'numel':>12}"]
        for g in groups:
            numel = sum(p.numel() for p in g['params'])
            lines.append(f"{g['group_name']:<34}{g['lr_scale']:>12.4g}{g['lr']:>12.4g}"
                         f"{g['weight_decay']:>14.4g}{len(g['params']):>9}{numel:>12}")
        get_root_logger().info('\n'.join(lines))
