"""Export a Mask R-CNN to ONNX in standard operators only (mmdet 2.x command line).

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --output-file model.onnx \\
        [--shape H W] [--dynamic-export] [--opset-version 17] [--input-img IMG] [--verify]

The model takes ``input``, a (1, 3, H, W) float32 image resized, normalised and padded as the
config's test pipeline does, and ``img_shape``, (2,) int64, the height and width of the image
inside the padding; it gives ``dets`` (N, 5) and ``labels`` (N,), in the input's coordinates, and
``mask_probs`` (N, 28, 28), which ``mmdet_custom.deployment.paste_masks`` pastes into the boxes
as masks (the file records the threshold). DCNv3, NMS and RoIAlign are written in ONNX's own operators, so
any ONNX runtime runs it. ``--verify`` runs ONNX Runtime and PyTorch on the same image and
fails if their detections differ.
"""
import argparse
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402  (repository on sys.path, quiet imports)


import mmcv  # noqa: E402

from mmdet_custom.apis import CheckpointError, load_detector_checkpoint  # noqa: E402
from _usage import ConfigOptions, build_model, check_output_path, one_line_errors  # noqa: E402
from tools.test import UsageError, load_config  # noqa: E402

PROG = 'tools/deployment/pytorch2onnx.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description='Export a Mask R-CNN to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--output-file', default='tmp.onnx', help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs='+',
                        help='input height and width (one value: square); default: the test '
                        'scale, e.g. 800 1344 for img_scale=(1333, 800)')
    parser.add_argument('--dynamic-export', action='store_true',
                        help='make the input height and width dynamic')
    parser.add_argument('--opset-version', type=int, default=17, help='ONNX opset (16 to 20)')
    parser.add_argument('--input-img', help='image to trace and verify with (default: a generated '
                        'synthetic-shapes image of the input size)')
    parser.add_argument('--verify', action='store_true',
                        help='compare ONNX Runtime\'s detections with PyTorch\'s on the input image')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override config entries, e.g. model.test_cfg.rcnn.max_per_img=50 '
                        '(test-time settings are fixed into the file: evaluation refuses others)')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes one or two values: H W (or one for a square)')
    return args


def input_shape(args, cfg):
    from mmdet_custom.deployment import default_input_shape, pipeline_size_divisor
    if args.shape is None:
        try:
            return default_input_shape(cfg)
        except ValueError as error:
            raise UsageError(f'{error} (--shape H W)') from None
    shape = tuple(args.shape) * 2 if len(args.shape) == 1 else tuple(args.shape)
    divisor = pipeline_size_divisor(cfg)
    if min(shape) < 1 or shape[0] % divisor or shape[1] % divisor:
        raise UsageError(f'--shape {shape[0]} {shape[1]}: height and width must be positive '
                         f'multiples of the model\'s size divisor {divisor} (the test pipeline '
                         f'pads to it)')
    return shape


def input_image(path, shape):
    """The image at ``path`` (BGR, as mmcv reads files), or a generated one of ``shape``."""
    if path is None:
        from mmdet_custom.datasets.synthetic_shapes import render_image
        image, _ = render_image(seed=0, split='val', index=0, size=shape)
        return image[:, :, ::-1].copy()  # RGB -> BGR
    if not osp.isfile(path):
        raise UsageError(f'input image not found: {path}')
    image = mmcv.imread(path)
    if image is None:
        raise UsageError(f'not an image mmcv can read: {path}')
    return image


def output_path(path, inputs):
    """``path`` checked writable (its folder created) before anything is built, and none of the
    ``inputs`` (the checkpoint, the config and the input image, which it would replace)."""
    if not path or osp.isdir(path):
        raise UsageError(f'--output-file {path!r} is {"a folder" if path else "empty"}: name the '
                         f'.onnx file to write')
    for given in inputs:
        if osp.exists(path) and osp.exists(given) and osp.samefile(path, given):
            raise UsageError(f'--output-file {path} is the {given} given to export: name a new '
                             f'.onnx file')
    check_output_path(path, '--output-file')
    try:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    except OSError as error:
        raise UsageError(f'--output-file {path}: cannot create its folder ({error.strerror})') from None
    return path


def verify(detector, onnx_file, img, meta, num_classes):
    from mmdet_custom.deployment import ONNXRuntimeMaskRCNN, compare_detections, pytorch_detections
    reference = pytorch_detections(detector, img, meta)
    candidate = ONNXRuntimeMaskRCNN(onnx_file, num_classes).run(img, meta['img_shape'])
    problems = compare_detections(reference, candidate)
    if problems:
        shown = '; '.join(problems[:5]) + (f'; and {len(problems) - 5} more' if len(problems) > 5 else '')
        raise UsageError(f'ONNX Runtime and PyTorch disagree on {onnx_file}: {shown}')
    counts = (f'the same {len(reference[0])} detections' if len(reference[0]) == len(candidate[0])
              else f'{len(reference[0])} and {len(candidate[0])} detections, those beyond the '
              'shorter list within 1e-3 of its lowest score')
    print(f'verified: ONNX Runtime and PyTorch give {counts} (boxes within 1 px, scores within '
          '1e-3, same labels, mask IoU >= 0.98)')


def run(args):
    from mmdet_custom.deployment import (MAX_OPSET, MIN_OPSET, ExportError, check_exportable,
                                         export_mask_rcnn, prepare_input)
    if not MIN_OPSET <= args.opset_version <= MAX_OPSET:
        raise UsageError(f'unsupported --opset-version {args.opset_version}: the export needs '
                         f'opset {MIN_OPSET} to {MAX_OPSET} (GridSample and RoiAlign\'s '
                         'coordinate_transformation_mode need 16)')
    output_file = output_path(args.output_file,
                              [args.checkpoint, args.config] + [args.input_img] * bool(args.input_img))
    cfg = load_config(args.config, args.cfg_options)
    shape = input_shape(args, cfg)
    image = input_image(args.input_img, shape)
    detector = build_model(cfg, args.config)
    try:
        check_exportable(detector)  # before the weights load: another detector's would not fit
    except NotImplementedError as error:
        raise UsageError(f'cannot export {args.config}: {error}') from None
    checkpoint = load_detector_checkpoint(detector, args.checkpoint)
    detector.eval()
    num_classes = detector.roi_head.bbox_head.num_classes
    try:
        img, meta = prepare_input(cfg, image, shape)
    except ValueError as error:
        raise UsageError(f'{error}; give a larger --shape') from None

    start = time.perf_counter()
    try:
        # The class names go into the file, so that evaluation can refuse another order.
        export_mask_rcnn(detector, img, output_file, args.opset_version, args.dynamic_export,
                         img_shape=meta['img_shape'],
                         class_names=(checkpoint.get('meta') or {}).get('CLASSES'))
    except NotImplementedError as error:
        raise UsageError(f'cannot export {args.config}: {error}') from None
    except ExportError as error:  # the DCNv3 extension missing, or an operator outside ONNX
        raise UsageError(str(error)) from None
    seconds = time.perf_counter() - start
    size_mb = osp.getsize(output_file) / 2 ** 20
    kind = 'dynamic' if args.dynamic_export else 'static'
    print(f'exported {output_file} ({size_mb:.1f} MiB, input 1x3x{shape[0]}x{shape[1]} '
          f'{kind}, opset {args.opset_version}, {num_classes} classes) '
          f'in {seconds:.1f} s')
    if args.verify:
        verify(detector, output_file, img, meta, num_classes)


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    with one_line_errors(PROG, CheckpointError):
        run(args)


if __name__ == '__main__':
    main()
