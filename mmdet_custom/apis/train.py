"""``train_detector``: mmdet 2.x training, made resumable bit-for-bit and runnable on CPU processes.

Differences from ``mmdet.apis.train_detector``:
- the training sampler is always the seeded, epoch-aware group sampler (mmdet's non-distributed
  GroupSampler shuffles from the global numpy state instead), and EpochSeedHook re-seeds every
  RNG from (seed, epoch, rank), so a run resumed from an epoch checkpoint replays the remaining
  epochs exactly as an uninterrupted run would;
- ``auto_resume`` looks where the checkpoint hook writes (``checkpoint_config.out_dir`` too) and
  skips a checkpoint left half-written by a killed run (``resume_checkpoint``; tools/train.py
  keeps the resumed run's seed unless ``--seed`` is given);
- iteration checkpoints (``checkpoint_config.by_epoch=False``) of an EpochBasedRunner run are
  ``iter_N.pth`` and go on in their epoch (``ResumableEpochBasedRunner``, the sampler's
  ``skip_next``): the rest of the epoch sees the images the run had left, in the same order,
  with other random draws (later epochs are re-seeded as usual);
- resuming keeps the config's optimizer update implementation (``fused``), which
  ``load_state_dict`` alone would take from the checkpoint (``configured_update_implementation``),
  refuses a checkpoint whose weights do not fit the model or an optimizer state of another
  optimizer type, recounts the iterations for the current batch size and number of processes
  (the lr schedule reads them), warns when
  the checkpoint's lr or weight decay differ from the config's or its epoch was never evaluated,
  and takes the evaluation hook's best-checkpoint record from the newest ``best_*.pth``, since an
  epoch's checkpoint is written before that epoch is evaluated (``restore_best_record``);
- training stops with ``TrainingStopped`` (one line naming the checkpoint to go on from) at a
  non-finite loss, before its weights are saved (``FiniteLossHook``), when a checkpoint
  cannot be written (a full disk, no permission, the work dir removed) and when a data-loader
  worker dies (killed by the out-of-memory killer, say: ``_data_loader_worker_death``);
  checkpoints are written whole or not at all (``mmcv_compat``);
- distributed CPU training uses gloo and a CPU DDP wrapper (see ``distributed.py``);
- ``data.train_dataloader.multiprocessing_context='forkserver'`` starts the loader's workers
  from a server that has mmdet and this plugin imported (``start_worker_server``), so that they
  neither take seconds to start nor slow the training process's next step;
- single-process runs skip the 2 s sleep mmcv's EpochBasedRunner takes before every epoch (and
  the 1 s after the last), see ``without_epoch_transition_sleeps``;
- mixed precision comes in two forms, each checked against the device before training starts:
  ``fp16 = dict(...)`` (mmcv's way: float16 autocast of the whole detector and loss scaling
  through mmcv's Fp16OptimizerHook, as SyncFreeFp16OptimizerHook, which does not wait for the
  GPU after each iteration; CUDA only) and ``bf16 = dict()`` (bfloat16 autocast of the backbone
  and neck, where the DCNv3 ops are, no loss scaling; CPU, and GPUs that support bfloat16).
  ``tools/train.py --amp`` sets one of them.
"""
import contextlib
import errno
import functools
import glob
import json
import math
import multiprocessing
import multiprocessing.forkserver
import os
import os.path as osp
import re
import signal
import types
import uuid
from functools import partial
from typing import Sequence

import torch

import mmcv.runner.epoch_based_runner
from mmcv.parallel import collate, is_module_wrapper
from mmcv.runner import EpochBasedRunner
from mmcv.runner import EvalHook as MmcvEvalHook
from mmcv.runner import OptimizerHook, build_runner, get_dist_info
from mmdet.apis.train import auto_scale_lr
from mmdet.core import build_optimizer
from mmdet.datasets import build_dataloader, replace_ImageToTensor
from mmdet.datasets.samplers import DistributedGroupSampler
from mmdet.utils import compat_cfg, get_root_logger
from torch.utils.data import DataLoader

from ..core import ResumableEpochBasedRunner
from ..core.hooks import FiniteLossHook, NonFiniteLossError, SyncFreeFp16OptimizerHook
from ..core.hooks.fp16_optimizer import checked_loss_scale
from ..utils import WORKER_SERVER_PARENT_VARIABLE, error_summary
from .checkpoint import (CheckpointError, DamagedCheckpointError, ends_its_epoch,
                         find_resumable_checkpoint, hook_output_dir, load_detector_checkpoint,
                         load_weights_leniently, restore_best_record)
from .datasets import DatasetError, load_dataset
from .distributed import wrap_model
from .seeding import EpochSeedHook
from .test import BestWrittenFirstEvalHook, DistEvalHookAnyDevice, evaluate_kwargs


class ResumableGroupSampler(DistributedGroupSampler):
    """mmdet's DistributedGroupSampler (images of one aspect-ratio group per batch, shuffled from
    seed + epoch), whose next epoch can start part-way through, for a run resumed mid-epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._samples_to_skip = 0

    def skip_next(self, num_samples: int):
        """Leave out the first ``num_samples`` of the next epoch's order (once). Its length stays
        the epoch's: mmcv's runner counts the run's iterations from it."""
        self._samples_to_skip = num_samples

    def __iter__(self):
        order = list(super().__iter__())[self._samples_to_skip:]
        self._samples_to_skip = 0
        return iter(order)


