"""The Python side of scripts/gpu_check.sh: its training config, training speed and summary table.

    python scripts/gpu_check_helper.py config --data DIR --epochs N --out FILE [--tiny W H]
                                       [--profile ITERS WARMUP ACTIVE]
    python scripts/gpu_check_helper.py check-core-op --config FILE --core-op NAME
    python scripts/gpu_check_helper.py train-speed --name NAME --work-dir DIR --skip N [--until M]
                                            --results FILE
    python scripts/gpu_check_helper.py check-resumed --work-dir DIR --from-epoch N
    python scripts/gpu_check_helper.py summary --steps FILE --results FILE --logs DIR --mode gpu|dry-run
"""
import argparse
import glob
import json
import math
import os.path as osp
import re
import statistics
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
T_CONFIG = osp.join(ROOT, 'configs', 'coco', 'mask_rcnn_internimage_t_fpn_1x_coco.py')

# Training targets of the GPU run (speed-up = slower run's s/iter / faster run's s/iter).
TARGETS = (('float32 with our op vs with the original kernel', 'original', 'float32', 1.3),
           ('mixed precision vs float32 (our op)', 'float32', 'amp', 1.5))
# The op's speed against the original kernel, forward and backward at every stage (the
# thresholds are gpu_check.sh's --check-original), in float32 and float16.
OP_TARGET_DTYPES = ('float32', 'float16')
OP_VERDICT = 'vs the original: '
PUBLISHED = 'original InternImage-T Mask R-CNN on an A100, 2 images per GPU: 0.36 s/iter (published)'

CONFIG_TEMPLATE = '''\
# Written by scripts/gpu_check.sh: the InternImage-T Mask R-CNN COCO config unchanged, except that
# it trains on the generated shapes dataset (3 classes) from random weights (no network for the
# ImageNet checkpoint) with 4 loader workers (the GPU machine has 16 cores), logs every iteration
# (through SyncFreeTextLoggerHook: mmcv's logger would wait for the GPU at each one) with the
# host's time in each phase of it (StepPhaseTimerHook; the base's hooks are copied, as mmcv 1.x
# replaces a list whole) and saves one checkpoint at the end.
_base_ = {base!r}
custom_hooks = {base_hooks!r} + [dict(type='StepPhaseTimerHook')]
classes = {classes!r}
model = dict(
    backbone=dict(init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes={num_classes}), mask_head=dict(num_classes={num_classes})))
data = dict(
    workers_per_gpu=4,
    train=dict(ann_file={train_ann!r}, img_prefix={train_img!r}, classes=classes),
    val=dict(ann_file={val_ann!r}, img_prefix={val_img!r}, classes=classes),
    test=dict(ann_file={val_ann!r}, img_prefix={val_img!r}, classes=classes))
runner = dict(max_epochs={epochs})
checkpoint_config = dict(interval={epochs})
log_config = dict(interval=1, hooks=[dict(type='SyncFreeTextLoggerHook')])
'''

# The dry run's CPU-sized version: images trained and tested at their own tiny scale (not
# upscaled to 1333x800), one block per stage but the third's two, and far fewer RoIs, whose mask
# head dominates a CPU step otherwise.
TINY_TEMPLATE = '''
tiny_depths = [1, 1, 2, 1]
optimizer = dict(paramwise_cfg=dict(num_layers=sum(tiny_depths), depths=tiny_depths))
model['backbone']['depths'] = tiny_depths
model.update(
    train_cfg=dict(rpn_proposal=dict(max_per_img=64), rcnn=dict(sampler=dict(num=16))),
    test_cfg=dict(rpn=dict(max_per_img=64), rcnn=dict(max_per_img=20)))
data['workers_per_gpu'] = 1
data['train']['pipeline'] = {train_pipeline!r}
data['val']['pipeline'] = data['test']['pipeline'] = {test_pipeline!r}
'''

