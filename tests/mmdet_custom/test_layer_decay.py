"""CustomLayerDecayOptimizerConstructor: layer ids, lr scales and weight-decay groups."""
import copy
import logging
import re

import pytest
import torch
from internimage_testlib import TINY_BACKBONE
from mmcv.parallel import MMDataParallel
from mmcv.runner import OPTIMIZER_BUILDERS, build_optimizer
from torch import nn

from mmdet_custom.apis.train import configured_update_implementation
from mmdet_custom.core.optimizers import CustomLayerDecayOptimizerConstructor, get_layer_id
from mmdet_custom.core.optimizers.layer_decay_optimizer_constructor import ParamwiseConfigError
from mmdet_custom.models.backbones import InternImage

DEPTHS = TINY_BACKBONE['depths']  # [1, 1, 2, 1]: blocks 1..5, heads 6
BASE_LR, WD, RATE = 1e-3, 0.05, 0.5


class ToyDetector(nn.Module):
    def __init__(self, **backbone_overrides):
        super().__init__()
        self.backbone = InternImage(**{**TINY_BACKBONE, **backbone_overrides})
        self.neck = nn.Conv2d(16, 8, 1)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))


def optimizer_for(model, fused=None, **paramwise):
    paramwise = {'num_layers': sum(DEPTHS), 'layer_decay_rate': RATE, 'depths': DEPTHS, **paramwise}
    return build_optimizer(model, dict(type='AdamW', lr=BASE_LR, betas=(0.9, 0.999), weight_decay=WD,
                                       fused=fused, constructor='CustomLayerDecayOptimizerConstructor',
                                       paramwise_cfg=paramwise))


def group_of(optimizer, model):
    """parameter name -> its param group."""
    by_id = {id(p): g for g in optimizer.param_groups for p in g['params']}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_registered():
    assert OPTIMIZER_BUILDERS.get('CustomLayerDecayOptimizerConstructor') is CustomLayerDecayOptimizerConstructor


# (parameter, expected layer id) for depths [1, 1, 2, 1]
EXPECTED_IDS = [
    ('backbone.patch_embed.conv1.weight', 0),
    ('backbone.patch_embed.norm2.1.bias', 0),
    ('backbone.levels.0.blocks.0.gamma1', 1),
    ('backbone.levels.0.blocks.0.dcn.offset.weight', 1),
    ('backbone.levels.0.norm.0.weight', 2),          # stage norm and downsample: the next
    ('backbone.levels.0.downsample.conv.weight', 2),  # stage's first block
    ('backbone.levels.1.blocks.0.mlp.fc1.weight', 2),
    ('backbone.levels.1.downsample.norm.1.weight', 3),
    ('backbone.levels.2.blocks.0.dcn.input_proj.weight', 3),
    ('backbone.levels.2.blocks.1.norm2.0.weight', 4),
    ('backbone.levels.2.norm.0.bias', 5),
    ('backbone.levels.2.downsample.conv.weight', 5),
    ('backbone.levels.3.blocks.0.dcn.dw_conv.0.weight', 5),
    ('backbone.levels.3.norm.0.weight', 5),           # the last stage's: its own first block
    ('neck.weight', 6),
    ('head.1.bias', 6),
]


def test_layer_ids_and_lr_scales_per_block():
    model = ToyDetector()
    groups = group_of(optimizer_for(model), model)
    assert len(groups) == len(list(model.parameters()))  # every parameter exactly once
    for name, layer_id in EXPECTED_IDS:
        assert get_layer_id(name, DEPTHS) == layer_id, name
        assert groups[name]['lr'] == pytest.approx(BASE_LR * RATE ** (sum(DEPTHS) + 1 - layer_id)), name
    # all parameters of one block share one scale
    block = [g['lr'] for n, g in groups.items() if n.startswith('backbone.levels.2.blocks.1.')]
    assert len(set(block)) == 1
    assert max(g['lr'] for g in groups.values()) == pytest.approx(BASE_LR)


def test_level_embeds_train_with_the_stem_wherever_they_are():
    # The original's rule (for its DINO transformer): any parameter named level_embeds is layer 0.
    model = ToyDetector()
    model.head.append(nn.Module())
    model.head[2].level_embeds = nn.Parameter(torch.zeros(4, 8))
    assert get_layer_id('head.2.level_embeds', DEPTHS) == 0
    groups = group_of(optimizer_for(model), model)
    assert groups['head.2.level_embeds']['lr'] == pytest.approx(BASE_LR * RATE ** (sum(DEPTHS) + 1))
    assert groups['head.2.level_embeds']['lr'] == groups['backbone.patch_embed.conv1.weight']['lr']


