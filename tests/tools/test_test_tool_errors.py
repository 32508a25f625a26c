"""tools/test.py refuses bad input with one clear line and a non-zero exit status."""
import json
import os.path as osp
import re
import shutil

import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import (PYTHON, ROOT, load_script, refused, run_tool,  # noqa: E402
                           write_tiny_config)

TEST_TOOL = osp.join(ROOT, 'tools', 'test.py')


@pytest.fixture(scope='module')
def matching_checkpoint(tmp_path_factory, tiny_shapes):
    """A randomly initialised checkpoint of the tiny config's model, saved the way training saves."""
    from mmcv import Config
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector

    import mmdet_custom  # noqa: F401
    folder = tmp_path_factory.mktemp('ckpt')
    config = write_tiny_config(folder / 'tiny.py', tiny_shapes)
    model = build_detector(Config.fromfile(config).model)
    path = str(folder / 'tiny.pth')
    save_checkpoint(model, path, meta=dict(CLASSES=('circle', 'triangle', 'rectangle')))
    return config, path


def _run_test_tool(*args):
    result = run_tool([PYTHON, TEST_TOOL, *args, '--eval', 'bbox'], timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 'Traceback' not in result.stderr, result.stderr
    errors = [line for line in lines if 'error:' in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.slow
def test_bad_config_path(matching_checkpoint, tmp_path):
    _, checkpoint = matching_checkpoint
    message = _run_test_tool('configs/no/such_config.py', checkpoint)
    assert 'config file not found: configs/no/such_config.py' in message
    # mmcv's own syntax check left a temporary file that Python then failed to delete, with a
    # traceback after the error line (_run_test_tool checks for none).
    broken = tmp_path / 'broken.py'
    broken.write_text("model = dict(\n")
    message = _run_test_tool(str(broken), checkpoint)
    assert message.endswith(f"cannot read config {broken}: SyntaxError: '(' was never closed "
                            "(line 1)")
    broken.write_bytes(b"model = '\xff'\n")
    message = _run_test_tool(str(broken), checkpoint)
    assert message.endswith(f"cannot read config {broken}: not UTF-8 text (invalid start byte at "
                            "byte 9)")


@pytest.mark.slow
def test_missing_checkpoint(matching_checkpoint, tmp_path):
    config, _ = matching_checkpoint
    message = _run_test_tool(config, str(tmp_path / 'epoch_99.pth'))
    assert 'checkpoint not found' in message and 'epoch_99.pth' in message


@pytest.mark.slow
def test_truncated_checkpoint(matching_checkpoint, tmp_path):
    config, checkpoint = matching_checkpoint
    truncated = tmp_path / 'truncated.pth'
    with open(checkpoint, 'rb') as f:
        truncated.write_bytes(f.read()[:4096])
    message = _run_test_tool(config, str(truncated))
    assert 'cannot read checkpoint' in message and 'truncated.pth' in message


@pytest.mark.slow
def test_checkpoint_of_another_architecture(matching_checkpoint, tmp_path):
    config, _ = matching_checkpoint
    other = tmp_path / 'resnet.pth'
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
                                'backbone.bn1.weight': torch.ones(64)}, meta={}), other)
    message = _run_test_tool(config, str(other))
    assert 'does not fit the model' in message and 'missing' in message


