"""Test (and evaluate) a trained detector (mmdet 2.x command line), on one process or many.

    python tools/test.py CONFIG CHECKPOINT --eval bbox segm
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES --eval bbox segm

A bad config, a missing or damaged checkpoint, or a checkpoint of another model ends the run
with one line naming the problem and exit status 1.
"""
import argparse
import inspect
import json
import os
import os.path as osp
import time

import _bootstrap  # (first: repository on sys.path, quiet imports)

import mmcv  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from mmcv.cnn import fuse_conv_bn  # noqa: E402
from mmcv.runner import get_dist_info, wrap_fp16_model  # noqa: E402
from mmdet.apis import single_gpu_test  # noqa: E402
from mmdet.datasets import build_dataloader, replace_ImageToTensor  # noqa: E402
from mmdet.utils import compat_cfg, get_device, get_root_logger  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from mmdet_custom.apis import (RANK_RESULTS_FOLDER, CheckpointError, evaluate_kwargs,  # noqa: E402
                               load_dataset, load_detector_checkpoint, multi_process_test,
                               wrap_model)
from _usage import (ConfigOptions, UsageError, build_model, check_class_order,  # noqa: E402
                    check_evaluation, check_not_over_images, check_num_classes, check_output_path,
                    evaluation_settings, join_process_group, one_line_errors, predicts_masks,
                    read_config, registered_dataset, select_gpu)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where to save the evaluation metrics as json')
    parser.add_argument('--out', help='write the raw results to this pickle file (.pkl/.pickle)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into the preceding convs (slightly faster inference)')
    parser.add_argument('--format-only', action='store_true',
                        help='only convert the results to the dataset\'s submission format '
                        '(e.g. COCO json), without evaluating')
    parser.add_argument('--eval', type=str, nargs='+',
                        help='metrics to evaluate, e.g. "bbox segm" for COCO')
    parser.add_argument('--show', action='store_true', help='show each result in a window')
    parser.add_argument('--show-dir', help='save images with drawn results into this folder')
    parser.add_argument('--show-score-thr', type=float, default=0.3,
                        help='score threshold for drawn results (default: 0.3)')
    parser.add_argument('--gpu-collect', action='store_true',
                        help='gather the ranks\' results through GPU memory (CUDA only)')
    parser.add_argument('--tmpdir', help='shared folder to gather the ranks\' results through '
                        '(when --gpu-collect is not given; CUDA only): in a folder '
                        f'{RANK_RESULTS_FOLDER}/ made in it and deleted after')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override config entries, e.g. data.test.ann_file=...')
    parser.add_argument('--eval-options', nargs='+', action=ConfigOptions,
                        help='extra arguments of dataset.evaluate(), e.g. classwise=True')
    parser.add_argument('--gpu-id', type=int, default=None,
                        help='the GPU a single-process run tests on (default 0)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not (args.out or args.eval or args.format_only or args.show or args.show_dir):
        parser.error('say what to do with the results: --out, --eval, --format-only, --show '
                     'or --show-dir')
    if args.eval and args.format_only:
        parser.error('--eval and --format-only cannot both be given')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must name a .pkl or .pickle file')
    return args


def load_config(path, cfg_options):
    cfg = read_config(path, cfg_options, required=('model', 'data.test.pipeline'))
    try:
        cfg = compat_cfg(cfg)
    # e.g. no data.val, neither runner nor total_epochs, or samples_per_gpu set in two places
    except (AttributeError, KeyError, AssertionError) as error:
        raise UsageError(f'config {path} does not fit the layout mmdet reads from every config '
                         f'({type(error).__name__}: {error})') from None
    # Weights come from the checkpoint: skip downloading pretrained backbones.
    cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg = None
    return cfg


def evaluation_options(args, cfg):
    """dataset.evaluate()'s keyword arguments for --eval: the config's evaluation settings
    (those not meant for the training hook), then --eval-options."""
    return evaluate_kwargs(dict(evaluation_settings(cfg), **(args.eval_options or {})))


def check_window():
    """--show draws through matplotlib (mmdet's imshow_det_bboxes), whose non-interactive
    backends (e.g. 'agg', picked on a machine without a display) would show nothing but a
    warning per image."""
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry
    backend = plt.get_backend()
    if backend.lower() in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE):
        raise UsageError(f'--show needs a window, and matplotlib draws with its non-interactive '
                         f'{backend!r} backend here (no display or GUI toolkit found, or '
                         f'MPLBACKEND set); --show-dir DIR saves the pictures instead')


