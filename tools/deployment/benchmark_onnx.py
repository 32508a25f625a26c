"""Latency of an exported Mask R-CNN in ONNX Runtime beside the PyTorch model it came from (CPU).

    python tools/deployment/benchmark_onnx.py CONFIG CHECKPOINT MODEL.onnx [--repeats 3] [--threads 2]

Both run the same preprocessed image of the model's input size (a generated synthetic-shapes
image unless --input-img is given), one image at a time: PyTorch as mmdet's ``simple_test``
(no rescaling, as the ONNX model), ONNX Runtime as ``session.run``. Prints the median of
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
from _usage import one_line_errors  # noqa: E402
from tools.test import UsageError, build_model, load_config  # noqa: E402

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
    return parser.parse_args(argv)


def run(args):
    from mmdet_custom.deployment import ONNXRuntimeMaskRCNN, prepare_input
    cfg = load_config(args.config, None)
    detector = build_model(cfg, args.config)
    load_detector_checkpoint(detector, args.checkpoint)
    detector.eval()
    if not osp.isfile(args.model):
        raise UsageError(f'model file not found: {args.model}')
    onnx_model = ONNXRuntimeMaskRCNN(args.model, detector.roi_head.bbox_head.num_classes,
                                     num_threads=args.threads)
    shape = onnx_model.input_shape or (tuple(args.shape) if args.shape else None)
    if shape is None:
        raise UsageError(f'{args.model} has a dynamic input size: give --shape H W')
    if args.input_img is None:
        from mmdet_custom.datasets.synthetic_shapes import render_image
        image = render_image(seed=0, split='val', index=0, size=shape)[0][:, :, ::-1].copy()
    else:
        image = args.input_img
    img, meta = prepare_input(cfg, image, shape)
    torch.set_num_threads(args.threads)

    def pytorch():
        with torch.no_grad():
            return detector.simple_test(img, [meta], rescale=False)

    # One warm-up run each (allocations, ONNX Runtime's first-run planning), then turns.
    times_ms = median_ms(dict(pytorch=pytorch, onnxruntime=lambda: onnx_model.run(img)), 'cpu',
                         warmup=1, repeats=args.repeats)
    torch_s, ort_s = times_ms['pytorch'] / 1000, times_ms['onnxruntime'] / 1000
    detections = len(onnx_model.run(img)[0])
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
