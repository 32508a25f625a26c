"""Train a detector (mmdet 2.x command line), on one process or many, GPU or CPU.

    python tools/train.py CONFIG [--work-dir DIR] [--auto-resume] [--seed 0] [--amp] ...
    bash tools/dist_train.sh CONFIG NUM_PROCESSES [same options]

A missing or unreadable config, missing training (or validation) data, a pretrained checkpoint
that cannot be fetched or read, a checkpoint to resume from that is missing, damaged or does
not load, and a work dir where another training is running (``training_lock``) end the run with
one line naming the problem and exit status 1; so do a NaN/inf loss, a checkpoint that cannot be
written and a data-loader worker that was killed, naming the newest complete checkpoint to go on
from (Ctrl-C does the same with exit status 130, SIGTERM with 143). The data files are checked before the model is
built, so that a run does not first download weights it cannot use; the annotations once it is. Training turns on TF32 matmuls, as
the original's train.py does.
"""
import argparse
import contextlib
import copy
import fcntl
import logging
import os
import os.path as osp
import signal
import sys
import threading
import time

import _bootstrap  # (first: repository on sys.path, quiet imports)

import cv2  # noqa: E402
import mmcv  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from mmcv.runner import get_dist_info  # noqa: E402
from mmcv.utils import get_git_hash  # noqa: E402
from mmcv.utils.logging import logger_initialized  # noqa: E402
from mmdet import __version__ as mmdet_version  # noqa: E402
from mmdet.apis import init_random_seed, set_random_seed  # noqa: E402
from mmdet.utils import collect_env, get_device, get_root_logger  # noqa: E402

import mmdet_custom  # noqa: E402,F401  (registers the backbone and friends)
from mmdet_custom.apis import (AMP_CHOICES, CheckpointError, TrainingStopped,  # noqa: E402
                               check_mixed_precision, holds_backbone_weights, load_dataset,
                               resume_checkpoint, set_mixed_precision, start_worker_server,
                               stored_seed, train_detector, train_loader_config)
from mmdet_custom.core.optimizers import ParamwiseConfigError  # noqa: E402
from mmdet_custom.models.backbones import PretrainedCheckpointError  # noqa: E402
from _usage import (ConfigOptions, UsageError, build_model, check_evaluation,  # noqa: E402
                    check_num_classes, dataset_files, evaluation_settings, join_process_group,
                    one_line_errors, predicts_masks, read_config, select_gpu)

DATA_HINT = ('put the dataset there, or set MMDET_DATASETS=FOLDER/ to a copy of that layout '
             'elsewhere, or point the config at the files: --cfg-options '
             '{split}.ann_file=FILE {split}.img_prefix=FOLDER')
# In the work dir: held by the training running there (its rank 0), and naming its pid.
TRAINING_LOCK = '.train.lock'
PRETRAINED_HINT = ('to use a local copy: --cfg-options model.backbone.init_cfg.checkpoint=FILE; '
                   'to start from random weights: --cfg-options model.backbone.init_cfg=None')


