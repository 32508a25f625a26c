"""tools/deployment/test.py: COCO evaluation of an exported model, against tools/test.py's."""
import json
import os
import os.path as osp

import pytest

pytest.importorskip('mmdet')
pytest.importorskip('onnxruntime')
from deployment_testlib import load_tool  # noqa: E402
from tools_testlib import PYTHON, ROOT, run_tool, write_tiny_config  # noqa: E402

TEST_TOOL = osp.join(ROOT, 'tools', 'test.py')
EXPORT_TOOL = osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py')
DEPLOY_TEST_TOOL = osp.join(ROOT, 'tools', 'deployment', 'test.py')
# A short training that lifts the tiny model's mAP above zero: 48 images of 64x64, batches of 8,
# 30 epochs at a higher learning rate than the quick start's, anchors from 16 px (the shapes are
# 9 to 26 px across; the default anchors start at 32). It keeps the sampling and the per-epoch
# decay it was measured with: the quick start's current ones (tuned for 1,200 iterations) left
# these iterations at box mAP@50 0.011, and its mask branch capped at 8 RoIs an image at 0.010 (at
# 16: 0.047, where mmcv's RoIAlign and the uncapped branch had reached 0.060). 20 epochs were too
# few to rely on: after the DCNv3 CPU kernels' softmax changed in the last float bits, seeds 0, 1
# and 2 ended at box mAP@50 0.006 to 0.012 (two builds), 0.002 and 0.001; with 30 they reached
# 0.047, 0.038 and 0.097 (mask 0.051, 0.052, 0.103).
EPOCHS = 30
TRAIN_OPTIONS = ['data.samples_per_gpu=8', 'optimizer.lr=0.004', 'lr_config.warmup_iters=10',
                 'lr_config.by_epoch=True', 'model.train_cfg.rpn.assigner.pos_iou_thr=0.7',
                 'model.train_cfg.rcnn.sampler.pos_fraction=0.25',
                 'model.roi_head.max_mask_rois_per_img=16',
                 'model.rpn_head.anchor_generator.scales=[4]',
                 f'checkpoint_config.interval={EPOCHS}', 'evaluation.interval=1000',
                 'log_config.interval=6']
# What the training must reach for the comparison to mean something (under half of the lowest
# seed's box mAP@50 above).
MIN_MAP_50 = 0.02


@pytest.fixture(scope='module')
def small_shapes(tmp_path_factory):
    from mmdet_custom.datasets.synthetic_shapes import generate
    folder = tmp_path_factory.mktemp('shapes')
    generate(str(folder), num_train=48, num_val=16, size=64, seed=0)
    return str(folder)


def _metrics(work_dir):
    (path,) = [osp.join(work_dir, name) for name in os.listdir(work_dir) if name.startswith('eval_')]
    with open(path) as f:
        return json.load(f)['metric']


