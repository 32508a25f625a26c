"""Export of the tiny InternImage Mask R-CNN: ONNX Runtime gives PyTorch's detections, in
standard operators only; the export tool's command line and its errors."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
import mmcv  # noqa: E402
ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')

from mmcv.parallel import collate  # noqa: E402
from mmdet.datasets.pipelines import Compose  # noqa: E402

from mmdet_custom.datasets.synthetic_shapes import render_image  # noqa: E402
from mmdet_custom.deployment import (ONNXRuntimeMaskRCNN, compare_detections,  # noqa: E402
                                     default_input_shape, export_mask_rcnn, flat_detections,
                                     non_standard_ops, prepare_input, pytorch_detections,
                                     pipeline_size_divisor)
from deployment_testlib import load_tool  # noqa: E402
from tools_testlib import ROOT  # noqa: E402


def _image_input(cfg, shape, index=0):
    image, _ = render_image(seed=0, split='val', index=index, size=shape)
    return prepare_input(cfg, image[:, :, ::-1].copy(), shape)


@pytest.fixture(scope='module')
def static_export(tiny_detector, tmp_path_factory):
    _, _, cfg, detector = tiny_detector
    img, meta = _image_input(cfg, (64, 64))
    path = str(tmp_path_factory.mktemp('static') / 'tiny.onnx')
    model = export_mask_rcnn(detector, img, path, opset_version=17)
    return path, model, img, meta


@pytest.fixture(scope='module')
def tool_export(tiny_detector, tmp_path_factory):
    """The export tool's file of the tiny detector and its metadata."""
    config, checkpoint, _, _ = tiny_detector
    path = str(tmp_path_factory.mktemp('tool') / 'tiny.onnx')
    load_tool('pytorch2onnx').main([config, checkpoint, '--output-file', path, '--shape', '64',
                                    '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.3'])
    return path, {prop.key: prop.value for prop in onnx.load(path).metadata_props}


def test_export_tool_records_the_checkpoints_class_names(tool_export, static_export):
    # The file recorded only the class count: evaluation could not refuse another order.
    from mmdet_custom.datasets.synthetic_shapes import CLASSES
    path, metadata = tool_export
    assert json.loads(metadata['classes']) == list(CLASSES)
    assert ONNXRuntimeMaskRCNN(path, num_classes=3).class_names == CLASSES
    # A file without them (exported before they were recorded, or without a checkpoint's).
    assert ONNXRuntimeMaskRCNN(static_export[0], num_classes=3).class_names is None


def test_export_tool_records_the_test_time_settings(tiny_detector, tool_export):
    # The graph fixes them, and nothing recorded them: evaluation could not refuse other ones.
    _, _, cfg, _ = tiny_detector
    path, metadata = tool_export
    expected = dict(rpn=cfg.model.test_cfg.rpn.to_dict(),
                    rcnn=dict(cfg.model.test_cfg.rcnn.to_dict(), score_thr=0.3))
    assert json.loads(metadata['test_cfg']) == expected
    assert ONNXRuntimeMaskRCNN(path, num_classes=3).test_cfg == expected


def test_static_export_gives_pytorch_detections(tiny_detector, static_export):
    _, _, _, detector = tiny_detector
    path, _, img, meta = static_export
    reference = pytorch_detections(detector, img, meta)
    dets, labels, masks = ONNXRuntimeMaskRCNN(path, num_classes=3).run(img)
    assert len(reference[0]) > 0
    assert dets.shape == (len(labels), 5) and dets.dtype == np.float32
    assert labels.dtype == np.int64 and masks.shape == (len(labels), 64, 64) and masks.dtype == bool
    assert np.all(np.diff(dets[:, 4]) <= 0), 'detections are sorted by score'
    assert compare_detections(reference, (dets, labels, masks)) == []


def test_graph_holds_standard_operators_only(static_export):
    _, model, _, _ = static_export
    assert non_standard_ops(model) == []
    op_types = {node.op_type for node in model.graph.node}
    assert {'GridSample', 'RoiAlign', 'NonMaxSuppression'} <= op_types
    assert [i.name for i in model.graph.input] == ['input', 'img_shape']
    assert [o.name for o in model.graph.output] == ['dets', 'labels', 'mask_probs']


