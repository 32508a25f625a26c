# Mask R-CNN with InternImage-B + FPN on COCO, 3x schedule (36 epochs, multi-scale + random crop).
# Trained on 8 GPUs x 2 images: bash tools/dist_train.sh THIS_CONFIG 8
_base_ = [
    '../_base_/models/mask_rcnn_internimage_b_fpn.py',
    '../_base_/datasets/coco_instance_multiscale_crop.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime.py',
]