# The same with the original InternImage kernel as the DCNv3 core. custom_imports is read when
# the config file loads (not from --cfg-options), and tools/ is on sys.path for the tools.
ORIGINAL_TEMPLATE = '''\
# Written by scripts/gpu_check.sh: {base} with the original InternImage CUDA kernel as the DCNv3
# core (tools/original_dcnv3_core.py registers core_op 'DCNv3_original' when imported).
_base_ = {base!r}
custom_imports = dict(imports=['mmdet_custom', 'original_dcnv3_core'], allow_failed_imports=False)
model = dict(backbone=dict(core_op='DCNv3_original'))
'''


# A config's twin that profiles its last iterations with torch.profiler (mmcv's ProfilerHook) and
# prints the per-operator table, heaviest GPU time first, at the end of training.
PROFILE_TEMPLATE = '''\
# Written by scripts/gpu_check.sh: {base} with its last {profiled} iterations profiled
# ({warmup} warm-up, {active} recorded); gpu_check times the iterations before them.
# The base's own custom hooks come first (mmcv 1.x replaces a list whole, so they are copied).
_base_ = {base!r}
custom_hooks = {base_hooks!r} + [
    dict(type='ProfilerHook', by_epoch=False, profile_iters={iters}, activities={activities!r},
         schedule=dict(wait={wait}, warmup={warmup}, active={active}),
         on_trace_ready=dict(type='log_trace', sort_by={sort_by!r}, row_limit=30,
                             max_name_column_width=60))]
'''


def original_config_path(config):
    return osp.splitext(config)[0] + '_original.py'


def profile_config_path(config):
    return osp.splitext(config)[0] + '_profile.py'


def _custom_hooks(config):
    """``config``'s custom_hooks as config text can write them (a config that adds one must
    repeat them: mmcv 1.x replaces a list whole)."""
    from mmcv import Config
    return _plain(Config.fromfile(config, import_custom_modules=False).get('custom_hooks', []))


def write_profile_config(base, iters, warmup, active, cuda):
    text = PROFILE_TEMPLATE.format(
        base=osp.abspath(base), base_hooks=_custom_hooks(base), profiled=warmup + active,
        warmup=warmup, active=active,
        iters=iters, wait=iters - warmup - active,
        activities=['cpu', 'cuda'] if cuda else ['cpu'],
        sort_by='self_cuda_time_total' if cuda else 'self_cpu_time_total')
    with open(profile_config_path(base), 'w') as f:
        f.write(text)
    return text


def _plain(value):
    """ConfigDicts as dicts (tuples kept), so that repr() writes them as config text."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _rescaled_pipeline(pipeline, scale):
    """``pipeline`` with every img_scale (nested transforms too) set to ``scale``, as plain dicts."""
    pipeline = _plain(pipeline)
    for transform in pipeline:
        if 'img_scale' in transform:
            transform['img_scale'] = scale
        if 'transforms' in transform:
            transform['transforms'] = _rescaled_pipeline(transform['transforms'], scale)
    return pipeline


def write_config(data, epochs, out, tiny_scale=None, profile=None):
    """The training config, its twin on the original kernel, and with ``profile = (iters,
    warmup, active)`` a profiling twin of each."""
    from mmdet_custom.datasets.synthetic_shapes import CLASSES
    text = CONFIG_TEMPLATE.format(
        base=T_CONFIG, base_hooks=_custom_hooks(T_CONFIG), classes=tuple(CLASSES),
        num_classes=len(CLASSES), epochs=epochs,
        train_ann=osp.join(data, 'annotations', 'instances_train.json'),
        train_img=osp.join(data, 'train') + '/',
        val_ann=osp.join(data, 'annotations', 'instances_val.json'),
        val_img=osp.join(data, 'val') + '/')
    if tiny_scale is not None:
        from mmcv import Config
        base = Config.fromfile(T_CONFIG)
        scale = tuple(tiny_scale)
        text += TINY_TEMPLATE.format(
            train_pipeline=_rescaled_pipeline(base.data.train.pipeline, scale),
            test_pipeline=_rescaled_pipeline(base.data.test.pipeline, scale))
    with open(out, 'w') as f:
        f.write(text)
    original = ORIGINAL_TEMPLATE.format(base=osp.abspath(out))
    with open(original_config_path(out), 'w') as f:
        f.write(original)
    print(f'config: {out}\n{text}\nwith the original kernel: {original_config_path(out)}\n{original}')
    if profile is not None:
        iters, warmup, active = profile
        if iters - warmup - active < 0:
            raise SystemExit(f'config: {warmup} + {active} profiled iterations do not fit in {iters}')
        for config in (out, original_config_path(out)):
            text = write_profile_config(config, iters, warmup, active, cuda=tiny_scale is None)
        print(f'profiled twins: {profile_config_path(out)}, '
              f'{profile_config_path(original_config_path(out))}\n{text}')


def check_core_op(config, core_op):
    """Build the detector of ``config`` and check that every DCNv3 of its backbone is ``core_op``'s."""
    sys.path.insert(0, osp.join(ROOT, 'tools'))  # as when a tool runs
    from mmcv import Config
    from mmdet.models import build_detector

    from mmdet_custom.models.backbones.intern_image import CORE_OPS
    from ops_dcnv3.modules.dcnv3 import _DCNv3Base
    model = build_detector(Config.fromfile(config).model)
    cores = [type(m) for m in model.backbone.modules() if isinstance(m, _DCNv3Base)]
    if not cores or core_op not in CORE_OPS or any(c is not CORE_OPS[core_op] for c in cores):
        raise SystemExit(f'check-core-op: {config} builds {sorted({c.__name__ for c in cores})} '
                         f'DCNv3 cores, not {core_op}')
    print(f'{config}: all {len(cores)} DCNv3 cores are {CORE_OPS[core_op].__name__} ({core_op})')


