"""InternImage backbone: key layout, reference outputs, options, checkpointing, pretrained loading."""
import argparse
import logging

import numpy as np
import pytest
import torch
from internimage_testlib import TINY_BACKBONE, load_reference_json, load_reference_pt

from mmdet.models import build_backbone
from mmdet.models.builder import BACKBONES
from mmdet_custom.models.backbones import InternImage, PretrainedCheckpointError


def tiny(**overrides):
    return InternImage(**{**TINY_BACKBONE, **overrides})


def keys(module):
    return list(module.state_dict().keys())


def relative_error(out, expected):
    return ((out - expected).norm() / expected.norm()).item()


def test_registered_in_mmdet():
    assert BACKBONES.get('InternImage') is InternImage
    model = build_backbone(dict(type='InternImage', **TINY_BACKBONE))
    assert isinstance(model, InternImage)


@pytest.mark.parametrize('size', ['t', 's', 'b'])
def test_state_dict_layout_matches_reference(size):
    ref = load_reference_json(size)
    cfg = dict(ref['backbone_config'])
    assert cfg.pop('type') == 'InternImage'
    with torch.device('meta'):  # layout only: no memory, no init cost
        model = InternImage(**cfg)
    got = [['backbone.' + k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == ref['backbone_state_dict']
    assert sum(p.numel() for p in model.parameters()) == ref['backbone_num_parameters']
    assert not list(model.buffers())


def test_core_ops_build_the_same_layout():
    compiled, reference = tiny(core_op='DCNv3'), tiny(core_op='DCNv3_pytorch')
    assert [(k, v.shape) for k, v in compiled.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]
    with pytest.raises(ValueError, match='core_op'):
        tiny(core_op='DCNv2')


def test_constructor_defaults():
    model = InternImage(channels=16, groups=[1, 2, 4, 8])  # default depths [3, 4, 18, 5]
    assert [len(level.blocks) for level in model.levels] == [3, 4, 18, 5]
    assert not any('gamma' in k for k in keys(model))  # layer_scale=None: no gammas
    assert all(f'levels.{i}.norm.0.weight' in keys(model) for i in range(4))  # post_norm=False
    rates = [b.drop_path.drop_prob for level in model.levels for b in level.blocks[1:]]
    assert max(rates) == pytest.approx(0.2)


@pytest.mark.parametrize('style', ['t', 'sb'])
@pytest.mark.parametrize('core_op', ['DCNv3', 'DCNv3_pytorch'])
def test_reproduces_reference_outputs(style, core_op):
    ref = load_reference_pt(style)
    cfg = {k: v for k, v in ref['config'].items() if k != 'type'}
    model = InternImage(**{**cfg, 'core_op': core_op})
    model.load_state_dict(ref['state_dict'])  # strict: same keys as the original
    assert model.eval() is model
    with torch.no_grad():
        outputs = model(ref['input'])
        stem = model.patch_embed(ref['input'])
    assert relative_error(stem, ref['stem_output']) < 1e-5
    assert len(outputs) == len(ref['outputs']) == 4
    for out, expected in zip(outputs, ref['outputs']):
        assert out.shape == expected.shape and out.dtype == torch.float32
        assert relative_error(out, expected) < 1e-4

    model.double()
    with torch.no_grad():
        outputs = model(ref['input'].double())
    for out, expected in zip(outputs, ref['outputs_float64']):
        assert out.dtype == torch.float64
        assert relative_error(out, expected) < 1e-9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('style', ['t', 'sb'])
def test_reproduces_reference_outputs_on_cuda(style):
    ref = load_reference_pt(style)
    cfg = {k: v for k, v in ref['config'].items() if k != 'type'}
    model = InternImage(**{**cfg, 'core_op': 'DCNv3'})
    model.load_state_dict(ref['state_dict'])
    model.cuda().eval()
    # The reference is float32 arithmetic. cuDNN runs float32 convolutions in TF32 by default on
    # Ampere and newer (10-bit mantissas), which moved the outputs by 3e-4 to 4e-4 relative on an
    # H100: the bound holds with TF32 off, and a looser one with the default.
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    try:
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            outputs = model(ref['input'].cuda())
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    for out, expected in zip(outputs, ref['outputs']):
        assert relative_error(out.cpu(), expected) < 1e-4
    with torch.no_grad():
        outputs = model(ref['input'].cuda())
    for out, expected in zip(outputs, ref['outputs']):
        assert relative_error(out.cpu(), expected) < 2e-3
    with torch.no_grad():
        outputs = model.double()(ref['input'].double().cuda())
    for out, expected in zip(outputs, ref['outputs_float64']):
        assert relative_error(out.cpu(), expected) < 1e-9


def test_train_returns_self_and_out_indices():
    model = tiny(out_indices=(1, 3))
    assert model.train() is model and model.training
    assert model.eval() is model and not model.training
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 128, 2, 3)]
    with pytest.raises(ValueError, match='out_indices'):
        tiny(out_indices=(4,))


