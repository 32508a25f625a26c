"""Mask R-CNN inference written for ONNX export: one padded image and the size of the image inside
it in, ``dets``, ``labels``, ``mask_probs`` out.

mmdet 2.x's own ``onnx_export`` path differs from its PyTorch inference (the RPN runs one NMS
over all levels instead of one per level) and relies on mmcv's opset-10 RoIAlign workaround.
This module re-states only the test-time glue of a two-stage detector, calling the detector's
own modules (backbone, neck, heads, anchor generator, box coders, RoI level mapping), so the
exported graph computes what ``detector.simple_test(img, metas, rescale=False)`` computes:

- RPN: per level, the ``nms_pre`` best anchors; decode and clip to the image; drop boxes not
  wider and taller than ``min_bbox_size``; NMS per level (boxes of different levels are moved
  apart, as mmcv's ``batched_nms`` does); the ``max_per_img`` best.
- box head: softmax scores, class-specific boxes decoded and clipped, boxes scoring above
  ``score_thr`` kept, NMS per class (moved apart the same way), the ``max_per_img`` best.
- mask head: the predicted class's 28x28 mask probabilities. Pasting them into their boxes
  (bilinear, as mmdet's ``_do_paste_mask``) and thresholding at ``mask_thr_binary`` is the
  caller's (``paste_masks``, which ``ONNXRuntimeMaskRCNN`` uses): mmdet pastes onto the original
  image, with the boxes scaled back, and masks pasted onto the resized input and scaled
  afterwards differ from those (docs/benchmarks.md). The graph also stays free of an (N, H, W)
  output.

Boxes are clipped to the image inside the padding (``img_shape``, an input of the graph, as
mmdet clips to its img_meta's ``img_shape``): clipped to the padded input instead, proposals in the
padding would survive and become empty boxes with real scores. Everything is in the input
tensor's coordinates; rescaling to the original image is the caller's job, as in mmdet's ONNX
convention.
"""
import torch
import torch.nn.functional as F
from mmdet.core.export import get_k_for_topk
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from torch import nn

from ..models.roi_heads import SubsampledMaskRoIHead
from .onnx_ops import onnx_nms, onnx_roi_align

__all__ = ['MaskRCNNForExport', 'INPUT_NAMES', 'OUTPUT_NAMES', 'paste_masks']

INPUT_NAMES = ('input', 'img_shape')
OUTPUT_NAMES = ('dets', 'labels', 'mask_probs')
# ONNX NonMaxSuppression needs a bound; the box head's "no limit" (max_per_img <= 0) becomes this.
_NO_LIMIT = 2 ** 31 - 1


def _nms_iou_threshold(nms_cfg, where):
    nms_type = nms_cfg.get('type', 'nms')
    if nms_type != 'nms' or nms_cfg.get('class_agnostic', False):
        raise NotImplementedError(f'ONNX export supports plain per-class NMS (type="nms") in {where}, '
                                  f'got {dict(nms_cfg)}')
    return float(nms_cfg['iou_threshold'])


def check_exportable(detector):
    """Raise NotImplementedError naming the first part of ``detector`` this export does not cover
    (the tools call it before loading weights, the export before tracing)."""
    if not isinstance(detector, TwoStageDetector) or not detector.with_rpn:
        raise NotImplementedError(f'ONNX export supports two-stage detectors with an RPN '
                                  f'(Mask R-CNN), got {type(detector).__name__}')
    roi_head = detector.roi_head
    # SubsampledMaskRoIHead differs from StandardRoIHead in training only.
    if type(roi_head) not in (StandardRoIHead, SubsampledMaskRoIHead) or roi_head.with_shared_head:
        raise NotImplementedError(f'ONNX export supports StandardRoIHead without a shared head, got '
                                  f'{type(roi_head).__name__}')
    if not roi_head.with_mask or not isinstance(roi_head.mask_head, FCNMaskHead):
        raise NotImplementedError('ONNX export needs a mask head (FCNMaskHead): it writes Mask R-CNN')
    if roi_head.mask_head.class_agnostic:
        raise NotImplementedError('ONNX export supports class-specific mask heads only')
    for name in ('bbox_roi_extractor', 'mask_roi_extractor'):
        extractor = getattr(roi_head, name)
        if not isinstance(extractor, SingleRoIExtractor) or roi_head.share_roi_extractor:
            raise NotImplementedError(f'ONNX export supports separate SingleRoIExtractors, got '
                                      f'{type(extractor).__name__} as {name}')
    if roi_head.bbox_head.custom_cls_channels or roi_head.bbox_head.loss_cls.use_sigmoid:
        raise NotImplementedError('ONNX export supports softmax box classifiers only')
    if roi_head.test_cfg.mask_thr_binary < 0:
        raise NotImplementedError('the exported model gives binary masks: '
                                  'test_cfg.rcnn.mask_thr_binary must be >= 0')
    _nms_iou_threshold(detector.rpn_head.test_cfg.nms, 'test_cfg.rpn')
    rpn_limit = detector.rpn_head.test_cfg.max_per_img
    if rpn_limit < 1:  # unlike the box head's, where it means no limit
        raise NotImplementedError(f'test_cfg.rpn.max_per_img must be >= 1 (mmdet keeps the first '
                                  f'max_per_img proposals: 0 keeps none), got {rpn_limit}')
    _nms_iou_threshold(roi_head.test_cfg.nms, 'test_cfg.rcnn')


