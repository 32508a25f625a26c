"""The six COCO Mask R-CNN configs: settings, pipelines, and the detectors they build."""
import pytest
import torch
from internimage_testlib import CONFIG_DIR, load_reference_json
from mmcv import Config
from mmcv.utils import import_modules_from_strings

SIZES = ['t', 's', 'b']
SCHEDULES = ['1x', '3x']
CONFIGS = [(size, schedule) for size in SIZES for schedule in SCHEDULES]
# Also in the reference JSONs; repeated so that a changed reference cannot pass silently.
DETECTOR_PARAMS = {'t': 48_920_544, 's': 68_715_024, 'b': 115_245_264}
FPN_IN_CHANNELS = {'t': [64, 128, 256, 512], 's': [80, 160, 320, 640], 'b': [112, 224, 448, 896]}


def load(size, schedule):
    path = CONFIG_DIR / f'mask_rcnn_internimage_{size}_fpn_{schedule}_coco.py'
    return Config.fromfile(str(path))


def pipeline_types(pipeline):
    return [step['type'] for step in pipeline]


@pytest.mark.parametrize('size,schedule', CONFIGS)
def test_model_and_optimizer_settings(size, schedule):
    cfg = load(size, schedule)
    assert cfg.custom_imports == dict(imports=['mmdet_custom'], allow_failed_imports=False)
    import_modules_from_strings(**cfg.custom_imports)  # as mmdet's tools do

    ref = load_reference_json(size)
    backbone = cfg.model.backbone.to_dict()
    init_cfg = backbone.pop('init_cfg')
    backbone['out_indices'] = list(backbone['out_indices'])
    assert backbone == ref['backbone_config']
    assert init_cfg == ref['backbone_init_cfg'] == dict(
        type='Pretrained',
        checkpoint=f'https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_{size}_1k_224.pth')
    assert cfg.model.neck == dict(type='FPN', in_channels=FPN_IN_CHANNELS[size], out_channels=256, num_outs=5)
    assert cfg.model.type == 'MaskRCNN' and cfg.model.roi_head.bbox_head.num_classes == 80

    depths = ref['backbone_config']['depths']
    assert cfg.optimizer == dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True,
        constructor='CustomLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=sum(depths), layer_decay_rate=1.0, depths=depths))
    assert cfg.optimizer_config == dict(grad_clip=None)
    assert 'fp16' not in cfg
    assert cfg.data.samples_per_gpu == 2
    assert cfg.evaluation == dict(metric=['bbox', 'segm'], classwise=True, save_best='auto')
    assert cfg.checkpoint_config.interval == 1 and cfg.checkpoint_config.max_keep_ckpts == 3


@pytest.mark.parametrize('size,schedule', CONFIGS)
def test_schedule_and_pipelines(size, schedule):
    cfg = load(size, schedule)
    epochs, steps = {'1x': (12, [8, 11]), '3x': (36, [27, 33])}[schedule]
    assert cfg.runner == dict(type='EpochBasedRunner', max_epochs=epochs)
    assert cfg.lr_config == dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001,
                                 step=steps)

    train = cfg.data.train.pipeline
    assert train == cfg.train_pipeline
    assert train[:2] == [dict(type='LoadImageFromFile'),
                         dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]
    assert pipeline_types(train)[-4:] == ['Normalize', 'Pad', 'DefaultFormatBundle', 'Collect']
    assert train[-1]['keys'] == ['img', 'gt_bboxes', 'gt_labels', 'gt_masks']
    if schedule == '1x':
        assert pipeline_types(train) == ['LoadImageFromFile', 'LoadAnnotations', 'Resize', 'RandomFlip',
                                         'Normalize', 'Pad', 'DefaultFormatBundle', 'Collect']
        assert train[2]['img_scale'] == (1333, 800) and train[2]['keep_ratio']
    else:
        assert pipeline_types(train)[2:4] == ['RandomFlip', 'AutoAugment']
        multi_scale, crop = train[3]['policies']
        shorter_sides = list(range(480, 801, 32))
        assert [min(s) for s in multi_scale[0]['img_scale']] == shorter_sides
        assert all(max(s) == 1333 for s in multi_scale[0]['img_scale'])
        assert pipeline_types(crop) == ['Resize', 'RandomCrop', 'Resize']
        assert sorted(min(s) for s in crop[0]['img_scale']) == [400, 500, 600]
        assert crop[1]['crop_type'] == 'absolute_range' and tuple(crop[1]['crop_size']) == (384, 600)
        assert [min(s) for s in crop[2]['img_scale']] == shorter_sides and crop[2]['override']

    for split in ('val', 'test'):
        test = cfg.data[split].pipeline
        assert pipeline_types(test) == ['LoadImageFromFile', 'MultiScaleFlipAug']
        assert test[1]['img_scale'] == (1333, 800) and test[1]['flip'] is False


@pytest.mark.parametrize('schedule', SCHEDULES)
def test_dataset_paths(schedule):
    cfg = load('t', schedule)
    assert cfg.data_root == 'data/coco/'
    assert cfg.data.train.ann_file == 'data/coco/annotations/instances_train2017.json'
    assert cfg.data.train.img_prefix == 'data/coco/train2017/'
    assert cfg.data.val.ann_file == cfg.data.test.ann_file == 'data/coco/annotations/instances_val2017.json'
    # what --cfg-options does
    cfg.merge_from_dict({'data.train.ann_file': '/elsewhere/train.json', 'data.train.img_prefix': '/elsewhere/img/',
                         'data.test.img_prefix': '/elsewhere/val/', 'data.samples_per_gpu': 4})
    assert cfg.data.train.ann_file == '/elsewhere/train.json'
    assert cfg.data.train.img_prefix == '/elsewhere/img/'
    assert cfg.data.test.img_prefix == '/elsewhere/val/'
    assert cfg.data.samples_per_gpu == 4
    assert cfg.data.train.pipeline == cfg.train_pipeline  # the rest is untouched


@pytest.mark.parametrize('size,schedule', CONFIGS)
def test_built_detector_matches_reference_state_dict(size, schedule):
    from mmcv.runner import build_optimizer
    from mmdet.models import build_detector
    cfg = load(size, schedule)
    cfg.model.backbone.pop('init_cfg')  # no download
    with torch.device('meta'):  # the layout is all we need: no memory, no init cost
        model = build_detector(cfg.model)
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    ref = load_reference_json(size)
    assert layout == ref['backbone_state_dict'] + ref['neck_and_heads_state_dict']
    assert len(layout) == ref['detector_state_dict_entries']
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == ref['detector_num_params'] == DETECTOR_PARAMS[size]

    # the optimizer the config asks for: decay rate 1.0, so every group trains at the base lr
    optimizer = build_optimizer(model, cfg.optimizer)
    groups = optimizer.param_groups
    assert sum(len(g['params']) for g in groups) == len(layout)
    assert {g['lr'] for g in groups} == {1e-4}
    assert {int(g['group_name'].split('_')[1]) for g in groups} == set(
        range(sum(cfg.model.backbone.depths) + 2))
    for g in groups:
        assert g['weight_decay'] == (0.0 if all(p.ndim == 1 for p in g['params']) else 0.05)
