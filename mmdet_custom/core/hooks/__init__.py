from .step_phase_timer import PHASES, StepPhaseTimerHook

__all__ = ['PHASES', 'StepPhaseTimerHook']
