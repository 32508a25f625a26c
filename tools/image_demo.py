"""Run a detector on one image and draw what it found, legibly: the image enlarged, each instance
filled in a colour of its own, labels that do not overlap, and, when the image belongs to the
config's test set, its ground truth beside the prediction.

    python tools/image_demo.py IMG CONFIG CHECKPOINT --out-file out.png [--device cpu]
"""
import argparse
import colorsys
import json
import math
import os.path as osp
import types
import warnings

import _bootstrap  # (first: repository on sys.path, quiet imports)

import cv2  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmdet.apis import inference_detector  # noqa: E402
from mmdet.core import get_classes  # noqa: E402
from mmdet.datasets import replace_ImageToTensor  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from mmdet_custom.apis import CheckpointError, load_detector_checkpoint  # noqa: E402
from _usage import (UsageError, build_model, check_not_over_images, check_num_classes,  # noqa: E402
                    check_output_path, one_line_errors, predicted_class_count, read_config,
                    registered_dataset)

# Small images are enlarged (by a whole factor) until their longer side reaches this many pixels.
MIN_LONG_SIDE = 768
HEADER_HEIGHT = 40
PANEL_GAP = 12
FILL_ALPHA = 0.45
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.55
LABEL_PADDING = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Detect objects in one image and draw them')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default='demo_out/result.png', help='drawing to write')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu',
                        help='device for inference, e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.5, help='draw detections above this score')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr must lie in [0, 1], got {args.score_thr}')
    if not cv2.haveImageWriter(args.out_file):
        parser.error(f'--out-file: OpenCV cannot write {args.out_file!r}; name an image file such '
                     'as result.png or result.jpg')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device {args.device!r} is not a device: use cpu, cuda or cuda:N')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f'--device {args.device}: mmdet runs this detector on cpu or cuda only')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA GPU is available here (use --device cpu)')
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f'--device {args.device}: there are {torch.cuda.device_count()} CUDA GPUs here')
    return args


def classes_of_the_test_set(cfg):
    """The class names of the config's (first) test set: its ``classes``, else its type's; None
    where neither names any (mmdet's CustomDataset without ``classes``)."""
    dataset_cfg = cfg.data.test[0] if isinstance(cfg.data.test, (list, tuple)) else cfg.data.test
    dataset_type = registered_dataset(dataset_cfg)
    if dataset_type is None:
        return get_classes('coco')  # (the config names a type that is not registered)
    classes = dataset_type.get_classes(dataset_cfg.get('classes'))
    return None if classes is None else tuple(classes)


def build_for_inference(cfg, checkpoint_path, device):
    # The checkpoint supplies every weight: no pretrained downloads, no training settings.
    cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg = None
    # inference_detector batches through DefaultFormatBundle; converting here, silently, spares
    # the user mmdet's advice to edit the config.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        cfg.data.test.pipeline = replace_ImageToTensor(cfg.data.test.pipeline)
    model = build_model(cfg, cfg.filename)
    checkpoint = load_detector_checkpoint(model, checkpoint_path)
    model.CLASSES = checkpoint.get('meta', {}).get('CLASSES')
    if model.CLASSES is None:  # a checkpoint without class names: those of the config's test set
        model.CLASSES = classes_of_the_test_set(cfg)
        if model.CLASSES is None:
            model.CLASSES = tuple(f'class {label}' for label in range(predicted_class_count(model)))
            print(f'note: neither {checkpoint_path} nor data.test names the classes; numbering '
                  f'them (set data.test.classes to name them)')
        else:
            check_num_classes(model, types.SimpleNamespace(CLASSES=model.CLASSES), 'data.test',
                              checkpoint_path)
            print(f'note: {checkpoint_path} records no class names; using data.test\'s: '
                  f'{", ".join(model.CLASSES)}')
    model.cfg = cfg  # inference_detector builds its test pipeline from it
    return model.to(device).eval()


