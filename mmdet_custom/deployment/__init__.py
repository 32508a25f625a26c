"""Deployment: Mask R-CNN export to ONNX in standard operators, and ONNX Runtime inference.

Not imported by ``import mmdet_custom``: only the deployment tools need it (and onnx/onnxruntime).
"""
from .export import (MAX_OPSET, ExportError, MIN_OPSET, compare_detections, default_input_shape,
                     export_mask_rcnn, flat_detections, non_standard_ops, prepare_input,
                     pytorch_detections, pipeline_size_divisor)
from .mask_rcnn import INPUT_NAMES, OUTPUT_NAMES, MaskRCNNForExport, check_exportable, paste_masks
from .ort_detector import ONNXRuntimeMaskRCNN

__all__ = [
    'ExportError', 'MAX_OPSET', 'MIN_OPSET', 'compare_detections', 'default_input_shape', 'export_mask_rcnn',
    'flat_detections', 'non_standard_ops', 'prepare_input', 'pytorch_detections', 'pipeline_size_divisor',
    'INPUT_NAMES', 'OUTPUT_NAMES', 'check_exportable',
    'MaskRCNNForExport', 'ONNXRuntimeMaskRCNN', 'paste_masks'
]
