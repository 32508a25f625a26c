"""tools/train.py refuses bad input with one clear line and a non-zero exit status, and checks
the data before it builds the model (and downloads pretrained weights)."""
import json
import logging
import os.path as osp
import shutil

import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import (PYTHON, ROOT, free_port, load_script, refused, run_tool,  # noqa: E402
                           write_tiny_config)

TRAIN_TOOL = osp.join(ROOT, 'tools', 'train.py')


@pytest.fixture(scope='module')
def train_tool():
    return load_script('tools/train.py', 'train_tool')


def test_missing_config(train_tool):
    assert 'config file not found: configs/no/such.py' in refused(train_tool, 'configs/no/such.py')


def test_missing_annotation_file_and_image_folder_are_named(train_tool, tmp_path, tiny_shapes):
    data = tmp_path / 'data'
    shutil.copytree(tiny_shapes, data)
    # Pretrained weights that cannot be had either: the data is named first, before the model is
    # built (and the weights fetched) or the work dir made.
    config = write_tiny_config(tmp_path / 'tiny.py', str(data), extra=(
        "model['backbone']['init_cfg'] = dict(type='Pretrained', "
        f"checkpoint='{tmp_path}/no/in1k.pth')\n"))
    (data / 'annotations' / 'instances_val.json').unlink()
    message = refused(train_tool, config, '--work-dir', str(tmp_path / 'work'))
    assert f'data.val: annotation file not found: {data}/annotations/instances_val.json' in message
    assert not (tmp_path / 'work').exists()
    assert '--cfg-options data.val.ann_file=FILE' in message
    assert 'MMDET_DATASETS=FOLDER/' in message
    # Without validation the validation data is not needed; the training images are.
    shutil.rmtree(data / 'train')
    message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'))
    assert f'data.train: image folder not found: {data}/train/' in message


def test_mmdet_datasets_moves_the_data_root(train_tool, tmp_path, tiny_shapes, monkeypatch):
    # The hint's MMDET_DATASETS (mmdet's variable) replaces the config's data_root in every path.
    config = write_tiny_config(tmp_path / 'tiny.py', str(tiny_shapes))
    monkeypatch.setenv('MMDET_DATASETS', f'{tmp_path}/elsewhere/')
    message = refused(train_tool, config, '--work-dir', str(tmp_path / 'work'))
    assert f'annotation file not found: {tmp_path}/elsewhere/annotations/instances_train.json' in message


@pytest.mark.parametrize('classes, missing', [
    ("('circle','triangel','rectangle')", 'triangel'),
    ("('Circle','Triangle')", 'Circle, Triangle'),
])
def test_class_names_the_annotation_file_lacks_are_refused(train_tool, tmp_path, tiny_config,
                                                           tiny_shapes, classes, missing):
    # mmdet drops them and numbers the rest in turn: the rectangles trained as 'triangel', and
    # with every name missing, training ran no iteration and saved an untrained checkpoint.
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', f'data.train.classes={classes}')
    assert message.endswith(f"data.train: the classes {missing} are not among the annotation "
                            "file's categories (circle, triangle, rectangle) (ann_file "
                            f"{tiny_shapes}/annotations/instances_train.json)")


def test_heads_of_another_class_count_than_the_dataset_are_refused(train_tool, tmp_path,
                                                                   tiny_config):
    # mmdet's NumClassCheckHook asserted in the first epoch: a traceback from every process.
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', "data.train.classes=('circle','triangle')")
    assert message.endswith('model.roi_head.bbox_head.num_classes is 3, but data.train has 2 '
                            'classes (circle, triangle): set num_classes=2 in every head of the '
                            'config')


@pytest.mark.parametrize('options, neck, backbone', [
    # the neck of a config of another model size
    (['model.neck.in_channels=[64,128,256,512]'], [64, 128, 256, 512], [16, 32, 64, 128]),
    (['model.backbone.out_indices=[1,2,3]'], [16, 32, 64, 128], [32, 64, 128]),
])
def test_a_neck_expecting_other_feature_maps_than_the_backbone_gives_is_refused(
        train_tool, tmp_path, tiny_config, options, neck, backbone):
    # The first step failed after "Start running": a bare AssertionError in mmdet's FPN, or a
    # convolution's "expected input to have 64 channels, but got 16".
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', *options)
    indices = [1, 2, 3] if len(backbone) == 3 else [0, 1, 2, 3]
    assert message.endswith(f'model.neck.in_channels is {neck}, but the backbone gives {backbone} '
                            f'(channels=16, out_indices={indices}): set model.neck.in_channels='
                            f'{backbone}')


