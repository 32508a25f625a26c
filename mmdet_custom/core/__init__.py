from .hooks import StepPhaseTimerHook, SyncFreeFp16OptimizerHook, SyncFreeTextLoggerHook
from .optimizers import CustomLayerDecayOptimizerConstructor
from .runner import ResumableEpochBasedRunner

__all__ = ['CustomLayerDecayOptimizerConstructor', 'ResumableEpochBasedRunner',
           'StepPhaseTimerHook', 'SyncFreeFp16OptimizerHook', 'SyncFreeTextLoggerHook']
