# COCO instance segmentation with the 3x recipe's training augmentation: multi-scale resize, or a
# smaller resize, an absolute random crop and a multi-scale resize again (AutoAugment picks one).
_base_ = './coco_instance.py'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
# Shorter side 480, 512, ..., 800; longer side at most 1333.
multi_scales = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(
        type='AutoAugment',
        policies=[
            [dict(type='Resize', img_scale=multi_scales, multiscale_mode='value', keep_ratio=True)],
            [
                dict(
                    type='Resize',
                    img_scale=[(1333, 400), (1333, 500), (1333, 600)],
                    multiscale_mode='value',
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(
                    type='Resize',
                    img_scale=multi_scales,
                    multiscale_mode='value',
                    override=True,
                    keep_ratio=True),
            ],
        ]),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
data = dict(train=dict(pipeline=train_pipeline))
