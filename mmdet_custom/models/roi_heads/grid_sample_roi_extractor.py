"""RoIAlign with a fixed sampling grid, computed by ``grid_sample``, and an extractor that uses it.

mmcv's CPU RoIAlign runs on one thread and its backward scatters one output element at a time;
in the quick start's training step its forward and backward took about 15% of the time. With a
fixed number of samples per bin (``sampling_ratio >= 1``) every RoI has the same sample grid, so
the whole layer is one bilinear ``grid_sample`` over the batch followed by an average over each
bin's samples: the same numbers (to float rounding), several times faster on two cores, forward
and backward together. Adaptive sampling (``sampling_ratio=0``, the COCO configs') gives each
RoI its own grid size and stays with mmcv's kernel.
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.ops import RoIAlign
from mmdet.models.builder import ROI_EXTRACTORS
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from torch import nn

# Normalised grid_sample coordinate of a sample that RoIAlign drops (it lies over a pixel away
# from the map): far enough outside that zero padding gives it no value and no gradient.
_DROPPED = -3.0


class GridSampleRoIAlign(RoIAlign):
    """mmcv's ``RoIAlign`` (average pooling, ``sampling_ratio >= 1``) through ``grid_sample``.

    Same constructor, attributes and results as ``mmcv.ops.RoIAlign`` (so the ONNX export reads it
    like one). Sample positions and their edge rules are RoIAlign's: a sample more than one pixel
    outside the map counts as zero, one within a pixel of the edge takes the edge's value.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, pool_mode: str = 'avg', aligned: bool = True,
                 use_torchvision: bool = False):
        if sampling_ratio < 1:
            raise ValueError(f'GridSampleRoIAlign needs a fixed sampling_ratio >= 1, got '
                             f'{sampling_ratio} (adaptive sampling: use mmcv RoIAlign)')
        if pool_mode != 'avg':
            raise ValueError(f'GridSampleRoIAlign averages each bin; pool_mode must be "avg", got '
                             f'{pool_mode!r}')
        if use_torchvision:
            raise ValueError('GridSampleRoIAlign does not call torchvision (use_torchvision=False)')
        super().__init__(output_size, spatial_scale, sampling_ratio, pool_mode, aligned)

    def _sample_coords(self, start: torch.Tensor, length: torch.Tensor, bins: int,
                       size: int) -> torch.Tensor:
        """Normalised coordinates (K, bins * sampling_ratio) along one axis of a map of ``size``."""
        steps = bins * self.sampling_ratio
        # Sample k of a RoI sits at start + length * (k + 0.5) / steps, in pixels.
        fractions = (torch.arange(steps, dtype=start.dtype, device=start.device) + 0.5) / steps
        pixels = start[:, None] + length[:, None] * fractions
        dropped = (pixels < -1.0) | (pixels > size)
        pixels = pixels.clamp(0, size - 1)
        # grid_sample with align_corners=False puts pixel centre p at (2p + 1) / size - 1.
        coords = (2 * pixels + 1) / size - 1
        return coords.masked_fill(dropped, _DROPPED)

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4:
            raise ValueError(f'GridSampleRoIAlign expects features of shape (N, C, H, W), got '
                             f'{tuple(input.shape)}')
        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(f'GridSampleRoIAlign expects rois of shape (K, 5) as (batch index, '
                             f'x1, y1, x2, y2), got {tuple(rois.shape)}')
        out_h, out_w = self.output_size
        ratio = self.sampling_ratio
        num_images, channels = input.shape[:2]
        num_rois = rois.size(0)
        if num_rois == 0:
            # A view of the features, so that a backward through it gives them a (zero) gradient.
            return input[:0, :, :1, :1].expand(0, channels, out_h, out_w)
        batch = rois[:, 0].long()
        if int(batch.min()) < 0 or int(batch.max()) >= num_images:
            raise ValueError(f'rois name images {int(batch.min())} to {int(batch.max())}, but the '
                             f'features hold {num_images}')

        if self.aligned and bool((rois[:, 3:] < rois[:, 1:3]).any()):
            # RoIAlign(aligned=True) refuses them too; sampled, they would be mirrored boxes. (NaN
            # coordinates pass, to give NaN features and so a NaN loss, which stops training.)
            raise ValueError('GridSampleRoIAlign got rois with x2 < x1 or y2 < y1')
        # torch's CPU grid_sample in float16/bfloat16 overflows on large maps, and half-precision
        # coordinates would move the samples: computed in float32, returned in the input's dtype.
        dtype = input.dtype
        if dtype in (torch.float16, torch.bfloat16):
            input = input.float()
        boxes = rois[:, 1:].to(input.dtype) * self.spatial_scale
        if self.aligned:
            boxes = boxes - 0.5  # pixel centres at integer coordinates, as RoIAlign(aligned=True)
        x1, y1, x2, y2 = boxes.unbind(1)
        width, height = x2 - x1, y2 - y1
        if not self.aligned:
            width, height = width.clamp(min=1), height.clamp(min=1)
        xs = self._sample_coords(x1, width, out_w, input.size(3))
        ys = self._sample_coords(y1, height, out_h, input.size(2))
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)

        # One grid_sample over the batch (ATen parallelises it over images): each image's RoIs
        # stacked along the grid's height, padded with dropped samples to the busiest image's count.
        counts = torch.bincount(batch, minlength=num_images)
        order = torch.argsort(batch, stable=True)
        first_of_image = counts.cumsum(0) - counts
        slot = torch.empty_like(batch)
        slot[order] = torch.arange(num_rois, device=batch.device) - first_of_image[batch[order]]
        rows, cols = out_h * ratio, out_w * ratio
        per_image = int(counts.max())
        # Row of each RoI in the (image, slot) padding; 1-D indices keep the backward an index_add.
        padded_row = batch * per_image + slot
        padded = grid.new_full((num_images * per_image, rows, cols, 2), _DROPPED)
        padded.index_copy_(0, padded_row, grid)
        samples = F.grid_sample(input, padded.view(num_images, -1, cols, 2), mode='bilinear',
                                padding_mode='zeros', align_corners=False)
        samples = samples.view(num_images, channels, per_image, rows, cols).transpose(1, 2)
        output = samples.reshape(num_images * per_image, channels, rows, cols)
        if not torch.equal(padded_row, torch.arange(len(output), device=batch.device)):
            output = output.index_select(0, padded_row)  # unless RoIs came image by image, evenly
        if ratio > 1:
            output = F.avg_pool2d(output, ratio)
        return output.to(dtype)


@ROI_EXTRACTORS.register_module()
class GridSampleRoIExtractor(SingleRoIExtractor):
    """``SingleRoIExtractor`` whose per-level RoIAlign layers are ``GridSampleRoIAlign``.

    ``roi_layer`` takes RoIAlign's arguments, with ``sampling_ratio >= 1``.
    """

    def build_roi_layers(self, layer_cfg: dict, featmap_strides: Sequence[int]) -> nn.ModuleList:
        cfg = dict(layer_cfg)
        layer_type = cfg.pop('type')
        if layer_type != 'RoIAlign':
            raise ValueError(f'GridSampleRoIExtractor computes RoIAlign; roi_layer type must be '
                             f'"RoIAlign", got {layer_type!r}')
        layers: List[nn.Module] = [GridSampleRoIAlign(spatial_scale=1 / stride, **cfg)
                                   for stride in featmap_strides]
        return nn.ModuleList(layers)
