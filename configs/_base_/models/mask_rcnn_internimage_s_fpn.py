# Mask R-CNN with InternImage-S + FPN: everything specific to the S size.
_base_ = './mask_rcnn_internimage_fpn.py'
depths = [4, 4, 21, 4]
model = dict(
    backbone=dict(
        channels=80,
        depths=depths,
        groups=[5, 10, 20, 40],
        drop_path_rate=0.3,
        post_norm=True,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_s_1k_224.pth')),
    neck=dict(in_channels=[80, 160, 320, 640]))
optimizer = dict(paramwise_cfg=dict(num_layers=sum(depths), depths=depths))
