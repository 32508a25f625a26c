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
    result = run_tool([PYTHON, SCRIPT, '--image-size', '64', '96', '--repeats', '1', '--warmup', '0',
                       '--breakdown'])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'image 64x96, training batch 2' in out
    for title in ('backbone+neck', 'full inference', 'training step (2 img)'):
        timed = re.search(rf'^{re.escape(title)}\s+(\d+)ms\s+(\d+)ms\s+(\d+\.\d\d)x$', out, re.M)
        assert timed, out
        r50_ms, t_ms, ratio = (float(value) for value in timed.groups())
        # T / R50 from the unrounded times: within the rounding of the printed milliseconds.
        assert abs(ratio - t_ms / r50_ms) <= ratio * (0.5 / t_ms + 0.5 / r50_ms) + 0.005, out
        # --breakdown: total = dense + rest (to rounding) per model, a floor for T only
        r50 = re.search(rf'^{re.escape(title)}\s+R50\s+(\d+)\s+(\d+)\s+(\d+)$', out, re.M)
        t = re.search(rf'^{re.escape(title)}\s+T\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)x$', out, re.M)
        assert r50 and t, out
        for total, dense, rest in (r50.groups(), t.groups()[:3]):
            assert abs(int(total) - int(dense) - int(rest)) <= 1 and int(dense) > 0, out
    assert 'T/R50 targets: backbone+neck <= 1.15' in out


@pytest.mark.parametrize('target, met', [(100.0, True), (0.01, False)])
def test_check_fails_on_a_missed_target_only(benchmark, monkeypatch, capsys, target, met):
    monkeypatch.setattr(benchmark, 'TARGETS', dict.fromkeys(benchmark.TARGETS, target))
    argv = ['--parts', 'backbone', '--image-size', '64', '96', '--repeats', '1', '--warmup', '0',
            '--threads', '1', '--check']
    if met:
        benchmark.main(argv)
    else:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(argv)
        assert exit_info.value.code == 1
    assert f'backbone+neck <= {target:g} {"met" if met else "NOT met"}' in capsys.readouterr().out


def test_breakdown_separates_dense_operators(benchmark):
    import torch
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    conv_input, weight = torch.randn(1, 8, 32, 32), torch.randn(8, 8, 3, 3)
    dense, rest = benchmark.op_breakdown(lambda: (a.mm(b), torch.nn.functional.conv2d(conv_input, weight)))
    assert dense > 0 and rest >= 0
    dense, rest = benchmark.op_breakdown(lambda: (a.exp(), a.sigmoid() + b))
    assert dense == 0 and rest > 0


def test_floor_puts_r50s_other_operators_in_place_of_ts(benchmark, capsys):
    benchmark.print_breakdown('part', {'r50': (800.0, 200.0), 't': (900.0, 400.0)})
    r50_row, t_row = capsys.readouterr().out.splitlines()
    assert r50_row.split() == ['part', 'R50', '1000', '800', '200']
    assert t_row.split() == ['part', 'T', '1300', '900', '400', '1.10x']  # (900 + 200) / 1000


@pytest.mark.parametrize('argv, message', [
    (['--image-size', '16', '64'], "argument --image-size: must be a whole number of at least 32, "
                                   "got '16'"),
    (['--repeats', '0'], "argument --repeats: must be a whole number of at least 1, got '0'"),
    (['--train-batch', '0'], "argument --train-batch: must be a whole number of at least 1, "
                             "got '0'"),
    (['--warmup', '-1'], "argument --warmup: must be a whole number of at least 0, got '-1'"),
    (['--models', 's', '--check'], '--check needs t among --models'),
    (['--models', 'l'], "invalid choice: 'l'"),
    (['--breakdown', '--device', 'cuda'], '--breakdown splits CPU time; it needs --device cpu'),
    (['--r50-frozen-stages', '5'], "invalid choice: 5"),
])
def test_bad_options_are_named(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_default_image_size_is_a_3_2_image_at_the_test_scale(benchmark, capsys):
    import mmcv
    width, height = mmcv.rescale_size((640, 427), (1333, 800))  # the test pipeline's Resize
    padded = tuple(-(-size // 32) * 32 for size in (height, width))
    assert (height, width) == (800, 1199) and padded == benchmark.parse_args([]).image_size
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--help'])
    assert ' '.join(capsys.readouterr().out.split()).count(
        'the default is a 3:2 image (such as 640x427) at the 1333x800 test scale, 800x1199, '
        'padded to /32') == 1


def test_every_config_exists(benchmark):
    assert all(osp.isfile(osp.join(ROOT, path)) for path in benchmark.CONFIGS.values())


def test_synthetic_ground_truth_is_inside_the_image(benchmark):
    import torch
    truth = benchmark.synthetic_ground_truth(64, 96, 2, 'cpu', torch.Generator().manual_seed(0))
    for boxes, labels, masks in zip(truth['gt_bboxes'], truth['gt_labels'], truth['gt_masks']):
        assert boxes.shape == (8, 4) and labels.shape == (8,) and masks.masks.shape == (8, 64, 96)
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
        assert masks.masks.sum() > 0


def test_r50_frozen_stages_option(benchmark):
    """--r50-frozen-stages -1 trains all of R50 (as InternImage is trained); the default is
    mmdet's config, whose stem and first stage take no gradients."""
    def frozen(model):
        return sorted({name.split('.')[1] for name, p in model.named_parameters() if not p.requires_grad})
    assert frozen(benchmark.build_model('r50', 'cpu', 0)) == ['bn1', 'conv1', 'layer1']
    assert frozen(benchmark.build_model('r50', 'cpu', 0, r50_frozen_stages=-1)) == []