def build_train_dataloader(dataset, samples_per_gpu, workers_per_gpu, seed, **loader_kwargs):
    """A training loader whose order depends only on (seed, epoch), in one process or many: the
    group sampler is used with every world size, including 1."""
    rank, world_size = get_dist_info()
    sampler = ResumableGroupSampler(dataset, samples_per_gpu, world_size, rank, seed=seed or 0)
    if workers_per_gpu == 0:
        loader_kwargs.pop('multiprocessing_context', None)  # loading in this process: none to start
    start_worker_server(dict(loader_kwargs, workers_per_gpu=workers_per_gpu))
    # Workers are re-created each epoch so that torch seeds them from the epoch's torch RNG
    # state (see seeding.py); no worker_init_fn overrides those seeds.
    loader_kwargs['persistent_workers'] = False
    return DataLoader(
        dataset,
        batch_size=samples_per_gpu,
        sampler=sampler,
        num_workers=workers_per_gpu,
        collate_fn=partial(collate, samples_per_gpu=samples_per_gpu),
        pin_memory=loader_kwargs.pop('pin_memory', False),
        **loader_kwargs)


def train_loader_config(cfg) -> dict:
    """The training loader's settings: defaults, the data dict's per-GPU counts, then
    ``data.train_dataloader`` (before or after mmdet's ``compat_cfg`` moved the counts there)."""
    loader_cfg = dict(samples_per_gpu=2, workers_per_gpu=2)
    loader_cfg.update({key: cfg.data[key] for key in ('samples_per_gpu', 'workers_per_gpu')
                       if key in cfg.data})
    loader_cfg.update(cfg.data.get('train_dataloader', {}))
    return loader_cfg


def start_worker_server(loader_cfg: dict, preload: Sequence[str] = ()):
    """Start the forkserver that data-loader workers come from, with mmdet and this plugin imported,
    if ``loader_cfg`` (``train_loader_config``'s) asks for workers from a forkserver.

    Workers forked from the training process share its memory copy-on-write, so the training step
    after each epoch's fork pays for copying every page it writes (0.5 s in the quick start's
    2-core training, every epoch). Workers forked from a server with the imports done start in
    0.2 s and leave the training process alone; without the imports each would take 5 s. Worker
    seeds do not depend on how workers start. ``preload`` names modules for the server to import
    first (tools/train.py passes its ``_bootstrap``, which mutes import-time notices). Later calls
    find the server running and change nothing.
    """
    if loader_cfg.get('workers_per_gpu', 0) == 0 or \
            loader_cfg.get('multiprocessing_context') != 'forkserver':
        return
    multiprocessing.set_forkserver_preload([*preload, 'mmdet_custom.apis.worker_server_lifetime',
                                            'mmdet_custom', 'mmdet.datasets'])
    # (worker_server_lifetime reads it: the server starts with this environment)
    os.environ[WORKER_SERVER_PARENT_VARIABLE] = str(os.getpid())
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.pop(WORKER_SERVER_PARENT_VARIABLE, None)


@contextlib.contextmanager
def without_epoch_transition_sleeps():
    """Skip the sleeps of mmcv's EpochBasedRunner: 2 s before every epoch and 1 s after the run.

    mmcv added them to dodge a DataLoader-worker deadlock seen at epoch transitions of distributed
    runs; its maintainers describe them as safe to drop otherwise. For short epochs they add up:
    25 s of the 12-epoch quick start's 5 minutes. That module uses ``time`` for nothing but these
    sleeps, so it gets a stand-in for the duration.
    """
    module = mmcv.runner.epoch_based_runner
    real_time = module.time
    module.time = types.SimpleNamespace(sleep=lambda seconds: None)
    try:
        yield
    finally:
        module.time = real_time


AMP_CHOICES = ('auto', 'float16', 'bfloat16')


# Optimizer group settings that choose how the update runs, not what it computes.
_UPDATE_IMPLEMENTATION = ('foreach', 'fused', 'capturable')


@contextlib.contextmanager
def configured_update_implementation(optimizer: torch.optim.Optimizer):
    """Keep the optimizer's configured update implementation (``fused``, ``foreach``) across a
    ``load_state_dict`` in the block, as resuming does.

    ``Optimizer.load_state_dict`` takes every group setting from the checkpoint, so a config's
    ``fused=True`` would be dropped when resuming a run saved without it. The settings are put back
    afterwards, and each step counter goes where that update keeps it: float32 on the parameter's
    device for a fused or capturable update, on the CPU otherwise. The update's values do not
    depend on any of this.
    """
    configured = [{key: group[key] for key in _UPDATE_IMPLEMENTATION if key in group}
                  for group in optimizer.param_groups]
    yield
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)
        on_device = bool(group.get('fused') or group.get('capturable'))
        for param in group['params']:
            step = optimizer.state.get(param, {}).get('step')
            if torch.is_tensor(step):
                optimizer.state[param]['step'] = step.to(
                    device=param.device if on_device else 'cpu', dtype=torch.float32)


def set_mixed_precision(cfg, dtype='auto'):
    """Turn on mixed precision in ``cfg`` for ``cfg.device``: float16 or bfloat16 ('auto': float16
    on a CUDA GPU, bfloat16 elsewhere). A setting already in the config of the chosen kind (e.g.
    its own ``fp16.loss_scale``) is kept; one of the other kind is replaced."""
    if dtype not in AMP_CHOICES:
        raise ValueError(f'mixed precision dtype must be one of {AMP_CHOICES}, got {dtype!r}')
    if dtype == 'auto':
        dtype = 'float16' if cfg.device == 'cuda' else 'bfloat16'
    keep, drop = ('fp16', 'bf16') if dtype == 'float16' else ('bf16', 'fp16')
    if drop in cfg:
        cfg.pop(drop)
    if cfg.get(keep) is None:
        cfg[keep] = dict(loss_scale='dynamic') if keep == 'fp16' else dict()
    return check_mixed_precision(cfg)