@pytest.mark.slow
def test_checkpoint_with_other_class_count(matching_checkpoint, tmp_path):
    config, checkpoint = matching_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    state['state_dict']['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(81, 256)
    altered = tmp_path / 'coco_classes.pth'
    torch.save(state, altered)
    message = _run_test_tool(config, str(altered))
    # It said "another architecture?", naming the weight but not the class count.
    assert (f'checkpoint {altered} predicts 80 classes, the model built from the config 3 '
            f'(roi_head.bbox_head.fc_cls.weight is (81, 256) in the checkpoint, (4, 256) in the '
            f'model): set num_classes=80 in every head of the config' in message)


@pytest.mark.slow
def test_matching_checkpoint_evaluates(matching_checkpoint):
    config, checkpoint = matching_checkpoint
    # --gpu-id 0, mmdet's default GPU, is also where a machine without one runs.
    result = run_tool([PYTHON, TEST_TOOL, config, checkpoint, '--eval', 'bbox', 'segm',
                       '--gpu-id', '0'], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'bbox_mAP' in result.stdout and 'segm_mAP' in result.stdout


# In-process: the refusals below come before any inference (and mostly before the model is built).
@pytest.fixture(scope='module')
def test_tool():
    return load_script('tools/test.py', 'test_tool')


def test_an_unknown_metric_or_evaluation_option_is_refused_before_inference(test_tool,
                                                                          matching_checkpoint):
    config, checkpoint = matching_checkpoint
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', 'mAP').endswith(
        "--eval/--eval-options: CocoDataset cannot evaluate 'mAP' (it evaluates bbox, segm, "
        "proposal)")
    # mmdet's CocoDataset evaluates proposal_fast for box results only, Mask R-CNN's have masks.
    assert refused(test_tool, config, checkpoint, '--eval', 'proposal_fast').endswith(
        "--eval/--eval-options: CocoDataset cannot evaluate 'proposal_fast' (it evaluates bbox, "
        "segm, proposal)")
    # mmdet reported bbox and segm as ARs (no bbox_mAP) after a proposal metric, and the
    # proposals as an unnamed mAP after bbox.
    assert refused(test_tool, config, checkpoint, '--eval', 'proposal', 'bbox', 'segm').endswith(
        '--eval/--eval-options: CocoDataset reports every metric with the items of the first '
        '(proposal), so proposal beside bbox or segm gives wrongly named figures: evaluate '
        'proposal in a run of its own')
    assert 'the first (bbox), so proposal beside' in refused(test_tool, config, checkpoint,
                                                             '--eval', 'bbox', 'proposal')
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--eval-options',
                    'iou_thr=0.5').endswith(
        "--eval/--eval-options: CocoDataset.evaluate() takes no option 'iou_thr'")
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--eval-options',
                   'metric_items=[mAP,mAP_99]').endswith(
        "--eval/--eval-options: metric_items: CocoDataset has no 'mAP_99' (it has mAP, mAP_50, "
        "mAP_75, mAP_s, mAP_m, mAP_l, AR@100, AR@300, AR@1000, AR_s@1000, AR_m@1000, AR_l@1000)")


@pytest.mark.parametrize('options', [
    ['iou_thrs=[0.5,0.75]', 'metric_items=[mAP,mAP_50]'],
    ['iou_thrs=0.5', 'metric_items=(mAP,mAP_50)'],
])
def test_evaluation_options_in_each_form_evaluate(test_tool, matching_checkpoint, capsys, options):
    # mmdet hands iou_thrs to pycocotools as given, which failed on a list or a number after
    # inference, and took a tuple of metric_items for one name.
    config, checkpoint = matching_checkpoint
    test_tool.main([config, checkpoint, '--eval', 'bbox', '--eval-options', *options])
    # (The metrics' OrderedDict prints its pairs as tuples before Python 3.12, as a dict since.)
    assert re.search(r"'bbox_mAP_50'(, |: )", capsys.readouterr().out)


def test_evaluation_the_results_cannot_have_is_refused_before_inference(test_tool,
                                                                        matching_checkpoint):
    config, checkpoint = matching_checkpoint
    # pycocotools' summary reads a third proposal count: an IndexError after inference.
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--eval-options',
                   'proposal_nums=(100,300)').endswith(
        '--eval/--eval-options: proposal_nums must list at least 3 positive whole numbers '
        '(e.g. [100,300,1000]), got (100, 300)')
    # A detector without a mask head has no masks to evaluate: a KeyError after inference.
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', 'segm', '--cfg-options',
                   'model.roi_head.mask_head=None').endswith(
        "--eval/--eval-options: CocoDataset cannot evaluate 'segm' (it evaluates bbox, proposal, "
        "proposal_fast)")


