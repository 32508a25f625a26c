"""Latency of an exported Mask R-CNN in ONNX Runtime beside the PyTorch model it came from (CPU).

    python tools/deployment/benchmark_onnx.py CONFIG CHECKPOINT MODEL.onnx [--repeats 3] [--threads 2]
        [--input-img IMG] [--shape H W]   (--shape: required for a dynamic export)

Both run the same preprocessed image of the model's input size (a generated synthetic-shapes
image unless --input-img is given), one image at a time: PyTorch as mmdet's ``simple_test``
(no rescaling, as the ONNX model), ONNX Runtime as ``ONNXRuntimeMaskRCNN.run`` (the session,
then the masks pasted on the host, as mmdet pastes them in ``simple_test``). Prints the median of
``--repeats`` timed runs after one warm-up run each (the two take turns), and their ratio.
"""
import argparse
import sys
import os.path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402  (repository on sys.path, quiet imports)

import torch  # noqa: E402
from _timing import median_ms  # noqa: E402

from mmdet_custom.apis import CheckpointError, load_detector_checkpoint  # noqa: E402
from _usage import build_model, one_line_errors  # noqa: E402
from tools.deployment.pytorch2onnx import input_image  # noqa: E402
from tools.deployment.test import open_onnx_model  # noqa: E402
from tools.test import UsageError, load_config  # noqa: E402

PROG = 'tools/deployment/benchmark_onnx.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('model', help='the exported .onnx file')
    parser.add_argument('--input-img', help='image (default: a generated synthetic-shapes image)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs of each (default 3)')
    parser.add_argument('--threads', type=int, default=2, help='threads of both (default 2)')
    parser.add_argument('--shape', type=int, nargs=2, help='input H W of a dynamic model')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error('--repeats and --threads must be at least 1')
    return args


def run(args):
    from mmdet_custom.deployment import check_exportable, prepare_input
    cfg = load_config(args.config, None)
    detector = build_model(cfg, args.config)
    try:
        check_exportable(detector)
    except NotImplementedError as error:
        raise UsageError(f'{args.config} is not a detector the ONNX export writes: {error}') from None
    load_detector_checkpoint(detector, args.checkpoint)
    detector.eval()
    onnx_model = open_onnx_model(args.model, detector.roi_head.bbox_head.num_classes, args.threads,
                                 classes_of='the checkpoint')
    shape = onnx_model.input_shape or (tuple(args.shape) if args.shape else None)
    if shape is None:
        raise UsageError(f'{args.model} has a dynamic input size: give --shape H W')
    if args.shape and tuple(args.shape) != shape:  # a static model runs at its own size only
        raise UsageError(f'{args.model} takes {shape[0]}x{shape[1]} inputs only (a static export): '
                         f'leave out --shape, or export with --dynamic-export')
    try:
        img, meta = prepare_input(cfg, input_image(args.input_img, shape), shape)
    except ValueError as error:
        raise UsageError(f'{error}; give a larger --shape') from None
    torch.set_num_threads(args.threads)

    def pytorch():
        with torch.no_grad():
            return detector.simple_test(img, [meta], rescale=False)

    # One warm-up run each (allocations, ONNX Runtime's first-run planning), then turns.
    def onnxruntime():
        return onnx_model.run(img, meta['img_shape'])

    times_ms = median_ms(dict(pytorch=pytorch, onnxruntime=onnxruntime), 'cpu', warmup=1,
                         repeats=args.repeats)
    torch_s, ort_s = times_ms['pytorch'] / 1000, times_ms['onnxruntime'] / 1000
    detections = len(onnxruntime()[0])
    print(f'input 1x3x{shape[0]}x{shape[1]}, {detections} detections, {args.threads} threads, '
          f'median of {args.repeats}:')
    print(f'  PyTorch (simple_test)  {torch_s * 1000:9.0f} ms')
    print(f'  ONNX Runtime           {ort_s * 1000:9.0f} ms   ({torch_s / ort_s:.2f}x PyTorch\'s speed)')


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    with one_line_errors(PROG, CheckpointError):
        run(args)


if __name__ == '__main__':
    main()