def check_mixed_precision(cfg):
    """The training precision the config asks for on ``cfg.device``: None (float32), 'float16' or
    'bfloat16'. Raises ValueError, naming the fix, where the device cannot honour it: mmcv's fp16
    path only works on CUDA (elsewhere its autocast would silently do nothing)."""
    fp16, bf16 = cfg.get('fp16'), cfg.get('bf16')
    device = cfg.get('device', 'cuda' if torch.cuda.is_available() else 'cpu')
    if fp16 is not None and bf16 is not None:
        raise ValueError('the config sets both fp16 and bf16; keep one (fp16: float16 with loss '
                         'scaling, CUDA only; bf16: bfloat16 autocast)')
    if fp16 is not None:
        hook_type = (cfg.get('optimizer_config') or {}).get('type', 'OptimizerHook')
        if hook_type != 'OptimizerHook':
            raise ValueError(f'float16 mixed precision (fp16 in the config, --amp float16) trains '
                             f'with its own optimizer hook, which takes a plain OptimizerHook\'s '
                             f'settings (grad_clip); optimizer_config names type={hook_type!r}, '
                             f'which it cannot stand in for')
        unknown = [key for key in fp16 if key != 'loss_scale']
        if unknown:
            raise ValueError(f'fp16 takes loss_scale only (the optimizer hook\'s other settings go '
                             f'in optimizer_config), got {", ".join(map(str, unknown))}')
        checked_loss_scale(fp16.get('loss_scale', 512.))  # (mmcv's default)
        if device != 'cuda':
            raise ValueError(f'float16 mixed precision (fp16 in the config, --amp float16) needs a '
                             f'CUDA GPU: mmcv\'s Fp16OptimizerHook autocasts CUDA ops only, and on '
                             f'{device!r} it would train in float32. Use bfloat16 instead '
                             f'(--amp bfloat16, or bf16 = dict() in place of fp16)')
        return 'float16'
    if bf16 is not None:
        if bf16:
            raise ValueError(f'bf16 takes no options (bfloat16 needs no loss scaling), got {dict(bf16)}')
        # Emulated bfloat16 (before Ampere: T4, V100) counts as supported by default; it trains
        # far slower than float16 and lacks cuDNN kernels.
        if device == 'cuda' and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(f'this GPU ({torch.cuda.get_device_name()}) does not support bfloat16; '
                             f'use float16 mixed precision (--amp float16)')
        if device not in ('cuda', 'cpu'):
            raise ValueError(f'bfloat16 mixed precision is supported on cuda and cpu, not {device!r}')
        return 'bfloat16'
    return None


def _autocast_feature_extraction(detector, device_type, dtype):
    """Run the detector's backbone and neck (``extract_feat``) under autocast and hand float32
    features to the heads: mmcv's NMS and RoIAlign kernels have no bfloat16 version, and mmdet's
    fp32 guards (``force_fp32``) only convert float16. Autograd takes each op's backward in the
    dtype its forward ran in, so the backward needs no autocast of its own."""
    extract_feat = detector.extract_feat

    @functools.wraps(extract_feat)
    def extract_feat_under_autocast(img):
        with torch.autocast(device_type, dtype=dtype):
            features = extract_feat(img)
        return tuple(feature.float() for feature in features)

    detector.extract_feat = extract_feat_under_autocast


def _optimizer_hook_config(cfg, distributed):
    fp16_cfg = cfg.get('fp16', None)
    if fp16_cfg is not None:  # (check_mixed_precision allows type='OptimizerHook' only)
        options = {key: value for key, value in cfg.optimizer_config.items() if key != 'type'}
        return SyncFreeFp16OptimizerHook(**options, **fp16_cfg, distributed=distributed)
    if distributed and 'type' not in cfg.optimizer_config:
        return OptimizerHook(**cfg.optimizer_config)
    return cfg.optimizer_config


def _build_eval_hook(cfg, distributed, train_classes=None):
    """The evaluation hook of data.val, whose classes must be ``train_classes`` in that order:
    validation scores the model's label i as data.val's class i."""
    loader_args = dict(samples_per_gpu=1, workers_per_gpu=2, dist=distributed, shuffle=False,
                       persistent_workers=False)
    loader_args.update(cfg.data.get('val_dataloader', {}))
    if loader_args['samples_per_gpu'] > 1:
        # Batched testing needs DefaultFormatBundle in place of ImageToTensor.
        cfg.data.val.pipeline = replace_ImageToTensor(cfg.data.val.pipeline)
    val_set = load_dataset(cfg.data.val, 'data.val', dict(test_mode=True),
                           metrics=cfg.get('evaluation', {}).get('metric', 'bbox'))
    if None not in (train_classes, val_set.CLASSES) and (tuple(val_set.CLASSES)
                                                         != tuple(train_classes)):
        raise DatasetError(f'data.val has the classes {", ".join(val_set.CLASSES)} and data.train '
                           f'{", ".join(train_classes)}: validation would score each label as '
                           f'data.val\'s class of that number; give both the same classes in the '
                           f'same order (each annotation file\'s category order)')
    val_loader = build_dataloader(val_set, **loader_args)
    eval_cfg = evaluate_kwargs(cfg.get('evaluation', {}))
    eval_cfg['by_epoch'] = cfg.runner['type'] != 'IterBasedRunner'
    hook_type = DistEvalHookAnyDevice if distributed else BestWrittenFirstEvalHook
    return hook_type(val_loader, **eval_cfg)


