from .layer_decay_optimizer_constructor import (CustomLayerDecayOptimizerConstructor,
                                               ParamwiseConfigError, get_layer_id)

__all__ = ['CustomLayerDecayOptimizerConstructor', 'ParamwiseConfigError', 'get_layer_id']
