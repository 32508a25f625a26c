"""Layer-wise learning-rate decay for InternImage detectors.

Each parameter gets a layer id: the stem is 0, the blocks are numbered 1..num_layers in order,
and everything outside the backbone (neck, heads) is num_layers + 1. Its learning rate is scaled
by ``layer_decay_rate ** (num_layers + 1 - layer_id)``, so the heads train at the base rate and
earlier layers progressively slower. Norm layers and downsamples, which have no block number of
their own, take a neighbouring block's id:

- ``levels.L.norm`` (the stage's final norm) -> the stage's last block;
- ``levels.L.post_norms.k`` (norm after block b of stage L) -> block b's id;
- ``levels.L.downsample`` -> the first block of stage L+1, the only one that consumes it
  (as in the original InternImage).

One-dimensional parameters (norm weights, biases, the layer-scale gammas) and names ending in
``.bias`` get no weight decay.

Config::

    optimizer = dict(type='AdamW', lr=1e-4, weight_decay=0.05,
                     constructor='CustomLayerDecayOptimizerConstructor',
                     paramwise_cfg=dict(num_layers=30, layer_decay_rate=1.0, depths=[4, 4, 18, 4]))

``paramwise_cfg`` may also set ``offset_lr_scale`` (default 1.0), an extra lr factor for the DCNv3
sampling-offset Linears (``*.dcn.offset.*``).
"""
from typing import Dict, List, Optional, Sequence

from mmcv.runner import OPTIMIZER_BUILDERS, DefaultOptimizerConstructor
from mmdet.utils import get_root_logger

from ...models.backbones.intern_image import InternImage

__all__ = ['CustomLayerDecayOptimizerConstructor', 'get_layer_id']


def get_layer_id(name: str, depths: Sequence[int], backbone_prefix: str = 'backbone.',
                 post_norm_block_ids: Optional[Dict[int, Sequence[int]]] = None) -> int:
    """Layer id of parameter ``name`` (see the module docstring).

    ``backbone_prefix`` is how backbone parameter names start ('' when the model is the backbone);
    ``post_norm_block_ids`` maps a stage index to its ``post_norm_block_ids``.
    """
    num_layers = sum(depths)
    if not name.startswith(backbone_prefix):
        return num_layers + 1
    parts = name[len(backbone_prefix):].split('.')
    if parts[0] == 'patch_embed':
        return 0
    if parts[0] == 'levels' and len(parts) > 3:
        level = int(parts[1])
        first_block = 1 + sum(depths[:level])
        kind = parts[2]
        if kind == 'blocks':
            return first_block + int(parts[3])
        if kind == 'norm':
            return first_block + depths[level] - 1
        if kind == 'post_norms':
            block_ids = (post_norm_block_ids or {}).get(level)
            return first_block + (block_ids[int(parts[3])] if block_ids else depths[level] - 1)
        if kind == 'downsample':
            return first_block + depths[level]
    raise ValueError(f'cannot assign a layer id to backbone parameter {name!r}: not an InternImage '
                     f'parameter')


def _is_no_decay(name: str, param) -> bool:
    return param.ndim <= 1 or name.endswith('.bias')


@OPTIMIZER_BUILDERS.register_module()
class CustomLayerDecayOptimizerConstructor(DefaultOptimizerConstructor):
    """Parameter groups per (layer id, decay or not); see the module docstring."""

    def add_params(self, params: List[dict], module, prefix: str = '', is_dcn_module=None) -> None:
        cfg = self.paramwise_cfg
        missing = [key for key in ('num_layers', 'depths') if key not in cfg]
        if missing:
            raise KeyError(f'CustomLayerDecayOptimizerConstructor: paramwise_cfg needs {missing}')
        depths = list(cfg['depths'])
        num_layers = cfg['num_layers']
        if num_layers != sum(depths):
            raise ValueError(f'paramwise_cfg: num_layers ({num_layers}) must equal sum(depths) '
                             f'({sum(depths)}, depths={depths})')
        decay_rate = cfg.get('layer_decay_rate', 1.0)
        offset_lr_scale = cfg.get('offset_lr_scale', 1.0)
        base_wd = self.base_wd or 0.0

        if isinstance(module, InternImage):
            backbone, backbone_prefix = module, ''
        else:
            backbone, backbone_prefix = getattr(module, 'backbone', None), 'backbone.'
        post_norm_block_ids = {}
        if isinstance(backbone, InternImage):
            post_norm_block_ids = {i: stage.post_norm_block_ids for i, stage in enumerate(backbone.levels)}

        groups: Dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = get_layer_id(name, depths, backbone_prefix, post_norm_block_ids)
            no_decay = _is_no_decay(name, param)
            is_offset = '.dcn.offset.' in name and offset_lr_scale != 1.0
            group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}" + ('_offset' if is_offset else '')
            if group_name not in groups:
                lr_scale = decay_rate ** (num_layers + 1 - layer_id) * (offset_lr_scale if is_offset else 1.0)
                groups[group_name] = dict(
                    group_name=group_name, layer_id=layer_id, lr_scale=lr_scale,
                    lr=lr_scale * self.base_lr, weight_decay=0.0 if no_decay else base_wd,
                    params=[], param_names=[])
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)

        ordered = sorted(groups.values(), key=lambda g: (g['layer_id'], g['group_name']))
        params.extend(ordered)
        self._log_groups(ordered, num_layers, decay_rate)

    @staticmethod
    def _log_groups(groups: List[dict], num_layers: int, decay_rate: float) -> None:
        lines = [f'layer-wise lr decay: num_layers={num_layers}, layer_decay_rate={decay_rate}, '
                 f'{len(groups)} parameter groups',
                 f"{'group':<28}{'lr_scale':>12}{'lr':>12}{'weight_decay':>14}{'tensors':>9}{'numel':>12}"]
        for g in groups:
            numel = sum(p.numel() for p in g['params'])
            lines.append(f"{g['group_name']:<28}{g['lr_scale']:>12.4g}{g['lr']:>12.4g}"
                         f"{g['weight_decay']:>14.4g}{len(g['params']):>9}{numel:>12}")
        get_root_logger().info('\n'.join(lines))