@pytest.mark.slow
def test_exported_model_evaluates_like_pytorch(small_shapes, tmp_path):
    config = write_tiny_config(tmp_path / 'tiny.py', small_shapes, epochs=EPOCHS, workers=0)
    work_dir = tmp_path / 'work'
    trained = run_tool([PYTHON, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                        str(work_dir), '--seed', '0', '--cfg-options', *TRAIN_OPTIONS], timeout=2400)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = str(work_dir / f'epoch_{EPOCHS}.pth')

    pytorch = run_tool([PYTHON, TEST_TOOL, config, checkpoint, '--eval', 'bbox', 'segm',
                        '--work-dir', str(tmp_path / 'pytorch')], timeout=600)
    assert pytorch.returncode == 0, pytorch.stderr[-3000:]
    onnx_file = str(tmp_path / 'tiny.onnx')
    exported = run_tool([PYTHON, EXPORT_TOOL, config, checkpoint, '--output-file', onnx_file,
                         '--verify'], timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert 'verified' in exported.stdout
    deployed = run_tool([PYTHON, DEPLOY_TEST_TOOL, config, onnx_file, '--backend', 'onnxruntime',
                         '--eval', 'bbox', 'segm', '--work-dir', str(tmp_path / 'onnx')], timeout=600)
    assert deployed.returncode == 0, deployed.stderr[-3000:]

    expected, measured = _metrics(tmp_path / 'pytorch'), _metrics(tmp_path / 'onnx')
    for task in ('bbox', 'segm'):
        reached = expected[f'{task}_mAP_50']
        assert reached >= MIN_MAP_50, f'training left {task}_mAP_50 at {reached}: too weak a check'
        for metric in (f'{task}_mAP', f'{task}_mAP_50'):
            assert abs(measured[metric] - expected[metric]) <= 0.01, (metric, expected, measured)


def _deploy_test_error(*args):
    with pytest.raises(SystemExit) as error:
        load_tool('test').main([*args, '--eval', 'bbox'])
    assert str(error.value).startswith('tools/deployment/test.py: error: ')
    return str(error.value)


def test_deployment_test_tool_errors(tmp_path):
    config = write_tiny_config(tmp_path / 'tiny.py', str(tmp_path / 'no_data'))
    model = tmp_path / 'model.onnx'
    model.write_bytes(b'not read: the arguments are checked first')
    assert 'unsupported --backend \'tensorrt\'' in _deploy_test_error(config, str(model),
                                                                        '--backend', 'tensorrt')
    assert 'model file not found' in _deploy_test_error(config, str(tmp_path / 'missing.onnx'))
    assert 'config file not found' in _deploy_test_error(str(tmp_path / 'no.py'), str(model))


@pytest.fixture(scope='module')
def padded_model(tiny_detector, tmp_path_factory):
    """A dynamic export of the tiny detector and a test set whose images the pipeline pads:
    48x80 images resized to 38x64 in a 64x64 input (random weights: many boxes, some in the
    padding before clipping)."""
    from mmdet_custom.datasets.synthetic_shapes import CLASSES, generate
    from mmdet_custom.deployment import export_mask_rcnn, prepare_input
    config, checkpoint, cfg, detector = tiny_detector
    folder = tmp_path_factory.mktemp('padded')
    generate(str(folder), num_train=1, num_val=4, size=(48, 80), seed=1)
    img, meta = prepare_input(cfg, str(folder / 'val' / '000000.png'), (64, 64))
    assert meta['img_shape'][:2] == (38, 64)
    model = str(folder / 'tiny.onnx')
    export_mask_rcnn(detector, img, model, dynamic=True, img_shape=meta['img_shape'],
                     class_names=CLASSES)
    options = ['--cfg-options', f'data.test.ann_file={folder}/annotations/instances_val.json',
               f'data.test.img_prefix={folder}/val/']
    return config, checkpoint, model, options


def _detections(results):
    """Per image (dets, labels, masks) sorted by score, from mmdet's per-class results (masks
    RLE-encoded, as the tools save them)."""
    import pycocotools.mask as mask_util

    from mmdet_custom.deployment import flat_detections
    return [flat_detections(bbox_results, [[mask_util.decode(m) for m in c] for c in segm_results],
                            (0, 0))
            for bbox_results, segm_results in results]


def test_deployment_test_gives_pytorchs_results_on_padded_images(padded_model, tmp_path):
    import mmcv
    import numpy as np

    from mmdet_custom.deployment import compare_detections
    config, checkpoint, model, options = padded_model
    load_tool('test').main([config, model, '--out', str(tmp_path / 'onnx.pkl'),
                            '--eval', 'bbox', 'segm', '--work-dir', str(tmp_path), *options])
    assert _metrics(tmp_path)['bbox_mAP'] >= 0
    from tools_testlib import load_script
    load_script('tools/test.py', 'test_tool').main([config, checkpoint, '--out',
                                                    str(tmp_path / 'pytorch.pkl'), *options])
    onnx = _detections(mmcv.load(str(tmp_path / 'onnx.pkl')))
    pytorch = _detections(mmcv.load(str(tmp_path / 'pytorch.pkl')))
    assert len(onnx) == len(pytorch) == 4
    for (dets, _, _), reference in zip(onnx, pytorch):
        assert len(dets) == len(reference[0]) > 0
        assert (dets[:, 2] > dets[:, 0]).all() and (dets[:, 3] > dets[:, 1]).all()  # none empty
    for reference, candidate in zip(pytorch, onnx):
        # Boxes (1 px after rescaling by 1.25), labels and scores; random weights leave masks
        # near 0.5 everywhere, so thresholding them compares noise (the trained test above does).
        assert compare_detections(reference, candidate, box_tolerance=1.25, min_mask_iou=0) == []
    assert np.isfinite(np.concatenate([d for d, _, _ in onnx])).all()


def test_test_time_augmentation_is_refused(padded_model):
    config, _, model, options = padded_model
    message = _deploy_test_error(config, model, *options, 'data.test.pipeline.1.flip=True')
    assert message.endswith('the test pipeline asks for test-time augmentation (flip or several '
                            'scales), which an exported model does not run: set '
                            "MultiScaleFlipAug's flip=False and one img_scale")


def _with_metadata(model, path, **props):
    """A copy of the ONNX file ``model`` at ``path`` with its metadata entries replaced by
    ``props`` (None: the entry removed, as in files exported before it was recorded)."""
    import onnx
    proto = onnx.load(model)
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    metadata.update(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in metadata.items() if v is not None})
    onnx.save(proto, str(path))
    return str(path)


