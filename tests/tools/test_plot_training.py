"""tools/plot_training.py: losses and final mAPs of a work dir as one PNG; mmdet's own
analyze_logs.py reads the same json logs."""
import glob
import json
import os.path as osp
import sys

import numpy as np
import pytest

from tools_testlib import PYTHON, ROOT, run_tool

sys.path.insert(0, osp.join(ROOT, 'tools'))
import plot_training  # noqa: E402

LOSS_KEYS = ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')


def write_log(path, epochs=3, iters=20, interval=5, first_epoch=1, start_loss=3.0):
    """A json log as tools/train.py writes it: a header line, then one entry per interval."""
    with open(path, 'w') as f:
        f.write(json.dumps(dict(env_info='...', config='...', seed=0)) + '\n')
        for epoch in range(first_epoch, first_epoch + epochs):
            for iteration in range(interval, iters + 1, interval):
                step = (epoch - 1) * iters + iteration
                losses = {key: start_loss / 5 * np.exp(-step / 40) for key in LOSS_KEYS}
                f.write(json.dumps(dict(mode='train', epoch=epoch, iter=iteration, lr=1e-3,
                                        time=0.4, data_time=0.01, loss=sum(losses.values()),
                                        **losses)) + '\n')


def write_metrics(path, box=0.71, mask=0.73):
    metrics = dict(bbox_mAP=box, bbox_mAP_50=0.95, bbox_mAP_75=0.8,
                   segm_mAP=mask, segm_mAP_50=0.96, segm_mAP_75=0.85)
    with open(path, 'w') as f:
        json.dump(dict(config='c.py', checkpoint='latest.pth', metric=metrics), f)


def check_png(path):
    """The plot exists, has the documented size and is not blank."""
    import cv2
    image = cv2.imread(str(path))
    assert image is not None, f'{path} is not an image'
    width, height = (round(side * plot_training.DPI) for side in plot_training.FIGURE_INCHES)
    assert image.shape == (height, width, 3)
    assert (image < 250).mean() > 0.02  # lines, bars and text, not an empty white canvas
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # several colours


def test_plots_losses_and_final_maps(tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt
    write_log(tmp_path / '20260101_000000.log.json')
    write_metrics(tmp_path / 'eval_20260101_001000.json', box=0.71, mask=0.73)
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, 'close', figures.append)  # kept open, to read what was drawn
    plot_training.main([str(tmp_path)])
    check_png(tmp_path / 'training.png')
    assert '12 log entries and the final mAPs' in capsys.readouterr().out

    loss_axes, map_axes = figures[0].axes[:2]
    with open(tmp_path / '20260101_000000.log.json') as f:
        logged = [json.loads(line) for line in f][1:]
    curves = {line.get_label(): line.get_ydata() for line in loss_axes.get_lines()}
    assert set(curves) == {'loss', *LOSS_KEYS}
    for key, values in curves.items():
        np.testing.assert_allclose(values, [entry[key] for entry in logged], err_msg=key)
    bars = [bar.get_width() for bar in map_axes.patches]
    assert bars == pytest.approx([0.71, 0.95, 0.8, 0.73, 0.96, 0.85])  # write_metrics, in order
    close(figures[0])


def test_resumed_run_entries_replace_earlier_ones(tmp_path):
    write_log(tmp_path / '20260101_000000.log.json', epochs=2)
    write_log(tmp_path / '20260101_000500.log.json', epochs=2, first_epoch=2, start_loss=9.0)
    entries, first_log, _ = plot_training.read_train_log(str(tmp_path))
    assert [(e['epoch'], e['iter']) for e in entries][:5] == [(1, 5), (1, 10), (1, 15), (1, 20), (2, 5)]
    assert len(entries) == 3 * 4
    assert entries[4]['loss'] == pytest.approx(9.0 * np.exp(-25 / 40))  # from the resumed log
    assert plot_training.epoch_positions(entries)[-1] == 3.0
    assert first_log == '20260101_000000.log.json'


def test_a_new_run_in_the_same_work_dir_is_plotted_alone(tmp_path, capsys):
    # Its entries were merged into the earlier run's, and that run's mAPs shown as its own.
    write_log(tmp_path / '20260101_000000.log.json', epochs=3)
    write_metrics(tmp_path / 'eval_20260101_001000.json')
    write_log(tmp_path / '20260102_000000.log.json', epochs=1, start_loss=9.0)
    entries, first_log, _ = plot_training.read_train_log(str(tmp_path))
    assert first_log == '20260102_000000.log.json'
    assert len(entries) == 4 and entries[0]['loss'] == pytest.approx(9.0 * np.exp(-5 / 40))
    plot_training.main([str(tmp_path)])
    assert 'plotted 4 log entries to' in capsys.readouterr().out  # no mAPs of the old run
    write_metrics(tmp_path / 'eval_20260102_001000.json')
    plot_training.main([str(tmp_path)])
    assert 'plotted 4 log entries and the final mAPs' in capsys.readouterr().out


