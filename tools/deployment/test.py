"""Evaluate an exported ONNX model on the config's test set (mmdet 2.x command line).

    python tools/deployment/test.py CONFIG MODEL.onnx --backend onnxruntime --eval bbox segm

The images go through the config's test pipeline as in tools/test.py; a model exported with a
static input size takes smaller images zero-padded up to it. A model exported for another class
count than the dataset's or with its classes in another order, and a pipeline asking for
test-time augmentation (flip, several scales), which an exported model does not run, are refused.
The test-time settings (model.test_cfg: score_thr, NMS, max_per_img, mask_thr_binary) are fixed
at export: a config asking for other ones is refused (export again with them).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402  (repository on sys.path, quiet imports)

import mmcv  # noqa: E402
from mmdet.core import encode_mask_results  # noqa: E402
from mmdet.datasets import build_dataloader  # noqa: E402

from mmdet_custom.apis import load_dataset  # noqa: E402
from _timing import count_at_least  # noqa: E402
from _usage import ConfigOptions, check_class_order, one_line_errors  # noqa: E402
from tools.test import UsageError, check_request, load_config, report_results  # noqa: E402

PROG = 'tools/deployment/test.py'
BACKENDS = ('onnxruntime',)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description='Evaluate an exported model. Its test-time settings '
        '(model.test_cfg: score_thr, NMS, max_per_img, mask_thr_binary) are fixed at export: a '
        'config asking for other ones is refused; export again with them.')
    parser.add_argument('config', help='test config file')
    parser.add_argument('model', help='exported model file (.onnx)')
    parser.add_argument('--backend', default='onnxruntime',
                        help=f'inference backend: {", ".join(BACKENDS)}')
    parser.add_argument('--out', help='write the raw results to this pickle file (.pkl/.pickle)')
    parser.add_argument('--format-only', action='store_true',
                        help='only convert the results to the dataset\'s submission format')
    parser.add_argument('--eval', type=str, nargs='+', help='metrics, e.g. "bbox segm" for COCO')
    parser.add_argument('--work-dir', help='where to save the evaluation metrics as json')
    parser.add_argument('--threads', type=count_at_least(0), default=0,
                        help='ONNX Runtime intra-op threads (0: its default, all cores)')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override config entries, e.g. data.test.ann_file=... '
                        '(model.test_cfg must stay as exported)')
    parser.add_argument('--eval-options', nargs='+', action=ConfigOptions,
                        help='extra arguments of dataset.evaluate(), e.g. classwise=True')
    args = parser.parse_args(argv)
    if not (args.out or args.eval or args.format_only):
        parser.error('say what to do with the results: --out, --eval or --format-only')
    if args.eval and args.format_only:
        parser.error('--eval and --format-only cannot both be given')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must name a .pkl or .pickle file')
    return args


def check_backend(args):
    if args.backend not in BACKENDS:
        raise UsageError(f'unsupported --backend {args.backend!r}: this tool runs '
                         f'{", ".join(BACKENDS)} (TensorRT engines are built from the .onnx file '
                         'with trtexec)')
    if not osp.isfile(args.model):  # before the dataset is read
        raise UsageError(f'model file not found: {args.model}')


def open_onnx_model(path, num_classes, threads, classes_of='the dataset'):
    """An ONNXRuntimeMaskRCNN, or a UsageError saying why ``path`` is not one."""
    from mmdet_custom.deployment import ONNXRuntimeMaskRCNN
    try:
        return ONNXRuntimeMaskRCNN(path, num_classes, num_threads=threads, classes_of=classes_of)
    except (FileNotFoundError, ValueError) as error:  # missing, or not an exported Mask R-CNN
        raise UsageError(str(error)) from None
    except Exception as error:  # onnxruntime raises its own types for unreadable files
        raise UsageError(f'cannot load {path} in ONNX Runtime: {error}') from None


_UNSET = object()


def _first_difference(exported, configured, key):
    """(key, exported value, configured value) of the first entry where two settings differ
    (nested dicts entry by entry, the exported order first), or None."""
    if isinstance(exported, dict) and isinstance(configured, dict):
        names = list(exported) + [name for name in configured if name not in exported]
        for name in names:
            found = _first_difference(exported.get(name, _UNSET), configured.get(name, _UNSET),
                                      f'{key}.{name}')
            if found:
                return found
        return None
    return None if exported == configured else (key, exported, configured)


def _shown(value):
    return 'unset' if value is _UNSET else repr(value)


def check_test_cfg(model, model_path, cfg):
    """Score threshold, NMS, max_per_img and the mask threshold are traced into the graph (or
    its metadata) at export: refuse a config asking for others rather than evaluate the exported
    ones under its name."""
    if model.test_cfg is None:
        print(f'note: {model_path} does not record the test-time settings it was exported with '
              '(an older export): those apply, whatever the config\'s model.test_cfg says')
        return
    configured = cfg.model.get('test_cfg') or cfg.get('test_cfg') or {}
    # As the export wrote them: JSON, tuples as lists.
    configured = json.loads(json.dumps({part: configured.get(part) for part in ('rpn', 'rcnn')}))
    difference = _first_difference(model.test_cfg, configured, 'model.test_cfg')
    if difference:
        key, exported, wanted = difference
        raise UsageError(f'{model_path} was exported with {key}={_shown(exported)}, the config '
                         f'has {_shown(wanted)}: test-time settings are fixed at export; export '
                         'again with them (tools/deployment/pytorch2onnx.py --cfg-options)')


def check_single_scale(cfg):
    """The exported model runs the test pipeline's one scale, unflipped: refuse test-time
    augmentation rather than evaluate without it."""
    for step in cfg.data.test.pipeline:
        if step['type'] != 'MultiScaleFlipAug':
            continue
        scales = step.get('img_scale') or step.get('scale_factor')
        if step.get('flip') or (isinstance(scales, list) and len(scales) > 1):
            raise UsageError('the test pipeline asks for test-time augmentation (flip or several '
                             'scales), which an exported model does not run: set '
                             'MultiScaleFlipAug\'s flip=False and one img_scale')


def infer(model, data_loader):
    results = []
    progress = mmcv.ProgressBar(len(data_loader.dataset))
    for data in data_loader:
        img = data['img'][0]
        img_meta = data['img_metas'][0].data[0][0]
        try:
            bbox_results, segm_results = model(img, img_meta)
        except ValueError as error:
            raise UsageError(f'{img_meta["ori_filename"]}: {error}') from None
        results.append((bbox_results, encode_mask_results(segm_results)))
        progress.update()
    return results


def run(args):
    check_backend(args)
    cfg = load_config(args.config, args.cfg_options)
    check_request(args, cfg)
    check_single_scale(cfg)
    cfg.data.test.test_mode = True
    dataset = load_dataset(cfg.data.test, 'data.test', metrics=args.eval)
    model = open_onnx_model(args.model, len(dataset.CLASSES), args.threads)
    if args.eval or args.format_only:  # (--out keeps the model's own labels, as tools/test.py)
        check_class_order(model.class_names, dataset, f'{args.model} was exported')
    check_test_cfg(model, args.model, cfg)
    data_loader = build_dataloader(dataset, samples_per_gpu=1,
                                   workers_per_gpu=cfg.data.get('workers_per_gpu', 2),
                                   dist=False, shuffle=False)
    results = infer(model, data_loader)
    report_results(args, cfg, dataset, results, dict(model=args.model, backend=args.backend))


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    with one_line_errors(PROG):
        run(args)


if __name__ == '__main__':
    main()
