"""scripts/quickstart.sh end to end, shortened: a few images and one epoch (mAP is not checked),
and the picture and plot it writes."""
import json

import numpy as np
import pytest

pytest.importorskip('mmdet')
from tools_testlib import ROOT, run_tool  # noqa: E402

# Third-party notices that concern no quick-start user (tools/_bootstrap.py mutes them).
UNWANTED = ('MMCV will release v2.0.0', 'No CUDA runtime is found', 'The value is the same before')


@pytest.mark.slow
def test_quickstart_script_runs_every_step(tmp_path):
    import cv2
    data_dir, work_dir = tmp_path / 'shapes', tmp_path / 'work'
    env = {'DATA_DIR': str(data_dir), 'WORK_DIR': str(work_dir), 'NUM_TRAIN': '8', 'NUM_VAL': '4'}
    result = run_tool(['bash', 'scripts/quickstart.sh', '--cfg-options', 'runner.max_epochs=1',
                       'data.samples_per_gpu=2', 'data.workers_per_gpu=0',
                       'log_config.interval=1'], env=env, timeout=1200)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    console = result.stdout + result.stderr
    assert (data_dir / 'annotations' / 'instances_val.json').is_file()
    assert (work_dir / 'epoch_1.pth').is_file()
    eval_files = sorted(work_dir.glob('eval_*.json'))
    metrics = json.loads(eval_files[-1].read_text())['metric']
    assert 'bbox_mAP' in metrics and 'segm_mAP' in metrics
    assert 'ETA' in console or 'eta:' in console  # training progress is visible
    for notice in UNWANTED:
        assert notice not in console

    # The demo: the 256x256 val image enlarged 3x, ground truth | prediction, under a header.
    demo = cv2.imread(str(work_dir / 'demo.png'))
    assert demo.shape == (40 + 768, 2 * 768 + 12, 3)
    truth = demo[40:, :768].astype(int)
    image = cv2.resize(cv2.imread(str(data_dir / 'val' / '000000.png')), None, fx=3, fy=3,
                       interpolation=cv2.INTER_LINEAR).astype(int)
    assert (np.abs(truth - image).max(-1) > 10).mean() > 0.05  # shapes are tinted, not bare
    assert demo[40:].std() > 10  # not blank
    # The plot: 1200x450, with curves and bars.
    plot = cv2.imread(str(work_dir / 'training.png'))
    assert plot.shape == (450, 1200, 3)
    assert (plot < 250).mean() > 0.02

    summary = result.stdout[result.stdout.index('Quick start finished'):]
    for written in ('annotations/instances_{train,val}.json', 'epoch_1.pth', 'latest.pth', '.log.json',
                    eval_files[-1].name, 'demo.png', 'training.png', 'box mAP'):
        assert written in summary, written
    assert 'on the 4 val images.' in summary and '(generated)' in summary

    # Rerun: training finished, the dataset found. The summary once counted NUM_VAL's default
    # (100) images, and an MMDET_DATASETS the caller had set for another dataset took over.
    env = {'DATA_DIR': str(data_dir), 'WORK_DIR': str(work_dir), 'MMDET_DATASETS': '/no/coco/'}
    result = run_tool(['bash', 'scripts/quickstart.sh', '--cfg-options', 'runner.max_epochs=1'],
                      env=env, timeout=1200)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    summary = result.stdout[result.stdout.index('Quick start finished'):]
    assert 'on the 4 val images.' in summary and '(found, not regenerated)' in summary
