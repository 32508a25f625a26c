from .finite_loss import FiniteLossHook, NonFiniteLossError
from .fp16_optimizer import SyncFreeFp16OptimizerHook
from .step_phase_timer import PHASES, StepPhaseTimerHook
from .text_logger import SyncFreeTextLoggerHook

__all__ = ['FiniteLossHook', 'NonFiniteLossError', 'PHASES', 'StepPhaseTimerHook',
           'SyncFreeFp16OptimizerHook', 'SyncFreeTextLoggerHook']