# Optimizer hyper-parameters that tell optimizer types apart (not ones torch versions add).
_OPTIMIZER_DEFINING_KEYS = {'betas', 'eps', 'amsgrad', 'momentum', 'dampening', 'nesterov',
                            'alpha', 'centered', 'rho', 'lr_decay', 'momentum_decay', 'etas',
                            'step_sizes', 'lambd'}


def _load_training_state(detector, optimizer, path, logger=None, **_):
    """runner.resume's read of ``path``: the weights only if they fit, the training state
    (epoch and iteration) required, since a checkpoint of weights alone is for load_from, and an
    optimizer state of another optimizer type refused.

    The file is read into CPU memory whatever ``map_location`` mmcv passes (on a GPU, a function
    copying every tensor to it): the weights and the optimizer state are copied to their
    parameters' device when loaded, and a GPU error while reading would look like a damaged file.

    The stored config is left out of what mmcv gets: it re-parses it only to rescale the iteration
    count for another number of processes (``train_detector`` recounts it instead), and parsing
    imports the config's ``custom_imports``, which need not exist any more.
    """
    checkpoint = load_detector_checkpoint(detector, path, logger)
    meta = checkpoint.get('meta') or {}
    if not {'epoch', 'iter'} <= set(meta):
        raise CheckpointError(f'{path} holds weights but no training state (epoch, iteration): to '
                              f'start from its weights, use --cfg-options load_from={path}')
    if 'optimizer' not in checkpoint:
        if logger is not None:
            logger.warning(f'{path} has no optimizer state: the optimizer starts afresh')
    elif isinstance(optimizer, torch.optim.Optimizer):
        saved = set().union(*(group.keys() for group in checkpoint['optimizer']['param_groups']))
        lacking = sorted((set(optimizer.defaults) & _OPTIMIZER_DEFINING_KEYS) - saved)
        if lacking:
            raise CheckpointError(f'its optimizer state lacks {", ".join(lacking)}, which the '
                                  f'config\'s {type(optimizer).__name__} needs: it was saved by '
                                  f'another optimizer (start from its weights with --cfg-options '
                                  f'load_from={path})')
    return dict(checkpoint, meta={key: value for key, value in meta.items() if key != 'config'})


# What hooks keep in runner.meta to go on where they stopped: the best-checkpoint record and
# the last checkpoint (mmcv's evaluation and checkpoint hooks), the float16 loss scale. (Not the
# run id: a resumed run is a run of its own, see train_detector.)
_TRAINING_STATE_META = ('hook_msgs', 'fp16')


class TrainingStopped(Exception):
    """Training cannot go on: a non-finite loss, or a file that cannot be written. The message
    names the newest complete checkpoint to go on from."""


# Why a write fails where waiting or freeing space is the remedy, not a bug to trace.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


# torch's messages for a loader worker that died (the SIGCHLD handler's, from C++, and the
# DataLoader's own check), one or several pids.
_WORKER_KILLED = re.compile(r'DataLoader worker \(pid(?:\(s\))? [\d, ]+\) is killed by signal: '
                            r'(?P<signal>[^.]+)\.')
_WORKER_EXITED = re.compile(r'DataLoader worker \(pid(?:\(s\))? [\d, ]+\) exited unexpectedly'
                            r'(?: with exit code (?P<code>-?\d+))?')
# What the system's kills of a worker usually mean, and the remedy.
_WORKER_SIGNAL_CAUSES = {
    'SIGKILL': 'out of memory? fewer data.workers_per_gpu or a smaller data.samples_per_gpu',
    'SIGBUS': 'out of shared memory? a larger /dev/shm or fewer data.workers_per_gpu',
}


def _data_loader_worker_death(error):
    """What torch's RuntimeError ``error`` says of a data-loader worker that died (killed by the
    out-of-memory killer, say), with the likely cause and remedy; None for another error."""
    message = str(error)
    killed = _WORKER_KILLED.search(message)
    if killed:
        # torch names the signal as strsignal() does ('Killed'): name it as kill -l does.
        names = {signal.strsignal(number): number.name for number in signal.Signals}
        name = names.get(killed['signal'], killed['signal'])
        cause = _WORKER_SIGNAL_CAUSES.get(name)
        return f'a data-loader worker was killed (by signal {name}' + (
            f': {cause})' if cause else ')')
    exited = _WORKER_EXITED.search(message)
    if exited:
        code = f' with exit code {exited["code"]}' if exited['code'] else ''
        return (f'a data-loader worker exited unexpectedly{code} (data.workers_per_gpu=0 loads '
                f'the data in the training process, where the error shows)')
    return None


def _removed_output_folder(cfg, error):
    """'the work dir PATH' (or the checkpoint folder) where ``error`` is a write into it that failed
    because it is no longer there; None for another error, e.g. reading an input file that is
    missing (an image: load_dataset names it)."""
    if error.errno not in (errno.ENOENT, errno.ENOTDIR):
        return None
    written = osp.abspath(error.filename) if isinstance(error.filename, str) else None
    for name, folder in (('the work dir', cfg.work_dir),
                         ('the checkpoint folder', checkpoint_dir(cfg))):
        inside = written is None or written.startswith(osp.join(osp.abspath(folder), ''))
        if inside and not osp.isdir(folder):
            return f'{name} {folder}'
    return None


