from .layer_decay_optimizer_constructor import CustomLayerDecayOptimizerConstructor, get_layer_id

__all__ = ['CustomLayerDecayOptimizerConstructor', 'get_layer_id']
