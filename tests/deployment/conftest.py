"""Fixtures of the deployment tests: the tools tests' tiny config, a random-weights checkpoint."""
import os.path as osp
import sys

import pytest

# The tiny config and subprocess helpers live with the tools tests.
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))


@pytest.fixture(scope='session')
def tiny_detector(tmp_path_factory):
    """(config path, checkpoint path, Config, detector in eval mode) of the tiny InternImage
    Mask R-CNN with random weights; the config points at a data root that does not exist."""
    pytest.importorskip('mmdet')
    import torch
    from mmcv import Config
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector
    from tools_testlib import write_tiny_config

    import mmdet_custom  # noqa: F401
    from mmdet_custom.datasets.synthetic_shapes import CLASSES
    folder = tmp_path_factory.mktemp('tiny_detector')
    config = write_tiny_config(folder / 'tiny.py', str(folder / 'no_data'))
    cfg = Config.fromfile(config)
    cfg.model.train_cfg = None
    torch.manual_seed(0)
    detector = build_detector(cfg.model).eval()
    checkpoint = str(folder / 'tiny.pth')
    save_checkpoint(detector, checkpoint, meta=dict(CLASSES=CLASSES))
    return config, checkpoint, cfg, detector