def _train_log(work_dir, command):
    """(path, training entries) of the newest mmcv json log in ``work_dir``."""
    logs = sorted(glob.glob(osp.join(work_dir, '*.log.json')))
    if not logs:
        raise SystemExit(f'{command}: no *.log.json in {work_dir}')
    with open(logs[-1]) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return logs[-1], [e for e in entries if e.get('mode') == 'train']


def _finite(loss):
    return isinstance(loss, (int, float)) and math.isfinite(loss)


def train_speed(name, work_dir, skip, results, until=None):
    """Median s/iter of the iterations from ``skip`` up to ``until`` (the profiled ones after it
    are slower) and peak GPU memory, from mmcv's json log."""
    log, train = _train_log(work_dir, 'train-speed')
    train = [e for e in train if 'time' in e]
    timed = train[skip:until]
    if not timed:
        raise SystemExit(f'train-speed: {len(train)} logged iterations in {log}, none '
                         f'between the {skip} warm-up iterations and iteration {until}')
    memory = [e['memory'] for e in train if 'memory' in e]
    # StepPhaseTimerHook's host seconds per phase ('t_...' keys, in step order), where logged.
    phases = [key for key in timed[0] if key.startswith('t_')]
    result = dict(name=name, s_per_iter=statistics.median(e['time'] for e in timed),
                  data_time=statistics.median(e.get('data_time', 0.0) for e in timed),
                  iters=len(timed), skipped=skip, peak_memory_mb=max(memory) if memory else None,
                  last_loss=train[-1].get('loss'),
                  phases={key: statistics.median(e[key] for e in timed if key in e)
                          for key in phases})
    with open(results, 'a') as f:
        f.write(json.dumps(result) + '\n')
    memory_text = f'{result["peak_memory_mb"]} MiB' if memory else 'n/a (no GPU)'
    print(f'train-{name}: {result["s_per_iter"]:.3f} s/iter (median of {len(timed)} after {skip}, '
          f'data {result["data_time"]:.3f} s), peak GPU memory {memory_text}, last loss '
          f'{result["last_loss"]}')
    if phases:
        print(f'train-{name}, host time per phase (median): ' + ', '.join(
            f'{key[2:]} {seconds * 1e3:.1f} ms' for key, seconds in result['phases'].items()))