def test_a_dataset_without_class_names_has_no_class_count_to_check(tiny_config):
    # mmdet's CustomDataset without ``classes`` has CLASSES None; training stopped on a TypeError.
    import types

    from mmcv import Config
    from mmdet.models import build_detector
    usage = load_script('tools/_usage.py', '_usage')
    model = build_detector(Config.fromfile(tiny_config).model)
    usage.check_num_classes(model, types.SimpleNamespace(CLASSES=None), 'data.train')
    assert usage.predicted_class_count(model) == 3


def _mmdet_config(name):
    """One of the configs mmdet ships in its package (mmdet/.mim/configs)."""
    import mmdet
    from mmcv import Config
    return Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name))


def test_heads_that_count_more_than_the_datasets_classes_are_left_out_as_mmdet_does():
    # HTC's semantic head counts COCO's 183 stuff and thing classes: training and testing were
    # refused with "set num_classes=80 in every head", which would have broken the model; and
    # a panoptic model's heads count its things, its stuff or both.
    import types

    from mmdet.datasets import CocoDataset, CocoPanopticDataset
    from mmdet.models import build_detector
    usage = load_script('tools/_usage.py', '_usage')
    htc = build_detector(_mmdet_config('htc/htc_r50_fpn_1x_coco.py').model)
    usage.check_num_classes(htc, types.SimpleNamespace(CLASSES=CocoDataset.CLASSES), 'data.train')
    with pytest.raises(usage.UsageError, match=r'^model.roi_head.bbox_head.0.num_classes is 80, '
                                               r'but data.train has 2 classes'):
        usage.check_num_classes(htc, types.SimpleNamespace(CLASSES=('a', 'b')), 'data.train')
    panoptic = build_detector(_mmdet_config('panoptic_fpn/panoptic_fpn_r50_fpn_1x_coco.py').model)
    usage.check_num_classes(panoptic, CocoPanopticDataset, 'data.train')
    # mmdet's 3x panoptic config repeats its training set; the wrapper copies CLASSES alone.
    repeated = types.SimpleNamespace(CLASSES=CocoPanopticDataset.CLASSES,
                                     dataset=CocoPanopticDataset)
    usage.check_num_classes(panoptic, repeated, 'data.train')
    usage.check_num_classes(panoptic, types.SimpleNamespace(CLASSES=CocoPanopticDataset.CLASSES,
                                                            datasets=[repeated]), 'data.train')


@pytest.mark.parametrize('config, masks', [
    ('solo/solo_r50_fpn_1x_coco.py', True),  # a mask head of its own, no RoI head
    ('yolact/yolact_r50_1x8_coco.py', True),
    ('mask2former/mask2former_r50_lsj_8x2_50e_coco.py', True),
    ('mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py', True),
    ('faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py', False),
    ('retinanet/retinanet_r50_fpn_1x_coco.py', False),
])
def test_detectors_with_masks_are_told_from_their_config(config, masks):
    # SOLO's and YOLACT's mask heads are not in an RoI head: `--eval segm` was refused for them.
    usage = load_script('tools/_usage.py', '_usage')
    assert usage.predicts_masks(_mmdet_config(config)) is masks


def _train_set(tiny_shapes, ann_file, classes):
    from mmcv import ConfigDict

    from mmdet_custom.apis import load_dataset
    return load_dataset(ConfigDict(type='CocoDataset', ann_file=str(ann_file), pipeline=[],
                                   img_prefix=osp.join(tiny_shapes, 'train'), classes=classes),
                        'data.train')


