"""tools/image_demo.py: a legible picture (enlarged, per-instance colours, labels that do not
overlap) with the ground truth beside the prediction for a test-set image."""
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import ROOT  # noqa: E402

sys.path.insert(0, osp.join(ROOT, 'tools'))
import image_demo  # noqa: E402


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory, tiny_shapes):
    import mmcv
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector

    from tools_testlib import write_tiny_config
    folder = tmp_path_factory.mktemp('demo')
    config = write_tiny_config(folder / 'tiny.py', tiny_shapes)
    torch.manual_seed(0)  # the same random detector whichever tests ran before
    model = build_detector(mmcv.Config.fromfile(config).model)
    checkpoint = str(folder / 'random.pth')
    save_checkpoint(model, checkpoint, meta=dict(CLASSES=('circle', 'triangle', 'rectangle')))
    return config, checkpoint


def test_a_checkpoint_without_class_names_takes_the_test_sets(tmp_path, random_checkpoint, capsys):
    # The demo drew COCO's names ('person', 'bicycle') over a model of other classes.
    import mmcv
    config, checkpoint = random_checkpoint
    weights = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    torch.save(dict(state_dict=weights), tmp_path / 'nameless.pth')
    nameless = str(tmp_path / 'nameless.pth')
    model = image_demo.build_for_inference(mmcv.Config.fromfile(config), nameless,
                                           torch.device('cpu'))
    assert model.CLASSES == ('circle', 'triangle', 'rectangle')
    assert 'records no class names; using data.test\'s: circle, triangle, rectangle' in (
        capsys.readouterr().out)
    fewer = mmcv.Config.fromfile(config)
    fewer.data.test.classes = ('circle', 'triangle')
    with pytest.raises(image_demo.UsageError, match=r'num_classes is 3, but data.test has 2 .*: '
                       r'name the 3 classes .*nameless.pth was trained on in data.test.classes'):
        image_demo.build_for_inference(fewer, nameless, torch.device('cpu'))
    # mmdet's CustomDataset without classes names none either: the labels are numbered.
    unnamed = mmcv.Config.fromfile(config)
    unnamed.data.test.update(type='CustomDataset', classes=None)
    model = image_demo.build_for_inference(unnamed, nameless, torch.device('cpu'))
    assert model.CLASSES == ('class 0', 'class 1', 'class 2')
    assert 'neither' in capsys.readouterr().out


def _panel(picture, index, panel_width):
    left = index * (panel_width + image_demo.PANEL_GAP)
    return picture[image_demo.HEADER_HEIGHT:, left:left + panel_width]


