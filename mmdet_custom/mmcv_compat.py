"""Fixes mmcv 1.7.2 needs, applied once by ``import mmdet_custom``.

Applied at the package's import, not in ``mmdet_custom.apis``, so that every path through them
is covered: mmcv's GPU ``scatter`` in training and testing (``MMDataParallel``,
``MMDistributedDataParallel``) and mmdet's inference API (``inference_detector``), and every
checkpoint mmcv saves to a local disk.
"""
import os
import os.path as osp

import torch
from mmcv.fileio.file_client import HardDiskBackend
from mmcv.parallel import _functions as mmcv_parallel_functions
from mmcv.utils import mkdir_or_exist


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


def _put_atomically(self, obj: bytes, filepath) -> None:
    """``HardDiskBackend.put`` (how mmcv's ``save_checkpoint`` writes a local file), written next
    to ``filepath`` and renamed onto it once complete.

    mmcv writes in place, so a run killed or out of disk space mid-write left a partial checkpoint
    under the final name (taking up the space it had written); an OSError now names the file.
    """
    filepath = str(filepath)
    mkdir_or_exist(osp.dirname(filepath))
    partial = osp.join(osp.dirname(filepath), f'.{osp.basename(filepath)}.partial')
    try:
        with open(partial, 'wb') as f:
            f.write(obj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, filepath)
    except BaseException as error:
        if osp.exists(partial):
            os.remove(partial)
        # A full disk says "No space left on device" and no file; a folder that cannot be written
        # names the hidden partial file: name the checkpoint either way.
        if isinstance(error, OSError) and error.filename in (None, partial):
            error.filename = filepath
        raise


HardDiskBackend.put = _put_atomically