@pytest.mark.parametrize('out_indices', [(1, 3), (3, 2, 1, 0), (2, 2, 3)])
def test_out_channels_are_those_of_the_outputs_in_order(out_indices):
    # forward gives the stages' maps in stage order, once each: out_channels listed them in the
    # order of out_indices, so the neck check refused (3, 2, 1, 0) and proposed a neck that failed.
    model = tiny(out_indices=out_indices)
    outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_channels == [o.shape[1] for o in outs]


def test_drop_path_schedules():
    def rates(model):
        return [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0
                for level in model.levels for b in level.blocks]
    linear = rates(tiny(drop_path_rate=0.5, drop_path_type='linear'))
    assert linear == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert rates(tiny(drop_path_rate=0.5, drop_path_type='uniform')) == pytest.approx([0.5] * 5)
    with pytest.raises(ValueError, match='drop_path_type'):
        tiny(drop_path_type='cosine')
    for rate in (1.5, -0.5):  # they built, and gave blocks rates such as 1.125 or -0.375
        with pytest.raises(ValueError, match=rf'drop_path_rate is a probability, in \[0, 1\], got {rate}'):
            tiny(drop_path_rate=rate)


def test_drop_path_rate_one_drops_every_branch():
    # The folded scale was 0 / 0 for a rate of 1: NaN features in training.
    from ops_dcnv3.modules import DCNv3_pytorch

    from mmdet_custom.models.backbones.intern_image import InternImageBlock
    block = InternImageBlock(DCNv3_pytorch, 16, 2, drop_path=1.0, layer_scale=0.7).train()
    x = torch.randn(3, 4, 5, 16)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    model = tiny(drop_path_rate=1.0).train()
    assert all(o.isfinite().all() for o in model(torch.randn(2, 3, 64, 64)))


def test_unbatched_image_is_refused_by_name():
    # A (3, H, W) image passed the stem and failed in a permute inside DCNv3.
    with pytest.raises(ValueError, match=r'expected a batch of images \(N, 3, H, W\), got shape '
                                         r'\(3, 64, 64\)'):
        tiny()(torch.randn(3, 64, 64))


def test_large_model_flags_key_layout():
    # L/XL-style: post-norm with extra norms after chosen blocks of stage 2.
    model = tiny(depths=[1, 1, 4, 1], post_norm=True, level2_post_norm=True,
                 level2_post_norm_block_ids=[1, 3], offset_scale=2.0)
    k = keys(model)
    assert not any(key.startswith(f'levels.{i}.norm.') for i in range(4) for key in k)
    post = [key for key in k if key.startswith('levels.2.post_norms')]
    assert post == ['levels.2.post_norms.0.0.weight', 'levels.2.post_norms.0.0.bias',
                    'levels.2.post_norms.1.0.weight', 'levels.2.post_norms.1.0.bias']
    # after the stage's blocks, before its downsample
    assert k.index(post[0]) > k.index('levels.2.blocks.3.mlp.fc2.bias')
    assert k.index(post[-1]) < k.index('levels.2.downsample.conv.weight')
    assert model.levels[2].post_norms[0][0].eps == 1e-6
    assert all(o.isfinite().all() for o in model(torch.randn(1, 3, 64, 64)))

    # H/G-style: res-post-norm, centre feature scale, 5x5 offset conv, no layer scale.
    model = tiny(layer_scale=None, res_post_norm=True, center_feature_scale=True, dw_kernel_size=5,
                 post_norm=False)
    k = keys(model)
    block = [key[len('levels.0.blocks.0.'):] for key in k if key.startswith('levels.0.blocks.0.')]
    assert block[:2] == ['norm1.0.weight', 'norm1.0.bias']
    assert block[2:4] == ['dcn.center_feature_scale_proj_weight', 'dcn.center_feature_scale_proj_bias']
    assert block[-4:] == ['res_post_norm1.0.weight', 'res_post_norm1.0.bias',
                          'res_post_norm2.0.weight', 'res_post_norm2.0.bias']
    assert model.state_dict()['levels.0.blocks.0.dcn.dw_conv.0.weight'].shape == (16, 1, 5, 5)
    assert all(o.isfinite().all() for o in model(torch.randn(1, 3, 64, 64)))

    # centre feature scale keeps the stage norms even with post-norm blocks
    k = keys(tiny(post_norm=True, center_feature_scale=True))
    assert all(f'levels.{i}.norm.0.weight' in k for i in range(4))


