from .grid_sample_roi_extractor import GridSampleRoIAlign, GridSampleRoIExtractor
from .subsampled_mask_roi_head import SubsampledMaskRoIHead

__all__ = ['GridSampleRoIAlign', 'GridSampleRoIExtractor', 'SubsampledMaskRoIHead']
