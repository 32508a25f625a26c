"""Run an exported Mask R-CNN in ONNX Runtime and return mmdet's results, for evaluation."""
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.core import bbox2result

from .mask_rcnn import OUTPUT_NAMES

__all__ = ['ONNXRuntimeMaskRCNN']


class ONNXRuntimeMaskRCNN:
    """An exported Mask R-CNN in an ONNX Runtime session (CPU).

    ``run(img)`` returns the raw outputs; calling the object with a test-pipeline image and its
    meta returns mmdet's per-class ``(bbox_results, segm_results)`` in the original image's
    coordinates, as ``detector.simple_test(..., rescale=True)`` does.
    """

    def __init__(self, onnx_file: str, num_classes: int, num_threads: int = 0):
        import onnxruntime as ort
        if not osp.isfile(onnx_file):
            raise FileNotFoundError(f'ONNX model not found: {onnx_file}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads  # 0: ONNX Runtime's default (all cores)
        self.session = ort.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])
        inputs = self.session.get_inputs()
        outputs = [output.name for output in self.session.get_outputs()]
        if [i.name for i in inputs] != ['input'] or outputs != list(OUTPUT_NAMES):
            raise ValueError(f'{onnx_file} is not an exported Mask R-CNN: it takes '
                             f'{[i.name for i in inputs]} and gives {outputs}, expected [\'input\'] '
                             f'and {list(OUTPUT_NAMES)}')
        height, width = inputs[0].shape[2:]
        # A static export takes one size only; smaller images are zero-padded up to it.
        self.input_shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.num_classes = num_classes

    def run(self, img):
        """(1, 3, H, W) float32 -> dets (N, 5), labels (N,), masks (N, H', W') bool, in the input's
        coordinates (H', W' = the model's input size)."""
        img = img.detach().cpu().float()
        if self.input_shape is not None:
            height, width = img.shape[-2:]
            if height > self.input_shape[0] or width > self.input_shape[1]:
                raise ValueError(f'image of {height}x{width} does not fit the model\'s static input '
                                 f'{self.input_shape[0]}x{self.input_shape[1]}: export with '
                                 f'--dynamic-export or a larger --shape')
            img = F.pad(img, (0, self.input_shape[1] - width, 0, self.input_shape[0] - height))
        return self.session.run(None, {'input': img.numpy()})

    def __call__(self, img, img_meta):
        dets, labels, masks = self.run(img)
        img_h, img_w = img_meta['img_shape'][:2]
        ori_h, ori_w = img_meta['ori_shape'][:2]
        # Boxes were clipped to the padded input; mmdet clips to the image inside it.
        dets = dets.copy()
        dets[:, [0, 2]] = dets[:, [0, 2]].clip(0, img_w)
        dets[:, [1, 3]] = dets[:, [1, 3]].clip(0, img_h)
        dets[:, :4] /= np.asarray(img_meta['scale_factor'], dtype=np.float32)
        masks = torch.from_numpy(masks[:, :img_h, :img_w])
        if (img_h, img_w) != (ori_h, ori_w) and len(masks):
            masks = F.interpolate(masks[None].float(), size=(ori_h, ori_w), mode='bilinear',
                                  align_corners=False)[0] >= 0.5
        bbox_results = bbox2result(dets, labels, self.num_classes)
        segm_results = [[] for _ in range(self.num_classes)]
        for mask, label in zip(masks.numpy(), labels):
            segm_results[label].append(mask)
        return bbox_results, segm_results
