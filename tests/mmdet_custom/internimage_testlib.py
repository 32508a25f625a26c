"""Shared helpers for the InternImage plugin tests (reference data location, tiny model settings)."""
import json
import os
from pathlib import Path

import pytest

# ../shared/reference beside the checkout, or $DCNV3_REF_DIR (as for the op tests), e.g. where
# scripts/gpu_check.sh copied it on a machine without ../shared.
REFERENCE_DIR = Path(os.environ.get('DCNV3_REF_DIR') or
                     Path(__file__).resolve().parents[2].parent / 'shared' / 'reference')
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / 'configs' / 'coco'

# A small backbone with 16 channels per group at every stage, like T/S/B.
TINY_BACKBONE = dict(channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], mlp_ratio=4.0,
                     drop_path_rate=0.0, layer_scale=1.0, offset_scale=1.0, post_norm=False)


def reference_file(name):
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.skip(f'reference data not available: {path}')
    return path


def load_reference_json(size):
    with open(reference_file(f'internimage_{size}_state_dict.json')) as f:
        return json.load(f)


def load_reference_pt(style):
    import torch
    return torch.load(reference_file(f'internimage_tiny_ref_{style}_style.pt'), weights_only=True)