def test_classes_in_another_order_than_the_annotation_files_are_refused(tmp_path, tiny_shapes):
    # mmdet numbers the labels in the file's order (in training and in evaluation) and names
    # label i after classes[i]: every rectangle was called a circle, and a test file listing its
    # categories otherwise than the training file scored another mAP, silently.
    from mmdet_custom.apis import DatasetError
    ann_file = osp.join(tiny_shapes, 'annotations', 'instances_train.json')
    assert _train_set(tiny_shapes, ann_file, ('circle', 'rectangle')).CLASSES == (
        'circle', 'rectangle')  # a subset, in the file's order
    with pytest.raises(DatasetError, match=r"^data.train: list the classes in the order of the "
                                           r"annotation file's categories, circle, rectangle "
                                           r"\(the config has rectangle, circle\): mmdet numbers "
                                           r"the labels in the file's order"):
        _train_set(tiny_shapes, ann_file, ('rectangle', 'circle'))
    reversed_file = _edited_annotations(tiny_shapes, tmp_path,
                                        lambda coco: coco['categories'].reverse())
    with pytest.raises(DatasetError, match=r"order of the annotation file's categories, "
                                           r"rectangle, triangle, circle \(the config has "
                                           r"circle, triangle, rectangle\)"):
        _train_set(tiny_shapes, reversed_file, ('circle', 'triangle', 'rectangle'))
    with pytest.raises(DatasetError, match=r'^data.train: the classes name circle more than once '
                                           r'\(circle, circle\)$'):
        _train_set(tiny_shapes, ann_file, ('circle', 'circle'))


def test_a_class_that_names_two_categories_is_refused(tmp_path, tiny_shapes):
    # Its second category's label was one past the classes: a mask-loss IndexError in training.
    from mmdet_custom.apis import DatasetError
    ann_file = _edited_annotations(tiny_shapes, tmp_path, lambda coco: coco['categories'].append(
        dict(id=9, name='circle')))
    with pytest.raises(DatasetError, match=r"^data.train: several of the annotation file's "
                                           r"categories have the name of one class \(circle: ids "
                                           r"1, 9\); give each category its own name"):
        _train_set(tiny_shapes, ann_file, ('circle', 'triangle'))


def _edited_annotations(tiny_shapes, tmp_path, edit):
    with open(osp.join(tiny_shapes, 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    edit(coco)
    path = tmp_path / 'edited.json'
    path.write_text(json.dumps(coco))
    return path


def test_a_dataset_left_empty_by_the_class_names_is_refused(train_tool, tmp_path, tiny_config,
                                                            tiny_shapes):
    # Training keeps only images with annotations of the config's classes: none, for a category
    # without annotations.
    ann_file = _edited_annotations(tiny_shapes, tmp_path, lambda coco: coco['categories'].append(
        dict(id=4, name='hexagon')))
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', "data.train.classes=('hexagon',)",
                      f'data.train.ann_file={ann_file}')
    assert message.endswith('data.train: no images in the dataset that have annotations of the '
                            f'classes hexagon (ann_file {ann_file})')


@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('bbox', [None, [1, 2, 3], [1, 2, 'x', 4]])
def test_an_annotation_without_a_box_is_named(train_tool, tmp_path, tiny_config, tiny_shapes,
                                              split, bbox):
    # Training read it with a KeyError traceback; evaluation's pycocotools, too.
    def edit(coco):
        if bbox is None:
            del coco['annotations'][2]['bbox']
        else:
            coco['annotations'][2]['bbox'] = bbox
    ann_file = _edited_annotations(tiny_shapes, tmp_path, edit)
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path),
                      '--cfg-options', f'data.{split}.ann_file={ann_file}')
    assert message.endswith(
        f'data.{split}: annotation 3 (image 1) has no box of 4 numbers [x, y, width, height]: '
        f"bbox {'missing' if bbox is None else bbox} (ann_file {ann_file})")


def test_an_unknown_evaluation_metric_is_refused_before_training(train_tool, tmp_path, tiny_config):
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path),
                       '--cfg-options', 'evaluation.metric=mAP')
    assert message.endswith("evaluation: CocoDataset cannot evaluate 'mAP' (it evaluates bbox, "
                            "segm, proposal)")