def test_dynamic_export_runs_at_other_sizes(tiny_detector, tmp_path):
    _, _, cfg, detector = tiny_detector
    img, _ = _image_input(cfg, (64, 64))
    path = str(tmp_path / 'dynamic.onnx')
    export_mask_rcnn(detector, img, path, opset_version=17, dynamic=True)
    model = ONNXRuntimeMaskRCNN(path, num_classes=3)
    assert model.input_shape is None
    for index, shape in enumerate(((96, 64), (64, 128))):
        # The pipeline resizes the image into 64x64 and pads it: boxes are clipped to the image
        # inside the padding, as mmdet clips them (to the padded input, proposals in the padding
        # survived as empty boxes with real scores).
        img, meta = _image_input(cfg, shape, index=index + 1)
        assert meta['img_shape'][:2] != shape
        candidate = model.run(img, meta['img_shape'])
        assert candidate[2].shape[1:] == shape
        assert compare_detections(pytorch_detections(detector, img, meta), candidate) == []


def test_no_detection_gives_empty_outputs(tiny_detector, tmp_path):
    _, _, cfg, detector = tiny_detector
    img, _ = _image_input(cfg, (64, 64))
    path = str(tmp_path / 'none.onnx')
    rcnn_cfg = detector.roi_head.test_cfg
    score_thr, rcnn_cfg.score_thr = rcnn_cfg.score_thr, 1.0  # no box scores above 1
    try:
        export_mask_rcnn(detector, img, path, opset_version=17)
    finally:
        rcnn_cfg.score_thr = score_thr
    dets, labels, masks = ONNXRuntimeMaskRCNN(path, num_classes=3).run(img)
    assert dets.shape == (0, 5) and labels.shape == (0,) and masks.shape == (0, 64, 64)


def test_ort_detector_rescales_to_the_original_image(static_export):
    path, _, img, _ = static_export
    model = ONNXRuntimeMaskRCNN(path, num_classes=3)
    dets, labels, _ = model.run(img)
    # As if the pipeline had resized a 32x48 image by (2, 4/3) into the top-left 64x64.
    meta = dict(img_shape=(64, 64, 3), ori_shape=(48, 32, 3),
                scale_factor=np.array([2, 4 / 3, 2, 4 / 3], dtype=np.float32))
    bbox_results, segm_results = model(img, meta)
    assert [len(boxes) for boxes in bbox_results] == np.bincount(labels, minlength=3).tolist()
    # bbox2result groups the detections by class, keeping their order within one.
    order = np.argsort(labels, kind='stable')
    expected = dets[order].copy()
    expected[:, :4] = expected[:, :4].clip(0, 64) / meta['scale_factor']  # x by 2, y by 4/3
    np.testing.assert_allclose(np.concatenate(bbox_results), expected, rtol=1e-5)
    assert all(mask.shape == (48, 32) for masks in segm_results for mask in masks)


def _pipeline_input(cfg, image, shape):
    """The test pipeline's image, zero-padded to ``shape``, with the pipeline's own meta
    (ori_shape, scale_factor), as tools/deployment/test.py gets them."""
    pipeline = [dict(step) for step in cfg.data.test.pipeline]
    pipeline[0] = dict(type='LoadImageFromWebcam')
    batch = collate([Compose(pipeline)(dict(img=image))], samples_per_gpu=1)
    img, meta = batch['img'][0], dict(batch['img_metas'][0].data[0][0])
    img = torch.nn.functional.pad(img, (0, shape[1] - img.shape[-1], 0, shape[0] - img.shape[-2]))
    meta.update(pad_shape=(*shape, 3), batch_input_shape=shape)
    return img.contiguous(), meta


@pytest.mark.parametrize('ori_shape', [(96, 64), (40, 24)])
def test_ort_detector_pastes_masks_on_the_original_image_as_mmdet(tiny_detector, static_export,
                                                                   ori_shape):
    # Binary masks of the resized input, scaled to the original size afterwards, differed from
    # mmdet's (median mask IoU 0.91 to 0.97; mask mAP fell by up to 0.004 in an evaluation).
    _, _, cfg, detector = tiny_detector
    path, _, _, _ = static_export
    image, _ = render_image(seed=0, split='val', index=3, size=ori_shape)
    img, meta = _pipeline_input(cfg, image[:, :, ::-1].copy(), (64, 64))
    assert tuple(meta['ori_shape'][:2]) == ori_shape and meta['img_shape'][:2] != ori_shape
    with torch.no_grad():
        reference = flat_detections(*detector.simple_test(img, [meta], rescale=True)[0], ori_shape)
    candidate = flat_detections(*ONNXRuntimeMaskRCNN(path, num_classes=3)(img, meta), ori_shape)
    assert len(reference[0]) > 0 and candidate[2].shape[1:] == ori_shape
    assert compare_detections(reference, candidate, min_mask_iou=0.995) == []


