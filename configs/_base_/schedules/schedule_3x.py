# 36 epochs, lr steps after epochs 27 and 33; otherwise the 1x schedule.
_base_ = './schedule_1x.py'
lr_config = dict(step=[27, 33])
runner = dict(max_epochs=36)
