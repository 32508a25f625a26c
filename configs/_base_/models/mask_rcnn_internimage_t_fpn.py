# Mask R-CNN with InternImage-T + FPN: everything specific to the T size.
_base_ = './mask_rcnn_internimage_fpn.py'
depths = [4, 4, 18, 4]
model = dict(
    backbone=dict(
        channels=64,
        depths=depths,
        groups=[4, 8, 16, 32],
        drop_path_rate=0.2,
        post_norm=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_t_1k_224.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
optimizer = dict(paramwise_cfg=dict(num_layers=sum(depths), depths=depths))