def predicted_instances(result, class_names, score_thr):
    """(label text, score, box, mask or None) per detection above ``score_thr``, best first."""
    boxes, masks = result if isinstance(result, tuple) else (result, None)
    instances = []
    for label, class_boxes in enumerate(boxes):
        for index, (*box, score) in enumerate(class_boxes):
            if score >= score_thr:
                mask = masks[label][index] if masks is not None else None
                instances.append((f'{class_names[label]} {score:.2f}', float(score),
                                  np.array(box), mask))
    return sorted(instances, key=lambda instance: -instance[1])


def ground_truth_instances(cfg, image_path):
    """(class name, 1.0, box, mask or None) per annotation of ``image_path`` in the config's test
    set, or None when the image is not part of it."""
    test_set = cfg.data.test
    ann_file, img_prefix = test_set.get('ann_file'), test_set.get('img_prefix')
    if not ann_file or not img_prefix or not osp.isfile(ann_file):
        return None
    if osp.dirname(osp.abspath(image_path)) != osp.abspath(img_prefix):
        return None
    with open(ann_file) as f:
        coco = json.load(f)
    image_info = next((image for image in coco['images']
                       if image['file_name'] == osp.basename(image_path)), None)
    if image_info is None:
        return None
    names = {category['id']: category['name'] for category in coco['categories']}
    height, width = image_info['height'], image_info['width']
    instances = []
    for ann in coco['annotations']:
        if ann['image_id'] != image_info['id']:
            continue
        x, y, w, h = ann['bbox']
        instances.append((names[ann['category_id']], 1.0, np.array([x, y, x + w, y + h]),
                          annotation_mask(ann.get('segmentation'), height, width)))
    return instances


def annotation_mask(segmentation, height, width):
    """A COCO annotation's mask as a bool array, or None for a box-only annotation.

    COCO writes polygons for single objects and run-length encodings for crowds ("iscrowd": 1,
    as in val2017): uncompressed (counts a list) or compressed (counts a string).
    """
    if not segmentation:
        return None
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get('counts'), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def instance_colours(count):
    """Distinct, saturated BGR colours: hues a golden-ratio step apart."""
    colours = []
    for index in range(count):
        r, g, b = colorsys.hsv_to_rgb((0.07 + index * 0.618034) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(g * 255), int(r * 255)))
    return colours


def _overlaps(rect, others):
    x0, y0, x1, y1 = rect
    return any(x0 < ox1 and ox0 < x1 and y0 < oy1 and oy0 < y1 for ox0, oy0, ox1, oy1 in others)


