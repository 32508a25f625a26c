"""Distributed set-up that works on GPU nodes (as mmcv does it) and on CPU-only machines.

mmcv's ``init_dist`` and mmdet's ``build_ddp`` assume CUDA: they pin a GPU per rank, default to
NCCL and refuse CPU models. Where CUDA is available the process group is set up as mmcv does,
except that a torchrun process takes the GPU of its LOCAL_RANK (mmcv's: RANK % GPUs); elsewhere
each process joins a gloo group. Either way the model is wrapped in
``MMDistributedDataParallelAnyDevice`` (mmcv's wrapper plus a CPU path and a torch 2.x fix).
"""
import inspect
import os
import subprocess

import mmcv.ops
import torch
import torch.distributed as dist
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.parallel import MMDistributedDataParallel, scatter_kwargs
from mmcv.runner import init_dist
from mmdet.utils import build_ddp, build_dp, get_root_logger
from torch.nn.parallel import DistributedDataParallel


_LAUNCHER_VARIABLES = {'pytorch': ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                                   'MASTER_PORT'),
                       'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')}
_LAUNCHED_BY = {'pytorch': 'torchrun (tools/dist_train.sh, tools/dist_test.sh)',
                'slurm': 'srun (tools/slurm_train.sh, tools/slurm_test.sh)'}


def init_distributed(launcher, backend=None, port=None):
    """Join the process group for ``launcher`` ('pytorch' or 'slurm'); returns the backend used.

    ``port`` (the config's ``dist_params.port``, as in mmdet) is the rendezvous port of a slurm
    run, so that two jobs on one node can be told apart; torchrun's comes from its launcher
    (``PORT`` for tools/dist_train.sh), and a ``port`` there is refused.
    """
    needed = _LAUNCHER_VARIABLES.get(launcher, ())
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise ValueError(f'--launcher {launcher} needs the variables its launcher sets '
                         f'({", ".join(missing)} missing): start the processes with '
                         f'{_LAUNCHED_BY[launcher]}')
    if port is not None and launcher != 'slurm':
        raise ValueError(f'dist_params.port={port} sets the port of slurm runs; torchrun\'s is '
                         f'the PORT variable of tools/dist_train.sh and tools/dist_test.sh')
    if torch.cuda.is_available():
        backend = backend or 'nccl'
        if launcher == 'pytorch':
            _init_torchrun_process_on_its_gpu(backend)
        else:
            init_dist(launcher, backend=backend, **({} if port is None else dict(port=port)))
        return backend
    if backend in (None, 'nccl'):
        backend = 'gloo'  # configs name nccl for GPU nodes; it has no CPU implementation
    if launcher == 'slurm':
        _export_slurm_env(port)
    elif launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} is not supported on CPU (use pytorch or slurm)')
    # torchrun (or the slurm variables above) supplies RANK, WORLD_SIZE, MASTER_ADDR/PORT.
    dist.init_process_group(backend=backend)
    return backend


def _init_torchrun_process_on_its_gpu(backend):
    """mmcv's ``init_dist('pytorch')`` with the GPU of LOCAL_RANK, the one ``wrap_model`` puts the
    model on. mmcv takes GPU RANK % device_count: on a second node with fewer processes than GPUs
    that is another GPU than the model's (collectives, barriers and the eval hook's tensors went
    there), and with more processes than GPUs a rank failed with an invalid device ordinal."""
    local_rank, count = int(os.environ['LOCAL_RANK']), torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f'process {local_rank} of this node has no GPU of its own: {count} '
                         f'GPU{"s" if count > 1 else ""} visible; start at most {count} '
                         f'process{"es" if count > 1 else ""} a node (NUM_PROCESSES of '
                         f'tools/dist_train.sh and tools/dist_test.sh)')
    torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)


def _export_slurm_env(port=None):
    """Translate slurm's task variables into the ones torch.distributed reads (the port: ``port``,
    else MASTER_PORT, else 29500, as mmcv's slurm set-up on GPUs)."""
    proc_id = int(os.environ['SLURM_PROCID'])
    os.environ['RANK'] = str(proc_id)
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        first_host = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1').strip()
        os.environ['MASTER_ADDR'] = first_host


class MMDistributedDataParallelAnyDevice(MMDistributedDataParallel):
    """mmcv's DDP wrapper, working on CPU processes and with the installed torch.

    - Without ``device_ids`` (CPU processes) mmcv's ``train_step``/``val_step`` would hand
      DataContainers to the model unopened; they are unpacked onto the CPU first (device -1, as
      MMDataParallel does on CPU). With ``device_ids`` (one GPU per process) nothing changes.
    - ``forward`` (used by distributed testing and evaluation): mmcv 1.7.2 overrides DDP's
      ``_run_ddp_forward`` with code that reads ``_use_replicated_tensor_module``, an attribute
      torch 2.x no longer has, so every DDP forward fails, on GPUs too. The replacement only
      unpacks the DataContainers onto the process's device and then runs torch's own version.
    """

    def _unpack(self, inputs, kwargs):
        device = self.device_ids[0] if self.device_ids else -1
        inputs, kwargs = scatter_kwargs(inputs, kwargs, [device], dim=self.dim)
        return inputs[0], kwargs[0]

    def _run_ddp_forward(self, *inputs, **kwargs):
        inputs, kwargs = self._unpack(inputs, kwargs)
        return DistributedDataParallel._run_ddp_forward(self, *inputs, **kwargs)

    def train_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._unpack(inputs, kwargs)
        return super().train_step(*inputs, **kwargs)

    def val_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._unpack(inputs, kwargs)
        return super().val_step(*inputs, **kwargs)


def _no_buffer_sync_per_forward():
    """DDP's keyword for mmdet's choice of no buffer broadcast before each forward: torch 2.13
    renamed ``broadcast_buffers`` (now deprecated, with a warning from every process) to
    ``forward_sync_buffers``, which still syncs them once at the start, as parameters are."""
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel.__init__).parameters:
        return dict(forward_sync_buffers=False)
    return dict(broadcast_buffers=False)


def _batchnorm_per_process(model):
    """``model`` with its SyncBN layers made BN (same parameters and buffers, so checkpoints are
    the same), for CPU processes: torch's DDP refuses SyncBN on anything but GPUs."""
    sync_layers = (torch.nn.SyncBatchNorm, mmcv.ops.SyncBatchNorm)
    if any(isinstance(module, sync_layers) for module in model.modules()):
        get_root_logger().warning('SyncBN synchronizes batch statistics across GPUs only: in these '
                                  'CPU processes each normalizes its own images, as BN')
        model = revert_sync_batchnorm(model)
    return model


def wrap_model(model, cfg, distributed, find_unused_parameters=False):
    """Wrap a detector for training or testing on ``cfg.device`` (the mmdet conventions)."""
    if not distributed:
        return build_dp(model, cfg.device, device_ids=cfg.gpu_ids)
    options = dict(find_unused_parameters=find_unused_parameters, **_no_buffer_sync_per_forward())
    if cfg.device == 'cpu':
        return MMDistributedDataParallelAnyDevice(_batchnorm_per_process(model), **options)
    if cfg.device != 'cuda':
        return build_ddp(model, cfg.device, device_ids=[int(os.environ['LOCAL_RANK'])], **options)
    local_rank = int(os.environ['LOCAL_RANK'])
    return MMDistributedDataParallelAnyDevice(model.cuda(local_rank), device_ids=[local_rank],
                                              **options)