def test_a_load_from_url_that_cannot_be_fetched_is_one_line(train_tool, tmp_path, tiny_config):
    url = f'http://127.0.0.1:{free_port()}/weights.pth'  # nothing listens: refused at once
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', f'load_from={url}')
    assert message.startswith(f'tools/train.py: error: cannot load load_from={url}: URLError: ')


@pytest.mark.parametrize('option, message', [
    ('data.samples_per_gpu=0', 'data.samples_per_gpu must be a whole number of at least 1, got 0'),
    ('data.workers_per_gpu=-1', 'data.workers_per_gpu must be a whole number of at least 0, got -1'),
    ('runner.max_epochs=0', 'runner.max_epochs must be a whole number of at least 1, got 0'),
    ('optimizer.lr=abc', "optimizer.lr must be a number of at least 0, got 'abc'")])
def test_settings_that_cannot_train_are_refused(train_tool, tmp_path, tiny_config, option,
                                                message):
    assert refused(train_tool, tiny_config, '--work-dir', str(tmp_path), '--cfg-options',
                   option).endswith(message)


def test_resuming_from_a_missing_checkpoint(train_tool, tmp_path, tiny_config):
    message = refused(train_tool, tiny_config, '--resume-from', str(tmp_path / 'epoch_9.pth'),
                       '--work-dir', str(tmp_path / 'work'))
    assert f'--resume-from: checkpoint not found: {tmp_path}/epoch_9.pth' in message


def test_a_gpu_id_is_checked_before_anything_starts(train_tool, tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    work = tmp_path / 'work'
    assert refused(train_tool, tiny_config, '--gpu-id', '1', '--work-dir', str(work)).endswith(
        '--gpu-id 1: no GPU is visible to this process (it runs on the CPU)')
    monkeypatch.setattr('torch.cuda.is_available', lambda: True)
    monkeypatch.setattr('torch.cuda.device_count', lambda: 1)
    assert refused(train_tool, tiny_config, '--gpu-id', '1', '--work-dir', str(work)).endswith(
        '--gpu-id 1: 1 GPU visible, numbered 0 to 0')
    # Ranks take the GPU of their LOCAL_RANK; the refusal comes before joining a process group.
    assert refused(train_tool, tiny_config, '--gpu-id', '0', '--launcher', 'pytorch',
                   '--work-dir', str(work)).endswith(
        '--gpu-id applies to single-process runs; distributed ranks each use the GPU of their '
        'LOCAL_RANK (set CUDA_VISIBLE_DEVICES to choose GPUs)')
    assert not work.exists()


def _save_untrained_checkpoint(config, path, cfg_options=None, meta=None):
    # A checkpoint as training writes one (weights, epoch, iteration), of the model ``config``
    # builds with ``cfg_options``; no optimizer state is needed for what the tests check.
    from mmcv import Config
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options or {})
    cfg.model.backbone.init_cfg = None
    save_checkpoint(build_detector(cfg.model), str(path),
                    meta=dict(epoch=1, iter=4) if meta is None else meta)


def test_resuming_from_a_checkpoint_of_another_model(train_tool, tmp_path, tiny_config):
    # mmcv's own resume would load it with warnings, and the optimizer state after it could crash
    # the fused AdamW step (a segfault); the weights are checked first.
    work = tmp_path / 'work'
    work.mkdir()
    _save_untrained_checkpoint(tiny_config, work / 'epoch_1.pth',
                               {'model.roi_head.bbox_head.num_classes': 4})
    message = refused(train_tool, tiny_config, '--auto-resume', '--work-dir', str(work))
    assert message.endswith(
        f'checkpoint {work}/epoch_1.pth predicts 4 classes, the model built from the config 3 '
        f'(roi_head.bbox_head.fc_cls.weight is (5, 256) in the checkpoint, (4, 256) in the model): '
        f"set num_classes=4 in every head of the config, and name the checkpoint's classes in its "
        f"dataset's classes")