def check_resumed(work_dir, from_epoch):
    """A run resumed from epoch ``from_epoch``'s checkpoint trained the epochs after it only,
    with finite losses (a resume that silently started over would log epoch 1 again)."""
    log, train = _train_log(work_dir, 'check-resumed')
    epochs = sorted({e['epoch'] for e in train})
    losses = [e.get('loss') for e in train]
    if not train or epochs[0] != from_epoch + 1:
        raise SystemExit(f'check-resumed: {log} trained epochs {epochs}, expected the ones '
                         f'after epoch {from_epoch}')
    if not all(_finite(loss) for loss in losses):
        raise SystemExit(f'check-resumed: losses not all finite: {losses}')
    print(f'check-resumed: epochs {epochs} after epoch {from_epoch}, {len(train)} iterations, '
          f'losses {losses[0]:.4f} .. {losses[-1]:.4f}')


def _table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ['  '.join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ['-' * w for w in widths], *rows]]
    return '\n'.join(lines)


def _tail(path, lines=8):
    with open(path) as f:
        text = [line.rstrip() for line in f if line.strip()]
    return '\n'.join(text[-lines:])


def _op_verdict(logs_dir, dtype):
    """What tools/benchmark_dcnv3.py --check-original concluded in the ``benchmark-DTYPE`` step
    (its "vs the original:" line), or None where it concluded nothing: the step left out or
    failed before, or run without the original kernel."""
    path = osp.join(logs_dir, f'benchmark-{dtype}.log')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        verdicts = [line[len(OP_VERDICT):].strip() for line in f if line.startswith(OP_VERDICT)]
    return verdicts[-1] if verdicts else None


