"""NMS and RoIAlign that run mmcv's kernels in PyTorch and export as ONNX's own operators.

mmcv 1.x writes RoIAlign for ONNX with an opset-10 workaround (or as its own ``mmcv::`` op when
its ONNX Runtime plugin is built); here both ops map onto the standard operators of opset >= 16,
where RoiAlign has ``coordinate_transformation_mode``. Used while tracing with
``torch.onnx.export(..., dynamo=False)``.
"""
import torch
from mmcv.ops import nms, roi_align

__all__ = ['onnx_nms', 'onnx_roi_align']


def _ints(g, values):
    return g.op('Constant', value_t=torch.tensor(values, dtype=torch.int64))


class _NMS(torch.autograd.Function):
    """Greedy NMS of one set of boxes: kept indices, highest score first (mmcv's ``nms``)."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold: float, max_output: int):
        _, keep = nms(boxes, scores, iou_threshold)
        return keep[:max_output]

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, max_output):
        boxes = g.op('Unsqueeze', boxes, _ints(g, [0]))  # (1, N, 4): one batch
        scores = g.op('Unsqueeze', scores, _ints(g, [0, 1]))  # (1, 1, N): one class
        selected = g.op('NonMaxSuppression', boxes, scores, _ints(g, [max_output]),
                        g.op('Constant', value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
                        center_point_box_i=0)  # (K, 3): batch, class, box index
        return g.op('Gather', selected, _ints(g, 2), axis_i=1)


def onnx_nms(boxes, scores, iou_threshold: float, max_output: int):
    """Indices of the boxes kept by NMS (IoU > ``iou_threshold`` suppresses), best first, at most
    ``max_output`` of them; ONNX ``NonMaxSuppression`` when exported."""
    return _NMS.apply(boxes, scores, float(iou_threshold), int(max_output))


class _RoIAlign(torch.autograd.Function):

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, 'avg', aligned)

    @staticmethod
    def symbolic(g, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        batch_indices = g.op('Cast', g.op('Gather', rois, _ints(g, 0), axis_i=1), to_i=7)  # int64
        boxes = g.op('Slice', rois, _ints(g, [1]), _ints(g, [5]), _ints(g, [1]))
        # mmcv's aligned=True shifts by half a pixel and lets boxes be smaller than one pixel:
        # ONNX's half_pixel; aligned=False is ONNX's output_half_pixel (the opset-10 behaviour).
        mode = 'half_pixel' if aligned else 'output_half_pixel'
        return g.op('RoiAlign', features, boxes, batch_indices, coordinate_transformation_mode_s=mode,
                    mode_s='avg', output_height_i=output_size[0], output_width_i=output_size[1],
                    sampling_ratio_i=max(0, sampling_ratio), spatial_scale_f=spatial_scale)


def onnx_roi_align(features, rois, roi_layer):
    """mmcv ``RoIAlign`` layer ``roi_layer`` (average pooling) applied to ``rois`` (K, 5)."""
    if roi_layer.pool_mode != 'avg' or getattr(roi_layer, 'use_torchvision', False):
        raise NotImplementedError('ONNX export supports RoIAlign with pool_mode="avg" (mmcv kernel) '
                                  f'only, got pool_mode={roi_layer.pool_mode!r}, use_torchvision='
                                  f'{getattr(roi_layer, "use_torchvision", False)}')
    return _RoIAlign.apply(features, rois, tuple(roi_layer.output_size), float(roi_layer.spatial_scale),
                           int(roi_layer.sampling_ratio), bool(roi_layer.aligned))