def test_no_weight_decay_for_norms_biases_and_gammas():
    model = ToyDetector()
    model.head.append(nn.Module())
    model.head[2].norm_scale = nn.Parameter(torch.ones(2, 2))  # a matrix named norm: no decay
    groups = group_of(optimizer_for(model), model)
    for name, p in model.named_parameters():
        no_decay = p.ndim == 1 or name.endswith('.bias') or 'norm' in name
        assert groups[name]['weight_decay'] == (0.0 if no_decay else WD), name
    assert groups['backbone.levels.0.blocks.0.gamma1']['weight_decay'] == 0.0
    assert groups['backbone.levels.0.blocks.0.norm1.0.weight']['weight_decay'] == 0.0
    assert groups['backbone.levels.0.blocks.0.dcn.mask.weight']['weight_decay'] == WD
    assert groups['neck.weight']['weight_decay'] == WD and groups['neck.bias']['weight_decay'] == 0.0
    assert groups['head.2.norm_scale']['weight_decay'] == 0.0


def test_groups_come_in_the_order_of_their_first_parameter():
    # As the original orders them, so that optimizer states saved by either load into the other.
    model = ToyDetector()
    names = [g['group_name'] for g in optimizer_for(model).param_groups]
    assert names[:4] == ['layer_0_decay', 'layer_0_no_decay', 'layer_1_no_decay', 'layer_1_decay']
    assert names[-2:] == ['layer_6_decay', 'layer_6_no_decay']


def test_backbone_alone_frozen_params_and_post_norms():
    model = InternImage(**{**TINY_BACKBONE, 'depths': [1, 1, 4, 1], 'post_norm': True,
                           'level2_post_norm': True, 'level2_post_norm_block_ids': [1, 3],
                           'frozen_stages': 1})
    depths = [1, 1, 4, 1]
    optimizer = optimizer_for(model, num_layers=7, depths=depths)
    groups = group_of(optimizer, model)
    assert not any(n.startswith('levels.0.') for n in groups)  # frozen: not optimised
    assert groups['patch_embed.conv1.weight']['lr'] == pytest.approx(BASE_LR * RATE ** 8)
    # post_norms.k counts from stage 2's first block (layer 3) by its own index, as the original
    assert groups['levels.2.post_norms.0.0.weight']['lr'] == pytest.approx(BASE_LR * RATE ** (8 - 3))
    assert groups['levels.2.post_norms.1.0.weight']['lr'] == pytest.approx(BASE_LR * RATE ** (8 - 4))
    assert groups['levels.3.blocks.0.mlp.fc2.weight']['lr'] == pytest.approx(BASE_LR * RATE)


def test_the_original_options_for_detr_style_heads():
    model = ToyDetector()
    model.head.append(nn.Module())
    model.head[2].sampling_offsets = nn.Linear(2, 2)
    groups = group_of(optimizer_for(model, offset_lr_scale=0.3), model)
    assert groups['head.2.sampling_offsets.weight']['lr'] == pytest.approx(BASE_LR * 0.3)
    assert groups['head.2.sampling_offsets.weight']['weight_decay'] == 0.0  # by its name
    # InternImage's own DCNv3 offsets keep their layer's rate, as in the original.
    assert (groups['backbone.levels.1.blocks.0.dcn.offset.weight']['lr']
            == groups['backbone.levels.1.blocks.0.dcn.mask.weight']['lr'])
    groups = group_of(optimizer_for(model, dino_head=True), model)
    assert groups['head.2.sampling_offsets.weight']['group_name'] == 'layer_6_no_decay_0.1x'
    assert groups['head.2.sampling_offsets.weight']['lr'] == pytest.approx(BASE_LR * 0.1)
    groups = group_of(optimizer_for(model, backbone_small_lr=True), model)
    assert groups['backbone.levels.3.blocks.0.mlp.fc1.weight']['lr'] == pytest.approx(BASE_LR * RATE * 0.1)
    assert groups['neck.weight']['lr'] == pytest.approx(BASE_LR)


def test_group_summary_is_logged():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('mmdet').addHandler(handler)
    try:
        optimizer_for(ToyDetector())
    finally:
        logging.getLogger('mmdet').removeHandler(handler)
    text = '\n'.join(r.getMessage() for r in records)
    assert 'layer_0_decay' in text and 'layer_6_no_decay' in text