def _where_to_resume_without(removed, cfg, runner):
    """``_where_to_resume`` once the folder ``removed`` names is gone (checkpoints in it too)."""
    if osp.isdir(checkpoint_dir(cfg)):
        return _where_to_resume(cfg)
    last = ((runner.meta or {}).get('hook_msgs') or {}).get('last_ckpt')
    if last is None:
        return 'no checkpoint was written before'
    return (f'its newest checkpoint, {osp.basename(last)}, went with it (if it was moved: '
            f'--resume-from NEW_PLACE/{osp.basename(last)} goes on from it)')


def checkpoint_dir(cfg):
    """The folder the run's epoch (or iteration) checkpoints are written to."""
    return hook_output_dir(cfg.work_dir, (cfg.get('checkpoint_config') or {}).get('out_dir'))


def resume_checkpoint(cfg, logger=None):
    """The checkpoint the run described by ``cfg`` goes on from: ``cfg.resume_from``, else with
    ``cfg.auto_resume`` the newest complete one in its checkpoint folder, else None."""
    if cfg.get('resume_from'):
        return cfg.resume_from
    if cfg.get('auto_resume'):
        return find_resumable_checkpoint(checkpoint_dir(cfg), logger)
    return None


def _divergence_remedy(cfg):
    """What to change before resuming a run whose loss or weights diverged."""
    clip = (cfg.get('optimizer_config') or {}).get('grad_clip')
    if clip and clip.get('max_norm') is not None:
        return (f'a lower optimizer.lr or a lower optimizer_config.grad_clip.max_norm '
                f'(now {clip["max_norm"]})')
    return 'a lower optimizer.lr or gradient clipping (optimizer_config.grad_clip)'


def _where_to_resume(cfg):
    checkpoint = find_resumable_checkpoint(checkpoint_dir(cfg))
    if checkpoint is None:
        return 'no checkpoint was written before'
    return f'the newest complete checkpoint is {checkpoint} (--auto-resume goes on from it)'


def _check_resumed_optimizer(optimizer, configured, path, logger):
    """Warn when the resumed optimizer state keeps learning rates or weight decays other than
    the config's (``configured``: each group's (lr, weight_decay) as built)."""
    for group, (lr, weight_decay) in zip(optimizer.param_groups, configured):
        saved_lr = group.get('initial_lr', group['lr'])
        if not (math.isclose(saved_lr, lr) and math.isclose(group['weight_decay'], weight_decay)):
            logger.warning(f'{path} resumes its own optimizer settings (base lr {saved_lr:g}, '
                           f'weight decay {group["weight_decay"]:g}; the config says {lr:g} and '
                           f'{weight_decay:g}): to train on with the config\'s, start from its '
                           f'weights with --cfg-options load_from={path}')
            return


def _evaluates_after(epoch, evaluation):
    """Whether the evaluation hook evaluates after epoch ``epoch`` (counted from 1), as mmcv's
    ``start``/``interval`` and mmdet's ``dynamic_intervals`` decide."""
    interval = evaluation.get('interval', 1)
    for milestone, milestone_interval in sorted(evaluation.get('dynamic_intervals') or []):
        if epoch >= milestone:
            interval = milestone_interval
    start = evaluation.get('start')
    if start is None:
        return epoch % interval == 0
    return epoch >= start and (epoch - start) % interval == 0


def _evaluated_epochs(work_dir, run_id=None):
    """The epochs the json logs in ``work_dir`` hold an evaluation of: those of run ``run_id``
    (a log's first line is its run's meta), or where the checkpoint names no run (saved before
    runs had one), of every log. Another run in the same work dir (an earlier one, or one
    resumed from an older checkpoint) evaluated other weights under the same epoch numbers."""
    epochs = set()
    for log in glob.glob(osp.join(glob.escape(work_dir), '*.log.json')):
        with open(log) as f:
            for number, line in enumerate(f):
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a killed run
                    record = {}
                if number == 0 and run_id is not None and record.get('run_id') != run_id:
                    break
                if record.get('mode') == 'val' and 'epoch' in record:
                    epochs.add(record['epoch'])
    return epochs