def _take_backbone_from_load_from(model, cfg, logger):
    """Point a pretrained backbone at ``load_from`` where that file holds every backbone weight:
    loaded after initialisation, it replaces them all, and fetching the ImageNet weights first
    cost a download (and failed offline)."""
    init_cfg = getattr(getattr(model, 'backbone', None), 'init_cfg', None)
    load_from = cfg.get('load_from')
    if (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained' and load_from
            and osp.isfile(load_from) and holds_backbone_weights(load_from, model.backbone)):
        logger.info(f'load_from {load_from} holds every backbone weight: the backbone starts from '
                    f'it, not from {init_cfg["checkpoint"]}')
        model.backbone.init_cfg = dict(init_cfg, checkpoint=load_from)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume-from', help='checkpoint to resume from (weights, optimizer, epoch)')
    parser.add_argument('--auto-resume', action='store_true',
                        help='resume from the complete checkpoint furthest into training where '
                        'the checkpoints go (the work dir, or checkpoint_config.out_dir), if any')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--diff-seed', action='store_true',
                        help='(mmdet\'s flag) ranks draw their own augmentations anyway: the rank '
                             'is mixed into every epoch\'s seed, while the data order keeps the '
                             'seed the ranks share, so that they split the images between them')
    parser.add_argument('--deterministic', action='store_true',
                        help='use deterministic algorithms (cuDNN and torch); on a GPU the DCNv3 '
                             'backward (and mmcv\'s RoIAlign) still sum gradients with atomics, '
                             'which torch warns of for DCNv3')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override config entries, e.g. optimizer.lr=0.001 data.samples_per_gpu=2')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate with the total batch size (config auto_scale_lr)')
    parser.add_argument('--amp', nargs='?', const='auto', choices=AMP_CHOICES,
                        help='mixed precision: float16 with dynamic loss scaling (the config\'s fp16, '
                        'CUDA only) or bfloat16 autocast of backbone and neck (the config\'s bf16; '
                        'CPU, and GPUs that support it); alone, float16 on a GPU and bfloat16 on '
                        'the CPU')
    parser.add_argument('--gpu-id', type=int, default=None,
                        help='the GPU a single-process run trains on (default 0)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher: none (single process), pytorch (torchrun) or slurm')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by old torch.distributed.launch; torchrun sets LOCAL_RANK instead')
    args = parser.parse_args(argv)
    if args.resume_from and args.auto_resume:
        parser.error('give --resume-from or --auto-resume, not both (--auto-resume resumes from '
                     'the newest checkpoint in the work dir)')
    if args.seed is not None and not 0 <= args.seed < 2**32:
        parser.error(f'--seed must lie in [0, 2^32) (numpy\'s seed range), got {args.seed}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def setup_multiprocessing(cfg):
    """mmdet's defaults (fork for loader workers, no OpenCV threads), minus the OMP override.

    mmdet sets OMP_NUM_THREADS=1 when loaders use several workers; on a CPU-only machine that
    would be wrong for the training process itself, and the workers are single-threaded anyway.
    """
    mp.set_start_method(cfg.get('mp_start_method', 'fork'), force=True)
    cv2.setNumThreads(cfg.get('opencv_num_threads', 0))


def check_training_data(cfg, validate):
    """Raise UsageError naming the first annotation file or image folder that is not there."""
    splits = [('data.train', cfg.data.train)] + ([('data.val', cfg.data.val)] if validate else [])
    for split, dataset in splits:
        for ann_file, img_prefix in dataset_files(dataset):
            if ann_file and not osp.isfile(ann_file):
                raise UsageError(f'{split}: annotation file not found: {ann_file} '
                                 f'({DATA_HINT.format(split=split)})')
            if img_prefix and not osp.isdir(img_prefix):
                raise UsageError(f'{split}: image folder not found: {img_prefix} '
                                 f'({DATA_HINT.format(split=split)})')


def check_training_settings(cfg):
    """Raise UsageError for a batch size, worker count, training length or learning rate that
    cannot train (a traceback deep in torch or mmcv, or a run that ends at once, with status 0)."""
    loader = train_loader_config(cfg)
    counts = [('data.samples_per_gpu', loader.get('samples_per_gpu'), 1),
              ('data.workers_per_gpu', loader.get('workers_per_gpu'), 0)]
    runner = cfg.get('runner') or {}
    for key in ('max_epochs', 'max_iters'):
        if key in runner:
            counts.append((f'runner.{key}', runner[key], 1))
    for name, value, least in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f'{name} must be a whole number of at least {least}, got {value!r}')
    lr = (cfg.get('optimizer') or {}).get('lr')
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0):
        raise UsageError(f'optimizer.lr must be a number of at least 0, got {lr!r}')


@contextlib.contextmanager
def training_lock(work_dir):
    """Hold ``work_dir``'s ``TRAINING_LOCK`` for the block (rank 0 does; a distributed run's
    other ranks learn whether it got it), or raise UsageError where another training holds it.

    Two trainings in one work dir overwrote each other's checkpoints and ran their lines together
    in one log, both ending with status 0. The lock is an flock, which the kernel releases when
    its process ends, killed or not: a stale file never blocks a later --auto-resume. Tools that
    only read a work dir (test.py, plot_training.py) take no lock and are never blocked.
    """
    rank, world_size = get_dist_info()
    lock = refusal = None
    if rank == 0:
        try:
            lock = open(osp.join(work_dir, TRAINING_LOCK), 'a+')
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            lock.write(f'{os.getpid()}\n')
            lock.flush()
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            pid = f' (pid {holder})' if holder else ''
            refusal = (f'another training{pid} is running in {work_dir}; wait for it or use '
                       f'another --work-dir')
        except OSError as error:  # e.g. a folder this user cannot write to
            refusal = f'cannot write to the work dir {work_dir}: {error.strerror}'
        if refusal is not None and lock is not None:
            lock.close()
    if world_size > 1:  # every rank stops with the same line, not at rank 0's absence
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal is not None:
        raise UsageError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