def test_a_model_with_its_classes_in_another_order_is_refused(padded_model, tmp_path):
    # The file recorded only the class count: the labels were scored as other classes.
    config, _, model, options = padded_model
    reordered = _with_metadata(model, tmp_path / 'reordered.onnx',
                               classes=json.dumps(['rectangle', 'triangle', 'circle']))
    assert _deploy_test_error(config, reordered, *options) == (
        f'tools/deployment/test.py: error: {reordered} was exported with its classes in another '
        'order (rectangle, triangle, circle) than data.test numbers them (circle, triangle, '
        'rectangle): its labels would be scored as other classes')


@pytest.mark.parametrize('option, difference', [
    ('model.test_cfg.rcnn.score_thr=0.3', 'model.test_cfg.rcnn.score_thr=0.05, the config has 0.3'),
    ('model.test_cfg.rpn.nms.iou_threshold=0.6',
     'model.test_cfg.rpn.nms.iou_threshold=0.7, the config has 0.6'),
    ('model.test_cfg.rcnn.mask_thr_binary=0', 'model.test_cfg.rcnn.mask_thr_binary=0.5, the config '
     'has 0'),
    ('model.test_cfg.rcnn.nms_pre=50', 'model.test_cfg.rcnn.nms_pre=unset, the config has 50'),
])
def test_test_time_settings_other_than_the_exported_are_refused(padded_model, option, difference):
    # The graph fixed them at export: the config's were ignored, and its results named by them.
    config, _, model, options = padded_model
    assert _deploy_test_error(config, model, *options, option) == (
        f'tools/deployment/test.py: error: {model} was exported with {difference}: test-time '
        'settings are fixed at export; export again with them (tools/deployment/pytorch2onnx.py '
        '--cfg-options)')


def test_a_model_exported_before_settings_and_names_were_recorded_still_runs(padded_model,
                                                                             tmp_path, capsys):
    config, _, model, options = padded_model
    older = _with_metadata(model, tmp_path / 'older.onnx', classes=None, test_cfg=None)
    load_tool('test').main([config, older, '--out', str(tmp_path / 'older.pkl'), *options,
                            'model.test_cfg.rcnn.score_thr=0.3'])
    printed = capsys.readouterr().out
    assert (f'note: {older} does not record the test-time settings it was exported with (an older '
            "export): those apply, whatever the config's model.test_cfg says") in printed
    assert osp.isfile(tmp_path / 'older.pkl')
