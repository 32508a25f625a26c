# Quick start: a very small InternImage Mask R-CNN trained from scratch on the built-in synthetic
# shapes dataset (400 train + 100 val images of 256x256; scripts/quickstart.sh generates them with
# python mmdet_custom/datasets/synthetic_shapes.py --out data/shapes).
# Everything not set here comes from the InternImage Mask R-CNN, COCO dataset and runtime bases.
#
# The recipe (docs/benchmarks.md has the runs behind it, and the variants tried that did worse):
# - a small model at the images' own size: InternImage of width 32 and depths 1-1-2-1, a
#   64-channel FPN, slim heads, and proposal/RoI counts sized for 2 to 6 objects an image;
# - one RoIAlign sample per bin, computed as one grid_sample over the batch
#   (GridSampleRoIExtractor: mmcv's RoIAlign results, several times faster on CPU);
# - more positives for both stages, so the heads of a model trained from scratch get going in
#   fewer iterations: RPN anchors are positive from IoU 0.5 (COCO's 0.7 leaves about half of these
#   shapes, which sit between two anchor sizes, with only their one best anchor) and half of the
#   64 RoI samples may be positive (COCO's quarter);
# - batches of 2 images: twice the updates of batches of 4 for the same images. Every training
#   starts with a stall (the heads sit at their priors while the deep features collapse and
#   recover) and the RoI classifier is still learning when the schedule ends; with batches of 4
#   one seed in three stayed in the stall (box mAP 0.22), with batches of 2 none did;
# - images flipped horizontally, vertically or both (a quarter each, a quarter unflipped):
#   a flipped shape keeps its class, and the classifier sees more variety at no cost;
# - the mask branch trains on at most 6 positives an image, a random subset: late in training
#   the up to 32 per image made it the costliest part of a step, while the mask mAP keeps up with
#   the box mAP on far fewer;
# - 100 proposals an image in training, as in testing: the RoI sampler draws its 64 samples from
#   them, and with 200 the early steps, whose random proposals all survive NMS, cost up to a
#   quarter more;
# - images loaded in the training process (no loader workers): with two cores, worker processes
#   take CPU time from the training threads, and a step is about 10% slower with them;
# - the time these save goes to more iterations: 13 epochs (2,600 iterations);
# - plain AdamW (1.4e-3 at batch 2, weight decay on every parameter, the fused step), 200
#   warm-up iterations, cosine decay per iteration, gradients clipped at norm 10.
_base_ = [
    '../_base_/models/mask_rcnn_internimage_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py',
]

# --- model: sized to train on two CPU cores in minutes -----------------------------------------
num_classes = 3
depths = [1, 1, 2, 1]
fpn_channels = 64
model = dict(
    backbone=dict(
        channels=32,
        depths=depths,
        groups=[2, 4, 8, 16],
        drop_path_rate=0.0,
        layer_scale=None,
        post_norm=False),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    roi_head=dict(
        # The mask branch trains on 6 of each image's up to 32 positive RoIs (see the recipe).
        type='SubsampledMaskRoIHead',
        max_mask_rois_per_img=6,
        # One sample per RoIAlign bin instead of adaptive (up to 8x8 for the larger shapes); with a
        # fixed grid RoIAlign runs as grid_sample, several times faster than mmcv's CPU kernel.
        bbox_roi_extractor=dict(type='GridSampleRoIExtractor', roi_layer=dict(sampling_ratio=1),
                                out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(type='GridSampleRoIExtractor', roi_layer=dict(sampling_ratio=1),
                                out_channels=fpn_channels),
        mask_head=dict(num_convs=2, in_channels=fpn_channels, conv_out_channels=fpn_channels,
                       num_classes=num_classes)),
    # A handful of objects per image: far fewer anchors, proposals and RoIs than COCO needs.
    train_cfg=dict(
        rpn=dict(assigner=dict(pos_iou_thr=0.5), sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64, pos_fraction=0.5))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=30)))

# --- data: the COCO base's datasets and transforms, at the generated images' size ---------------
data_root = 'data/shapes/'
classes = ('circle', 'triangle', 'rectangle')  # mmdet_custom.datasets.synthetic_shapes.CLASSES
image_size = (256, 256)
# mmcv 1.x configs replace a list whole, and a reference to a base's variable copies it whole,
# so no single step of a base pipeline can be changed: the two pipelines (and the ImageNet
# normalisation they use) are restated. They are the COCO base's with image_size instead of
# 1333x800 and, in training, flips in three directions. The dataset dicts only change their files
# and classes.
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=image_size, keep_ratio=True),
    # The COCO base flips horizontally only (see the recipe).
    dict(type='RandomFlip', flip_ratio=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=image_size,
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='Pad', size_divisor=32),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    samples_per_gpu=2,
    # Loading in the training process: on two cores, workers slow the step down (see the recipe).
    workers_per_gpu=0,
    train=dict(classes=classes, ann_file=data_root + 'annotations/instances_train.json',
               img_prefix=data_root + 'train/', pipeline=train_pipeline),
    val=dict(classes=classes, ann_file=data_root + 'annotations/instances_val.json',
             img_prefix=data_root + 'val/', pipeline=test_pipeline),
    test=dict(classes=classes, ann_file=data_root + 'annotations/instances_val.json',
              img_prefix=data_root + 'val/', pipeline=test_pipeline))

# --- schedule ----------------------------------------------------------------------------------
# The InternImage base's layer-decay constructor (no weight decay on norms and biases) trained
# this small model from scratch clearly worse (docs/benchmarks.md): plain AdamW instead.
optimizer = dict(_delete_=True, type='AdamW', lr=1.4e-3, betas=(0.9, 0.999), weight_decay=0.05,
                 fused=True)
optimizer_config = dict(grad_clip=dict(_delete_=True, max_norm=10.0, norm_type=2))
lr_config = dict(
    policy='CosineAnnealing',
    by_epoch=False,
    min_lr_ratio=0.01,
    warmup='linear',
    warmup_iters=200,
    warmup_ratio=0.01)
max_epochs = 13
runner = dict(type='EpochBasedRunner', max_epochs=max_epochs)
# Evaluate once at the end (scripts/quickstart.sh runs tools/test.py instead).
evaluation = dict(interval=max_epochs, metric=['bbox', 'segm'], save_best=None)
log_config = dict(interval=10)
