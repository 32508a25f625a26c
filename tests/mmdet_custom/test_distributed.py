"""wrap_model for CPU processes (gloo): what torch's DistributedDataParallel takes there."""
import logging
import socket

import pytest
import torch
import torch.distributed as dist

pytest.importorskip('mmdet')
from mmcv import Config  # noqa: E402
from mmcv.cnn import build_norm_layer  # noqa: E402
from mmdet.utils import get_root_logger  # noqa: E402

from mmdet_custom.apis import MMDistributedDataParallelAnyDevice, wrap_model  # noqa: E402


@pytest.fixture
def one_process_group():
    """A gloo process group of this process alone, as tools/dist_train.sh starts on a CPU."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_syncbn_becomes_batchnorm_in_cpu_processes(one_process_group, caplog):
    # torch's DDP refused the model ("SyncBatchNorm layers only work with GPU modules"): a
    # traceback from every process of a CPU run of a config with SyncBN in its neck.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                                build_norm_layer(dict(type='SyncBN'), 4)[1])
    weight, running_mean = model[1].weight, model[1].running_mean
    keys = list(model.state_dict())
    # mmdet's logger set up outside caplog, which would leave it at NOTSET for the tests after.
    get_root_logger()
    with caplog.at_level(logging.WARNING, logger='mmdet'):
        wrapped = wrap_model(model, Config(dict(device='cpu')), distributed=True)
    assert isinstance(wrapped, MMDistributedDataParallelAnyDevice)
    norm = wrapped.module[1]
    assert isinstance(norm, torch.nn.modules.batchnorm._BatchNorm)
    assert not isinstance(norm, torch.nn.SyncBatchNorm)
    # The same parameters (the optimizer may hold them already) and checkpoint keys.
    assert norm.weight is weight and norm.running_mean is running_mean
    assert list(wrapped.module.state_dict()) == keys
    assert ('SyncBN synchronizes batch statistics across GPUs only: in these CPU processes each '
            'normalizes its own images, as BN') in caplog.messages
    wrapped.module.train()
    wrapped(torch.rand(2, 3, 4, 4)).sum().backward()