def place_label(box, size, placed, canvas_shape):
    """Top-left corner for a label of ``size`` (w, h) near ``box``, clear of ``placed`` labels.

    Tries above and inside the box's top-left corner, below it and the right-hand corners, then
    slides down from above the box until the label is clear (or the image ends).
    """
    width, height = size
    canvas_height, canvas_width = canvas_shape[:2]
    x0, y0, x1, y1 = box
    candidates = [(x0, y0 - height), (x0, y0), (x0, y1), (x1 - width, y0 - height), (x1 - width, y1)]
    candidates += [(x0, y0 - height + step) for step in range(height, canvas_height, max(height // 2, 1))]
    for left, top in candidates:
        left = int(min(max(left, 0), canvas_width - width))
        top = int(min(max(top, 0), canvas_height - height))
        rect = (left, top, left + width, top + height)
        if not _overlaps(rect, placed):
            return rect
    left = int(min(max(x0, 0), canvas_width - width))
    top = int(min(max(y0, 0), canvas_height - height))
    return (left, top, left + width, top + height)  # crowded: overlap rather than drop it


def draw_panel(image, instances, scale):
    """The RGB ``image`` enlarged ``scale`` times with instances filled, outlined and labelled."""
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    colours = instance_colours(len(instances))
    # Fill the largest first, so a small instance on top of a large one stays visible.
    order = sorted(range(len(instances)), key=lambda i: -_area(instances[i]))
    for index in order:
        _, _, box, mask = instances[index]
        colour = np.array(colours[index][::-1], np.float32)  # canvas is RGB
        if mask is not None:
            # Interpolated and thresholded: smooth outlines rather than enlarged pixel steps.
            big = cv2.resize(mask.astype(np.float32), None, fx=scale, fy=scale,
                             interpolation=cv2.INTER_LINEAR) > 0.5
            canvas[big] = (canvas[big] * (1 - FILL_ALPHA) + colour * FILL_ALPHA).astype(np.uint8)
            contours, _ = cv2.findContours(big.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, colour.tolist(), 2, cv2.LINE_AA)
        x0, y0, x1, y1 = (np.asarray(box) * scale).round().astype(int)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour.tolist(), 1, cv2.LINE_AA)
    placed = []
    for index, (text, _, box, _) in enumerate(instances):  # best first: they get the best spots
        (text_width, text_height), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
        size = (text_width + 2 * LABEL_PADDING, text_height + baseline + 2 * LABEL_PADDING)
        rect = place_label(np.asarray(box) * scale, size, placed, canvas.shape)
        placed.append(rect)
        colour = colours[index][::-1]
        cv2.rectangle(canvas, rect[:2], (rect[2] - 1, rect[3] - 1), colour, -1)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(canvas, text, (rect[0] + LABEL_PADDING, rect[3] - LABEL_PADDING - baseline),
                    FONT, FONT_SCALE, ink, 1, cv2.LINE_AA)
    return canvas


def _area(instance):
    _, _, box, mask = instance
    if mask is not None:
        return int(mask.sum())
    return float((box[2] - box[0]) * (box[3] - box[1]))


def compose(panels):
    """Panels (title, RGB image) side by side under a white header with their titles."""
    height = max(image.shape[0] for _, image in panels)
    width = sum(image.shape[1] for _, image in panels) + PANEL_GAP * (len(panels) - 1)
    sheet = np.full((HEADER_HEIGHT + height, width, 3), 255, np.uint8)
    left = 0
    for title, image in panels:
        sheet[HEADER_HEIGHT:HEADER_HEIGHT + image.shape[0], left:left + image.shape[1]] = image
        cv2.putText(sheet, title, (left + 6, HEADER_HEIGHT - 13), FONT, 0.7, (20, 20, 20), 1,
                    cv2.LINE_AA)
        left += image.shape[1] + PANEL_GAP
    return sheet


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    with one_line_errors('tools/image_demo.py', CheckpointError):
        check_output_path(args.out_file, '--out-file')
        if not osp.isfile(args.img):
            raise UsageError(f'image not found: {args.img}')
        image = mmcv.imread(args.img)
        if image is None:
            raise UsageError(f'cannot read {args.img}: not an image file OpenCV decodes')
        image = mmcv.bgr2rgb(image)
        if osp.isfile(args.out_file) and osp.samefile(args.out_file, args.img):
            raise UsageError(f'--out-file {args.out_file} is the input image, which the drawing '
                             f'would replace: choose another file')
        cfg = read_config(args.config, required=('model', 'data.test'))
        check_not_over_images(cfg, args.out_file, '--out-file')
        model = build_for_inference(cfg, args.checkpoint, args.device)
    result = inference_detector(model, args.img)
    predicted = predicted_instances(result, model.CLASSES, args.score_thr)
    truth = ground_truth_instances(cfg, args.img)

    scale = max(1, math.ceil(MIN_LONG_SIDE / max(image.shape[:2])))
    panels = []
    if truth is not None:
        panels.append((f'ground truth: {len(truth)} instances', draw_panel(image, truth, scale)))
    panels.append((f'prediction: {len(predicted)} with score >= {args.score_thr:g}',
                   draw_panel(image, predicted, scale)))
    sheet = compose(panels)
    mmcv.mkdir_or_exist(osp.dirname(osp.abspath(args.out_file)))
    if not cv2.imwrite(args.out_file, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f'tools/image_demo.py: error: cannot write {args.out_file}')
    beside = ' beside the ground truth' if truth is not None else ''
    print(f'{len(predicted)} detections with score >= {args.score_thr:g} drawn{beside} '
          f'({scale}x enlarged, {sheet.shape[1]}x{sheet.shape[0]} pixels) to {args.out_file}')


if __name__ == '__main__':
    main()
