"""Export a Mask R-CNN to ONNX (standard operators only) and check it against PyTorch.

The export uses torch's TorchScript-based exporter (``dynamo=False``), not its default
``torch.export``-based one: mmcv's NMS and RoIAlign kernels are pybind functions rather than
dispatcher ops, so ``torch.export`` cannot trace them, while the tracer takes the ONNX symbolics
of the autograd Functions wrapping them (``onnx_ops.py``) and records the data-dependent sizes
after each NMS as they come.
"""
import json
import warnings

import numpy as np
import torch
from mmcv.parallel import collate
from mmdet.datasets.pipelines import Compose

from .mask_rcnn import INPUT_NAMES, OUTPUT_NAMES, MaskRCNNForExport

__all__ = ['ExportError', 'MIN_OPSET', 'MAX_OPSET', 'pipeline_size_divisor', 'default_input_shape', 'prepare_input',
           'export_mask_rcnn', 'non_standard_ops', 'flat_detections', 'pytorch_detections',
           'compare_detections']

# GridSample (DCNv3) and RoiAlign's coordinate_transformation_mode need 16; the TorchScript-based
# exporter writes up to 20.
MIN_OPSET, MAX_OPSET = 16, 20
STANDARD_DOMAINS = ('', 'ai.onnx')


class ExportError(RuntimeError):
    """The export cannot be written here: the DCNv3 extension is missing, or the graph would hold
    an operator outside the standard ONNX domain."""


def _test_transforms(cfg):
    """The test pipeline's steps, with MultiScaleFlipAug's inner transforms flattened in."""
    for step in cfg.data.test.pipeline:
        yield step
        yield from step.get('transforms', [])


def pipeline_size_divisor(cfg):
    """The ``size_divisor`` of the test pipeline's Pad (1 when it pads to a fixed size or not at all)."""
    for step in _test_transforms(cfg):
        if step['type'] == 'Pad' and step.get('size_divisor'):
            return int(step['size_divisor'])
    return 1


