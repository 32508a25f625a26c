# Mask R-CNN with InternImage-B + FPN on COCO, 1x schedule (12 epochs, single scale).
# Trained on 8 GPUs x 2 images: bash tools/dist_train.sh THIS_CONFIG 8
_base_ = [
    '../_base_/models/mask_rcnn_internimage_b_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