def test_resuming_from_weights_alone_points_to_load_from(train_tool, tmp_path, tiny_config):
    released = tmp_path / 'released.pth'  # as a model zoo checkpoint: weights, no training state
    _save_untrained_checkpoint(tiny_config, released, meta={})
    message = refused(train_tool, tiny_config, '--resume-from', str(released),
                       '--work-dir', str(tmp_path / 'work'))
    assert message.endswith(f'cannot resume from {released}: {released} holds weights but no '
                            f'training state (epoch, iteration): to start from its weights, use '
                            f'--cfg-options load_from={released}')


@pytest.fixture
def tf32_flag():
    import torch
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.backends.cuda.matmul
    torch.backends.cuda.matmul.allow_tf32 = saved


def test_resuming_a_finished_run_says_nothing_is_left(train_tool, tmp_path, tiny_config, tf32_flag):
    work = tmp_path / 'work'
    work.mkdir()
    _save_untrained_checkpoint(tiny_config, work / 'epoch_1.pth')  # the tiny config's last epoch
    # (In process, mmdet's logger may have been set up by an earlier test, without this log file.)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('mmdet').addHandler(handler)
    try:
        train_tool.main([tiny_config, '--auto-resume', '--no-validate', '--work-dir', str(work)])
    finally:
        logging.getLogger('mmdet').removeHandler(handler)
    log = '\n'.join(record.getMessage() for record in records)
    assert (f'{work}/epoch_1.pth ends epoch 1 of 1: nothing left to train (raise '
            'runner.max_epochs to train longer)') in log
    assert 'has no optimizer state: the optimizer starts afresh' in log
    assert tf32_flag.allow_tf32  # training uses TF32, as the original's train.py does


def test_auto_resume_refuses_a_run_of_another_seed(train_tool, tmp_path, tiny_config):
    # The quick start's SEED=1 went on from (or, finished, reported) the seed-0 run in its folder.
    torch.save(dict(state_dict={}, meta=dict(seed=0, epoch=1)), tmp_path / 'epoch_1.pth')
    assert refused(train_tool, tiny_config, '--work-dir', str(tmp_path), '--auto-resume',
                   '--seed', '1').endswith(
        f'--seed 1: {tmp_path}/epoch_1.pth, which --auto-resume would go on from, trained with '
        'seed 0: leave out --seed to go on with that run, or give another --work-dir for a new one')


def test_resuming_with_another_seed_by_name_is_warned_of(train_tool, tmp_path, tiny_config,
                                                          caplog):
    checkpoint = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict={}, meta=dict(seed=0, epoch=1)), checkpoint)
    # (The empty weights do not fit the model: the run stops there, after the warning.)
    assert 'does not fit the model' in refused(train_tool, tiny_config, '--work-dir', str(tmp_path),
                                               '--resume-from', str(checkpoint), '--seed', '1')
    assert (f'--seed 1: {checkpoint} trained with seed 0; the rest of the run draws other data '
            'orders and augmentations') in caplog.text


@pytest.mark.parametrize('backbone_in_load_from', [True, False])
def test_a_load_from_holding_the_backbone_saves_fetching_the_pretrained_one(
        train_tool, tmp_path, tiny_shapes, caplog, backbone_in_load_from):
    # The ImageNet weights were fetched, then replaced by load_from's: a download for nothing,
    # and offline (here: nothing listens at the URL) a refusal.
    url = f'http://127.0.0.1:{free_port()}/imagenet.pth'
    config = write_tiny_config(tmp_path / 'pretrained.py', tiny_shapes, extra=(
        f"model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint={url!r})"))
    detector = tmp_path / 'detector.pth'
    _save_untrained_checkpoint(config, detector)
    if not backbone_in_load_from:  # a detector checkpoint whose backbone is not this one
        checkpoint = torch.load(detector, weights_only=True)
        checkpoint['state_dict'] = {k: v for k, v in checkpoint['state_dict'].items()
                                    if not k.startswith('backbone.levels.3.')}
        torch.save(checkpoint, detector)
        message = refused(train_tool, config, '--no-validate', '--work-dir', str(tmp_path / 'work'),
                          '--cfg-options', f'load_from={detector}')
        assert f'could not load pretrained checkpoint {url}' in message
        return
    train_tool.main([config, '--no-validate', '--work-dir', str(tmp_path / 'work'),
                     '--cfg-options', f'load_from={detector}'])
    assert (f'load_from {detector} holds every backbone weight: the backbone starts from it, not '
            f'from {url}') in caplog.messages
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()