def test_ort_detector_refuses_a_model_without_its_mask_threshold(static_export, tmp_path):
    path, model, _, _ = static_export
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / 'stripped.onnx'))
    with pytest.raises(ValueError, match=r'stripped\.onnx does not say its mask threshold '
                                         r'\(mask_thr_binary in its metadata\): export it again'):
        ONNXRuntimeMaskRCNN(str(tmp_path / 'stripped.onnx'), num_classes=3)


def test_static_model_rejects_a_larger_image(static_export):
    path, _, _, _ = static_export
    with pytest.raises(ValueError, match='does not fit the model.s static input 64x64'):
        ONNXRuntimeMaskRCNN(path, num_classes=3).run(torch.zeros(1, 3, 96, 64))


def test_compare_detections_names_each_difference():
    rng = np.random.default_rng(0)
    dets = np.array([[2, 2, 20, 20, 0.9], [30, 30, 50, 60, 0.8], [5, 40, 25, 60, 0.3]], np.float32)
    labels = np.array([0, 1, 1])
    masks = rng.random((3, 64, 64)) > 0.5
    reference = (dets, labels, masks)
    assert compare_detections(reference, (dets.copy(), labels.copy(), masks.copy())) == []

    moved = dets.copy()
    moved[0, 2] += 1.5
    assert any('no match' in p and 'class 0' in p for p in compare_detections(reference, (moved, labels, masks)))
    rescored = dets.copy()
    rescored[1, 4] += 0.01  # same box, a score beyond the tolerance (1e-3)
    assert any('no match' in p and 'score 0.8100' in p
               for p in compare_detections(reference, (rescored, labels, masks)))
    relabelled = labels.copy()
    relabelled[1] = 0
    assert compare_detections(reference, (dets, relabelled, masks))
    other_masks = masks.copy()
    other_masks[1] = ~other_masks[1]
    assert any('mask IoU' in p for p in compare_detections(reference, (dets, labels, other_masks)))
    # The lowest-scoring detection may fall on either side of the cut only if it ties with it.
    assert compare_detections(reference, (dets[:2], labels[:2], masks[:2]))


def test_default_shape_and_size_divisor(tiny_detector):
    from mmcv import Config
    _, _, cfg, _ = tiny_detector
    assert pipeline_size_divisor(cfg) == 32 and default_input_shape(cfg) == (64, 64)
    coco = Config.fromfile(osp.join(ROOT, 'configs', 'coco', 'mask_rcnn_internimage_t_fpn_1x_coco.py'))
    assert default_input_shape(coco) == (800, 1344)
    # Resize(keep_ratio=False) makes every image img_scale's (w, h): a portrait one was refused.
    coco.data.test.pipeline[1].img_scale = (600, 1000)
    coco.data.test.pipeline[1].transforms[0].keep_ratio = False
    assert default_input_shape(coco) == (1024, 608)


@pytest.mark.slow
def test_export_tool_verifies(tiny_detector, tmp_path, capsys):
    config, checkpoint, _, _ = tiny_detector
    output = tmp_path / 'out' / 'tiny.onnx'
    load_tool('pytorch2onnx').main([config, checkpoint, '--output-file', str(output), '--shape', '64',
                                     '--verify', '--opset-version', '16'])
    printed = capsys.readouterr().out
    assert output.is_file() and 'input 1x3x64x64 static, opset 16' in printed
    assert 'verified: ONNX Runtime and PyTorch give the same' in printed


