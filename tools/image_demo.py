"""Run a detector on one image and save the drawing (boxes, masks, class names and scores).

    python tools/image_demo.py IMG CONFIG CHECKPOINT --out-file out.png [--device cpu]
"""
import argparse
import os.path as osp

import _bootstrap  # noqa: F401  (first: repository on sys.path, quiet imports)

import mmcv  # noqa: E402
import torch  # noqa: E402
from mmdet.apis import inference_detector  # noqa: E402
from mmdet.core import get_classes  # noqa: E402
from mmdet.models import build_detector  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from mmdet_custom.apis import CheckpointError, load_detector_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Detect objects in one image and draw them')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default='demo_out/result.png', help='drawing to write')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu',
                        help='device for inference, e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3, help='draw detections above this score')
    return parser.parse_args(argv)


def build_for_inference(config_path, checkpoint_path, device):
    cfg = mmcv.Config.fromfile(config_path)
    # The checkpoint supplies every weight: no pretrained downloads, no training settings.
    cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg = None
    model = build_detector(cfg.model, test_cfg=cfg.get('test_cfg'))
    checkpoint = load_detector_checkpoint(model, checkpoint_path)
    model.CLASSES = checkpoint.get('meta', {}).get('CLASSES')
    if model.CLASSES is None:  # an old checkpoint without class names
        model.CLASSES = get_classes('coco')
    model.cfg = cfg  # inference_detector builds its test pipeline from it
    return model.to(device).eval()


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.img, 'image'), (args.config, 'config file')):
        if not osp.isfile(path):
            raise SystemExit(f'tools/image_demo.py: error: {what} not found: {path}')
    try:
        model = build_for_inference(args.config, args.checkpoint, args.device)
    except CheckpointError as error:
        raise SystemExit(f'tools/image_demo.py: error: {error}') from None
    result = inference_detector(model, args.img)
    mmcv.mkdir_or_exist(osp.dirname(osp.abspath(args.out_file)))
    model.show_result(args.img, result, score_thr=args.score_thr, out_file=args.out_file)
    boxes = result[0] if isinstance(result, tuple) else result
    kept = sum(int((class_boxes[:, 4] >= args.score_thr).sum()) for class_boxes in boxes)
    print(f'{kept} detections with score >= {args.score_thr} drawn to {args.out_file}')


if __name__ == '__main__':
    main()