def _separated_by_group(boxes, groups):
    """Boxes moved apart by group (level or class), so that one NMS never compares two groups.

    As mmcv's ``batched_nms``: offset = group * (largest coordinate + 1). The zero keeps the
    maximum defined when no box is left (coordinates are clipped to >= 0).
    """
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    return boxes + (groups.to(boxes.dtype) * (largest + 1))[:, None]


class MaskRCNNForExport(nn.Module):
    """``forward(img, img_shape)`` with img (1, 3, H, W), already resized, normalised and padded,
    and img_shape (2,) int64, the height and width of the image inside it, returns ``dets`` (N, 5:
    x1, y1, x2, y2, score), ``labels`` (N,) int64 and ``mask_probs`` (N, h, w) float32 (the mask
    head's size, 28x28 in Mask R-CNN; :func:`paste_masks` makes them masks), sorted by
    descending score."""

    def __init__(self, detector: TwoStageDetector):
        super().__init__()
        check_exportable(detector)
        self.detector = detector

    def forward(self, img, img_shape):
        feats = self.detector.extract_feat(img)
        proposals = self._proposals(feats, img_shape)
        dets, labels = self._detections(feats, proposals, img_shape)
        return dets, labels, self._mask_probabilities(feats, dets[:, :4], labels)

    # --- RPN -----------------------------------------------------------------------------------

    def _proposals(self, feats, img_shape):
        rpn_head = self.detector.rpn_head
        cfg = rpn_head.test_cfg
        cls_scores, bbox_preds = rpn_head(feats)
        anchors = rpn_head.prior_generator.grid_priors(
            [score.shape[-2:] for score in cls_scores], dtype=feats[0].dtype, device=feats[0].device)
        nms_pre = cfg.get('nms_pre', -1)
        level_scores, level_deltas, level_anchors, level_ids = [], [], [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            cls_score = cls_score[0].permute(1, 2, 0)
            if rpn_head.use_sigmoid_cls:
                scores = cls_score.reshape(-1).sigmoid()
            else:
                scores = cls_score.reshape(-1, 2).softmax(dim=1)[:, 0]
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
            level_anchor = anchors[level]
            # mmdet keeps the nms_pre best per level (by sorting); topk keeps the same ones. While
            # exporting, k is min(nms_pre, anchors) computed in the graph (dynamic sizes).
            k = get_k_for_topk(nms_pre, torch._shape_as_tensor(scores)[0]) if nms_pre > 0 else -1
            if torch.is_tensor(k) or k > 0:
                scores, top = scores.topk(k)
                deltas, level_anchor = deltas[top], level_anchor[top]
            level_scores.append(scores)
            level_deltas.append(deltas)
            level_anchors.append(level_anchor)
            level_ids.append(torch.full_like(scores, level, dtype=torch.long))
        scores, ids = torch.cat(level_scores), torch.cat(level_ids)
        boxes = rpn_head.bbox_coder.decode(torch.cat(level_anchors), torch.cat(level_deltas),
                                           max_shape=img_shape)
        if cfg.min_bbox_size >= 0:
            widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            valid = torch.nonzero((widths > cfg.min_bbox_size) & (heights > cfg.min_bbox_size))[:, 0]
            boxes, scores, ids = boxes[valid], scores[valid], ids[valid]
        keep = onnx_nms(_separated_by_group(boxes, ids), scores, _nms_iou_threshold(cfg.nms, 'rpn'),
                        cfg.max_per_img)
        return boxes[keep]

    # --- box head ------------------------------------------------------------------------------

    def _detections(self, feats, proposals, img_shape):
        roi_head = self.detector.roi_head
        bbox_head, cfg = roi_head.bbox_head, roi_head.test_cfg
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        extractor = roi_head.bbox_roi_extractor
        cls_score, bbox_pred = bbox_head(_extract_roi_features(extractor, feats, _with_spare_roi(rois)))
        cls_score, bbox_pred = cls_score[:-1], bbox_pred[:-1]
        scores = F.softmax(cls_score, dim=-1)[:, :-1]  # the last column is the background
        num_classes = scores.shape[1]
        boxes = bbox_head.bbox_coder.decode(rois[:, 1:], bbox_pred, max_shape=img_shape)
        if bbox_head.reg_class_agnostic:  # one box per RoI, shared by the classes
            boxes = boxes.repeat(1, num_classes)
        boxes = boxes.reshape(-1, 4)  # (RoIs * classes, 4): RoI 0's classes, then RoI 1's, ...
        labels = torch.arange(num_classes, device=scores.device).repeat(scores.shape[0])
        scores = scores.reshape(-1)
        valid = torch.nonzero(scores > cfg.score_thr)[:, 0]
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        max_per_img = cfg.max_per_img if cfg.max_per_img > 0 else _NO_LIMIT
        keep = onnx_nms(_separated_by_group(boxes, labels), scores,
                        _nms_iou_threshold(cfg.nms, 'rcnn'), max_per_img)
        dets = torch.cat([boxes[keep], scores[keep, None]], dim=1)
        return dets, labels[keep]

    # --- mask head -----------------------------------------------------------------------------

    def _mask_probabilities(self, feats, boxes, labels):
        roi_head = self.detector.roi_head
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        mask_feats = _extract_roi_features(roi_head.mask_roi_extractor, feats, _with_spare_roi(rois))
        mask_pred = roi_head.mask_head(mask_feats)[:-1]
        size = mask_pred.shape[-2:]
        index = labels.reshape(-1, 1, 1, 1).expand(-1, 1, size[0], size[1])
        return mask_pred.gather(1, index)[:, 0].sigmoid()


def _with_spare_roi(rois):
    """``rois`` plus one empty box, whose head outputs the caller drops. Heads with GroupNorm
    reshape their batch with -1, which ONNX Runtime refuses for zero RoIs (an image with no
    detection); one spare RoI keeps every batch non-empty."""
    return torch.cat([rois, rois.new_zeros(1, 5)])


def _extract_roi_features(extractor, feats, rois):
    """``SingleRoIExtractor.forward`` as one static graph: every level pools every RoI, with the
    RoIs of other levels collapsed to an empty box (one sample each) and their results zeroed."""
    feats = feats[:extractor.num_inputs]
    levels = extractor.map_roi_levels(rois, len(feats))
    roi_feats = 0
    for level, (feat, roi_layer) in enumerate(zip(feats, extractor.roi_layers)):
        on_level = (levels == level).to(rois.dtype)[:, None]
        pooled = onnx_roi_align(feat, rois * on_level, roi_layer)
        roi_feats = roi_feats + pooled * on_level[:, :, None, None]
    return roi_feats


def _interpolation_matrix(starts, ends, out_size, mask_size):
    """(N, out_size, mask_size) weights of bilinear sampling (zero outside the mask) of a
    ``mask_size`` mask stretched over [start, end) of ``out_size`` pixels: grid_sample's
    align_corners=False arithmetic, as mmdet's ``_do_paste_mask`` uses it."""
    centres = torch.arange(out_size, dtype=starts.dtype, device=starts.device) + 0.5
    extent = (ends - starts).clamp(min=1e-6)
    position = (centres[None, :] - starts[:, None]) / extent[:, None] * mask_size - 0.5
    cells = torch.arange(mask_size, dtype=starts.dtype, device=starts.device)
    return (1 - (position[:, :, None] - cells).abs()).clamp(min=0)


def _pasted_region(starts, ends, size):
    """(N, size) bool: the pixels of each box's [start, end) extent that mmdet's CPU paste
    (``_do_paste_mask`` with skip_empty) fills, one box at a time: from floor(start) - 1 (at
    least 0) up to ceil(end) + 1 (at most ``size``). Pixels outside stay False whatever the
    threshold: at 0 the bilinear zeros there would pass it."""
    first = (starts.floor() - 1).clamp(min=0)
    stop = (ends.ceil() + 1).clamp(max=size)
    pixels = torch.arange(size, dtype=starts.dtype, device=starts.device)
    return (pixels[None, :] >= first[:, None]) & (pixels[None, :] < stop[:, None])


def paste_masks(probabilities, boxes, canvas_shape, threshold, chunk=32):
    """Paste (N, h, w) mask probabilities into their (N, 4) boxes on an (H, W) canvas and
    threshold them: (N, H, W) bool, as mmdet's ``FCNMaskHead.get_seg_masks`` does on the CPU,
    which fills only each box's region (:func:`_pasted_region`).

    Bilinear weights separate into a row and a column factor, so the paste is two batched
    matrix products instead of a GridSample over an (N, H, W, 2) grid; ``chunk`` masks at a time
    bound the float32 intermediate.
    """
    probabilities, boxes = torch.as_tensor(probabilities), torch.as_tensor(boxes)
    height, width = canvas_shape
    masks = torch.empty((len(boxes), height, width), dtype=torch.bool)
    for start in range(0, len(boxes), chunk):
        part, box = probabilities[start:start + chunk], boxes[start:start + chunk]
        rows = _interpolation_matrix(box[:, 1], box[:, 3], height, part.shape[1])
        cols = _interpolation_matrix(box[:, 0], box[:, 2], width, part.shape[2])
        region = (_pasted_region(box[:, 1], box[:, 3], height)[:, :, None]
                  & _pasted_region(box[:, 0], box[:, 2], width)[:, None, :])
        masks[start:start + chunk] = (rows @ part @ cols.transpose(1, 2) >= threshold) & region
    return masks