def test_output_paths_that_cannot_be_written_are_refused_before_inference(test_tool,
                                                                         matching_checkpoint,
                                                                         tmp_path):
    config, checkpoint = matching_checkpoint
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('')
    (tmp_path / 'folder.pkl').mkdir()
    assert refused(test_tool, config, checkpoint, '--out', str(tmp_path / 'folder.pkl')).endswith(
        f'--out {tmp_path}/folder.pkl is a folder: name a file')
    assert refused(test_tool, config, checkpoint, '--out', f'{a_file}/results.pkl').endswith(
        f'--out {a_file}/results.pkl: {a_file} is a file, not a folder')
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--work-dir',
                   str(a_file)).endswith(f'--work-dir {a_file} is a file, not a folder')
    assert refused(test_tool, config, checkpoint, '--show-dir', f'{a_file}/sub/pictures').endswith(
        f'--show-dir {a_file}/sub/pictures: {a_file} is a file, not a folder')
    # The json files' folder, checked before inference too (a FileExistsError after it).
    assert refused(test_tool, config, checkpoint, '--format-only', '--eval-options',
                   f'jsonfile_prefix={a_file}/results').endswith(
        f'--eval-options jsonfile_prefix {a_file}/results.bbox.json: {a_file} is a file, not a '
        'folder')


def test_pictures_over_the_test_images_or_from_several_processes_are_refused(
        test_tool, matching_checkpoint, tmp_path, tiny_shapes):
    config, checkpoint = matching_checkpoint
    data = tmp_path / 'shapes'  # a copy: a test that failed to refuse would draw over it
    shutil.copytree(tiny_shapes, data)
    # mmdet names each picture as its image: they replaced the test set's images.
    assert refused(test_tool, config, checkpoint, '--show-dir', str(data / 'val'), '--cfg-options',
                   f'data.test.img_prefix={data}/val/',
                   f'data.test.ann_file={data}/annotations/instances_val.json').endswith(
        f'--show-dir {data}/val is the image folder of data.test, whose images the drawings '
        '(named as their images) would replace: choose another folder')
    # mmdet's multi-process test draws nothing: the run ended with status 0 and no picture.
    assert refused(test_tool, config, checkpoint, '--show-dir', str(tmp_path / 'pictures'),
                   '--launcher', 'pytorch').endswith(
        '--show and --show-dir draw in a single-process run only: run tools/test.py without a '
        'launcher')


def test_a_float16_config_tests_in_float32_on_the_cpu(test_tool, matching_checkpoint, capsys):
    # What train.py --amp saves on a GPU; wrapped for float16, the CPU convolutions failed.
    config, checkpoint = matching_checkpoint
    test_tool.main([config, checkpoint, '--eval', 'bbox', '--cfg-options', 'fp16.loss_scale=dynamic'])
    out = capsys.readouterr().out
    assert "note: the config's fp16 applies on CUDA; testing in float32 on the cpu" in out
    assert 'bbox_mAP' in out


def test_checkpoint_without_meta_and_with_extra_weights(test_tool, matching_checkpoint, tmp_path,
                                                        caplog):
    config, checkpoint = matching_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    state['meta'] = None  # an AttributeError traceback
    state['state_dict']['roi_head.extra_head.weight'] = torch.zeros(3)  # dropped without a word
    altered = tmp_path / 'altered.pth'
    torch.save(state, altered)
    test_tool.main([config, str(altered), '--out', str(tmp_path / 'results.pkl')])
    assert '1 checkpoint weights are not used by the model (first: roi_head.extra_head.weight)' \
        in caplog.text
    assert (tmp_path / 'results.pkl').is_file()


def test_samples_per_gpu_given_twice_is_one_line(test_tool, matching_checkpoint):
    config, checkpoint = matching_checkpoint
    message = refused(test_tool, config, checkpoint, '--eval', 'bbox', '--cfg-options',
                      'data.test.samples_per_gpu=2', 'data.test_dataloader.samples_per_gpu=2')
    assert f'config {config} does not fit the layout mmdet reads from every config ' \
        '(AssertionError: ' in message


