"""SubsampledMaskRoIHead: the mask branch trains on at most N positives per image."""
import numpy as np
import pytest
import torch
from mmcv import Config
from mmdet.core import BitmapMasks
from mmdet.models import build_detector

import mmdet_custom  # noqa: F401  (registers the head)
from internimage_testlib import REPO_ROOT

SHAPES_CONFIG = REPO_ROOT / 'configs' / 'shapes' / 'mask_rcnn_internimage_pico_fpn_shapes.py'


def _detector(**roi_head):
    """The quick-start detector with a StandardRoIHead, updated by ``roi_head``."""
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    cfg.model.roi_head.pop('max_mask_rois_per_img', None)  # the quick start's own cap
    cfg.model.roi_head.type = 'StandardRoIHead'
    cfg.model.roi_head.update(roi_head)
    model = build_detector(cfg.model)
    model.init_weights()
    return model.train()


def _batch(num_images=2, num_boxes=6, size=128):
    torch.manual_seed(0)
    corners = torch.rand(num_images, num_boxes, 2) * (size - 40)
    boxes = torch.cat([corners, corners + 20 + torch.rand(num_images, num_boxes, 2) * 18], -1)
    masks = []
    for image_boxes in boxes:
        bitmap = torch.zeros(num_boxes, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(image_boxes.int().tolist()):
            bitmap[k, y1:y2, x1:x2] = 1
        masks.append(BitmapMasks(bitmap.numpy(), size, size))
    meta = dict(img_shape=(size, size, 3), ori_shape=(size, size, 3), pad_shape=(size, size, 3),
                scale_factor=np.ones(4, dtype=np.float32), flip=False)
    return dict(img=torch.randn(num_images, 3, size, size), img_metas=[meta] * num_images,
                gt_bboxes=list(boxes), gt_labels=[torch.randint(0, 3, (num_boxes,))] * num_images,
                gt_masks=masks)


def _mask_rois_per_step(model, batch):
    seen = []
    hook = model.roi_head.mask_head.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    losses = model(**batch, return_loss=True)
    hook.remove()
    return seen, losses


def test_mask_branch_sees_at_most_the_cap_per_image():
    batch = _batch()
    # Ground-truth boxes are added as proposals, so each image has at least 6 positives.
    seen, losses = _mask_rois_per_step(_detector(type='SubsampledMaskRoIHead',
                                                 max_mask_rois_per_img=2), batch)
    assert seen == [4]
    assert torch.isfinite(losses['loss_mask']).all()
    losses['loss_mask'].sum().backward()

    uncapped = _detector(type='SubsampledMaskRoIHead', max_mask_rois_per_img=None)
    assert uncapped.roi_head.max_mask_rois_per_img is None
    seen_uncapped, _ = _mask_rois_per_step(uncapped, batch)
    assert seen_uncapped[0] >= 12


def test_inference_is_the_standard_head():
    capped = _detector(type='SubsampledMaskRoIHead', max_mask_rois_per_img=1).eval()
    standard = _detector().eval()
    assert type(standard.roi_head).__name__ == 'StandardRoIHead'
    standard.load_state_dict(capped.state_dict())
    batch = _batch(num_images=1)
    with torch.no_grad():
        got = capped.simple_test(batch['img'], batch['img_metas'])
        want = standard.simple_test(batch['img'], batch['img_metas'])
    assert sum(len(boxes) for boxes in want[0][0]) > 0  # something to compare
    for got_boxes, want_boxes in zip(got[0][0], want[0][0]):
        torch.testing.assert_close(torch.as_tensor(got_boxes), torch.as_tensor(want_boxes))
    for got_masks, want_masks in zip(got[0][1], want[0][1]):
        assert np.array_equal(np.array(got_masks), np.array(want_masks))


@pytest.mark.parametrize('cap', [0, -3, 6.0, 2.5, True])
def test_cap_must_be_a_positive_whole_number(cap):
    # A float passed the check and failed as a slice index only once an image had more positives.
    with pytest.raises(ValueError, match='max_mask_rois_per_img must be a positive whole number'):
        _detector(type='SubsampledMaskRoIHead', max_mask_rois_per_img=cap)


def test_cap_needs_its_own_mask_extractor():
    with pytest.raises(ValueError, match='mask_roi_extractor of its own'):
        _detector(type='SubsampledMaskRoIHead', max_mask_rois_per_img=4, mask_roi_extractor=None)


def _sampling_result(num_pos=10, num_neg=5, num_gts=4):
    from mmdet.core.bbox import AssignResult, SamplingResult
    torch.manual_seed(0)
    num = num_pos + num_neg
    bboxes = torch.rand(num, 4) * 50
    bboxes[:, 2:] += bboxes[:, :2] + 1
    gt_bboxes = bboxes[:num_gts] + 0.5
    gt_inds = torch.zeros(num, dtype=torch.long)
    gt_inds[:num_pos] = torch.arange(num_pos) % num_gts + 1  # 1-based, 0: background
    labels = torch.full((num,), -1, dtype=torch.long)
    labels[:num_pos] = torch.arange(num_pos) % 3
    gt_flags = torch.zeros(num, dtype=torch.uint8)
    gt_flags[:2] = 1
    assign = AssignResult(num_gts, gt_inds, torch.rand(num), labels=labels)
    return SamplingResult(torch.arange(num_pos), torch.arange(num_pos, num), bboxes, gt_bboxes,
                          assign, gt_flags)


def test_subset_keeps_each_positives_fields_together_and_is_random():
    head = _detector(type='SubsampledMaskRoIHead', max_mask_rois_per_img=3).roi_head
    result = _sampling_result()
    # Every per-positive field of the sampling result, found here rather than taken from the head.
    fields = [name for name, value in vars(result).items()
              if name.startswith('pos_') and torch.is_tensor(value) and len(value) == 10]
    assert {'pos_bboxes', 'pos_assigned_gt_inds', 'pos_gt_bboxes', 'pos_gt_labels'} <= set(fields)
    kept_sets = set()
    for seed in range(20):
        torch.manual_seed(seed)
        subset = head._subsample_positives(result)
        rows = [result.pos_inds.tolist().index(i) for i in subset.pos_inds.tolist()]
        assert len(rows) == 3
        for name in fields:  # the mask target of a kept RoI comes from its own ground truth
            assert torch.equal(getattr(subset, name), getattr(result, name)[rows]), name
        assert torch.equal(subset.neg_inds, result.neg_inds)
        kept_sets.add(tuple(sorted(rows)))
    # A random subset each step, every positive in some of them (not always the first three).
    assert len(kept_sets) > 10
    assert set().union(*kept_sets) == set(range(10))
