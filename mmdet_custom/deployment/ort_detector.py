"""Run an exported Mask R-CNN in ONNX Runtime and return mmdet's results, for evaluation."""
import json
import os.path as osp

import numpy as np
import torch.nn.functional as F
from mmdet.core import bbox2result

from .mask_rcnn import INPUT_NAMES, OUTPUT_NAMES, paste_masks

__all__ = ['ONNXRuntimeMaskRCNN']


class ONNXRuntimeMaskRCNN:
    """An exported Mask R-CNN in an ONNX Runtime session (CPU).

    ``run(img, img_shape)`` returns dets, labels and masks in the input's coordinates; calling
    the object with a test-pipeline image and its meta returns mmdet's per-class
    ``(bbox_results, segm_results)`` in the original image's coordinates, as
    ``detector.simple_test(..., rescale=True)`` does: the masks pasted onto the original image
    with the boxes scaled back, as mmdet pastes them. ``num_classes`` is the dataset's (or what
    ``classes_of`` names, for the message); a model exported for another count is refused.
    ``class_names`` are the names the file records in label order, ``test_cfg`` the test-time
    settings it was exported with ({'rpn': ..., 'rcnn': ...}); None in files exported without.
    """

    def __init__(self, onnx_file: str, num_classes: int, num_threads: int = 0,
                 classes_of: str = 'the dataset'):
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
        metadata = self.session.get_modelmeta().custom_metadata_map
        exported_classes = metadata.get('num_classes')
        if exported_classes is not None and int(exported_classes) != num_classes:
            raise ValueError(f'{onnx_file} predicts {exported_classes} classes, {classes_of} has '
                             f'{num_classes}')
        if 'mask_thr_binary' not in metadata:
            raise ValueError(f'{onnx_file} does not say its mask threshold (mask_thr_binary in its '
                             f'metadata): export it again with tools/deployment/pytorch2onnx.py')
        self.mask_thr_binary = float(metadata['mask_thr_binary'])
        self.class_names = tuple(json.loads(metadata['classes'])) if 'classes' in metadata else None
        self.test_cfg = json.loads(metadata['test_cfg']) if 'test_cfg' in metadata else None
        height, width = inputs[0].shape[2:]
        # A static export takes one size only; smaller images are zero-padded up to it.
        self.input_shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.num_classes = num_classes

    def _infer(self, img, img_shape=None):
        """The session's outputs (dets, labels, mask_probs) and the (H, W) of the input it ran on."""
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
        outputs = self.session.run(None, {'input': img.numpy(), 'img_shape': img_shape})
        return outputs, tuple(img.shape[-2:])

    def run(self, img, img_shape=None):
        """(1, 3, H, W) float32, and (h, w) of the image inside it (default: all of it) -> dets
        (N, 5), labels (N,), masks (N, H', W') bool, in the input's coordinates (H', W' = the
        model's input size)."""
        (dets, labels, mask_probs), input_shape = self._infer(img, img_shape)
        masks = paste_masks(mask_probs, dets[:, :4], input_shape, self.mask_thr_binary)
        return dets, labels, masks.numpy()

    def __call__(self, img, img_meta):
        (dets, labels, mask_probs), _ = self._infer(img, img_meta['img_shape'][:2])
        dets = dets.copy()
        dets[:, :4] /= np.asarray(img_meta['scale_factor'], dtype=np.float32)
        masks = paste_masks(mask_probs, dets[:, :4], img_meta['ori_shape'][:2], self.mask_thr_binary)
        bbox_results = bbox2result(dets, labels, self.num_classes)
        segm_results = [[] for _ in range(self.num_classes)]
        for mask, label in zip(masks.numpy(), labels):
            segm_results[label].append(mask)
        return bbox_results, segm_results
