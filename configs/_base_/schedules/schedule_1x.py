# 12 epochs, lr steps after epochs 8 and 11, 500-iteration linear warm-up (mmdet 2.x's 1x).
# The optimizer comes with the model (_base_/models/mask_rcnn_internimage_fpn.py).
lr_config = dict(
    policy='step',
    warmup='linear',
    warmup_iters=500,
    warmup_ratio=0.001,
    step=[8, 11])
runner = dict(type='EpochBasedRunner', max_epochs=12)
