"""tools/browse_dataset.py draws the ground truth that the training pipeline produces."""
import os.path as osp
import sys

import pytest

pytest.importorskip('mmdet')
from tools_testlib import ROOT  # noqa: E402

sys.path.insert(0, osp.join(ROOT, 'tools'))
import browse_dataset  # noqa: E402


@pytest.mark.parametrize('split', ['train', 'val'])
def test_draws_the_requested_number_of_images(tmp_path, tiny_config, split):
    browse_dataset.main([tiny_config, '--output-dir', str(tmp_path), '--num', '2', '--split', split])
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['000000.png', '000001.png']
