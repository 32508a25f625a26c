from .optimizers import CustomLayerDecayOptimizerConstructor

__all__ = ['CustomLayerDecayOptimizerConstructor']
