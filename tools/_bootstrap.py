"""Imported first by every tool: makes the checkout importable and mutes two import-time notices.

- ``mmdet_custom`` and ``ops_dcnv3`` import from the repository root, installed or not;
- mmcv 1.7 announces its 2.0 renaming on every import, and torch notes "No CUDA runtime is
  found" on CPU-only machines that have a CUDA toolkit. Neither concerns the run, and both would
  bury a tool's own one-line error messages.
"""
import logging
import os.path as osp
import sys
import warnings

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

warnings.filterwarnings('ignore', message='On January 1, 2023, MMCV will release v2.0.0')
logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
