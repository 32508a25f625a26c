"""A Mask R-CNN RoI head whose mask branch trains on a random subset of each image's positives.

With half of the RoI samples allowed to be positive, the mask branch (RoIAlign at 14x14, its
convolutions and their backward) becomes the costliest part of a CPU training step once the RPN
finds the objects. A random subset of an image's positives estimates the mask loss over all of
them without bias. The loss averages over the batch's positives, though, so an image with fewer
positives than the cap weighs more in it than before. The box head still learns from every sample.
"""
import copy
import numbers
from typing import List, Optional

import torch
from mmdet.core.bbox.samplers import SamplingResult
from mmdet.models.builder import HEADS
from mmdet.models.roi_heads import StandardRoIHead

# SamplingResult fields indexed by positive sample; the mask branch reads nothing else.
_POSITIVE_FIELDS = ('pos_inds', 'pos_bboxes', 'pos_is_gt', 'pos_assigned_gt_inds',
                    'pos_gt_bboxes', 'pos_gt_labels')


@HEADS.register_module()
class SubsampledMaskRoIHead(StandardRoIHead):
    """``StandardRoIHead`` that feeds at most ``max_mask_rois_per_img`` positives per image to
    the mask branch in training (all of them when ``None``). Inference is unchanged.
    """

    def __init__(self, *args, max_mask_rois_per_img: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if max_mask_rois_per_img is not None and (
                isinstance(max_mask_rois_per_img, bool)
                or not isinstance(max_mask_rois_per_img, numbers.Integral)
                or max_mask_rois_per_img < 1):
            # An int, so that a slice takes it: a float fails only once an image has more positives.
            raise ValueError(f'max_mask_rois_per_img must be a positive whole number or None, got '
                             f'{max_mask_rois_per_img!r}')
        if max_mask_rois_per_img is not None and self.with_mask and self.share_roi_extractor:
            # The shared-extractor path indexes the box features by the full sample list.
            raise ValueError('max_mask_rois_per_img needs a mask_roi_extractor of its own')
        self.max_mask_rois_per_img = max_mask_rois_per_img

    def _subsample_positives(self, result: SamplingResult) -> SamplingResult:
        num_pos = len(result.pos_inds)
        if self.max_mask_rois_per_img is None or num_pos <= self.max_mask_rois_per_img:
            return result
        keep = torch.randperm(num_pos, device=result.pos_inds.device)[:self.max_mask_rois_per_img]
        subset = copy.copy(result)
        for field in _POSITIVE_FIELDS:
            setattr(subset, field, getattr(result, field)[keep])
        return subset

    def _mask_forward_train(self, x, sampling_results: List[SamplingResult], bbox_feats,
                            gt_masks, img_metas):
        sampling_results = [self._subsample_positives(res) for res in sampling_results]
        return super()._mask_forward_train(x, sampling_results, bbox_feats, gt_masks, img_metas)
