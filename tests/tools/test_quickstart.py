"""scripts/quickstart.sh end to end, shortened: a few images and one epoch (mAP is not checked)."""
import json
import os.path as osp

import pytest

pytest.importorskip('mmdet')
from tools_testlib import ROOT, run_tool  # noqa: E402


@pytest.mark.slow
def test_quickstart_script_runs_every_step(tmp_path):
    data_dir, work_dir = tmp_path / 'shapes', tmp_path / 'work'
    env = {'DATA_DIR': str(data_dir), 'WORK_DIR': str(work_dir), 'NUM_TRAIN': '8', 'NUM_VAL': '4'}
    result = run_tool(['bash', 'scripts/quickstart.sh', '--cfg-options', 'runner.max_epochs=1',
                       'data.samples_per_gpu=2', 'data.workers_per_gpu=0',
                       'log_config.interval=1'], env=env, timeout=1200)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert (data_dir / 'annotations' / 'instances_val.json').is_file()
    assert (work_dir / 'epoch_1.pth').is_file()
    assert (work_dir / 'demo.png').is_file()
    eval_files = sorted(work_dir.glob('eval_*.json'))
    metrics = json.loads(eval_files[-1].read_text())['metric']
    assert 'bbox_mAP' in metrics and 'segm_mAP' in metrics
    assert 'ETA' in result.stdout + result.stderr  # training progress is visible
    assert 'Quick start finished' in result.stdout