def check_request(args, cfg):
    """What --eval or --format-only asks of the test set, and where the results go, checked
    before hours of inference."""
    check_output_path(args.out, '--out')
    check_output_path(args.work_dir, '--work-dir', folder=True)
    check_output_path(getattr(args, 'show_dir', None), '--show-dir', folder=True)
    check_not_over_images(cfg, getattr(args, 'show_dir', None), '--show-dir', folder=True)
    prefix = (args.eval_options or {}).get('jsonfile_prefix')
    if isinstance(prefix, str):
        check_output_path(prefix + '.bbox.json', '--eval-options jsonfile_prefix')
    if args.eval:
        check_evaluation(cfg.data.test, args.eval, evaluation_options(args, cfg),
                         '--eval/--eval-options', masks=predicts_masks(cfg))
    dataset_type = registered_dataset(cfg.data.test)
    if (args.format_only and dataset_type is not None
            and 'jsonfile_prefix' in inspect.signature(dataset_type.format_results).parameters
            and 'jsonfile_prefix' not in (args.eval_options or {})):
        # Without it the json files go to a temporary folder that is deleted on exit.
        raise UsageError('--format-only writes its json files where --eval-options '
                         'jsonfile_prefix=PATH says (PATH.bbox.json, PATH.segm.json); give it')


def run(args):
    if args.show:
        check_window()
    cfg = load_config(args.config, args.cfg_options)
    check_request(args, cfg)
    if args.tmpdir or args.gpu_collect:
        if not torch.cuda.is_available():
            print('note: --tmpdir/--gpu-collect apply to CUDA runs; CPU ranks gather via gloo')
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True
    cfg.device = get_device()
    distributed = args.launcher != 'none'
    if distributed and (args.show or args.show_dir):
        # mmdet's multi-process test draws nothing; the run ended with no picture and status 0.
        raise UsageError('--show and --show-dir draw in a single-process run only: run '
                         'tools/test.py without a launcher')
    cfg.gpu_ids = select_gpu(args.gpu_id, distributed)
    if distributed:
        join_process_group(args.launcher, cfg)
    rank, _ = get_dist_info()

    loader_args = dict(samples_per_gpu=1, workers_per_gpu=2, dist=distributed, shuffle=False)
    loader_args.update(cfg.data.get('test_dataloader', {}))
    if loader_args['samples_per_gpu'] > 1:
        cfg.data.test.pipeline = replace_ImageToTensor(cfg.data.test.pipeline)
    cfg.data.test.test_mode = True

    model = build_model(cfg, args.config)
    if cfg.get('fp16') is not None:
        if cfg.device == 'cuda':
            wrap_fp16_model(model)
        else:  # a config trained with --amp on a GPU: float16 convolutions do not run on the CPU
            print(f'note: the config\'s fp16 applies on CUDA; testing in float32 on the {cfg.device}')
    # Check the checkpoint before building the data loader: its errors are the common ones.
    checkpoint = load_detector_checkpoint(model, args.checkpoint, get_root_logger())
    if args.fuse_conv_bn:
        model = fuse_conv_bn(model)
    dataset = load_dataset(cfg.data.test, 'data.test', metrics=args.eval)
    trained_on = (checkpoint.get('meta') or {}).get('CLASSES')
    if args.eval or args.format_only:  # (--out and pictures keep the checkpoint's own classes)
        check_num_classes(model, dataset, 'data.test', args.checkpoint)
        check_class_order(trained_on, dataset, f'{args.checkpoint} was trained')
    data_loader = build_dataloader(dataset, **loader_args)
    model.CLASSES = trained_on or dataset.CLASSES

    if distributed:
        model = wrap_model(model, cfg, distributed=True)
        results = multi_process_test(model, data_loader, args.tmpdir, args.gpu_collect)
    else:
        model = wrap_model(model, cfg, distributed=False)
        results = single_gpu_test(model, data_loader, args.show, args.show_dir, args.show_score_thr)

    if rank != 0:
        return
    report_results(args, cfg, dataset, results, dict(checkpoint=args.checkpoint))


def report_results(args, cfg, dataset, results, source):
    """What --out, --format-only, --eval and --work-dir ask for; ``source`` (what made the
    results, e.g. the checkpoint) goes into the metrics json beside the config."""
    if args.out:
        print(f'\nwriting results to {args.out}')
        mmcv.dump(results, args.out)
    eval_options = dict(args.eval_options or {})
    if args.format_only:
        dataset.format_results(results, **eval_options)
    if args.eval:
        metrics = dataset.evaluate(results, metric=args.eval, **evaluation_options(args, cfg))
        print(metrics)
        if args.work_dir is not None:
            mmcv.mkdir_or_exist(osp.abspath(args.work_dir))
            timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
            with open(osp.join(args.work_dir, f'eval_{timestamp}.json'), 'w') as f:
                json.dump(dict(config=args.config, **source, metric=dict(metrics)), f, indent=2)


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    try:
        with one_line_errors('tools/test.py', CheckpointError):
            run(args)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