def test_res_post_norm_normalises_each_branch():
    # With the branch outputs layer-normalised (unit weight, zero bias), each residual update has
    # zero mean and unit variance over channels, whatever the weights are.
    model = tiny(layer_scale=None, post_norm=False, res_post_norm=True).eval()
    block = model.levels[0].blocks[0]
    x = torch.randn(1, 4, 4, 16) * 3
    with torch.no_grad():
        block.mlp.fc2.weight.normal_()  # fresh-init outputs are so small that LN's eps would show
        update = block(x) - x - block.res_post_norm1(block.dcn(block.norm1(x)))
        assert update.mean(-1).abs().max() < 1e-4
        assert update.var(-1, unbiased=False).sub(1).abs().max() < 1e-2


def test_res_post_norm_is_unused_with_layer_scale_as_in_the_original(mmdet_log):
    # The original applies res_post_norm only without layer scales; with them its norms exist
    # (checkpoint keys) but are skipped. Ours applied them: other outputs for the same weights.
    model = tiny(layer_scale=0.5, post_norm=False, res_post_norm=True).eval()
    assert 'levels.0.blocks.0.res_post_norm1.0.weight' in keys(model)
    plain = tiny(layer_scale=0.5, post_norm=False).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(model(x), plain(x)):
            torch.testing.assert_close(got, expected)
    assert any('res_post_norm has no effect with layer_scale set' in r.getMessage()
               and r.levelno == logging.WARNING for r in mmdet_log)


def test_invalid_flag_combinations():
    with pytest.raises(ValueError, match='res_post_norm'):
        tiny(post_norm=True, res_post_norm=True)
    with pytest.raises(ValueError, match='level2_post_norm_block_ids'):
        tiny(level2_post_norm=True)
    with pytest.raises(ValueError, match='outside'):
        tiny(level2_post_norm=True, level2_post_norm_block_ids=[2])
    with pytest.raises(NotImplementedError, match='DCNv4'):
        tiny(use_dcn_v4_op=True)


def test_with_cp_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = tiny(core_op='DCNv3_pytorch', drop_path_rate=0.0)
    checkpointed = tiny(core_op='DCNv3_pytorch', drop_path_rate=0.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 48, 64)
    results = []
    for model in (plain, checkpointed):
        model.train()
        blocks = [block for stage in model.levels for block in stage.blocks]
        dcn_calls = []
        for block in blocks:
            block.dcn.register_forward_hook(lambda *_: dcn_calls.append(1))
        inp = x.clone().requires_grad_(True)
        outs = model(inp)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, inp.grad, {n: p.grad for n, p in model.named_parameters()}))
        # Checkpointed blocks run their forward again in the backward; plain ones once.
        assert len(dcn_calls) == len(blocks) * (2 if model is checkpointed else 1)
    (outs_a, gx_a, grads_a), (outs_b, gx_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None, name
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_stages():
    # As the original: stages 0..k-1, never the stem.
    model = tiny(frozen_stages=1, drop_rate=0.1)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith('levels.0.')), name
    model.train()
    assert not model.levels[0].training
    assert model.patch_embed.training and model.levels[1].training
    assert all(p.requires_grad for p in tiny(frozen_stages=0).parameters())


# --- pretrained loading -------------------------------------------------------------------------

@pytest.fixture
def mmdet_log():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('mmdet')
    level = logger.level  # INFO once mmdet's get_root_logger has run, whichever test ran it
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _classification_checkpoint(source):
    state = {f'module.{k}': v.clone() for k, v in source.state_dict().items()}
    state['module.head.weight'] = torch.randn(10, 128)
    state['module.conv_head.0.weight'] = torch.randn(8, 128, 1, 1)
    state['module.fc_norm.weight'] = torch.randn(8)
    return {'model': state, 'epoch': 3}


