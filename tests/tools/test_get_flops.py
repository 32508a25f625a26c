"""tools/get_flops.py: generic counter plus the DCNv3 cores, against the published figures."""
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('mmdet')
from tools_testlib import QUICKSTART_CONFIG, ROOT  # noqa: E402

sys.path.insert(0, osp.join(ROOT, 'tools'))
import get_flops  # noqa: E402


def test_dcnv3_cores_are_added_per_layer_and_level(monkeypatch):
    from mmcv import Config
    cfg = Config.fromfile(QUICKSTART_CONFIG)
    generic_counts = []  # mmcv's count, which has no formula for the DCNv3 cores

    def recording_counter(*args, **kwargs):
        flops, params = get_model_complexity_info(*args, **kwargs)
        generic_counts.append(flops)
        return flops, params

    get_model_complexity_info = get_flops.get_model_complexity_info
    monkeypatch.setattr(get_flops, 'get_model_complexity_info', recording_counter)
    total, dcn, params = get_flops.count_complexity(cfg, 256, 192)
    # Width 32, depths [1, 1, 2, 1]: stage i has 32 * 2**i channels on a (256 / 4 / 2**i) x
    # (192 / 4 / 2**i) map, and each DCNv3 layer costs 5 * h * w * 9 * C.
    expected = sum(depth * 5 * (64 >> i) * (48 >> i) * 9 * (32 << i)
                   for i, depth in enumerate([1, 1, 2, 1]))
    assert dcn == expected
    assert len(generic_counts) == 1 and generic_counts[0] > 0
    assert total == generic_counts[0] + dcn and params > 0


def test_every_dcnv3_core_counts_alike_on_the_cpu():
    """Any DCNv3 layer is counted, and runs on the PyTorch core: the original kernel's layer
    (CUDA only) counts as the compiled op's."""
    import original_dcnv3_core  # noqa: F401  (registers core_op='DCNv3_original')
    from mmcv import Config
    counts = {}
    for core_op in ('DCNv3', 'DCNv3_original'):
        cfg = Config.fromfile(QUICKSTART_CONFIG)
        cfg.model.backbone.core_op = core_op
        counts[core_op] = get_flops.count_complexity(cfg, 128, 96)
    assert counts['DCNv3_original'] == counts['DCNv3'] and counts['DCNv3'][1] > 0


def test_parameters_are_all_of_the_models_frozen_ones_included(capsys):
    # mmdet's R50 Mask R-CNN freezes its stem and first stage: mmcv's counter gives 44,170,992.
    get_flops.main([osp.join(ROOT, 'configs', '_base_', 'models', 'mask_rcnn_r50_fpn.py'),
                    '--shape', '64'])
    assert 'Params: 44,396,336 (44.40 M, all parameters, frozen ones included)\n' in \
        capsys.readouterr().out


def test_the_documented_command_counts_one_config_a_run():
    """docs/benchmarks.md's command, run by the shell with get_flops.py replaced by an echo of
    the arguments it would get."""
    with open(osp.join(ROOT, 'docs', 'benchmarks.md')) as f:
        commands = [line for line in f.read().splitlines()
                    if '.venv/bin/python tools/get_flops.py' in line]
    script = 'get_flops() { echo "$*"; }\n' + '\n'.join(
        command.replace('.venv/bin/python tools/get_flops.py', 'get_flops') for command in commands)
    result = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [
        f'configs/coco/mask_rcnn_internimage_{size}_fpn_1x_coco.py --shape 1280 800'
        for size in 'tsb']


# Published: flops at 1280x800 and parameter counts of the COCO Mask R-CNN models.
PUBLISHED = {
    't': (270e9, 48_920_544),
    's': (340e9, 68_715_024),
    'b': (501e9, 115_245_264),
}


@pytest.mark.slow
@pytest.mark.parametrize('size', ['t', 's', 'b'])
def test_published_figures(size, capsys):
    config = osp.join(ROOT, 'configs', 'coco', f'mask_rcnn_internimage_{size}_fpn_1x_coco.py')
    if not osp.isfile(config):
        pytest.skip(f'{config} not written yet')
    get_flops.main([config, '--shape', '1280', '800'])
    out = capsys.readouterr().out
    flops = float(out.split('Flops: ')[1].split(' GFLOPs')[0]) * 1e9
    params = int(out.split('Params: ')[1].split(' ')[0].replace(',', ''))
    published_flops, published_params = PUBLISHED[size]
    assert params == published_params
    assert abs(flops - published_flops) / published_flops < 0.02, f'{flops / 1e9:.1f}G'


def test_a_missing_config_is_one_line():
    with pytest.raises(SystemExit, match='^tools/get_flops.py: error: config file not found: '
                                         'configs/no/such.py$'):
        get_flops.main(['configs/no/such.py'])


def test_a_model_the_config_cannot_build_is_one_line():
    config = 'configs/coco/mask_rcnn_internimage_t_fpn_1x_coco.py'
    with pytest.raises(SystemExit, match=f'^tools/get_flops.py: error: cannot build the model of '
                                         f'config {config}: KeyError: .*Nope'):
        get_flops.main([config, '--cfg-options', 'model.backbone.type=Nope'])


def test_a_shape_below_the_backbone_stride_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        get_flops.main(['configs/coco/mask_rcnn_internimage_t_fpn_1x_coco.py', '--shape', '0'])
    assert '--shape must be at least 32 pixels each way, got [0]' in capsys.readouterr().err
