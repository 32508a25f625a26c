from .subsampled_mask_roi_head import SubsampledMaskRoIHead

__all__ = ['SubsampledMaskRoIHead']
