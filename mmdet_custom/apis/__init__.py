"""Training and testing entry points used by tools/: resumable, CPU- and GPU-distributed."""
from .checkpoint import (CheckpointError, find_resumable_checkpoint, holds_backbone_weights,
                         load_detector_checkpoint, load_weights_leniently, read_checkpoint,
                         restore_best_record, stored_seed)
from .datasets import DatasetError, load_dataset
from .distributed import MMDistributedDataParallelAnyDevice, init_distributed, wrap_model
from .seeding import EpochSeedHook, derive_seed, seed_everything
from .test import (RANK_RESULTS_FOLDER, DistEvalHookAnyDevice, ResultsNotGathered, evaluate_kwargs,
                   multi_process_test)
from .train import (AMP_CHOICES, build_train_dataloader, check_mixed_precision,
                    resume_checkpoint, set_mixed_precision, start_worker_server, train_detector,
                    TrainingStopped, train_loader_config)

__all__ = [
    'CheckpointError', 'find_resumable_checkpoint', 'holds_backbone_weights',
    'load_detector_checkpoint',
    'load_weights_leniently', 'read_checkpoint', 'restore_best_record', 'stored_seed',
    'DatasetError',
    'load_dataset',
    'MMDistributedDataParallelAnyDevice', 'init_distributed', 'wrap_model', 'EpochSeedHook',
    'derive_seed', 'seed_everything', 'DistEvalHookAnyDevice', 'evaluate_kwargs',
    'multi_process_test', 'RANK_RESULTS_FOLDER', 'ResultsNotGathered',
    'build_train_dataloader', 'train_detector', 'AMP_CHOICES', 'check_mixed_precision',
    'resume_checkpoint',
    'set_mixed_precision', 'start_worker_server', 'train_loader_config', 'TrainingStopped'
]
