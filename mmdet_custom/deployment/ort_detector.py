"""Run an exported Mask R-CNN in ONNX Runtime and return mmdet's results, for evaluation."""
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.core import bbox2result

from .mask_rcnn import INPUT_NAMES, OUTPUT_NAMES

__all__ = ['ONNXRuntimeMaskRCNN']


class ONNXRuntimeMaskRCNN:
    """An exported Mask R-CNN in an ONNX Runtime session (CPU).

    ``run(img, img_shape)`` returns the raw outputs; calling the object with a test-pipeline image
    and its meta returns mmdet's per-class ``(bbox_results, segm_results)`` in the original
    image's coordinates, as ``detector.simple_test(..., rescale=True)`` does. ``num_classes`` is
    the dataset's; a model exported for another count is refused.
    """

    def __init__(self, onnx_file: str, num_classes: int, num_threads: int = 0):
        import onnxruntime as ort
        if not osp.isfile(onnx_file):
            raise FileNotFoundError(f'model file not found: {onnx_file}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads  # 0: ONNX Runtime's default (all cores)
        self.session = ort.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])
        inputs = self.session.get_inputs()
        outputs = [output.name for output in self.session.get_outputs()]
        if [i.name for i in inputs] != list(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
            raise ValueError(f'{onnx_file} is not an exported Mask R-CNN: it takes '
                             f'{[i.name for i in inputs]} and gives {outputs}, expected '
                             f'{list(INPUT_NAMES)} and {list(OUTPUT_NAMES)} (export it again with '
                             f'tools/deployment/pytorch2onnx.py)')
        exported_classes = self.session.get_modelmeta().custom_metadata_map.get('num_classes')
        if exported_classes is not None and int(exported_classes) != num_classes:
            raise ValueError(f'{onnx_file} predicts {exported_classes} classes, the dataset has '
                             f'{num_classes}')
        height, width = inputs[0].shape[2:]
        # A static export takes one size only; smaller images are zero-padded up to it.
        self.input_shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.num_classes = num_classes

    def run(self, img, img_shape=None):
        """(1, 3, H, W) float32, and (h, w) of the image inside it (default: all of it) -> dets
        (N, 5), labels (N,), masks (N, H', W') bool, in the input's coordinates (H', W' = the
        model's input size)."""
        img = img.detach().cpu().float()
        img_shape = np.asarray(img_shape[:2] if img_shape is not None else img.shape[-2:],
                               dtype=np.int64)
        if self.input_shape is not None:
            height, width = img.shape[-2:]
            if height > self.input_shape[0] or width > self.input_shape[1]:
                raise ValueError(f'image of {height}x{width} does not fit the model\'s static input '
                                 f'{self.input_shape[0]}x{self.input_shape[1]}: export with '
                                 f'--dynamic-export or a larger --shape')
            img = F.pad(img, (0, self.input_shape[1] - width, 0, self.input_shape[0] - height))
        return self.session.run(None, {'input': img.numpy(), 'img_shape': img_shape})

    def __call__(self, img, img_meta):
        img_h, img_w = img_meta['img_shape'][:2]
        ori_h, ori_w = img_meta['ori_shape'][:2]
        dets, labels, masks = self.run(img, (img_h, img_w))
        dets = dets.copy()
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
