from .hooks import StepPhaseTimerHook
from .optimizers import CustomLayerDecayOptimizerConstructor

__all__ = ['CustomLayerDecayOptimizerConstructor', 'StepPhaseTimerHook']
