"""Plot a training run: its losses and learning rate over the epochs, and its final mAPs.

    python tools/plot_training.py WORK_DIR [--out WORK_DIR/training.png]

Reads what the tools write into a work dir: the json training logs of ``tools/train.py``
(``*.log.json``; several when a run was resumed: later entries replace earlier ones) and the
newest ``eval_*.json`` of ``tools/test.py --work-dir``, else the logs' last validation (a config's
``evaluation`` during training). A log that begins where a run begins (at
the first entry any of the logs has) starts the run plotted: earlier logs, and evaluations
older than it, belong to a run trained before in the same folder. Needs only matplotlib, so it also runs
where mmcv is not installed. mmdet's own ``analyze_logs.py`` reads the same json logs.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

# Drawn in this order; the components of ``loss`` that a detector does not have are skipped.
LOSS_KEYS = ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')
# (metric key in eval_*.json, label on the bar chart)
METRICS = (('bbox_mAP', 'box mAP'), ('bbox_mAP_50', 'box mAP@50'), ('bbox_mAP_75', 'box mAP@75'),
           ('segm_mAP', 'mask mAP'), ('segm_mAP_50', 'mask mAP@50'), ('segm_mAP_75', 'mask mAP@75'))
FIGURE_INCHES = (12, 4.5)
DPI = 100  # 1200 x 450 pixels


class PlotError(Exception):
    """A missing or unreadable input, reported as one line."""


def read_train_log(work_dir):
    """Training entries of the newest run's ``*.log.json`` files in ``work_dir`` (module doc), in
    (epoch, iter) order, the name of the log that began it, and the mAPs (METRICS) of each epoch
    the run validated (``evaluation`` during training), by epoch."""
    # Names start with a timestamp; the work dir's own name may hold glob's [ ] * ?.
    log_files = sorted(path for path in glob.glob(osp.join(glob.escape(work_dir), '*.log.json'))
                       if osp.isfile(path))
    if not log_files:
        raise PlotError(f'no training log (*.log.json) in {work_dir}: train with tools/train.py first')
    logs, validations = [], []
    for log_file in log_files:
        entries, validated = {}, {}
        logs.append(entries)
        validations.append(validated)
        with open(log_file) as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise PlotError(f'{log_file}, line {line_number}: not json ({error})') from None
                if isinstance(entry, dict) and entry.get('mode') == 'val' and 'epoch' in entry:
                    metrics = {key: entry[key] for key, _ in METRICS if key in entry}
                    if metrics:
                        validated[entry['epoch']] = metrics
                    continue
                if not isinstance(entry, dict) or entry.get('mode') != 'train' or 'loss' not in entry:
                    continue
                if not {'epoch', 'iter'} <= entry.keys():
                    raise PlotError(f'{log_file}, line {line_number}: a training entry without '
                                    f'its epoch and iter: not an mmcv json log?')
                entries[entry['epoch'], entry['iter']] = entry
    firsts = [min(entries) for entries in logs if entries]
    if not firsts:
        raise PlotError(f'the training logs in {work_dir} hold no loss entries yet (mmcv logs '
                        f'every log_config.interval iterations: a run of fewer iterations an epoch '
                        f'logs none; set a smaller interval)')
    # A resumed run goes on after a checkpoint; a log from the very first entry is a new run.
    start = max(index for index, entries in enumerate(logs)
                if entries and min(entries) == min(firsts))
    merged, validated = {}, {}
    for entries, epochs in zip(logs[start:], validations[start:]):
        merged.update(entries)  # a resumed run overrides
        validated.update(epochs)
    return [merged[key] for key in sorted(merged)], osp.basename(log_files[start]), validated


def read_metrics(work_dir, since=''):
    """The box and mask mAPs (METRICS) of the newest ``eval_*.json`` in ``work_dir`` not older
    than the file name ``since`` (timestamps alike: YYYYmmdd_HHMMSS); empty when there is none or
    it has none (e.g. only proposal recall was evaluated)."""
    eval_files = sorted(path for path in glob.glob(osp.join(glob.escape(work_dir), 'eval_*.json'))
                        if osp.basename(path)[len('eval_'):] >= since)
    if not eval_files:
        return {}
    with open(eval_files[-1]) as f:
        try:
            metrics = json.load(f).get('metric', {})
        except (json.JSONDecodeError, AttributeError) as error:
            raise PlotError(f'{eval_files[-1]}: not the json tools/test.py writes ({error})') from None
    return {key: metrics[key] for key, _ in METRICS if key in metrics}


def epoch_positions(entries):
    """Fractional epochs at which the entries were logged (iter counts within its epoch)."""
    iters_per_epoch = max(entry['iter'] for entry in entries)
    return [entry['epoch'] - 1 + entry['iter'] / iters_per_epoch for entry in entries]


def plot(entries, metrics, out_file, title, metrics_title='final evaluation on the val split'):
    import matplotlib
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt

    epochs = epoch_positions(entries)
    figure, (loss_axes, map_axes) = plt.subplots(
        1, 2, figsize=FIGURE_INCHES, dpi=DPI, gridspec_kw=dict(width_ratios=[3, 2]))
    for key in LOSS_KEYS:
        values = [entry.get(key) for entry in entries]
        if all(value is not None for value in values):
            loss_axes.plot(epochs, values, label=key, linewidth=2.5 if key == 'loss' else 1.2)
    loss_axes.set_xlabel('epoch')
    loss_axes.set_ylabel('training loss')
    loss_axes.set_ylim(bottom=0)
    loss_axes.grid(alpha=0.3)
    loss_axes.legend(loc='upper right', fontsize=8)
    if all('lr' in entry for entry in entries):
        lr_axes = loss_axes.twinx()
        lr_axes.plot(epochs, [entry['lr'] for entry in entries], color='grey', linestyle='--')
        lr_axes.set_ylabel('learning rate (dashed)', color='grey')
        lr_axes.set_ylim(bottom=0)
    loss_axes.set_title(f'{title}: training losses')

    if metrics:
        labels, values = zip(*[(label, metrics[key]) for key, label in METRICS if key in metrics])
        colours = ['tab:blue' if label.startswith('box') else 'tab:orange' for label in labels]
        bars = map_axes.barh(range(len(values)), values, color=colours)
        map_axes.set_yticks(range(len(values)), labels)
        map_axes.invert_yaxis()
        map_axes.bar_label(bars, fmt='%.3f', padding=3)
        map_axes.set_xlim(0, 1.1)
        map_axes.set_xlabel('COCO mAP (pycocotools)')
        map_axes.set_title(metrics_title)
    else:
        map_axes.axis('off')
        map_axes.text(0.5, 0.5, 'no box or mask mAP yet\n(tools/test.py ... --eval bbox segm '
                      '--work-dir)', ha='center', va='center')
    figure.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    figure.savefig(out_file, dpi=DPI)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot the losses and final mAPs of a training run')
    parser.add_argument('work_dir', help='work dir of tools/train.py (and tools/test.py --work-dir)')
    parser.add_argument('--out', help='PNG to write (default: WORK_DIR/training.png)')
    parser.add_argument('--title', help='title of the loss panel (default: the work dir name)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_file = args.out or osp.join(args.work_dir, 'training.png')
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        file_type = osp.splitext(out_file)[1][1:].lower()
        if file_type not in FigureCanvasAgg.get_supported_filetypes():
            raise PlotError(f'--out {out_file}: name a picture matplotlib writes, e.g. training.png')
        if not osp.isdir(args.work_dir):
            raise PlotError(f'work dir not found: {args.work_dir}')
        entries, first_log, validated = read_train_log(args.work_dir)
        metrics = read_metrics(args.work_dir, since=first_log)
        described = 'the final mAPs'
        metrics_title = 'final evaluation on the val split'
        if not metrics and validated:  # no tools/test.py evaluation yet: the last in training
            epoch = max(validated)
            metrics = validated[epoch]
            described = f'the mAPs of epoch {epoch}\'s validation'
            metrics_title = f'validation after epoch {epoch} (during training)'
    except PlotError as error:
        sys.exit(f'tools/plot_training.py: error: {error}')
    try:
        plot(entries, metrics, out_file, args.title or osp.basename(osp.normpath(args.work_dir)),
             metrics_title)
    except OSError as error:  # a folder of that name, a file where its folder should be, ...
        sys.exit(f'tools/plot_training.py: error: cannot write {out_file} ({error.filename}: '
                 f'{error.strerror})')
    print(f'plotted {len(entries)} log entries' + (f' and {described}' if metrics else '') +
          f' to {out_file}')


if __name__ == '__main__':
    main()
