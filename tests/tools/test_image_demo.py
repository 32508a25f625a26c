"""tools/image_demo.py writes a PNG with the drawn predictions."""
import os.path as osp
import sys

import pytest

pytest.importorskip('mmdet')
from tools_testlib import ROOT  # noqa: E402

sys.path.insert(0, osp.join(ROOT, 'tools'))
import image_demo  # noqa: E402


def test_demo_writes_a_png(tmp_path, tiny_config, tiny_shapes, capsys):
    import mmcv
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector
    model = build_detector(mmcv.Config.fromfile(tiny_config).model)
    checkpoint = str(tmp_path / 'random.pth')
    save_checkpoint(model, checkpoint, meta=dict(CLASSES=('circle', 'triangle', 'rectangle')))
    image = osp.join(tiny_shapes, 'val', '000000.png')
    out_file = tmp_path / 'out' / 'demo.png'
    image_demo.main([image, tiny_config, checkpoint, '--out-file', str(out_file), '--device', 'cpu',
                     '--score-thr', '0.0'])
    assert out_file.is_file()
    drawn = mmcv.imread(str(out_file))
    assert drawn.shape == mmcv.imread(image).shape
    assert 'drawn to' in capsys.readouterr().out


def test_demo_missing_image_is_one_line_error(tmp_path, tiny_config):
    with pytest.raises(SystemExit, match='image not found'):
        image_demo.main([str(tmp_path / 'none.png'), tiny_config, 'x.pth'])
