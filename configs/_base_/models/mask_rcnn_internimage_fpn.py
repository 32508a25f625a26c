# Mask R-CNN with an InternImage backbone: the settings all sizes share. The size files
# (mask_rcnn_internimage_{t,s,b}_fpn.py) add channels, depths, groups and the rest.
_base_ = './mask_rcnn_r50_fpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='InternImage',
        core_op='DCNv3',
        mlp_ratio=4.0,
        norm_layer='LN',
        layer_scale=1.0,
        offset_scale=1.0,
        with_cp=False,
        out_indices=(0, 1, 2, 3)),
    neck=dict(type='FPN', out_channels=256, num_outs=5))
# AdamW with layer-wise lr decay over the backbone's blocks (rate 1.0: the same lr everywhere,
# but no weight decay on norms, biases and layer-scale gammas). The size files give the depths.
# fused: one fused kernel per parameter group instead of a dozen foreach calls per group (torch's
# GPU default), over 64 groups and 727 tensors for T; same update, other rounding.
optimizer = dict(
    type='AdamW',
    lr=0.0001,
    betas=(0.9, 0.999),
    weight_decay=0.05,
    fused=True,
    constructor='CustomLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0))
optimizer_config = dict(grad_clip=None)
# fp16 = dict(loss_scale=dict(init_scale=512))  # mixed precision: off, as in the released runs