def test_fine_tuning_from_a_missing_checkpoint(train_tool, tmp_path, tiny_config):
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path / 'work'),
                       '--cfg-options', f'load_from={tmp_path}/coco.pth')
    assert message.endswith(f'checkpoint not found: {tmp_path}/coco.pth')


def test_launcher_without_its_variables_work_dir_on_a_file_and_bad_seed(train_tool, tmp_path,
                                                                       tiny_config, monkeypatch,
                                                                       capsys):
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    message = refused(train_tool, tiny_config, '--launcher', 'pytorch', '--work-dir', str(tmp_path))
    assert message.endswith('--launcher pytorch needs the variables its launcher sets (RANK, '
                            'WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing): start the processes '
                            'with torchrun (tools/dist_train.sh, tools/dist_test.sh)')
    (tmp_path / 'file').write_text('')
    message = refused(train_tool, tiny_config, '--no-validate',
                       '--work-dir', str(tmp_path / 'file' / 'work'))
    assert message.endswith(f'cannot write to the work dir {tmp_path}/file/work: Not a directory')
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path / 'file'))
    assert message.endswith(f'the work dir {tmp_path}/file is a file, not a folder')
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([tiny_config, '--seed', '-1'])
    assert exit_info.value.code == 2
    assert "--seed must lie in [0, 2^32) (numpy's seed range), got -1" in capsys.readouterr().err


def test_auto_scale_lr_needs_a_base_batch_size(train_tool, tmp_path, tiny_config):
    message = refused(train_tool, tiny_config, '--auto-scale-lr', '--work-dir', str(tmp_path),
                       '--cfg-options', 'auto_scale_lr=None')
    assert message.endswith('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')


def _run_refused(config, *args):
    result = run_tool([PYTHON, TRAIN_TOOL, config, '--no-validate', *args], timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if 'tools/train.py: error: ' in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_unreadable_annotation_file(tmp_path, tiny_config):
    broken = tmp_path / 'broken.json'
    broken.write_text('{"images": [')
    message = _run_refused(tiny_config, '--work-dir', str(tmp_path / 'work'),
                           '--cfg-options', f'data.train.ann_file={broken}')
    assert 'data.train: cannot load the dataset: JSONDecodeError: ' in message


@pytest.mark.slow
def test_unreadable_pretrained_checkpoint_says_how_to_do_without(tmp_path, tiny_shapes):
    corrupt = tmp_path / 'imagenet.pth'
    corrupt.write_bytes(b'not a checkpoint')
    config = write_tiny_config(
        tmp_path / 'tiny.py', tiny_shapes,
        extra=f"model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint='{corrupt}')\n")
    message = _run_refused(config, '--work-dir', str(tmp_path / 'work'))
    assert f'could not load pretrained checkpoint {corrupt}' in message
    assert 'model.backbone.init_cfg.checkpoint=FILE' in message
    assert 'model.backbone.init_cfg=None' in message


@pytest.mark.slow
def test_resuming_from_a_corrupt_checkpoint(tmp_path, tiny_config):
    corrupt = tmp_path / 'epoch_1.pth'
    corrupt.write_bytes(b'not a checkpoint')
    message = _run_refused(tiny_config, '--work-dir', str(tmp_path / 'work'),
                           '--resume-from', str(corrupt))
    assert f'cannot resume from {corrupt}: ' in message


def test_data_read_through_a_storage_backend_is_not_looked_for_on_disk(train_tool):
    from mmcv import ConfigDict
    local = ConfigDict(ann_file='a.json', img_prefix='images/', pipeline=[
        dict(type='LoadImageFromFile')])
    remote = ConfigDict(ann_file='a.json', img_prefix='images/', pipeline=[
        dict(type='LoadImageFromFile', file_client_args=dict(backend='petrel'))])
    wrapped = ConfigDict(type='RepeatDataset', times=2, dataset=dict(
        ann_file=['a.json', 'b.json'], img_prefix='images/', data_root='/data'))
    assert list(train_tool.dataset_files(local)) == [('a.json', 'images/')]
    assert list(train_tool.dataset_files(remote)) == []
    assert list(train_tool.dataset_files(wrapped)) == [('/data/a.json', '/data/images/'),
                                                       ('/data/b.json', '/data/images/')]


def test_unreadable_validation_annotations_are_one_line(train_tool, tmp_path, tiny_config):
    broken = tmp_path / 'broken.json'
    broken.write_text('{"images": [')
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path / 'work'),
                       '--cfg-options', f'data.val.ann_file={broken}')
    assert 'data.val: cannot load the dataset: JSONDecodeError: ' in message


