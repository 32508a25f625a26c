"""``train_detector``: mmdet 2.x training, made resumable bit-for-bit and runnable on CPU processes.

Differences from ``mmdet.apis.train_detector``:
- the training sampler is always the seeded, epoch-aware group sampler (mmdet's non-distributed
  GroupSampler shuffles from the global numpy state instead), and EpochSeedHook re-seeds every
  RNG from (seed, epoch, rank), so a run resumed from an epoch checkpoint replays the remaining
  epochs exactly as an uninterrupted run would;
- ``auto_resume`` skips a checkpoint left half-written by a killed run;
- distributed CPU training uses gloo and a CPU DDP wrapper (see ``distributed.py``).
"""
from functools import partial

from mmcv.parallel import collate
from mmcv.runner import (EpochBasedRunner, Fp16OptimizerHook, OptimizerHook, build_runner,
                         get_dist_info)
from mmdet.core import EvalHook, build_optimizer
from mmdet.datasets import build_dataloader, build_dataset, replace_ImageToTensor
from mmdet.datasets.samplers import DistributedGroupSampler
from mmdet.utils import compat_cfg, get_root_logger
from torch.utils.data import DataLoader

from .checkpoint import find_resumable_checkpoint
from .distributed import wrap_model
from .seeding import EpochSeedHook
from .test import DistEvalHookAnyDevice


def build_train_dataloader(dataset, samples_per_gpu, workers_per_gpu, seed, **loader_kwargs):
    """A training loader whose order depends only on (seed, epoch), in one process or many.

    mmdet's DistributedGroupSampler (images of one aspect-ratio group per batch, shuffled from
    seed + epoch) is used with every world size, including 1.
    """
    rank, world_size = get_dist_info()
    sampler = DistributedGroupSampler(dataset, samples_per_gpu, world_size, rank, seed=seed or 0)
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


def _optimizer_hook_config(cfg, distributed):
    fp16_cfg = cfg.get('fp16', None)
    if fp16_cfg is not None:
        return Fp16OptimizerHook(**cfg.optimizer_config, **fp16_cfg, distributed=distributed)
    if distributed and 'type' not in cfg.optimizer_config:
        return OptimizerHook(**cfg.optimizer_config)
    return cfg.optimizer_config


def _build_eval_hook(cfg, distributed):
    loader_args = dict(samples_per_gpu=1, workers_per_gpu=2, dist=distributed, shuffle=False,
                       persistent_workers=False)
    loader_args.update(cfg.data.get('val_dataloader', {}))
    if loader_args['samples_per_gpu'] > 1:
        # Batched testing needs DefaultFormatBundle in place of ImageToTensor.
        cfg.data.val.pipeline = replace_ImageToTensor(cfg.data.val.pipeline)
    val_loader = build_dataloader(build_dataset(cfg.data.val, dict(test_mode=True)), **loader_args)
    eval_cfg = dict(cfg.get('evaluation', {}))
    eval_cfg['by_epoch'] = cfg.runner['type'] != 'IterBasedRunner'
    hook_type = DistEvalHookAnyDevice if distributed else EvalHook
    return hook_type(val_loader, **eval_cfg)


def train_detector(model, dataset, cfg, distributed=False, validate=False, timestamp=None, meta=None):
    cfg = compat_cfg(cfg)
    logger = get_root_logger(log_level=cfg.log_level)
    datasets = dataset if isinstance(dataset, (list, tuple)) else [dataset]

    loader_cfg = dict(samples_per_gpu=2, workers_per_gpu=2)
    loader_cfg.update(cfg.data.get('train_dataloader', {}))
    if loader_cfg.pop('class_aware_sampler', None):
        raise ValueError('class_aware_sampler is not supported: training always uses the seeded '
                         'group sampler (see mmdet_custom/apis/train.py)')
    for decided_here in ('num_gpus', 'dist', 'seed', 'runner_type', 'shuffle'):
        loader_cfg.pop(decided_here, None)
    data_loaders = [build_train_dataloader(ds, seed=cfg.seed, **loader_cfg) for ds in datasets]

    model = wrap_model(model, cfg, distributed, cfg.get('find_unused_parameters', False))
    optimizer = build_optimizer(model, cfg.optimizer)
    runner = build_runner(cfg.runner, default_args=dict(
        model=model, optimizer=optimizer, work_dir=cfg.work_dir, logger=logger, meta=meta))
    runner.timestamp = timestamp  # so the .log and .log.json files share a name

    runner.register_training_hooks(
        cfg.lr_config,
        _optimizer_hook_config(cfg, distributed),
        cfg.checkpoint_config,
        cfg.log_config,
        cfg.get('momentum_config', None),
        custom_hooks_config=cfg.get('custom_hooks', None))
    if isinstance(runner, EpochBasedRunner):
        runner.register_hook(EpochSeedHook(cfg.seed), priority='VERY_HIGH')
    else:
        logger.warning('exact resumption is only implemented for EpochBasedRunner')
    if validate:
        # LOW: after the checkpoint hook, so an epoch's weights are on disk before evaluating them.
        runner.register_hook(_build_eval_hook(cfg, distributed), priority='LOW')

    if cfg.resume_from is None and cfg.get('auto_resume'):
        cfg.resume_from = find_resumable_checkpoint(cfg.work_dir, logger)
        if cfg.resume_from is None:
            logger.info(f'auto-resume: no checkpoint in {cfg.work_dir}, starting from scratch')
    if cfg.resume_from:
        runner.resume(cfg.resume_from)
    elif cfg.load_from:
        runner.load_checkpoint(cfg.load_from)
    runner.run(data_loaders, cfg.workflow)