@pytest.mark.parametrize('args, message', [
    (['configs/no/such.py', '{checkpoint}'], 'config file not found: configs/no/such.py'),
    (['{config}', '{missing}'], 'checkpoint not found'),
    (['{config}', '{checkpoint}', '--opset-version', '11'], 'unsupported --opset-version 11'),
    (['{config}', '{checkpoint}', '--shape', '64', '80'], 'multiples of the model\'s size divisor 32'),
    (['{config}', '{checkpoint}', '--input-img', '{missing}'], 'input image not found'),
    (['{config}', '{checkpoint}', '--input-img', '{config}'], 'not an image mmcv can read: '),
    (['{config}', '{checkpoint}', '--output-file', '{folder}'], 'is a folder: name the .onnx file'),
    (['{config}', '{checkpoint}', '--output-file', '{config}/x.onnx'], 'is a file, not a folder'),
    (['{config}', '{checkpoint}', '--output-file', '{checkpoint}'], ' given to export: name a new'),
    # The image was replaced by the ONNX file, and the export said it succeeded.
    (['{config}', '{checkpoint}', '--input-img', '{image}', '--output-file', '{image}'],
     'image.png given to export: name a new .onnx file'),
    (['{config}', '{checkpoint}', '--cfg-options', 'model.backbone.core_op=DCNv3_pytorch'],
     "backbone has core_op='DCNv3_pytorch': export it with core_op='DCNv3'"),
    (['{config}', '{checkpoint}', '--cfg-options', 'model.test_cfg.rcnn.nms.type=soft_nms'],
     'supports plain per-class NMS (type="nms") in test_cfg.rcnn'),
    # It exported "no limit" where mmdet's RPN keeps proposals[:max_per_img]: none for 0.
    (['{config}', '{checkpoint}', '--cfg-options', 'model.test_cfg.rpn.max_per_img=0'],
     'test_cfg.rpn.max_per_img must be >= 1 (mmdet keeps the first max_per_img proposals: 0 keeps '
     'none), got 0'),
])
def test_export_tool_errors(tiny_detector, tmp_path, args, message):
    config, checkpoint, _, _ = tiny_detector
    values = dict(config=config, checkpoint=checkpoint, missing=str(tmp_path / 'missing.png'),
                  folder=str(tmp_path), image=str(tmp_path / 'image.png'))
    mmcv.imwrite(np.zeros((8, 8, 3), np.uint8), values['image'])
    argv = ['--output-file', str(tmp_path / 'x.onnx')] + [arg.format(**values) for arg in args]
    with pytest.raises(SystemExit) as error:
        load_tool('pytorch2onnx').main(argv)
    assert str(error.value).startswith('tools/deployment/pytorch2onnx.py: error: ')
    assert message in str(error.value)
    assert not (tmp_path / 'x.onnx').exists()


def test_deployment_tools_refuse_other_detectors_before_loading_weights(tiny_detector, tmp_path):
    # A RetinaNet or Cascade config ended in an AttributeError on roi_head.bbox_head.num_classes.
    config, checkpoint, _, _ = tiny_detector
    retinanet = tmp_path / 'retinanet.py'
    retinanet.write_text(
        f"_base_ = {config!r}\n"
        "model = dict(_delete_=True, type='RetinaNet', backbone={{_base_.model.backbone}},\n"
        "             neck={{_base_.model.neck}}, bbox_head=dict(\n"
        "                 type='RetinaHead', num_classes=3, in_channels=32,\n"
        "                 anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,\n"
        "                                       scales_per_octave=1, ratios=[1.0],\n"
        "                                       strides=[4, 8, 16, 32]),\n"
        "                 bbox_coder=dict(type='DeltaXYWHBBoxCoder')),\n"
        "             test_cfg=dict(nms_pre=10, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),\n"
        "                           max_per_img=10))\n")
    unsupported = 'ONNX export supports two-stage detectors with an RPN (Mask R-CNN), got RetinaNet'
    with pytest.raises(SystemExit) as error:
        load_tool('pytorch2onnx').main([str(retinanet), checkpoint,
                                        '--output-file', str(tmp_path / 'x.onnx')])
    assert str(error.value) == (f'tools/deployment/pytorch2onnx.py: error: cannot export '
                                f'{retinanet}: {unsupported}')
    with pytest.raises(SystemExit) as error:
        load_tool('benchmark_onnx').main([str(retinanet), checkpoint, str(tmp_path / 'x.onnx')])
    assert str(error.value) == (f'tools/deployment/benchmark_onnx.py: error: {retinanet} is not a '
                                f'detector the ONNX export writes: {unsupported}')