def train_detector(model, dataset, cfg, distributed=False, validate=False, timestamp=None, meta=None):
    cfg = compat_cfg(cfg)
    logger = get_root_logger(log_level=cfg.log_level)
    datasets = dataset if isinstance(dataset, (list, tuple)) else [dataset]
    # The run's identity, which its checkpoints and the first line of its json log carry. A
    # resumed run has an id of its own: a resume reads the evaluations in the log of the run
    # that saved its checkpoint, which scored those very weights (a run resumed from an older
    # checkpoint of the same run trains other weights under the same epoch numbers).
    meta = dict(meta or {})
    meta.setdefault('run_id', uuid.uuid4().hex)

    loader_cfg = train_loader_config(cfg)
    if loader_cfg.pop('class_aware_sampler', None):
        raise ValueError('class_aware_sampler is not supported: training always uses the seeded '
                         'group sampler (see mmdet_custom/apis/train.py)')
    for decided_here in ('num_gpus', 'dist', 'seed', 'runner_type', 'shuffle'):
        loader_cfg.pop(decided_here, None)
    data_loaders = [build_train_dataloader(ds, seed=cfg.seed, **loader_cfg) for ds in datasets]

    precision = check_mixed_precision(cfg)
    if precision == 'float16':
        logger.info(f'mixed precision: float16 autocast, loss scale '
                    f'{cfg.fp16.get("loss_scale", 512.0)} (SyncFreeFp16OptimizerHook)')
    elif precision == 'bfloat16':
        logger.info('mixed precision: bfloat16 autocast in the backbone and neck, no loss scaling')
    if precision == 'bfloat16':
        _autocast_feature_extraction(model, cfg.device, torch.bfloat16)
    model = wrap_model(model, cfg, distributed, cfg.get('find_unused_parameters', False))
    auto_scale_lr(cfg, distributed, logger)  # the linear scaling rule, if auto_scale_lr.enable
    optimizer = build_optimizer(model, cfg.optimizer)
    runner_cfg = dict(cfg.runner)
    if runner_cfg.get('type') == 'EpochBasedRunner':  # iteration checkpoints that resume mid-epoch
        runner_cfg['type'] = 'ResumableEpochBasedRunner'
    runner = build_runner(runner_cfg, default_args=dict(
        model=model, optimizer=optimizer, work_dir=cfg.work_dir, logger=logger, meta=meta))
    runner.timestamp = timestamp  # so the .log and .log.json files share a name

    runner.register_training_hooks(
        cfg.lr_config,
        _optimizer_hook_config(cfg, distributed),
        cfg.checkpoint_config,
        cfg.log_config,
        cfg.get('momentum_config', None),
        custom_hooks_config=cfg.get('custom_hooks', None))
    # After the optimizer hook (ABOVE_NORMAL too, registered before) and before the checkpoint
    # hook (NORMAL): diverged weights are never saved.
    runner.register_hook(FiniteLossHook(patience=10 if precision == 'float16' else 1),
                         priority='ABOVE_NORMAL')
    if isinstance(runner, EpochBasedRunner):
        runner.register_hook(EpochSeedHook(cfg.seed), priority='VERY_HIGH')
    else:
        logger.warning('exact resumption is only implemented for EpochBasedRunner')
    if validate:
        # LOW: after the checkpoint hook, so an epoch's weights are on disk before evaluating them.
        runner.register_hook(_build_eval_hook(cfg, distributed, datasets[0].CLASSES),
                             priority='LOW')

    cfg.resume_from = resume_checkpoint(cfg, logger)
    if cfg.resume_from is None and cfg.get('auto_resume'):
        logger.info(f'auto-resume: no checkpoint in {checkpoint_dir(cfg)}, starting from scratch')
    detector = runner.model.module if is_module_wrapper(runner.model) else runner.model
    if cfg.resume_from:
        # mmcv's resume reads the weights leniently (one of another shape is only a warning) and
        # then loads the optimizer state, whose moments of the old shapes crash the fused update:
        # _load_training_state refuses such a file (and one of weights alone) instead.
        resumed_meta = {}

        def load_training_state(path, **_):
            checkpoint = _load_training_state(detector, runner.optimizer, path, logger=logger)
            resumed_meta.update(checkpoint['meta'])
            return checkpoint

        runner.load_checkpoint = load_training_state
        run_meta = dict(runner.meta or {})
        configured = [(group['lr'], group['weight_decay'])
                      for group in getattr(runner.optimizer, 'param_groups', ())]
        try:
            with configured_update_implementation(runner.optimizer):
                # On the CPU: mmcv's default asks CUDA for its device (IterBasedRunner always).
                runner.resume(cfg.resume_from, map_location='cpu')
        except CheckpointError as error:  # unreadable, of another model, or weights alone
            hint = ''
            saved_here = (osp.realpath(osp.dirname(osp.abspath(cfg.resume_from)))
                          == osp.realpath(checkpoint_dir(cfg)))
            if isinstance(error, DamagedCheckpointError) and saved_here:
                previous = find_resumable_checkpoint(checkpoint_dir(cfg), older_than=cfg.resume_from)
                hint = f' (the one before it: --resume-from {previous})' if previous else ''
            raise CheckpointError(f'cannot resume from {cfg.resume_from}: {error}{hint}') from None
        # Of another optimizer (parameter groups), or a training state mmcv cannot read.
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f'cannot resume from {cfg.resume_from}: '
                                  f'{type(error).__name__}: {error_summary(error)}') from error
        # The run goes on under its own meta (config, seed, environment: what its checkpoints
        # record), with the checkpoint's training state in it. mmcv's EpochBasedRunner took the
        # checkpoint's meta whole, IterBasedRunner none of it.
        runner.meta = dict(run_meta, **{key: resumed_meta[key] for key in _TRAINING_STATE_META
                                        if key in resumed_meta})
        if configured:
            _check_resumed_optimizer(runner.optimizer, configured, cfg.resume_from, logger)
        if isinstance(runner, EpochBasedRunner):
            _resume_epoch_based(runner, data_loaders[0], cfg, validate, logger,
                                resumed_meta.get('epoch_position'),
                                resumed_meta.get('batch_layout'), resumed_meta.get('run_id'))
    elif cfg.load_from:
        if '://' in cfg.load_from:  # a URL or one of mmcv's model-zoo schemes
            try:
                runner.load_checkpoint(cfg.load_from)
            except (OSError, RuntimeError) as error:  # unreachable (URLError), not found, not a checkpoint
                raise CheckpointError(f'cannot load load_from={cfg.load_from}: '
                                      f'{type(error).__name__}: {error_summary(error)}') from None
        else:
            load_weights_leniently(detector, cfg.load_from, logger)
    # Distributed runs keep mmcv's sleeps: the deadlock they dodge was seen there.
    try:
        with contextlib.nullcontext() if distributed else without_epoch_transition_sleeps():
            runner.run(data_loaders, cfg.workflow)
    except KeyboardInterrupt:  # Ctrl-C: where to go on from, instead of a traceback
        raise KeyboardInterrupt(_where_to_resume(cfg)) from None
    except NonFiniteLossError as error:
        raise TrainingStopped(f'training stopped: {error}, before a checkpoint of those weights '
                              f'was saved; {_where_to_resume(cfg)}, with '
                              f'{_divergence_remedy(cfg)}') from None
    except OSError as error:
        removed = _removed_output_folder(cfg, error)
        if removed is not None:
            raise TrainingStopped(f'training stopped: {removed} was removed or moved while it '
                                  f'trained (cannot write {error.filename}: {error.strerror}); '
                                  f'{_where_to_resume_without(removed, cfg, runner)}') from None
        if error.errno not in _WRITE_ERRNOS:
            raise
        # A buffered write (the logs) fails at its flush, which names no file.
        target = error.filename if error.filename is not None else f'in {cfg.work_dir}'
        raise TrainingStopped(f'training stopped: cannot write {target}: {error.strerror}; '
                              f'{_where_to_resume(cfg)}') from None
    except RuntimeError as error:
        worker_death = _data_loader_worker_death(error)
        if worker_death is None:
            raise
        raise TrainingStopped(f'training stopped: {worker_death}; '
                              f'{_where_to_resume(cfg)}') from None


