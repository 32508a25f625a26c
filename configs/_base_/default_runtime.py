# Registers the InternImage backbone and the layer-decay optimizer constructor, so that plain
# mmdet tools (tools/train.py, tools/test.py, init_detector) can use these configs.
custom_imports = dict(imports=['mmdet_custom'], allow_failed_imports=False)

# A checkpoint every epoch (the last three kept, plus latest.pth), so --auto-resume loses little.
checkpoint_config = dict(interval=1, max_keep_ckpts=3, save_last=True)
log_config = dict(
    interval=50,
    hooks=[
        dict(type='TextLoggerHook'),
        # dict(type='TensorboardLoggerHook')
    ])
custom_hooks = [dict(type='NumClassCheckHook')]

dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]

# OpenCV single-threaded inside dataloader workers, so they do not oversubscribe the CPU.
opencv_num_threads = 0
mp_start_method = 'fork'

# Set enable=True (or pass --auto-scale-lr) to scale the lr to the actual total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=16)
