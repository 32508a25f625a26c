"""A released-format detector checkpoint loads strictly through mmdet's own inference API."""
import numpy as np
import pytest
import torch
from internimage_testlib import CONFIG_DIR, TINY_BACKBONE
from mmcv import Config
from mmcv.runner import load_checkpoint

from mmdet.apis import inference_detector, init_detector
from mmdet.datasets import CocoDataset
from mmdet.models import build_detector


def tiny_detector_config():
    """The InternImage-T 1x config, shrunk: 16-channel backbone, 32-channel FPN and heads."""
    cfg = Config.fromfile(str(CONFIG_DIR / 'mask_rcnn_internimage_t_fpn_1x_coco.py'))
    cfg.model.backbone.update(TINY_BACKBONE)
    cfg.model.backbone.pop('init_cfg')
    width = 32
    cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=width)
    cfg.model.rpn_head.update(in_channels=width, feat_channels=width)
    roi_head = cfg.model.roi_head
    roi_head.bbox_roi_extractor.out_channels = width
    roi_head.mask_roi_extractor.out_channels = width
    roi_head.bbox_head.update(in_channels=width, fc_out_channels=64)
    roi_head.mask_head.update(in_channels=width, conv_out_channels=width)
    cfg.data.test.pipeline[1].img_scale = (160, 128)  # keep CPU inference quick
    return cfg


@pytest.mark.slow
def test_released_checkpoint_loads_strictly_and_runs_inference(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_detector_config()
    config_path = tmp_path / 'tiny_internimage.py'
    cfg.dump(str(config_path))

    source = build_detector(cfg.model)
    source.init_weights()
    with torch.no_grad():  # make the DCN offsets/masks non-trivial, so a wrong load shows
        for name, p in source.named_parameters():
            if '.dcn.offset.' in name or '.dcn.mask.' in name:
                p.normal_(0, 0.1)
    checkpoint_path = tmp_path / 'mask_rcnn_internimage_tiny.pth'
    torch.save({'meta': {'CLASSES': CocoDataset.CLASSES, 'epoch': 12},
                'state_dict': source.state_dict()}, checkpoint_path)

    # strict: every key of the checkpoint matches the model and vice versa
    load_checkpoint(build_detector(cfg.model), str(checkpoint_path), map_location='cpu', strict=True)

    model = init_detector(str(config_path), str(checkpoint_path), device='cpu')
    assert model.CLASSES == CocoDataset.CLASSES
    loaded = model.state_dict()
    assert list(loaded) == list(source.state_dict())
    for name, value in source.state_dict().items():
        assert torch.equal(loaded[name], value), name

    image = np.random.RandomState(0).randint(0, 255, (96, 128, 3), dtype=np.uint8)
    bbox_result, segm_result = inference_detector(model, image)
    assert len(bbox_result) == len(segm_result) == 80
    assert all(b.ndim == 2 and b.shape[1] == 5 for b in bbox_result)
    assert all(len(masks) == len(boxes) for masks, boxes in zip(segm_result, bbox_result))

    source.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), source.backbone(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_detector_init_weights_loads_pretrained_backbone(tmp_path):
    """The path mmdet's train tool takes: detector.init_weights() reaches the backbone's init_cfg."""
    torch.manual_seed(0)
    cfg = tiny_detector_config()
    source = build_detector(cfg.model).backbone
    pretrained = {k: v + 1 for k, v in source.state_dict().items()}
    path = tmp_path / 'internimage_tiny_1k.pth'
    torch.save({'model': pretrained, 'head.weight': torch.ones(3, 128)}, path)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    model = build_detector(cfg.model)
    model.init_weights()
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, pretrained[name]), name
