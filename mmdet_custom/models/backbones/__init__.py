from .intern_image import InternImage, PretrainedCheckpointError

__all__ = ['InternImage', 'PretrainedCheckpointError']
