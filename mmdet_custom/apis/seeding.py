"""Randomness that depends only on (seed, epoch, rank), so a resumed run repeats an uninterrupted one.

mmdet seeds the global RNGs once at start-up, so the random state at the beginning of an epoch
depends on everything that ran before it; after a restart it differs. Here every consumer is
re-seeded per epoch: the global random/numpy/torch RNGs (augmentation in the main process,
DropPath) and the sampler's shuffle (``set_epoch``). Data-loader workers follow: they are
re-created every epoch and torch seeds their random/numpy/torch RNGs from a base seed drawn from
the main process's torch RNG (so mmdet's ``worker_init_fn``, which gives every epoch the same
worker seeds, is not used).
"""
import random

import numpy as np
import torch
from mmcv.runner import Hook, get_dist_info


def derive_seed(*entropy):
    """A 32-bit seed that depends on all of ``entropy`` (non-negative ints), well mixed."""
    return int(np.random.SeedSequence([int(value) for value in entropy]).generate_state(1)[0])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class EpochSeedHook(Hook):
    """Re-seed the global RNGs and the sampler from (seed, epoch, rank) before each epoch."""

    def __init__(self, seed):
        self.seed = 0 if seed is None else int(seed)

    def before_train_epoch(self, runner):
        rank, _ = get_dist_info()
        seed_everything(derive_seed(self.seed, runner.epoch, rank))
        loader = runner.data_loader
        for sampler in (getattr(loader, 'sampler', None), getattr(loader, 'batch_sampler', None)):
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(runner.epoch)