def test_export_tool_refuses_a_folder_it_cannot_write_in_before_exporting(tiny_detector, tmp_path,
                                                                         monkeypatch):
    # It built and traced the model, then ended in a PermissionError traceback. (Root may write
    # anywhere chmod allows, so the folder's access is what the tool is told.)
    config, checkpoint, _, _ = tiny_detector
    locked = tmp_path / 'locked'
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: path != str(locked) and real_access(path, mode))
    monkeypatch.setattr('mmdet_custom.deployment.export_mask_rcnn',
                        lambda *args, **kwargs: pytest.fail('exported into a folder it cannot write in'))
    with pytest.raises(SystemExit) as error:
        load_tool('pytorch2onnx').main([config, checkpoint, '--output-file', str(locked / 'x.onnx')])
    assert str(error.value) == (f'tools/deployment/pytorch2onnx.py: error: --output-file '
                                f'{locked / "x.onnx"}: this user cannot write in {locked}')


def test_dcnv3_onnx_benchmark_without_the_compiled_op_is_one_line(monkeypatch):
    # It ended in an AttributeError on torch.ops.dcnv3.
    tool = load_tool('benchmark_dcnv3_onnx')
    monkeypatch.setattr(tool, 'HAS_COMPILED_OP', False)
    with pytest.raises(SystemExit) as error:
        tool.main([])
    assert str(error.value) == ('benchmark_dcnv3_onnx.py: error: it exports and times the compiled '
                                'op; build it first (python setup.py build_ext --inplace)')


def test_export_without_the_compiled_op_is_one_line(tiny_detector, tmp_path, monkeypatch):
    import ops_dcnv3
    config, checkpoint, _, _ = tiny_detector
    monkeypatch.setattr(ops_dcnv3, 'HAS_COMPILED_OP', False)
    with pytest.raises(SystemExit) as error:
        load_tool('pytorch2onnx').main([config, checkpoint, '--output-file', str(tmp_path / 'x.onnx')])
    assert str(error.value) == ('tools/deployment/pytorch2onnx.py: error: ONNX export translates the '
                                'compiled DCNv3 op; build ops_dcnv3._C (python setup.py build_ext '
                                '--inplace) first')


def test_mmcv_roi_align_with_adaptive_sampling_exports(tiny_detector, tmp_path):
    # The COCO configs' extractor: mmcv's RoIAlign with sampling_ratio=0 (adaptive), as ONNX
    # RoiAlign; the tiny config uses GridSampleRoIExtractor with a fixed ratio.
    from mmdet.models import build_detector
    _, _, cfg, _ = tiny_detector
    model_cfg = cfg.model.deepcopy()
    for name in ('bbox_roi_extractor', 'mask_roi_extractor'):
        extractor = model_cfg.roi_head[name]
        extractor.type = 'SingleRoIExtractor'
        extractor.roi_layer.sampling_ratio = 0
    torch.manual_seed(0)
    detector = build_detector(model_cfg).eval()
    img, meta = _image_input(cfg, (64, 64))
    path = str(tmp_path / 'roi_align.onnx')
    export_mask_rcnn(detector, img, path, opset_version=17, img_shape=meta['img_shape'])
    reference = pytorch_detections(detector, img, meta)
    assert len(reference[0]) > 0
    candidate = ONNXRuntimeMaskRCNN(path, num_classes=3).run(img, meta['img_shape'])
    assert compare_detections(reference, candidate) == []


def test_a_model_of_another_class_count_is_refused(static_export):
    path, _, _, _ = static_export
    with pytest.raises(ValueError, match='tiny.onnx predicts 3 classes, the dataset has 80'):
        ONNXRuntimeMaskRCNN(path, num_classes=80)
    # benchmark_onnx counts the checkpoint's classes: it blamed a dataset it never read.
    with pytest.raises(ValueError, match='tiny.onnx predicts 3 classes, the checkpoint has 80'):
        ONNXRuntimeMaskRCNN(path, num_classes=80, classes_of='the checkpoint')


