from .hooks import StepPhaseTimerHook, SyncFreeFp16OptimizerHook
from .optimizers import CustomLayerDecayOptimizerConstructor

__all__ = ['CustomLayerDecayOptimizerConstructor', 'StepPhaseTimerHook',
           'SyncFreeFp16OptimizerHook']
