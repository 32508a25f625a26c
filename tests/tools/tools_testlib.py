"""Helpers shared by the tools tests: a tiny config derived from the quick-start one (so the tools
run end to end in seconds), free ports and subprocess runs from the repository root."""
import contextlib
import fcntl
import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART_CONFIG = osp.join(ROOT, 'configs', 'shapes', 'mask_rcnn_internimage_pico_fpn_shapes.py')
PYTHON = sys.executable
CUDA_KERNEL = osp.join(ROOT, 'ops_dcnv3', 'csrc', 'cuda', 'dcnv3_kernel.cu')
# The kernel candidates (tools/kernel_candidates/*.patch), for tests parametrized over them.
KERNEL_CANDIDATES = sorted(Path(ROOT, 'tools', 'kernel_candidates').glob('*.patch'))


def apply_kernel_candidate(patch, out_file):
    """Write the CUDA kernel file with candidate ``patch`` applied to ``out_file``, as
    scripts/gpu_check.sh --prepare does (needs the ``patch`` command)."""
    with open(patch) as text:
        subprocess.run(['patch', '--batch', '--quiet', '--reject-file=-', '-o', str(out_file),
                        CUDA_KERNEL], stdin=text, check=True)
    return out_file


def load_script(relative_path, module_name):
    """A script of the repository (e.g. ``tools/benchmark_inference.py``) as a module, so a test
    calls its functions in process (no interpreter start-up and mmdet import per call). Its
    folder is on sys.path while it loads, as when it runs (tools import their helpers so)."""
    path = osp.join(ROOT, relative_path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, osp.dirname(path))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(osp.dirname(path))
    return module

def refused(tool, *args):
    """The one line ``tool.main(args)`` ends with, ``tools/NAME.py: error: ...`` (``tool`` from
    load_script), checked to be that one line."""
    import pytest
    with pytest.raises(SystemExit) as exit_info:
        tool.main(list(args))
    message = str(exit_info.value)
    prog = osp.relpath(tool.__file__, ROOT)
    assert message.startswith(f'{prog}: error: ') and '\n' not in message, message
    return message


# Smaller than the quick start in every direction (64x64 images, a width-16 backbone, two images
# a batch, short warm-up, a log line every iteration); everything else is the quick-start config.
TINY_IMAGE_SIZE = (64, 64)
TINY_OVERRIDES = {
    'model.backbone.channels': 16,
    'model.backbone.groups': [1, 2, 4, 8],
    'model.backbone.drop_path_rate': 0.1,
    'model.neck.in_channels': [16, 32, 64, 128],
    'data.samples_per_gpu': 2,
    'lr_config.warmup_iters': 2,
    'log_config.interval': 1,
}


def _set_image_scales(pipeline, scale):
    """Point every img_scale in ``pipeline`` (nested transforms included) at ``scale``."""
    for transform in pipeline:
        if 'img_scale' in transform:
            transform['img_scale'] = scale
        _set_image_scales(transform.get('transforms', []), scale)


def write_tiny_config(path, data_root, epochs=1, workers=0, extra=''):
    """Write the quick-start config with TINY_OVERRIDES, reading ``data_root``, as a config file.

    ``extra`` is config text appended at the end (e.g. another ``custom_imports``).
    """
    from mmcv import Config
    cfg = Config.fromfile(QUICKSTART_CONFIG)
    data_root = data_root.rstrip('/') + '/'
    overrides = dict(TINY_OVERRIDES, **{
        'data_root': data_root,
        'data.workers_per_gpu': workers,
        'runner.max_epochs': epochs,
        'evaluation.interval': epochs,
    })
    cfg.merge_from_dict(overrides)
    for dataset_key, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        dataset = cfg.data[dataset_key]
        dataset.ann_file = f'{data_root}annotations/instances_{split}.json'
        dataset.img_prefix = f'{data_root}{split}/'
        _set_image_scales(dataset.pipeline, TINY_IMAGE_SIZE)
    cfg.dump(str(path))
    if extra:
        with open(path, 'a') as f:
            f.write('\n' + extra)
    return str(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(args, env=None, timeout=600, cwd=ROOT, pythonpath=(), **popen_kwargs):
    """Run a command from the repository root; returns the CompletedProcess. The command's
    PYTHONPATH is the repository, the folders ``pythonpath`` names (e.g. a test's hook modules),
    then the inherited one (where mmcv may come from, as on the GPU machine)."""
    folders = [ROOT, *map(str, pythonpath), os.environ.get('PYTHONPATH', '')]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(folders))
    full_env.update(env or {})
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **popen_kwargs)


@contextlib.contextmanager
def training_lock_held(work_dir, pid=4242):
    """``work_dir``'s training lock held, as a training of process ``pid`` running there holds it
    (tools/train.py's ``training_lock``)."""
    with open(osp.join(work_dir, '.train.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f'{pid}\n')
        lock.flush()
        yield
