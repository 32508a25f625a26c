# Mask R-CNN with InternImage-B + FPN: everything specific to the B size.
_base_ = './mask_rcnn_internimage_fpn.py'
depths = [4, 4, 21, 4]
model = dict(
    backbone=dict(
        channels=112,
        depths=depths,
        groups=[7, 14, 28, 56],
        drop_path_rate=0.4,
        post_norm=True,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_b_1k_224.pth')),
    neck=dict(in_channels=[112, 224, 448, 896]))
optimizer = dict(paramwise_cfg=dict(num_layers=sum(depths), depths=depths))