def test_validation_of_other_classes_than_training_is_refused(train_tool, tmp_path, tiny_config,
                                                              tiny_shapes):
    # Validation scores the model's label i as data.val's class i: a val file listing its
    # categories in another order, or a subset of classes trained, gave wrong mAPs, silently.
    val_file = osp.join(tiny_shapes, 'annotations', 'instances_val.json')
    reversed_val = tmp_path / 'reversed_val.json'
    coco = json.loads(open(val_file).read())
    coco['categories'].reverse()
    reversed_val.write_text(json.dumps(coco))
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path / 'reversed'),
                      '--cfg-options', f'data.val.ann_file={reversed_val}',
                      "data.val.classes=('rectangle','triangle','circle')")
    assert message.endswith('data.val has the classes rectangle, triangle, circle and data.train '
                            'circle, triangle, rectangle: validation would score each label as '
                            "data.val's class of that number; give both the same classes in the "
                            "same order (each annotation file's category order)")
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path / 'subset'),
                      '--cfg-options', "data.train.classes=('circle','rectangle')",
                      'model.roi_head.bbox_head.num_classes=2',
                      'model.roi_head.mask_head.num_classes=2')
    assert 'data.val has the classes circle, triangle, rectangle and data.train circle, ' in message


def test_a_pretrained_checkpoint_of_another_model_size_is_one_line(train_tool, tmp_path,
                                                                   tiny_config):
    # load_state_dict's size mismatches ended the run in a 125-line traceback.
    from mmdet_custom.models.backbones import InternImage
    other_size = tmp_path / 'other_size.pth'
    torch.save({'state_dict': InternImage(channels=8, depths=[1, 1, 2, 1],
                                          groups=[1, 2, 4, 8]).state_dict()}, other_size)
    message = refused(train_tool, tiny_config, '--work-dir', str(tmp_path / 'work'),
                      '--cfg-options', 'model.backbone.init_cfg.type=Pretrained',
                      f'model.backbone.init_cfg.checkpoint={other_size}')
    assert (f'pretrained checkpoint {other_size} does not fit this backbone (saved for another '
            f'model size?): ' in message)
    assert ('(first: patch_embed.conv1.weight is (4, 3, 3, 3) in the checkpoint, (8, 3, 3, 3) in '
            'the model)' in message)


@pytest.mark.parametrize('option, problem', [
    ('optimizer.paramwise_cfg.num_layers=6',
     'num_layers (6) must equal sum(depths) (5, depths=[1, 1, 2, 1])'),
    ('optimizer.paramwise_cfg.depths=None', 'depths must be a list of whole numbers of at least 0'),
    ('optimizer.paramwise_cfg.norm_decay_mult=1.0', "unknown keys ['norm_decay_mult']"),
])
def test_a_layer_decay_setting_that_cannot_group_the_model_is_one_line(train_tool, tmp_path,
                                                                       tiny_config, option,
                                                                       problem):
    # The constructor's refusals (and a TypeError for depths=None) ended in tracebacks.
    message = refused(train_tool, tiny_config, '--no-validate', '--work-dir', str(tmp_path),
                      '--cfg-options', 'optimizer.constructor=CustomLayerDecayOptimizerConstructor',
                      'optimizer.paramwise_cfg.num_layers=5',
                      'optimizer.paramwise_cfg.depths=[1,1,2,1]', option)
    assert message.startswith(f'tools/train.py: error: optimizer.paramwise_cfg: {problem}')