def _resume_epoch_based(runner, train_loader, cfg, validate, logger, epoch_position=None,
                        batch_layout=None, run_id=None):
    """After ``runner.resume`` of an epoch checkpoint (ResumableEpochBasedRunner's record the
    ``batch_layout`` they were counted in), or of an iteration checkpoint saved in an epoch
    (``epoch_position``), saved by run ``run_id``: the iteration count, where the epoch under way
    goes on, the best-checkpoint record, and what is left to do."""
    batches_done = 0
    evaluation = cfg.get('evaluation', {})
    evaluated_epochs = _evaluated_epochs(cfg.work_dir, run_id) if validate else set()
    epoch_batches_then = _epoch_length_then(runner, train_loader, epoch_position, batch_layout)
    training_set_changed = epoch_batches_then not in (None, len(train_loader))
    # Saved part-way into an epoch that has no more batches than it had done now.
    cut_short = (training_set_changed and bool(epoch_position)
                 and not ends_its_epoch(epoch_position)
                 and epoch_position['batches'] >= len(train_loader))
    if training_set_changed:
        if cut_short:
            goes_on = (f'epoch {runner.epoch + 1} was saved after batch '
                       f'{epoch_position["batches"]} of {epoch_batches_then} and now ends at batch '
                       f'{len(train_loader)}: what follows that epoch comes next')
        else:
            goes_on = 'the iterations are recounted in epochs of the new length'
        logger.warning(f'{cfg.resume_from}: the training set changed: {epoch_batches_then} '
                       f'batches an epoch then, {len(train_loader)} now; {goes_on}')
    if epoch_position:
        batches_done = _batches_done(runner, train_loader, cfg.resume_from, epoch_position, logger)
        epoch = runner.epoch + 1  # under way when it was saved
        evaluation_due = validate and _evaluates_after(epoch, evaluation)
        evaluated = evaluation_due and epoch in evaluated_epochs
        if batches_done == len(train_loader) and (evaluated or not evaluation_due):
            # Nothing of the epoch is left: going on in it would evaluate it once more.
            done = 'whose evaluation is in the log' if evaluated else 'and no evaluation is due'
            if not cut_short:  # (the warning above said where it goes on)
                logger.info(f'{cfg.resume_from} was saved after the last batch of epoch {epoch}, '
                            f'{done}: going on after it')
            runner._epoch, batches_done = epoch, 0
        elif runner.epoch < runner.max_epochs:
            _go_on_mid_epoch(runner, train_loader, cfg.resume_from, batches_done, logger,
                             announce=not cut_short)
            _skip_evaluation_at_start(runner)  # of part of an epoch, which save_best could keep
    # The iterations done are the finished epochs * this loader's length and the batches of
    # the epoch under way: the stored count was made with the checkpoint's batch size and
    # number of processes, and the lr schedule reads runner.iter.
    iterations = runner.epoch * len(train_loader) + batches_done
    # mmcv's own runner saves after an iteration (checkpoint_config.by_epoch=False) as
    # epoch_N.pth, N the epoch under way, before counting that iteration: after batch b of
    # epoch N, its meta says N epochs and (N - 1) * batches an epoch + b - 1 iterations. A
    # finished epoch of a run with more processes or larger batches can say the same, and
    # without its batch layout the file does not tell which.
    last_batch = runner.iter - (runner.epoch - 1) * len(train_loader) + 1
    if (not epoch_position and not batch_layout and runner.epoch
            and 1 <= last_batch < len(train_loader)):
        logger.warning(f'{cfg.resume_from} records {runner.iter} iterations: with '
                       f'{len(train_loader)} batches an epoch, that is batch {last_batch} of '
                       f'epoch {runner.epoch}. If mmcv\'s EpochBasedRunner saved it there (after '
                       f'an iteration, with checkpoint_config.by_epoch=False, naming the file '
                       f'after the epoch under way), resuming it as a finished epoch skips the '
                       f'rest of that epoch; if a run of more processes or larger batches saved '
                       f'it, that epoch was finished. Going on from {iterations} '
                       f'({runner.epoch} epochs of {len(train_loader)})')
        runner._iter = iterations
    elif runner.iter != iterations:
        in_epoch = f' and {batches_done} batches' if batches_done else ''
        counted_in = (f'epochs of {epoch_batches_then} batches' if training_set_changed
                      else 'another batch size or number of processes')
        logger.info(f'{cfg.resume_from}: {runner.iter} iterations were counted with {counted_in}; '
                    f'going on from {iterations} ({runner.epoch} epochs of {len(train_loader)}'
                    f'{in_epoch})')
        runner._iter = iterations
    if validate:
        best_dir = hook_output_dir(cfg.work_dir, evaluation.get('out_dir'))
        restore_best_record(runner.meta, best_dir, runner.epoch, logger)
        # (A checkpoint saved in a later epoch does not hold the unevaluated epoch's weights.)
        if runner.epoch in evaluated_epochs:
            _skip_evaluation_at_start(runner)  # it would score the logged epoch once more
        elif (not epoch_position and _evaluates_after(runner.epoch, evaluation)
              and not _evaluates_at_start(runner.epoch, evaluation)):
            logger.warning(f'epoch {runner.epoch} was saved but not evaluated (the run stopped in '
                           f'between): tools/test.py with {cfg.resume_from} evaluates it')
    if runner.epoch >= runner.max_epochs:
        logger.warning(f'{cfg.resume_from} ends epoch {runner.epoch} of {runner.max_epochs}: '
                       f'nothing left to train (raise runner.max_epochs to train longer)')


