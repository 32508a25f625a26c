"""Fixes mmcv 1.7.2 needs on the torch installed here; applied once by ``import mmdet_custom``.

Applied at the package's import, not in ``mmdet_custom.apis``, so that every GPU path through
mmcv's ``scatter`` is covered: training and testing (``MMDataParallel``,
``MMDistributedDataParallel``) and mmdet's inference API (``inference_detector``).
"""
import torch
from mmcv.parallel import _functions as mmcv_parallel_functions


def _get_stream_for_device_id(device):
    """torch's ``_get_stream`` for the GPU index mmcv's ``Scatter`` passes it.

    mmcv 1.7.2 scatters a batch onto GPUs with ``_get_stream(device_id)``, an int; the torch
    installed here reads ``device.type``, so every GPU training and test step (MMDataParallel
    and MMDistributedDataParallel alike) failed with "'int' object has no attribute 'type'".
    """
    if isinstance(device, int):
        device = torch.device('cuda', device)
    return _torch_get_stream(device)


_torch_get_stream = mmcv_parallel_functions._get_stream
mmcv_parallel_functions._get_stream = _get_stream_for_device_id