def test_without_a_test_py_evaluation_the_last_validation_in_training_is_plotted(tmp_path, capsys,
                                                                                 monkeypatch):
    # Its mAPs were ignored: the plot said "no box or mask mAP yet" beside them.
    import matplotlib.pyplot as plt
    write_log(tmp_path / '20260101_000000.log.json', epochs=3)  # an earlier run
    with open(tmp_path / '20260101_000000.log.json', 'a') as f:
        f.write(json.dumps(dict(mode='val', epoch=3, iter=5, bbox_mAP=0.9, segm_mAP=0.9)) + '\n')
    log = tmp_path / '20260102_000000.log.json'
    write_log(log, epochs=2)
    with open(log, 'a') as f:
        for epoch, box in ((1, 0.2), (2, 0.4)):
            f.write(json.dumps(dict(mode='val', epoch=epoch, iter=5, bbox_mAP=box,
                                    bbox_mAP_50=0.6, segm_mAP=box + 0.01)) + '\n')
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, 'close', figures.append)
    plot_training.main([str(tmp_path)])
    assert "8 log entries and the mAPs of epoch 2's validation" in capsys.readouterr().out
    map_axes = figures[0].axes[1]
    assert [bar.get_width() for bar in map_axes.patches] == pytest.approx([0.4, 0.6, 0.41])
    assert map_axes.get_title() == 'validation after epoch 2 (during training)'
    close(figures[0])
    write_metrics(tmp_path / 'eval_20260102_001000.json')  # tools/test.py's comes first
    monkeypatch.setattr(plt, 'close', close)
    plot_training.main([str(tmp_path)])
    assert '8 log entries and the final mAPs' in capsys.readouterr().out


def test_without_evaluation_the_plot_says_so(tmp_path, capsys):
    write_log(tmp_path / '20260101_000000.log.json')
    out = tmp_path / 'elsewhere' / 'plot.png'
    plot_training.main([str(tmp_path), '--out', str(out)])
    check_png(out)
    assert 'final mAPs' not in capsys.readouterr().out


@pytest.mark.parametrize('setup,message', [
    (lambda d: None, 'no training log (*.log.json) in'),
    (lambda d: (d / 'a.log.json').write_text('{"mode": "train", "epoch": 1}\nnot json\n'),
     'a.log.json, line 2: not json'),
    (lambda d: (d / 'a.log.json').write_text('{"env_info": "x"}\n'), 'hold no loss entries yet'),
    (lambda d: (d / 'a.log.json').write_text('[1, 2]\n{"mode": "train", "loss": 1.0}\n'),
     'a.log.json, line 2: a training entry without its epoch and iter'),
])
def test_bad_work_dirs_get_one_line_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(SystemExit, match='tools/plot_training.py: error: ') as error:
        plot_training.main([str(tmp_path)])
    assert message in str(error.value)
    with pytest.raises(SystemExit, match='work dir not found'):
        plot_training.main([str(tmp_path / 'missing')])


def test_work_dirs_named_like_glob_patterns_and_outputs_that_cannot_be_written(tmp_path, capsys):
    work = tmp_path / 'lr[1e-4]'
    work.mkdir()
    write_log(work / '20260101_000000.log.json')
    (work / 'old.log.json').mkdir()  # a folder of that name is not a log
    plot_training.main([str(work)])
    check_png(work / 'training.png')
    (tmp_path / 'notes.txt').write_text('')
    with pytest.raises(SystemExit, match=r'^tools/plot_training.py: error: cannot write '
                                         r'.*notes.txt/plot.png \(.*notes.txt: File exists\)$'):
        plot_training.main([str(work), '--out', str(tmp_path / 'notes.txt' / 'plot.png')])


def test_eval_files_without_maps_damaged_ones_and_unknown_picture_types(tmp_path, capsys):
    write_log(tmp_path / '20260101_000000.log.json')
    with open(tmp_path / 'eval_20260101_000001.json', 'w') as f:  # proposal recall only
        json.dump(dict(config='c.py', metric={'AR@100': 0.5}), f)
    plot_training.main([str(tmp_path)])
    check_png(tmp_path / 'training.png')
    assert 'final mAPs' not in capsys.readouterr().out
    (tmp_path / 'eval_20260101_000002.json').write_text('{"metric": {"bbox_mAP": 0.')
    with pytest.raises(SystemExit, match=r'^tools/plot_training.py: error: .*eval_20260101_000002'
                                         r'.json: not the json tools/test.py writes'):
        plot_training.main([str(tmp_path)])
    with pytest.raises(SystemExit, match=r'^tools/plot_training.py: error: --out .*plot.xyz: name '
                                         r'a picture matplotlib writes, e.g. training.png$'):
        plot_training.main([str(tmp_path), '--out', str(tmp_path / 'plot.xyz')])


@pytest.mark.slow
def test_mmdet_analyze_logs_reads_our_logs(tmp_path):
    # mmdet ships its analysis tools inside the package; plot_curve needs seaborn.
    pytest.importorskip('seaborn')
    mmdet = pytest.importorskip('mmdet')
    tools = glob.glob(osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'analysis_tools',
                               'analyze_logs.py'))
    if not tools:
        pytest.skip('this mmdet package does not ship analyze_logs.py')
    log = tmp_path / '20260101_000000.log.json'
    write_log(log)
    out = tmp_path / 'curve.png'
    result = run_tool([PYTHON, tools[0], 'plot_curve', str(log), '--keys', 'loss', 'loss_mask',
                       '--out', str(out)], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 10000
    result = run_tool([PYTHON, tools[0], 'cal_train_time', str(log)], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'average iter time: 0.4000 s/iter' in result.stdout