def _evaluates_at_start(epochs_done, evaluation):
    """Whether mmcv's eval hook scores the weights of a run resumed after ``epochs_done`` epochs
    before training on: only with ``start`` set, and then as it decides after the next epoch."""
    start = evaluation.get('start')
    return start is not None and epochs_done >= start and _evaluates_after(epochs_done + 1,
                                                                            evaluation)


def _skip_evaluation_at_start(runner):
    """No evaluation of the resumed weights before the first epoch (mmcv's with
    ``evaluation.start`` set)."""
    for hook in runner.hooks:
        if isinstance(hook, MmcvEvalHook):
            hook.initial_flag = False


def _epoch_length_then(runner, train_loader, epoch_position=None, batch_layout=None):
    """The batches an epoch had in the run that saved the checkpoint ``runner`` resumed, where
    that run counted them in this loader's batch layout (processes, images each): an iteration
    checkpoint's ``epoch_position`` records them, an epoch checkpoint's count of iterations (its
    ``batch_layout``) gives them. None where the file does not say, or for another layout."""
    _, world_size = get_dist_info()
    if epoch_position:
        recorded, batches = epoch_position, epoch_position.get('epoch_batches')
    elif batch_layout and runner.epoch and runner.iter % runner.epoch == 0:
        recorded, batches = batch_layout, runner.iter // runner.epoch
    else:
        return None
    layout = (recorded['world_size'], recorded['samples_per_gpu'] or train_loader.batch_size)
    if batches is None or layout != (world_size, train_loader.batch_size):
        return None
    return int(batches)


def _batches_done(runner, train_loader, path, position, logger):
    """How many of this loader's batches of the epoch under way the batches ``position`` says
    were done stand for: at most the epoch's (a training set that shrank since has fewer)."""
    _, world_size = get_dist_info()
    layout = (position['world_size'], position['samples_per_gpu'] or train_loader.batch_size)
    batches = position['batches']
    if ends_its_epoch(position):  # the whole epoch, in any layout
        return len(train_loader)
    if layout != (world_size, train_loader.batch_size):
        # Another layout orders the epoch's images otherwise: go on after as many images.
        images_done = batches * layout[0] * layout[1]
        batches = min(len(train_loader),
                      math.ceil(images_done / (world_size * train_loader.batch_size)))
        logger.warning(f'{path} was saved {position["batches"]} batches into epoch '
                       f'{runner.epoch + 1} by {layout[0]} process(es) of {layout[1]} images '
                       f'each; with {world_size} of {train_loader.batch_size}, the epoch goes on '
                       f'after {batches} batches, in another image order than the run that saved '
                       f'it had')
    return min(batches, len(train_loader))


def _go_on_mid_epoch(runner, train_loader, path, batches, logger, announce=True):
    """Set the epoch under way to go on after ``batches`` of this loader's batches (and log
    where, with ``announce``)."""
    if not isinstance(runner, ResumableEpochBasedRunner):  # a runner type of the config's own
        raise CheckpointError(f'{path} was saved {batches} batches into epoch '
                              f'{runner.epoch + 1}: going on there needs runner type '
                              f'EpochBasedRunner (train_detector builds it as '
                              f'ResumableEpochBasedRunner), not {type(runner).__name__}')
    train_loader.sampler.skip_next(batches * train_loader.batch_size)
    runner.go_on_in_epoch(batches)
    if not announce:
        return
    if batches < len(train_loader):
        logger.info(f'{path} was saved in epoch {runner.epoch + 1}: it goes on from batch '
                    f'{batches + 1} of {len(train_loader)}')
    else:
        logger.info(f'{path} was saved after the last batch of epoch {runner.epoch + 1}: what '
                    f'follows an epoch (its evaluation, its checkpoint) comes next')
