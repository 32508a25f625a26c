"""tools/benchmark_inference.py: all three parts end to end on a small image, and its options."""
import os.path as osp
import re
import sys

import pytest
from tools_testlib import PYTHON, ROOT, load_script, run_tool

SCRIPT = osp.join(ROOT, 'tools', 'benchmark_inference.py')


@pytest.fixture(scope='module')
def benchmark():
    """The script as a module (tools/ on sys.path for its _bootstrap and _timing imports)."""
    sys.path.insert(0, osp.dirname(SCRIPT))
    try:
        yield load_script('tools/benchmark_inference.py', 'benchmark_inference')
    finally:
        sys.path.remove(osp.dirname(SCRIPT))


@pytest.mark.slow
def test_times_all_parts_on_a_small_image():
    result = run_tool([PYTHON, SCRIPT, '--image-size', '64', '96', '--repeats', '1', '--warmup', '0'])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'image 64x96, training batch 2' in out
    for title in ('backbone+neck', 'full inference', 'training step (2 img)'):
        assert re.search(rf'^{re.escape(title)}\s+\d+ms\s+\d+ms\s+\d+\.\d\dx$', out, re.M), out
    assert 'T/R50 targets: backbone+neck <= 1.15' in out


@pytest.mark.parametrize('argv, message', [
    (['--image-size', '16', '64'], '--image-size must be at least 32x32'),
    (['--models', 's', '--check'], '--check needs t among --models'),
    (['--models', 'l'], "invalid choice: 'l'"),
])
def test_bad_options_are_named(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_every_config_exists(benchmark):
    assert all(osp.isfile(osp.join(ROOT, path)) for path in benchmark.CONFIGS.values())


def test_synthetic_ground_truth_is_inside_the_image(benchmark):
    import torch
    truth = benchmark.synthetic_ground_truth(64, 96, 2, 'cpu', torch.Generator().manual_seed(0))
    for boxes, labels, masks in zip(truth['gt_bboxes'], truth['gt_labels'], truth['gt_masks']):
        assert boxes.shape == (8, 4) and labels.shape == (8,) and masks.masks.shape == (8, 64, 96)
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
        assert masks.masks.sum() > 0