def test_val_image_gets_ground_truth_beside_the_prediction(tmp_path, random_checkpoint, tiny_shapes,
                                                          capsys):
    import mmcv
    config, checkpoint = random_checkpoint
    image_path = osp.join(tiny_shapes, 'val', '000000.png')
    out_file = tmp_path / 'out' / 'demo.png'
    image_demo.main([image_path, config, checkpoint, '--out-file', str(out_file),
                     '--device', 'cpu', '--score-thr', '0.0'])
    picture = mmcv.imread(str(out_file), channel_order='rgb')
    image = mmcv.imread(image_path, channel_order='rgb')
    scale = -(-image_demo.MIN_LONG_SIDE // max(image.shape[:2]))  # 64 px -> 12x
    panel_height, panel_width = image.shape[0] * scale, image.shape[1] * scale
    assert picture.shape == (image_demo.HEADER_HEIGHT + panel_height,
                             2 * panel_width + image_demo.PANEL_GAP, 3)
    truth = _panel(picture, 0, panel_width)
    plain = np.kron(image, np.ones((scale, scale, 1), np.uint8))  # the enlarged image, undrawn
    # The ground-truth panel is the enlarged image with every shape tinted: most pixels changed.
    changed = np.abs(truth.astype(int) - plain).max(-1) > 10
    assert 0.1 < changed.mean() < 0.9
    tints = {tuple(pixel) for pixel in truth[changed][::97]}
    assert len(tints) > 20  # colours, not one flat overlay
    # Random weights at score threshold 0: the test config's 30 detections, drawn beside it.
    assert capsys.readouterr().out.startswith('30 detections with score >= 0 drawn beside the '
                                              'ground truth')
    prediction = _panel(picture, 1, panel_width)
    assert (np.abs(prediction.astype(int) - plain).max(-1) > 10).mean() > 0.5  # they cover it


def test_image_outside_the_test_set_gets_the_prediction_alone(tmp_path, random_checkpoint, tiny_shapes,
                                                             capsys):
    import mmcv
    config, checkpoint = random_checkpoint
    image_path = str(tmp_path / 'elsewhere.png')
    shutil.copy(osp.join(tiny_shapes, 'val', '000001.png'), image_path)
    out_file = tmp_path / 'alone.png'
    image_demo.main([image_path, config, checkpoint, '--out-file', str(out_file), '--device', 'cpu',
                     '--score-thr', '0.0'])
    picture = mmcv.imread(str(out_file), channel_order='rgb')
    assert picture.shape == (image_demo.HEADER_HEIGHT + 768, 768, 3)
    assert capsys.readouterr().out.startswith('30 detections with score >= 0 drawn ')
    image = mmcv.imread(image_path, channel_order='rgb')
    plain = np.kron(image, np.ones((12, 12, 1), np.uint8))  # the enlarged image, undrawn
    changed = np.abs(picture[image_demo.HEADER_HEIGHT:].astype(int) - plain).max(-1) > 10
    assert changed.mean() > 0.5  # the detections drawn over the image


def test_ground_truth_reads_every_coco_segmentation_form(tmp_path, tiny_shapes):
    # COCO val2017's crowds are run-length encoded (iscrowd 1); a box-only annotation has none.
    import json

    from pycocotools import mask as mask_utils
    coco = json.loads(open(osp.join(tiny_shapes, 'annotations', 'instances_val.json')).read())
    image = coco['images'][0]
    anns = [ann for ann in coco['annotations'] if ann['image_id'] == image['id']][:1] * 4
    height, width = image['height'], image['width']
    polygon = anns[0]['segmentation']
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, height, width)))
    compressed = mask_utils.encode(np.asfortranarray(expected))
    compressed['counts'] = compressed['counts'].decode()  # as json stores it
    # Uncompressed: the lengths of alternating runs of 0 and 1, column-major, 0s first.
    flat = expected.flatten(order='F')
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = ([0] if flat[0] else []) + np.diff(bounds).tolist()
    forms = [polygon, dict(size=[height, width], counts=runs), compressed, []]
    coco['annotations'] = [dict(ann, id=index + 1, segmentation=form, iscrowd=int(index in (1, 2)))
                           for index, (ann, form) in enumerate(zip(anns, forms))]
    ann_file = tmp_path / 'val.json'
    ann_file.write_text(json.dumps(coco))
    cfg = image_demo.read_config(osp.join(ROOT, 'configs', 'shapes',
                                          'mask_rcnn_internimage_pico_fpn_shapes.py'))
    cfg.data.test.ann_file, cfg.data.test.img_prefix = str(ann_file), osp.join(tiny_shapes, 'val')
    truth = image_demo.ground_truth_instances(cfg, osp.join(tiny_shapes, 'val', image['file_name']))
    masks = [mask for *_, mask in truth]
    for mask in masks[:3]:
        np.testing.assert_array_equal(mask, expected.astype(bool))
    assert masks[3] is None


def test_labels_do_not_overlap_even_for_stacked_boxes():
    canvas = np.zeros((400, 400, 3), np.uint8)
    placed = []
    for shift in range(6):  # six nearly identical boxes: every label wants the same spot
        box = np.array([100 + shift, 100 + shift, 200, 200])
        placed.append(image_demo.place_label(box, (80, 20), placed, canvas.shape))
    for index, rect in enumerate(placed):
        assert 0 <= rect[0] and rect[2] <= 400 and 0 <= rect[1] and rect[3] <= 400
        assert not image_demo._overlaps(rect, placed[:index] + placed[index + 1:])


def test_instance_colours_are_distinct():
    colours = image_demo.instance_colours(12)
    assert len(set(colours)) == 12
    assert all(max(colour) == 255 for colour in colours)  # bright


