from .backbones import InternImage
from .roi_heads import SubsampledMaskRoIHead

__all__ = ['InternImage', 'SubsampledMaskRoIHead']