def test_an_empty_test_set_is_named(test_tool, matching_checkpoint, tmp_path):
    config, checkpoint = matching_checkpoint
    empty = tmp_path / 'empty.json'
    empty.write_text(json.dumps(dict(images=[], annotations=[], categories=[
        dict(id=1, name='circle'), dict(id=2, name='triangle'), dict(id=3, name='rectangle')])))
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--cfg-options',
                    f'data.test.ann_file={empty}').endswith(
        f'data.test: no images in the dataset (ann_file {empty})')


def test_a_model_of_another_class_count_than_the_test_set_is_refused_before_inference(
        test_tool, matching_checkpoint):
    # Inference ran over every image, then formatting the results failed with an IndexError
    # (or, where the extra class had no detection, they were evaluated as if they fitted).
    config, checkpoint = matching_checkpoint
    message = refused(test_tool, config, checkpoint, '--eval', 'bbox', '--cfg-options',
                      "data.test.classes=('circle','triangle')")
    # The checkpoint's weights fix the class count: the test set's classes are what to change.
    assert message.endswith('model.roi_head.bbox_head.num_classes is 3, but data.test has 2 '
                            f'classes (circle, triangle): name the 3 classes {checkpoint} was '
                            'trained on in data.test.classes')


def test_class_names_missing_on_either_side_have_no_order_to_check():
    # mmdet's CustomDataset without classes has CLASSES None: tuple(None) stopped the run.
    import types
    usage = load_script('tools/_usage.py', '_usage')
    usage.check_class_order(('a', 'b'), types.SimpleNamespace(CLASSES=None), 'm was trained')
    usage.check_class_order(None, types.SimpleNamespace(CLASSES=('a', 'b')), 'm was trained')
    with pytest.raises(usage.UsageError, match=r'^m was trained with its classes in another '
                                               r'order \(b, a\) than data.test numbers them '
                                               r'\(a, b\)'):
        usage.check_class_order(['b', 'a'], types.SimpleNamespace(CLASSES=('a', 'b')),
                                'm was trained')


def test_a_checkpoint_of_the_classes_in_another_order_is_refused_before_inference(
        test_tool, matching_checkpoint, tmp_path):
    # Trained on an annotation file listing the categories in another order: its label i is
    # another class than the test set's label i, and the mAPs came out silently wrong.
    from mmcv import Config
    from mmcv.runner import save_checkpoint
    from mmdet.models import build_detector
    config, _ = matching_checkpoint
    permuted = str(tmp_path / 'permuted.pth')
    save_checkpoint(build_detector(Config.fromfile(config).model), permuted,
                    meta=dict(CLASSES=('rectangle', 'triangle', 'circle')))
    message = refused(test_tool, config, permuted, '--eval', 'bbox')
    assert message.endswith(f'{permuted} was trained with its classes in another order '
                            '(rectangle, triangle, circle) than data.test numbers them (circle, '
                            'triangle, rectangle): its labels would be scored as other classes')


def test_config_options_that_do_not_fit_and_configs_of_no_detector(test_tool, matching_checkpoint,
                                                                    tmp_path, capsys):
    config, checkpoint = matching_checkpoint
    with pytest.raises(SystemExit) as exit_info:  # an argparse error
        test_tool.main([config, checkpoint, '--eval', 'bbox', '--cfg-options', 'data.test'])
    assert exit_info.value.code == 2
    assert "--cfg-options: expected KEY=VALUE, got 'data.test'" in capsys.readouterr().err
    # mmcv read it as a list of strings, and mmcv's hook registration failed on a bare assert.
    with pytest.raises(SystemExit):
        test_tool.main([config, checkpoint, '--eval', 'bbox', '--cfg-options',
                        "custom_hooks=[dict(type='StepPhaseTimerHook')]"])
    assert ("--cfg-options: custom_hooks: a VALUE cannot hold a dict (mmcv reads it as a string): "
            "set a dict's keys one by one (custom_hooks.NAME=VALUE), or write it in a config file"
            ) in capsys.readouterr().err
    for value in ("{'type': 'SGD', 'lr': 0.01}", '{type: SGD}', '{}', '[{type: SGD}]'):
        with pytest.raises(SystemExit):
            test_tool.main([config, checkpoint, '--eval', 'bbox', '--cfg-options',
                            f'optimizer={value}'])
        assert '--cfg-options: optimizer: a VALUE cannot hold a dict' in capsys.readouterr().err
    assert test_tool.parse_args([config, checkpoint, '--eval', 'bbox', '--cfg-options',  # no dict
                                 'checkpoint_config.filename_tmpl=epoch_{}.pth']).cfg_options == {
        'checkpoint_config.filename_tmpl': 'epoch_{}.pth'}
    message = refused(test_tool, config, checkpoint, '--eval', 'bbox', '--cfg-options',
                       'model.backbone.channels.width=16')
    assert f'--cfg-options do not fit config {config}: TypeError: ' in message
    other = tmp_path / 'not_a_detector.py'
    other.write_text('x = 1\n')
    assert refused(test_tool, str(other), checkpoint, '--eval', 'bbox').endswith(
        f'config {other} has no model: not a detector config for this tool')
    # mmdet lets data.test list several datasets; this tool tests one.
    listed = tmp_path / 'two_test_sets.py'
    listed.write_text(f"_base_ = '{config}'\ndata = dict(test=[dict(type='CocoDataset')] * 2)\n")
    assert refused(test_tool, str(listed), checkpoint, '--eval', 'bbox').endswith(
        f'config {listed}: data.test is a list; this tool takes one dict there')