# mmcv's logger of this run (get_root_logger's) and its own, which gets the run's log file too.
_RUN_LOGGERS = ('mmdet', 'mmcv')


def _own_run_logging():
    """Give the run a logger set up afresh, with its own console and file handlers, and return
    what puts the earlier state back (the run's handlers off, its file closed).

    mmcv sets a logger up once per process and ignores later log files: a second main() in one
    process (a notebook, an API user) wrote its text log into the first run's file, and after a
    ``get_root_logger()`` elsewhere (tools/test.py's) into none. Handlers of mmcv's own kinds are
    set aside for the run; others (a test's, a user's) stay."""
    logger = logging.getLogger('mmdet')
    was_set_up = logger_initialized.pop('mmdet', None)
    set_aside = [h for h in logger.handlers if type(h) in (logging.StreamHandler, logging.FileHandler)]
    for handler in set_aside:
        logger.removeHandler(handler)
    before = {name: list(logging.getLogger(name).handlers) for name in _RUN_LOGGERS}

    def restore():
        for name in _RUN_LOGGERS:
            run_logger = logging.getLogger(name)
            for handler in [h for h in run_logger.handlers if h not in before[name]]:
                run_logger.removeHandler(handler)
                handler.close()
        for handler in set_aside:
            logger.addHandler(handler)
        if was_set_up is None:
            logger_initialized.pop('mmdet', None)
        else:
            logger_initialized['mmdet'] = was_set_up

    return restore