def default_input_shape(cfg):
    """(H, W) for an export, rounded up to the size divisor: the test scale's short side by its
    long side, e.g. (800, 1344) for img_scale=(1333, 800); with ``Resize(keep_ratio=False)``,
    which resizes every image to (w, h) = img_scale, that size, portrait or not."""
    scale = next((step['img_scale'] for step in cfg.data.test.pipeline if 'img_scale' in step), None)
    if scale is None:
        raise ValueError('the test pipeline has no img_scale: give the input shape explicitly')
    if isinstance(scale, list):
        scale = scale[0]
    divisor = pipeline_size_divisor(cfg)
    keeps_ratio = all(step.get('keep_ratio', True) for step in _test_transforms(cfg)
                      if step['type'] == 'Resize')
    shape = sorted(int(side) for side in scale) if keeps_ratio else (int(scale[1]), int(scale[0]))
    return tuple(-(-side // divisor) * divisor for side in shape)


def prepare_input(cfg, image, shape):
    """Run ``image`` (a path, or a BGR uint8 array as ``mmcv.imread`` gives it) through the config's
    test pipeline and zero-pad it to ``shape`` (H, W), as the pipeline's own Pad does.

    Returns the (1, 3, H, W) tensor and its image meta in the coordinates of the tensor itself:
    img_shape is the image inside the padding (what boxes are clipped to), pad_shape and
    ori_shape are (H, W) (the canvas masks are pasted on), scale_factor is 1.
    """
    pipeline = [dict(step) for step in cfg.data.test.pipeline]
    if isinstance(image, np.ndarray):
        # The loader's options carry over (to_float32); one that reads RGB gets the array flipped
        # (LoadImageFromWebcam takes it as it is).
        loader = pipeline[0]
        if loader.get('channel_order', 'bgr') == 'rgb':
            image = np.ascontiguousarray(image[..., ::-1])
        pipeline[0] = dict(loader, type='LoadImageFromWebcam')
        data = dict(img=image)
    else:
        data = dict(img_info=dict(filename=image), img_prefix=None)
    # MultiScaleFlipAug yields one (1, 3, h, w) tensor per test scale; the export uses one scale.
    batch = collate([Compose(pipeline)(data)], samples_per_gpu=1)
    img = batch['img'][0]
    img_shape = tuple(batch['img_metas'][0].data[0][0]['img_shape'])
    height, width = img.shape[-2:]
    if height > shape[0] or width > shape[1]:
        raise ValueError(f'the test pipeline makes this image {height}x{width}, larger than the '
                         f'export shape {shape[0]}x{shape[1]}')
    img = torch.nn.functional.pad(img, (0, shape[1] - width, 0, shape[0] - height))
    size = (shape[0], shape[1], 3)
    meta = dict(img_shape=img_shape, pad_shape=size, ori_shape=size, batch_input_shape=tuple(shape),
                scale_factor=np.ones(4, dtype=np.float32), flip=False, flip_direction=None)
    return img.float().contiguous(), meta


def export_mask_rcnn(detector, img, output_file, opset_version=17, dynamic=False, img_shape=None,
                     class_names=None):
    """Trace ``detector`` on ``img`` (whose image fills ``img_shape``, (h, w), of it; default all)
    and write ``output_file``; returns the loaded ONNX model. Its metadata holds the class count
    (``num_classes``), which :class:`ONNXRuntimeMaskRCNN` checks against the dataset's, the
    mask threshold (``mask_thr_binary``) it pastes the masks with, the test-time settings traced
    into the graph (``test_cfg``, the RPN's and the box and mask heads' as JSON: {"rpn": ...,
    "rcnn": ...}), which tools/deployment/test.py checks the config's against, and, when given
    (the checkpoint's ``meta['CLASSES']``), the class names in label order (``classes``, a JSON
    list), which tools/deployment/test.py checks the dataset's order against.

    Raises ValueError for an unsupported opset, and ExportError when the DCNv3 extension is
    missing or the graph would need an operator outside the standard ONNX domain.
    """
    import onnx

    from ops_dcnv3 import HAS_COMPILED_OP
    from ops_dcnv3.modules import DCNv3_pytorch
    from ops_dcnv3.onnx import register_dcnv3_onnx_symbolic
    if not MIN_OPSET <= opset_version <= MAX_OPSET:
        raise ValueError(f'unsupported opset {opset_version}: the export needs an opset from '
                         f'{MIN_OPSET} to {MAX_OPSET}')
    if not HAS_COMPILED_OP:
        raise ExportError('ONNX export translates the compiled DCNv3 op; build ops_dcnv3._C '
                           '(python setup.py build_ext --inplace) first')
    if any(isinstance(module, DCNv3_pytorch) for module in detector.modules()):
        # Traced op by op, its sampling becomes a GridSample ONNX Runtime has no kernel for.
        raise ExportError("ONNX export translates the compiled DCNv3 op, and this model's "
                          "backbone has core_op='DCNv3_pytorch': export it with core_op='DCNv3' "
                          "(the same weights load into either)")
    register_dcnv3_onnx_symbolic(MIN_OPSET)
    dynamic_axes = {name: {0: 'num_dets'} for name in OUTPUT_NAMES}
    if dynamic:
        dynamic_axes['input'] = {2: 'height', 3: 'width'}
    wrapper = MaskRCNNForExport(detector).eval()
    img_shape = torch.tensor(img_shape[:2] if img_shape is not None else img.shape[-2:],
                             dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns wherever a tensor becomes a Python bool; in this graph those are shape
        # asserts and empty-input guards of mmcv/mmdet that hold for every input.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (img, img_shape), output_file, dynamo=False,
                          opset_version=opset_version, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    model = onnx.load(output_file)
    roi_head = detector.roi_head
    test_cfg = dict(rpn=detector.rpn_head.test_cfg, rcnn=roi_head.test_cfg)
    metadata = {'num_classes': str(roi_head.bbox_head.num_classes),
                'mask_thr_binary': repr(float(roi_head.test_cfg.mask_thr_binary)),
                'test_cfg': json.dumps(test_cfg)}
    if class_names is not None:
        metadata['classes'] = json.dumps(list(class_names))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, output_file)
    onnx.checker.check_model(model)
    others = non_standard_ops(model)
    if others:
        raise ExportError(f'{output_file} holds operators outside the standard ONNX domain: {others}')
    return model


def non_standard_ops(model):
    """Sorted ``domain::op`` names of the nodes outside the standard ONNX domain, functions included."""
    nodes = list(model.graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    return sorted({f'{node.domain}::{node.op_type}' for node in nodes
                   if node.domain not in STANDARD_DOMAINS})


def flat_detections(bbox_results, segm_results, image_shape):
    """mmdet's per-class results of one image as ONNX-style arrays: dets (N, 5) float32, labels
    (N,) int64, masks (N, H, W) bool (H, W = ``image_shape`` when there are none), sorted by
    descending score."""
    labels = np.concatenate([np.full(len(boxes), label, dtype=np.int64)
                             for label, boxes in enumerate(bbox_results)])
    dets = np.concatenate(bbox_results).astype(np.float32)
    masks = [mask for class_masks in segm_results for mask in class_masks]
    masks = np.stack(masks).astype(bool) if masks else np.zeros((0, *image_shape), dtype=bool)
    order = np.argsort(-dets[:, 4], kind='stable')
    return dets[order], labels[order], masks[order]


def pytorch_detections(detector, img, meta):
    """mmdet's own inference (``simple_test``, no rescaling) as :func:`flat_detections` gives it."""
    with torch.no_grad():
        bbox_results, segm_results = detector.simple_test(img, [meta], rescale=False)[0]
    return flat_detections(bbox_results, segm_results, tuple(img.shape[-2:]))


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def compare_detections(reference, candidate, box_tolerance=1.0, min_mask_iou=0.98,
                       score_tolerance=1e-3):
    """Problems (a list of sentences, empty when they agree) between two sets of detections,
    each (dets, labels, masks) as :func:`pytorch_detections` returns them.

    Every reference detection must have a candidate of the same class whose box corners are
    within ``box_tolerance`` pixels and score within ``score_tolerance``, with mask IoU of at
    least ``min_mask_iou``, and the other way round. A detection may be missing from the other
    side only if its score lies within ``score_tolerance`` of the lowest score kept there: which
    of two near-equal scores makes the ``max_per_img`` cut is decided by rounding.
    """
    problems = []
    for (dets_a, labels_a, masks_a), (dets_b, labels_b, masks_b), name_a, name_b in (
            (reference, candidate, 'reference', 'candidate'),
            (candidate, reference, 'candidate', 'reference')):
        lowest_b = dets_b[:, 4].min(initial=np.inf)  # where the other side's kept list ends
        for index, (det, label) in enumerate(zip(dets_a, labels_a)):
            same_class = np.nonzero(labels_b == label)[0]
            if len(same_class):
                distance = np.abs(dets_b[same_class, :4] - det[:4]).max(axis=1)
                best = same_class[np.argmin(distance)]
                if distance.min() <= box_tolerance and abs(dets_b[best, 4] - det[4]) <= score_tolerance:
                    if name_a == 'reference':  # check each pair once
                        iou = _mask_iou(masks_a[index], masks_b[best])
                        if iou < min_mask_iou:
                            problems.append(f'{name_a} detection {index} (class {label}, box '
                                            f'{np.round(det[:4], 1).tolist()}): mask IoU {iou:.3f} '
                                            f'< {min_mask_iou}')
                    continue
            if abs(det[4] - lowest_b) <= score_tolerance:
                continue
            problems.append(f'{name_a} detection {index} (class {label}, score {det[4]:.4f}, box '
                            f'{np.round(det[:4], 1).tolist()}) has no match in the {name_b}')
    return problems