def summary(steps_file, results_file, logs_dir, mode, elapsed):
    with open(steps_file) as f:
        steps = [line.rstrip('\n').split('\t') for line in f if line.strip()]
    with open(results_file) as f:
        runs = {r['name']: r for r in (json.loads(line) for line in f if line.strip())}
    # A step the time budget left out did not pass either.
    failed = [name for name, status, _ in steps
              if status.startswith('FAILED') or 'time budget' in status]
    # A run that diverged (a NaN or infinite loss) trained, but not correctly.
    failed += [f'train-{r["name"]} (last loss {r.get("last_loss")})' for r in runs.values()
               if not _finite(r.get('last_loss'))]
    print(f'\n===== gpu_check summary ({mode}, {elapsed} s) =====')
    print(_table(['step', 'status', 'seconds'], steps))
    for name, status, _ in steps:
        log = osp.join(logs_dir, f'{name}.log')
        if name.startswith(('benchmark-', 'candidates-')) and osp.isfile(log):
            # A benchmark table with the original kernel's columns is 9 lines from its header;
            # a candidates table a row per variant and stage (4 stages), and a last line naming
            # any variant that computed something else.
            lines = 10 if name.startswith('benchmark-') else 24
            print(f'\n{name} ({status}), the end of its output:\n{_tail(log, lines)}')
    if runs:
        print('\nInternImage-T Mask R-CNN training, 2 images per GPU, through tools/train.py:')
        print(_table(['run', 's/iter', 'data s/iter', 'iterations', 'peak GPU memory'],
                     [[r['name'], f'{r["s_per_iter"]:.3f}', f'{r["data_time"]:.3f}',
                       f'{r["iters"]} (after {r["skipped"]})',
                       f'{r["peak_memory_mb"]} MiB' if r['peak_memory_mb'] is not None else 'n/a']
                      for r in runs.values()]))
        print(PUBLISHED)
        phased = [r for r in runs.values() if r.get('phases')]
        if phased:
            keys = list(dict.fromkeys(key for r in phased for key in r['phases']))
            print('\nHost time per phase, ms (median; StepPhaseTimerHook: wall clock, no '
                  'synchronisation added,\nso a phase that waits for the GPU includes the wait):')
            print(_table(['phase'] + [r['name'] for r in phased],
                         [[key[2:]] + [f'{r["phases"][key] * 1e3:.1f}' if key in r['phases']
                                       else 'n/a' for r in phased] for key in keys]))
    missed = []
    if mode == 'gpu':
        rows = []
        for dtype in OP_TARGET_DTYPES:
            label = f'our op vs the original kernel, {dtype}'
            verdict = _op_verdict(logs_dir, dtype)
            if verdict is None:
                rows.append([label, 'not measured'])
                missed.append(label)
            elif verdict.endswith('faster at every stage'):
                rows.append([label, 'met'])
            else:
                stages = ', '.join(re.findall(r'stage (\d+):', verdict))
                rows.append([label, f'MISSED at stage(s) {stages}'])
                missed.append(label)
        print()
        print(_table(['op target (benchmark-DTYPE above)', ''], rows))
    rows = []
    for label, slower, faster, target in TARGETS:
        if slower in runs and faster in runs:
            ratio = runs[slower]['s_per_iter'] / runs[faster]['s_per_iter']
            met = ratio >= target
            verdict = 'met' if met else 'MISSED'
            rows.append([label, f'{ratio:.2f}x', f'>= {target}x',
                         verdict if mode == 'gpu' else 'not checked (dry run)'])
        else:
            met = False
            rows.append([label, 'n/a', f'>= {target}x', 'not measured'])
        if not met:
            missed.append(label)
    print()
    print(_table(['training target', 'speed-up', 'target', ''], rows))
    verdict_failed = bool(failed)
    if mode == 'gpu':
        verdict_failed = verdict_failed or bool(missed)
    else:
        print('(dry run: CPU at tiny sizes; the targets are checked on the GPU only)')
    print(f'\ngpu_check: {"FAILED" if verdict_failed else "passed"}' +
          (f'; failed steps: {", ".join(failed)}' if failed else '') +
          (f'; targets missed: {"; ".join(missed)}' if mode == 'gpu' and missed else ''))
    return 1 if verdict_failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    config = commands.add_parser('config', help='write the training config')
    config.add_argument('--data', required=True, help='the generated shapes dataset')
    config.add_argument('--epochs', type=int, required=True)
    config.add_argument('--out', required=True)
    config.add_argument('--tiny', type=int, nargs=2, metavar=('W', 'H'),
                        help='CPU-sized: train and test at this scale (not 1333x800), few RoIs')
    config.add_argument('--profile', type=int, nargs=3, metavar=('ITERS', 'WARMUP', 'ACTIVE'),
                        help='also write twins that profile the last WARMUP + ACTIVE of ITERS '
                             'iterations')
    core_op = commands.add_parser('check-core-op', help='check the core op a config builds')
    core_op.add_argument('--config', required=True)
    core_op.add_argument('--core-op', required=True)
    speed = commands.add_parser('train-speed', help='record a training run\'s s/iter and memory')
    speed.add_argument('--name', required=True)
    speed.add_argument('--work-dir', required=True)
    speed.add_argument('--skip', type=int, default=10, help='warm-up iterations left out')
    speed.add_argument('--until', type=int, help='first iteration left out at the end')
    speed.add_argument('--results', required=True, help='JSON-lines file to append to')
    resumed = commands.add_parser('check-resumed', help='check that a run resumed where it should')
    resumed.add_argument('--work-dir', required=True)
    resumed.add_argument('--from-epoch', type=int, required=True,
                         help='the epoch of the checkpoint it resumed from')
    table = commands.add_parser('summary', help='print the summary table; exit 1 on a failure')
    table.add_argument('--steps', required=True)
    table.add_argument('--results', required=True)
    table.add_argument('--logs', required=True, help='folder of the steps\' logs (NAME.log)')
    table.add_argument('--mode', choices=('gpu', 'dry-run'), required=True)
    table.add_argument('--elapsed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == 'config':
        write_config(args.data, args.epochs, args.out, args.tiny, args.profile)
    elif args.command == 'check-core-op':
        check_core_op(args.config, args.core_op)
    elif args.command == 'train-speed':
        train_speed(args.name, args.work_dir, args.skip, args.results, args.until)
    elif args.command == 'check-resumed':
        check_resumed(args.work_dir, args.from_epoch)
    else:
        return summary(args.steps, args.results, args.logs, args.mode, args.elapsed)
    return 0


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    sys.exit(main())