@pytest.mark.parametrize('channel_order', ['bgr', 'rgb'])
def test_prepare_input_takes_an_array_as_the_loader_reads_the_file(tiny_detector, tmp_path,
                                                                   channel_order):
    # An array went through a bare LoadImageFromWebcam: the loader's options were dropped, and a
    # config reading RGB got BGR pixels at export and --verify.
    _, _, cfg, _ = tiny_detector
    cfg = cfg.copy()
    cfg.data.test.pipeline = [dict(cfg.data.test.pipeline[0], channel_order=channel_order,
                                   to_float32=True)] + list(cfg.data.test.pipeline[1:])
    image, _ = render_image(seed=0, split='val', index=0, size=(48, 64))
    path = str(tmp_path / 'image.png')
    mmcv.imwrite(image[:, :, ::-1], path)  # RGB -> BGR, as mmcv writes and reads
    from_file, _ = prepare_input(cfg, path, (64, 64))
    from_array, _ = prepare_input(cfg, mmcv.imread(path), (64, 64))
    torch.testing.assert_close(from_array, from_file, rtol=0, atol=0)


def test_roi_align_export_names_what_it_does_not_support():
    from mmcv.ops import RoIAlign

    from mmdet_custom.deployment.onnx_ops import onnx_roi_align
    features, rois = torch.zeros(1, 4, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]])
    # The message named only pool_mode, and the value it gave was the supported one.
    with pytest.raises(NotImplementedError, match=r'pool_mode="avg" \(mmcv kernel\) only, got '
                                                  r"pool_mode='avg', use_torchvision=True"):
        onnx_roi_align(features, rois, RoIAlign((7, 7), 1.0, use_torchvision=True))
    with pytest.raises(NotImplementedError, match=r"got pool_mode='max', use_torchvision=False"):
        onnx_roi_align(features, rois, RoIAlign((7, 7), 1.0, pool_mode='max'))


def test_benchmark_onnx_runs_and_refuses_bad_input(tiny_detector, static_export, tmp_path, capsys):
    config, checkpoint, _, _ = tiny_detector
    path, _, _, _ = static_export
    tool = load_tool('benchmark_onnx')
    tool.main([config, checkpoint, path, '--repeats', '1', '--threads', '1'])
    assert 'input 1x3x64x64' in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        tool.main([config, checkpoint, path, '--repeats', '0'])
    assert error.value.code == 2 and '--repeats and --threads must be at least 1' in capsys.readouterr().err
    for args, message in (([str(tmp_path / 'none.onnx')], 'model file not found'),
                          ([path, '--input-img', str(tmp_path / 'none.png')], 'input image not found'),
                          ([config], 'cannot load'),
                          ([path, '--shape', '96', '128'], 'takes 64x64 inputs only (a static export)')):
        with pytest.raises(SystemExit) as error:
            tool.main([config, checkpoint, *args])
        assert str(error.value).startswith('tools/deployment/benchmark_onnx.py: error: ')
        assert message in str(error.value)


@pytest.mark.parametrize('threshold', [0.0, 0.02, 0.5])
def test_paste_masks_fills_the_region_mmdet_pastes_on_the_cpu(threshold):
    # At mask_thr_binary=0 every pixel of the canvas passed (the bilinear zeros outside the box
    # too), where mmdet fills only each box's region; --verify failed with mask IoU 0.877. At low
    # thresholds a wide box's bilinear tail passed beyond the region.
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    from mmdet_custom.deployment import paste_masks
    torch.manual_seed(0)
    logits = torch.randn(5, 1, 28, 28) * 4
    # Inside the canvas, at its edges, and one over 3 pixels a mask cell wide, sure everywhere:
    # its bilinear tail reaches past the region's last column (0.2 there).
    boxes = torch.tensor([[10.3, 5.7, 30.2, 25.9], [0.0, 0.0, 12.5, 8.0], [70.4, 50.1, 160.0, 64.0],
                          [2.0, 3.2, 150.0, 60.8], [40.0, 20.0, 41.5, 22.2]])
    logits[3] = logits[3].abs() + 4
    head = FCNMaskHead(num_convs=0, num_classes=1, in_channels=4)
    segm = head.get_seg_masks(logits, boxes, torch.zeros(5, dtype=torch.long),
                              mmcv.Config(dict(mask_thr_binary=threshold)), (64, 160),
                              np.ones(4, dtype=np.float32), rescale=True)[0]
    masks = paste_masks(logits[:, 0].sigmoid(), boxes, (64, 160), threshold)
    np.testing.assert_array_equal(masks.numpy(), np.stack(segm))
