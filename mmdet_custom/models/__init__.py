from .backbones import InternImage
from .roi_heads import GridSampleRoIAlign, GridSampleRoIExtractor, SubsampledMaskRoIHead

__all__ = ['InternImage', 'GridSampleRoIAlign', 'GridSampleRoIExtractor', 'SubsampledMaskRoIHead']