def test_invalid_paramwise_cfg():
    with pytest.raises(ValueError, match='sum\\(depths\\)'):
        optimizer_for(ToyDetector(), num_layers=4)
    # empty: mmcv's constructor took it for no per-parameter settings and grouped nothing, silently
    for paramwise_cfg, missing in ((dict(num_layers=5), "['depths']"),
                                   ({}, "['num_layers', 'depths']")):
        with pytest.raises(ParamwiseConfigError, match=re.escape(f'needs {missing} (')):
            build_optimizer(ToyDetector(), dict(type='AdamW', lr=BASE_LR,
                                                constructor='CustomLayerDecayOptimizerConstructor',
                                                paramwise_cfg=paramwise_cfg))
    with pytest.raises(ValueError, match='cannot assign a layer id'):
        get_layer_id('backbone.levels.0.blocks.gamma', DEPTHS)
    assert get_layer_id('backbone.cls_token', DEPTHS) == 6  # as the heads, as in the original


def test_depths_other_than_the_backbones_are_refused():
    # A config inheriting T's and building S kept T's depths: stage 2's last blocks then shared
    # layer ids (and lr scales) with stage 3's.
    message = ('optimizer.paramwise_cfg: depths [1, 1, 4, 1] are not model.backbone.depths '
               '[1, 1, 2, 1]: set optimizer.paramwise_cfg.depths and num_layers to match '
               'model.backbone.depths')
    with pytest.raises(ParamwiseConfigError) as error:
        optimizer_for(ToyDetector(), num_layers=7, depths=[1, 1, 4, 1])
    assert str(error.value) == message
    with pytest.raises(ParamwiseConfigError) as error:  # the backbone alone, wrapped
        constructor = CustomLayerDecayOptimizerConstructor(
            dict(type='AdamW', lr=BASE_LR), dict(num_layers=7, depths=[1, 1, 4, 1]))
        constructor.add_params([], MMDataParallel(InternImage(**TINY_BACKBONE)))
    assert str(error.value) == message
    groups = optimizer_for(ToyDetector(), depths=(1, 1, 2, 1)).param_groups  # a tuple is the same
    assert len(groups) == len(optimizer_for(ToyDetector()).param_groups)


@pytest.mark.parametrize('depths', [None, [1, -1, 2, 1], [1.0, 1, 2, 1], '1121', [True, 1, 2, 1]])
def test_depths_that_are_not_block_counts_are_refused_by_name(depths):
    # None reached the user as "TypeError: 'NoneType' object is not iterable".
    with pytest.raises(ParamwiseConfigError) as error:
        optimizer_for(ToyDetector(), depths=depths)
    assert str(error.value) == (
        f'optimizer.paramwise_cfg: depths must be a list of whole numbers of at least 0 (the '
        f'blocks per backbone stage, as model.backbone.depths), got {depths!r}: set '
        f'optimizer.paramwise_cfg.depths')


def test_unknown_paramwise_keys_are_refused_by_name():
    # mmcv's own options (and misspellings) were dropped: every group trained at the base lr.
    with pytest.raises(ParamwiseConfigError) as error:
        optimizer_for(ToyDetector(), layer_decay=0.9, custom_keys={'head': dict(lr_mult=0.1)},
                      norm_decay_mult=1.0)
    assert str(error.value) == (
        "optimizer.paramwise_cfg: unknown keys ['custom_keys', 'layer_decay', 'norm_decay_mult'] "
        "(the layer-decay constructor reads only ['num_layers', 'depths', 'layer_decay_rate', "
        "'offset_lr_scale', 'backbone_small_lr', 'dino_head'])")


def test_optimizer_steps():
    model = ToyDetector()
    optimizer = optimizer_for(model)
    before = model.backbone.levels[0].blocks[0].mlp.fc1.weight.detach().clone()
    sum(o.sum() for o in model.backbone(torch.randn(1, 3, 32, 32))).backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.levels[0].blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize('saved_fused, resumed_fused', [(None, True), (True, None)])
def test_resume_between_fused_and_unfused_adamw(saved_fused, resumed_fused):
    """The COCO configs' fused AdamW resumes optimizer states saved without it (checkpoints of
    earlier runs), and the reverse: the configured update is kept (load_state_dict alone would
    take the checkpoint's), and it takes the step the uninterrupted run takes."""
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def loss(model):
        return sum(o.square().sum() for o in model.backbone(image))

    def step(model, optimizer):
        optimizer.zero_grad()
        loss(model).backward()
        optimizer.step()

    torch.manual_seed(0)
    model = ToyDetector()
    optimizer = optimizer_for(model, fused=saved_fused)
    step(model, optimizer)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    step(model, optimizer)  # the uninterrupted run's second step

    resumed = ToyDetector()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = optimizer_for(resumed, fused=resumed_fused)
    with configured_update_implementation(resumed_optimizer):  # as train_detector resumes
        resumed_optimizer.load_state_dict(saved_optimizer)
    assert {group['fused'] for group in resumed_optimizer.param_groups} == {resumed_fused}
    step(resumed, resumed_optimizer)
    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