def test_demo_missing_image_is_one_line_error(tmp_path, tiny_config):
    with pytest.raises(SystemExit, match='image not found'):
        image_demo.main([str(tmp_path / 'none.png'), tiny_config, 'x.pth'])


def test_demo_missing_config_is_one_line_error(tiny_shapes):
    image = osp.join(tiny_shapes, 'val', '000000.png')
    with pytest.raises(SystemExit, match='^tools/image_demo.py: error: config file not found: '
                                         'configs/no/such.py$'):
        image_demo.main([image, 'configs/no/such.py', 'x.pth'])


def test_demo_rejects_an_out_of_range_score_threshold(tiny_config, capsys):
    with pytest.raises(SystemExit):
        image_demo.main(['a.png', tiny_config, 'x.pth', '--score-thr', '1.5'])
    assert '--score-thr must lie in [0, 1]' in capsys.readouterr().err


def test_demo_refuses_an_out_file_opencv_cannot_write_before_any_work(tiny_config, capsys):
    with pytest.raises(SystemExit):
        image_demo.main(['a.png', tiny_config, 'x.pth', '--out-file', 'demo/result'])
    assert "--out-file: OpenCV cannot write 'demo/result'; name an image file" in capsys.readouterr().err


def test_demo_refuses_a_cuda_device_without_a_gpu(tiny_config, capsys, monkeypatch):
    monkeypatch.setattr(image_demo.torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit):
        image_demo.main(['a.png', tiny_config, 'x.pth', '--device', 'cuda:0'])
    assert '--device cuda:0: no CUDA GPU is available here (use --device cpu)' in capsys.readouterr().err


@pytest.mark.parametrize('device, message', [
    ('gpu', "--device 'gpu' is not a device: use cpu, cuda or cuda:N"),
    ('mps', '--device mps: mmdet runs this detector on cpu or cuda only')])
def test_demo_refuses_a_device_it_cannot_run_on(tiny_config, capsys, device, message):
    with pytest.raises(SystemExit):
        image_demo.main(['a.png', tiny_config, 'x.pth', '--device', device])
    assert message in capsys.readouterr().err


def test_demo_refuses_an_out_file_under_a_file_before_any_work(tmp_path, tiny_config):
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('')
    with pytest.raises(SystemExit, match=f'^tools/image_demo.py: error: --out-file '
                                         f'{a_file}/demo.png: {a_file} is a file, not a folder$'):
        image_demo.main(['a.png', tiny_config, 'x.pth', '--out-file', f'{a_file}/demo.png'])


def test_demo_a_file_that_is_no_image_is_one_line_error(tmp_path, tiny_config):
    not_an_image = tmp_path / 'photo.jpg'
    not_an_image.write_text('not an image')
    with pytest.raises(SystemExit, match=f'^tools/image_demo.py: error: cannot read {not_an_image}: '
                                         'not an image file OpenCV decodes$'):
        image_demo.main([str(not_an_image), tiny_config, 'x.pth'])


@pytest.fixture
def copied_shapes(tmp_path, tiny_shapes):
    """A config on a copy of the tiny dataset: a test that failed to refuse would draw over it."""
    from tools_testlib import write_tiny_config
    data = tmp_path / 'shapes'
    shutil.copytree(tiny_shapes, data)
    return data, write_tiny_config(tmp_path / 'copied.py', str(data))


def test_demo_refuses_to_draw_over_the_input_or_a_dataset_image(copied_shapes):
    # It drew over them: the annotations then described another picture, silently.
    data, config = copied_shapes
    image, other = str(data / 'val' / '000000.png'), str(data / 'train' / '000003.png')
    with pytest.raises(SystemExit, match=f'^tools/image_demo.py: error: --out-file {image} is the '
                                         'input image, which the drawing would replace'):
        image_demo.main([image, config, 'x.pth', '--out-file', image])
    with pytest.raises(SystemExit, match=f'^tools/image_demo.py: error: --out-file {other} is an '
                                         f'image of data.train \\(in {data}/train/\\), which the '
                                         'drawing would replace: choose another file$'):
        image_demo.main([image, config, 'x.pth', '--out-file', other])