@contextlib.contextmanager
def sigterm_stops_as_ctrl_c(terminated):
    """SIGTERM (``kill``, slurm's scancel or preemption) ends the run as Ctrl-C does, saying where
    to go on from, instead of at once and silently; ``terminated`` gets the signal's number.

    A second SIGTERM ends the process at once. Processes torchrun started keep the default:
    torchrun sends SIGTERM to the others when one fails, and a process blocked in a collective
    would hold up that end until torchrun's kill."""
    if ('TORCHELASTIC_RUN_ID' in os.environ
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    terminated = []
    try:
        with sigterm_stops_as_ctrl_c(terminated), one_line_errors(
                'tools/train.py', CheckpointError, TrainingStopped, ParamwiseConfigError), \
                contextlib.ExitStack() as held:
            train(args, held)
    except KeyboardInterrupt as interrupt:
        how = 'terminated (SIGTERM)' if terminated else 'interrupted'
        # One write of the whole line: every process of a run prints it to the same file, and
        # print's two writes (the text, then the newline) ran two processes' lines together.
        sys.stderr.write(f'tools/train.py: {how}' + (f'; {interrupt}' if str(interrupt) else '')
                         + '\n')
        sys.stderr.flush()
        raise SystemExit(128 + signal.SIGTERM if terminated else 130) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def train(args, held):
    """Train as ``args`` say; ``held`` (an ExitStack) keeps the work dir's lock until the
    caller is done."""
    validate = not args.no_validate
    cfg = read_config(args.config, args.cfg_options,
                      required=('model', 'data.train') + (('data.val',) if validate else ()))
    check_training_data(cfg, validate)
    check_training_settings(cfg)
    if validate:  # checked now rather than after the first epoch
        check_evaluation(cfg.data.val, cfg.get('evaluation', {}).get('metric', 'bbox'),
                         evaluation_settings(cfg), 'evaluation', masks=predicts_masks(cfg))
    if args.resume_from is not None and not osp.isfile(args.resume_from):
        raise UsageError(f'--resume-from: checkpoint not found: {args.resume_from}')
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise UsageError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    distributed = args.launcher != 'none'
    cfg.gpu_ids = select_gpu(args.gpu_id, distributed)
    setup_multiprocessing(cfg)
    # Now, so that a forkserver's imports overlap the model and dataset builds.
    start_worker_server(train_loader_config(cfg), preload=['_bootstrap'])
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True

    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.resume_from is not None:
        cfg.resume_from = args.resume_from
    cfg.auto_resume = args.auto_resume
    cfg.device = get_device()
    try:
        if args.amp:
            set_mixed_precision(cfg, args.amp)
        else:
            check_mixed_precision(cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    if distributed:
        backend = join_process_group(args.launcher, cfg)
        _, world_size = get_dist_info()
        cfg.gpu_ids = list(range(world_size))
    else:
        backend = None

    try:
        if osp.exists(cfg.work_dir) and not osp.isdir(cfg.work_dir):
            raise UsageError(f'the work dir {cfg.work_dir} is a file, not a folder')
        mmcv.mkdir_or_exist(osp.abspath(cfg.work_dir))
        held.enter_context(training_lock(cfg.work_dir))  # before anything is written there
        cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))
    except OSError as error:  # e.g. a folder this user cannot write to
        raise UsageError(f'cannot write to the work dir {cfg.work_dir}: {error.strerror}') from None
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    log_file = osp.join(cfg.work_dir, f'{timestamp}.log')
    held.callback(_own_run_logging())
    logger = get_root_logger(log_file=log_file, log_level=cfg.log_level)
    _bootstrap.brief_console(logger, log_file)  # long reports (environment, config): file only
    _bootstrap.failed_log_writes_raise(logger)

    meta = dict()
    env_info = '\n'.join(f'{key}: {value}' for key, value in collect_env().items())
    meta['env_info'] = env_info
    meta['config'] = cfg.pretty_text
    logger.info('Environment info:\n' + env_info)
    logger.info(f'Distributed training: {distributed}' +
                (f' ({get_dist_info()[1]} processes, {backend})' if distributed else '') +
                f', device: {cfg.device}')
    logger.info(f'Config:\n{cfg.pretty_text}')

    # The checkpoint to go on from (--auto-resume's, resolved once; train_detector reads it here).
    cfg.resume_from = resume_checkpoint(cfg, logger)
    # Ranks agree on one seed (broadcast from rank 0). Without --seed a resumed run keeps the
    # seed it began with: its data order and augmentations go on as if it had not stopped.
    begun_with = stored_seed(cfg.resume_from) if cfg.resume_from else None
    if args.seed is not None and begun_with is not None and args.seed != begun_with:
        if args.resume_from is None:
            # Found by --auto-resume: a run with another seed in the same work dir went on from
            # (or, finished, stood in for) the first seed's.
            raise UsageError(f'--seed {args.seed}: {cfg.resume_from}, which --auto-resume would go '
                             f'on from, trained with seed {begun_with}: leave out --seed to go on '
                             f'with that run, or give another --work-dir for a new one')
        logger.warning(f'--seed {args.seed}: {cfg.resume_from} trained with seed {begun_with}; '
                       f'the rest of the run draws other data orders and augmentations')
    kept_seed = begun_with if args.seed is None else None
    seed = init_random_seed(args.seed if kept_seed is None else kept_seed, device=cfg.device)
    if args.diff_seed:
        # mmdet adds the rank to the seed; here that would give each rank another data order,
        # so that ranks trained on some images twice and never saw others.
        logger.info('--diff-seed: every rank draws its own augmentations already (the rank is '
                    'mixed into each epoch\'s seed); the data order keeps the shared seed')
    kept_from = '' if kept_seed is None else f' (that of {cfg.resume_from})'
    logger.info(f'Set random seed to {seed}{kept_from}, deterministic: {args.deterministic}')
    set_random_seed(seed, deterministic=args.deterministic)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    cfg.seed = seed
    meta['seed'] = seed
    meta['exp_name'] = osp.basename(args.config)

    model = build_model(cfg, args.config, training=True)
    datasets = [load_dataset(cfg.data.train, 'data.train')]
    if len(cfg.workflow) == 2:
        val_dataset = copy.deepcopy(cfg.data.val)
        val_dataset.pipeline = cfg.data.train.pipeline
        datasets.append(load_dataset(val_dataset, 'data.val'))
    check_num_classes(model, datasets[0], 'data.train')  # before fetching pretrained weights
    if not cfg.resume_from:  # resuming replaces every weight: no pretrained backbone to fetch
        _take_backbone_from_load_from(model, cfg, logger)
        try:
            model.init_weights()
        except (FileNotFoundError, PretrainedCheckpointError) as error:
            raise UsageError(f'{error} ({PRETRAINED_HINT})') from None
    if cfg.checkpoint_config is not None:
        # Checkpoints remember the versions and class names they were trained with.
        cfg.checkpoint_config.meta = dict(
            mmdet_version=mmdet_version + get_git_hash()[:7], CLASSES=datasets[0].CLASSES)
    model.CLASSES = datasets[0].CLASSES
    # As the original's train.py: float32 matmuls (the Linears that hold most of InternImage's
    # work) and convolutions run on TensorFloat-32 where the GPU has it (Ampere and later);
    # NVIDIA_TF32_OVERRIDE=0 in the environment turns it off.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    train_detector(model, datasets, cfg, distributed=distributed, validate=validate,
                   timestamp=timestamp, meta=meta)


if __name__ == '__main__':
    main()