@pytest.mark.parametrize('layout', ['classification', 'detector'])
def test_pretrained_init_cfg_loads_backbone_weights(tmp_path, mmdet_log, layout):
    torch.manual_seed(0)
    source = tiny()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    if layout == 'classification':
        ckpt = _classification_checkpoint(source)
        head_keys = ['head.weight', 'conv_head.0.weight', 'fc_norm.weight']
    else:
        ckpt = {'meta': {}, 'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}
        ckpt['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 16, 1, 1)
        head_keys = ['neck.lateral_convs.0.conv.weight']
    path = tmp_path / 'pretrained.pth'
    torch.save(ckpt, path)

    model = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for (name, expected), got in zip(source.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    logged = '\n'.join(r.getMessage() for r in mmdet_log)
    assert all(k in logged for k in head_keys)


def test_pretrained_reports_missing_backbone_keys(tmp_path, mmdet_log):
    source = tiny()
    state = source.state_dict()
    del state['levels.3.norm.0.weight']
    path = tmp_path / 'partial.pth'
    torch.save({'state_dict': state}, path)
    missing, skipped = tiny().load_pretrained(str(path))
    assert missing == ['levels.3.norm.0.weight'] and skipped == []
    assert any('levels.3.norm.0.weight' in r.getMessage() and r.levelno == logging.WARNING
               for r in mmdet_log)


def test_training_from_scratch_draws_every_linear_as_the_original(mmdet_log):
    # Construction zeroes the DCNv3 offset and mask Linears; init_weights() without init_cfg then
    # draws every Linear (std 0.02, zero bias) and resets every LayerNorm, as the original does.
    model = tiny(channels=64)
    dcn = model.levels[2].blocks[1].dcn
    assert not dcn.offset.weight.any() and not dcn.mask.weight.any()
    with torch.no_grad():
        model.levels[0].blocks[0].norm1[0].weight.fill_(3.0)
    model.init_weights()
    for linear in (dcn.offset, dcn.mask, dcn.input_proj, model.levels[3].blocks[0].mlp.fc1):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.2)
        assert not linear.bias.any()
    assert (model.levels[0].blocks[0].norm1[0].weight == 1).all()
    assert any('training starts from scratch' in r.getMessage() and r.levelno == logging.INFO
               for r in mmdet_log)


def test_pretrained_path_may_start_with_home(tmp_path, monkeypatch):
    # mmcv expands ~ when it loads; our existence check did not, and refused the file.
    monkeypatch.setenv('HOME', str(tmp_path))
    source = tiny()
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'pretrained.pth')
    model = tiny(init_cfg=dict(type='Pretrained', checkpoint='~/pretrained.pth'))
    model.init_weights()
    for (name, expected), got in zip(source.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


def test_pretrained_missing_or_corrupt_file_names_the_path(tmp_path):
    missing = tmp_path / 'nowhere.pth'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        tiny(init_cfg=dict(type='Pretrained', checkpoint=str(missing))).init_weights()
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'this is not a checkpoint')
    with pytest.raises(PretrainedCheckpointError, match=str(corrupt)):
        tiny(init_cfg=dict(type='Pretrained', checkpoint=str(corrupt))).init_weights()


def test_pretrained_unreadable_files_say_they_may_be_truncated(tmp_path):
    # torch's own errors ('[Errno 22] Invalid argument', a bare '101') named no cause.
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': tiny().state_dict()}, whole)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(whole.read_bytes()[:4096])
    text = tmp_path / 'text.pth'
    text.write_text('epoch 3, top-1 82.1\n')
    for path in (truncated, text):
        with pytest.raises(PretrainedCheckpointError) as error:
            tiny().load_pretrained(str(path))
        assert str(error.value).startswith(f'InternImage: could not load pretrained checkpoint '
                                           f'{path} (truncated or not a PyTorch checkpoint?): ')


def test_pretrained_meta_may_hold_numpy_values_but_no_other_objects(tmp_path):
    # A detector checkpoint saved by a run's best-score record holds numpy values in its meta:
    # torch's weights-only loader refused them with "Weights only load failed" and no cause.
    source = tiny()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    numpy_meta = tmp_path / 'numpy_meta.pth'
    torch.save({'meta': {'best_score': np.float64(0.5), 'seed': np.int64(3)},
                'state_dict': source.state_dict()}, numpy_meta)
    model = tiny()
    model.load_pretrained(str(numpy_meta))
    for (name, expected), got in zip(source.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    code = tmp_path / 'code.pth'
    torch.save({'meta': {'args': argparse.Namespace(lr=0.1)}, 'state_dict': source.state_dict()}, code)
    with pytest.raises(PretrainedCheckpointError) as error:
        model.load_pretrained(str(code))
    assert str(error.value) == (
        f'InternImage: pretrained checkpoint {code} holds an object of type argparse.Namespace, '
        f'which the safe loader does not read (only tensors, plain Python values and numpy data): '
        f'save its state_dict alone')


def test_pretrained_of_another_model_size_is_refused_by_its_first_weight(tmp_path):
    # load_state_dict raised a RuntimeError listing every mismatch, 125 lines for the tiny model.
    path = tmp_path / 'wider.pth'
    wider = tiny(channels=32).state_dict()
    torch.save({'state_dict': wider}, path)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other_shapes = sum(v.shape != before[k].shape for k, v in wider.items())
    with pytest.raises(PretrainedCheckpointError) as error:
        model.load_pretrained(str(path))
    assert str(error.value) == (
        f'InternImage: pretrained checkpoint {path} does not fit this backbone (saved for another '
        f'model size?): {other_shapes} of its weights have another shape (first: '
        f'patch_embed.conv1.weight is (16, 3, 3, 3) in the checkpoint, (8, 3, 3, 3) in the model)')
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('source_overrides, first_key, count', [
    (dict(layer_scale=1.0), 'levels.0.blocks.0.gamma1', 10),  # into a model without layer scale
    (dict(depths=[1, 1, 3, 1], layer_scale=None), 'levels.2.blocks.2.norm1.0.weight', 20),
])
def test_pretrained_backbone_weights_without_a_place_are_warned_of(tmp_path, mmdet_log,
                                                                   source_overrides, first_key,
                                                                   count):
    # They were skipped with an info line calling them the classifier head: the model then
    # computed another function than the checkpoint's (no gammas, a block fewer).
    source = tiny(**source_overrides)
    path = tmp_path / 'pretrained.pth'
    torch.save(_classification_checkpoint(source), path)
    model = tiny(layer_scale=None)
    unplaced = [k for k in source.state_dict() if k not in model.state_dict()]
    _, skipped = model.load_pretrained(str(path))
    assert unplaced[0] == first_key and len(unplaced) == (count or len(unplaced))
    assert skipped == unplaced + ['head.weight', 'conv_head.0.weight', 'fc_norm.weight']
    warnings = [r.getMessage() for r in mmdet_log if r.levelno == logging.WARNING]
    assert (f'InternImage: {len(unplaced)} backbone weights in {path} this model has no place '
            f"for: does its layer_scale / depths differ from the checkpoint's? (first: "
            f"{', '.join(unplaced[:5])})") in warnings
    infos = [r.getMessage() for r in mmdet_log if r.levelno == logging.INFO]
    assert ("InternImage: skipped 3 keys that are not backbone parameters (a classifier head, a "
            "detector's neck and heads; first: head.weight, conv_head.0.weight, fc_norm.weight)"
            ) in infos


@pytest.mark.parametrize('layer_scale', [None, 0.7])
@pytest.mark.parametrize('training', [False, True])
def test_block_residual_equals_the_original_composition(training, layer_scale):
    """x + drop_path(gamma * branch(norm(x))) with mmcv's DropPath, the same random draws: the
    block folds gamma and the drop-path into one addcmul."""
    from ops_dcnv3.modules import DCNv3_pytorch

    from mmdet_custom.models.backbones.intern_image import InternImageBlock
    torch.manual_seed(0)
    block = InternImageBlock(DCNv3_pytorch, 16, 2, drop_path=0.5, layer_scale=layer_scale)
    block.train(training)
    x = torch.randn(6, 4, 5, 16)

    def original(x):
        for branch, norm, gamma in ((block.dcn, block.norm1, block.gamma1),
                                    (block.mlp, block.norm2, block.gamma2)):
            out = branch(norm(x))
            x = x + block.drop_path(out if gamma is None else gamma * out)
        return x

    torch.manual_seed(1)
    expected = original(x)
    torch.manual_seed(1)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
