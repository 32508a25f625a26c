from .hooks import StepPhaseTimerHook, SyncFreeFp16OptimizerHook, SyncFreeTextLoggerHook
from .optimizers import CustomLayerDecayOptimizerConstructor

__all__ = ['CustomLayerDecayOptimizerConstructor', 'StepPhaseTimerHook',
           'SyncFreeFp16OptimizerHook', 'SyncFreeTextLoggerHook']
