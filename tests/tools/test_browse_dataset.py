"""tools/browse_dataset.py draws the ground truth that the training pipeline produces."""
import json
import os.path as osp
import shutil
import sys
from collections import Counter

import pytest

pytest.importorskip('mmdet')
from tools_testlib import ROOT  # noqa: E402

sys.path.insert(0, osp.join(ROOT, 'tools'))
import browse_dataset  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """What each drawing was given: its file name and its boxes, labels and masks."""
    calls = []
    draw = browse_dataset.imshow_det_bboxes

    def recording_draw(img, bboxes, labels, segms=None, **kwargs):
        calls.append((osp.basename(kwargs['out_file']), bboxes, labels, segms))
        return draw(img, bboxes, labels, segms=segms, **kwargs)

    monkeypatch.setattr(browse_dataset, 'imshow_det_bboxes', recording_draw)
    return calls


def _check_every_instance_drawn(drawn, annotation_file):
    with open(annotation_file) as f:
        coco = json.load(f)
    names = {image['id']: image['file_name'] for image in coco['images']}
    instances = Counter(names[ann['image_id']] for ann in coco['annotations'])
    for name, bboxes, labels, segms in drawn:
        assert len(bboxes) == len(labels) == len(segms) == instances[name] > 0, name
        assert segms.any(axis=(1, 2)).all(), name  # every mask has pixels


@pytest.mark.parametrize('split', ['train', 'val'])
def test_draws_the_requested_number_of_images(tmp_path, tiny_config, tiny_shapes, split, drawn):
    browse_dataset.main([tiny_config, '--output-dir', str(tmp_path), '--num', '2', '--split', split])
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['000000.png', '000001.png']
    _check_every_instance_drawn(drawn, osp.join(tiny_shapes, 'annotations', f'instances_{split}.json'))


def test_a_missing_config_or_annotation_file_is_one_line(tmp_path, tiny_config):
    with pytest.raises(SystemExit, match='^tools/browse_dataset.py: error: config file not found: '
                                         'configs/no/such.py$'):
        browse_dataset.main(['configs/no/such.py', '--output-dir', str(tmp_path)])
    missing = tmp_path / 'instances_train.json'
    with pytest.raises(SystemExit, match=r'^tools/browse_dataset.py: error: data.train: cannot '
                                         r'load the dataset: FileNotFoundError: .*instances_train'):
        browse_dataset.main([tiny_config, '--output-dir', str(tmp_path),
                             '--cfg-options', f'data.train.ann_file={missing}'])


def test_draws_the_dataset_inside_a_wrapper(tmp_path, tiny_config, tiny_shapes, drawn):
    # RepeatDataset (as in mmdet's configs) has no pipeline of its own: the wrapped one is drawn.
    from mmcv import Config
    cfg = Config.fromfile(tiny_config)
    cfg.data.train = dict(type='RepeatDataset', times=3, dataset=cfg.data.train)
    cfg.dump(str(tmp_path / 'repeat.py'))
    browse_dataset.main([str(tmp_path / 'repeat.py'), '--output-dir', str(tmp_path / 'out'),
                         '--num', '2', '--split', 'val'])
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.png')) == ['000000.png', '000001.png']
    _check_every_instance_drawn(drawn, osp.join(tiny_shapes, 'annotations', 'instances_val.json'))