def test_format_only_needs_a_place_for_its_files(test_tool, matching_checkpoint, tmp_path):
    config, checkpoint = matching_checkpoint
    assert refused(test_tool, config, checkpoint, '--format-only').endswith(
        '--format-only writes its json files where --eval-options jsonfile_prefix=PATH says '
        '(PATH.bbox.json, PATH.segm.json); give it')
    test_tool.main([config, checkpoint, '--format-only',
                    '--eval-options', f'jsonfile_prefix={tmp_path}/val'])
    assert sorted(p.name for p in tmp_path.glob('val.*.json')) == ['val.bbox.json', 'val.segm.json']


def test_a_gpu_id_that_is_not_there_is_refused(test_tool, matching_checkpoint, monkeypatch):
    config, checkpoint = matching_checkpoint
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--gpu-id', '1').endswith(
        '--gpu-id 1: no GPU is visible to this process (it runs on the CPU)')
    monkeypatch.setattr('torch.cuda.is_available', lambda: True)
    monkeypatch.setattr('torch.cuda.device_count', lambda: 2)
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--gpu-id', '2').endswith(
        '--gpu-id 2: 2 GPUs visible, numbered 0 to 1')
    assert refused(test_tool, config, checkpoint, '--eval', 'bbox', '--gpu-id', '-1').endswith(
        '--gpu-id -1: 2 GPUs visible, numbered 0 to 1')


def test_show_without_a_window_is_refused(test_tool, matching_checkpoint, monkeypatch):
    # Without it each image was "shown" by a warning that the 'agg' backend cannot show.
    import matplotlib.pyplot as plt
    config, checkpoint = matching_checkpoint
    monkeypatch.setattr(plt, 'get_backend', lambda: 'agg')
    assert refused(test_tool, config, checkpoint, '--show').endswith(
        "--show needs a window, and matplotlib draws with its non-interactive 'agg' backend here "
        "(no display or GUI toolkit found, or MPLBACKEND set); --show-dir DIR saves the pictures "
        "instead")
    monkeypatch.setattr(plt, 'get_backend', lambda: 'QtAgg')
    test_tool.check_window()  # an interactive backend passes


def test_cuda_ranks_pass_results_through_a_folder_of_their_own(monkeypatch, tmp_path):
    # mmdet deletes the folder it gathers through: given --tmpdir itself, all else in it went too.
    from mmdet_custom.apis import test as apis_test
    given = {}
    monkeypatch.setattr(apis_test.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(apis_test, 'multi_gpu_test',
                        lambda model, loader, tmpdir, gpu_collect: given.update(tmpdir=tmpdir))
    apis_test.multi_process_test(None, None, tmpdir=str(tmp_path))
    assert given['tmpdir'] == osp.join(tmp_path, 'results_by_rank')
