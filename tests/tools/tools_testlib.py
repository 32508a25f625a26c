"""Helpers shared by the tools tests: a tiny config on top of the quick-start one (so the tools
run end to end in seconds), free ports and subprocess runs from the repository root."""
import os
import os.path as osp
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART_CONFIG = osp.join(ROOT, 'configs', 'shapes', 'mask_rcnn_internimage_pico_fpn_shapes.py')
PYTHON = sys.executable

# Smaller than the quick start in every direction: 64x64 images, width-16 backbone.
TINY_CONFIG = '''
_base_ = {base!r}
model = dict(backbone=dict(channels=16, groups=[1, 2, 4, 8], drop_path_rate=0.1),
             neck=dict(in_channels=[16, 32, 64, 128]))
image_size = (64, 64)
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=image_size, flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='RandomFlip'),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='Pad', size_divisor=32),
        dict(type='ImageToTensor', keys=['img']),
        dict(type='Collect', keys=['img']),
    ])
]
data_root = {data_root!r}
data = dict(
    samples_per_gpu=2,
    workers_per_gpu={workers},
    train=dict(ann_file=data_root + 'annotations/instances_train.json',
               img_prefix=data_root + 'train/', pipeline=train_pipeline),
    val=dict(ann_file=data_root + 'annotations/instances_val.json',
             img_prefix=data_root + 'val/', pipeline=test_pipeline),
    test=dict(ann_file=data_root + 'annotations/instances_val.json',
              img_prefix=data_root + 'val/', pipeline=test_pipeline))
lr_config = dict(warmup_iters=2)
runner = dict(max_epochs={epochs})
evaluation = dict(interval={epochs})
log_config = dict(interval=1)
'''


def write_tiny_config(path, data_root, epochs=1, workers=0, extra=''):
    with open(path, 'w') as f:
        f.write(TINY_CONFIG.format(base=QUICKSTART_CONFIG, data_root=data_root.rstrip('/') + '/',
                                   epochs=epochs, workers=workers) + extra)
    return str(path)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(args, env=None, timeout=600, cwd=ROOT, **popen_kwargs):
    """Run a command from the repository root; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    full_env.update(env or {})
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **popen_kwargs)