def _renamed_images(tiny_shapes, tmp_path, rename):
    with open(osp.join(tiny_shapes, 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    for image in coco['images']:
        image['file_name'] = rename(image['file_name'])
    ann_file = tmp_path / 'renamed.json'
    ann_file.write_text(json.dumps(coco))
    return ann_file


def test_drawings_keep_the_images_subfolders(tmp_path, tiny_config, tiny_shapes):
    # Named by the file name alone, same-named images of two folders left one drawing for two
    # (the tool said 2 drawings). Folders a/ and b/ each hold a copy of the train images.
    data = tmp_path / 'data'
    for folder in ('a', 'b'):
        shutil.copytree(osp.join(tiny_shapes, 'train'), data / folder)
    ann_file = _renamed_images(tiny_shapes, tmp_path, lambda name: ('a/' if name < '000004'
                                                                     else 'b/') + name)
    out = tmp_path / 'out'
    browse_dataset.main([tiny_config, '--output-dir', str(out), '--num', '8', '--cfg-options',
                         f'data.train.ann_file={ann_file}', f'data.train.img_prefix={data}/'])
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*.png')) == [
        *(f'a/00000{i}.png' for i in range(4)), *(f'b/00000{i}.png' for i in range(4, 8))]
    # Samples per GPU in the dataset's entry (mmdet's older place) belong to the data loader.
    browse_dataset.main([tiny_config, '--output-dir', str(tmp_path / 'val'), '--split', 'val',
                         '--num', '1', '--cfg-options', 'data.val.samples_per_gpu=2'])
    assert [p.name for p in (tmp_path / 'val').glob('*.png')] == ['000000.png']


def test_refuses_to_draw_over_the_images_and_names_a_broken_one(tmp_path, tiny_config, tiny_shapes):
    # File names with the image's folder, here the whole path: the image folder is not img_prefix.
    images = osp.join(tiny_shapes, 'train')
    ann_file = _renamed_images(tiny_shapes, tmp_path, lambda name: osp.join(images, name))
    with pytest.raises(SystemExit, match=f'^tools/browse_dataset.py: error: --output-dir {images} '
                                         'holds the images drawn'):
        browse_dataset.main([tiny_config, '--output-dir', images, '--num', '2', '--cfg-options',
                             f'data.train.ann_file={ann_file}', 'data.train.img_prefix='])
    broken = tmp_path / 'images'
    shutil.copytree(images, broken)
    (broken / '000001.png').write_bytes(b'not a png')
    with pytest.raises(SystemExit, match=r'^tools/browse_dataset.py: error: '
                                         r'\S+/000001.png \(image id 2\)'):
        browse_dataset.main([tiny_config, '--output-dir', str(tmp_path / 'out'), '--num', '2',
                             '--cfg-options', f'data.train.img_prefix={broken}/'])


def test_refuses_to_draw_over_another_splits_images(tmp_path, tiny_shapes):
    # Both splits name their images 000000.png...: the train drawings replaced the val images.
    from tools_testlib import write_tiny_config
    data = tmp_path / 'shapes'  # a copy: a drawing over it must not spoil the shared dataset
    shutil.copytree(tiny_shapes, data)
    config = write_tiny_config(tmp_path / 'copied.py', str(data))
    with pytest.raises(SystemExit, match=f'^tools/browse_dataset.py: error: --output-dir '
                                         f'{data}/val is the image folder of data.val, whose images '
                                         'the drawings \\(named as their images\\) would replace'):
        browse_dataset.main([config, '--output-dir', str(data / 'val'), '--num', '2'])


def test_several_datasets_in_one_entry_are_refused(tmp_path, tiny_config):
    from mmcv import Config
    cfg = Config.fromfile(tiny_config)
    cfg.data.train = dict(type='ConcatDataset', datasets=[cfg.data.train, cfg.data.train])
    cfg.dump(str(tmp_path / 'concat.py'))
    with pytest.raises(SystemExit, match='^tools/browse_dataset.py: error: data.train holds '
                                         'several datasets \\(ConcatDataset\\); this tool draws one'):
        browse_dataset.main([str(tmp_path / 'concat.py'), '--output-dir', str(tmp_path / 'out')])


def test_a_count_below_one_is_an_argparse_error(tmp_path, tiny_config, capsys):
    with pytest.raises(SystemExit):
        browse_dataset.main([tiny_config, '--output-dir', str(tmp_path), '--num', '-3'])
    assert '--num must be at least 1, got -3' in capsys.readouterr().err
