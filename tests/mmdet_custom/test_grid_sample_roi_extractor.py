"""GridSampleRoIAlign and GridSampleRoIExtractor: mmcv's RoIAlign results through grid_sample."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.models.builder import build_roi_extractor

import mmdet_custom  # noqa: F401  (registers the extractor)
from mmdet_custom.models.roi_heads import GridSampleRoIAlign


def _rois(num_rois, num_images, extent, generator, dtype=torch.float64):
    """RoIs in shuffled image order (image 1 gets none), reaching up to 20 px outside the map."""
    images = torch.randint(0, num_images, (num_rois,), generator=generator)
    images[images == 1] = 0
    corner = torch.rand(num_rois, 2, generator=generator, dtype=dtype) * (extent + 20) - 20
    size = torch.rand(num_rois, 2, generator=generator, dtype=dtype) * extent / 2
    return torch.cat([images[:, None].to(dtype), corner, corner + size], 1)


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [1, 2])
@pytest.mark.parametrize('output_size', [7, (14, 5)])
def test_matches_mmcv_roi_align_forward_and_backward(aligned, sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 20, 26, dtype=torch.float64, generator=generator,
                           requires_grad=True)
    rois = _rois(30, 3, extent=100, generator=generator)
    expected_layer = RoIAlign(output_size, 0.25, sampling_ratio, aligned=aligned)
    layer = GridSampleRoIAlign(output_size, 0.25, sampling_ratio, aligned=aligned)

    expected = expected_layer(features, rois)
    result = layer(features, rois)
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    expected_grad, = torch.autograd.grad(expected, features, upstream)
    grad, = torch.autograd.grad(result, features, upstream)

    assert result.shape == expected.shape
    # Some samples fall more than a pixel outside the map (zeros) or at its edge (clamped).
    assert (expected == 0).any()
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


def test_rois_in_image_order_with_equal_counts_float32():
    """The training case (each image's samples in turn, as many per image), in float32."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 32, 32, generator=generator)
    rois = _rois(16, 1, extent=128, generator=generator, dtype=torch.float32)
    rois[8:, 0] = 1
    expected = RoIAlign(7, 0.25, 1)(features, rois)
    torch.testing.assert_close(GridSampleRoIAlign(7, 0.25, 1)(features, rois), expected,
                               rtol=0, atol=1e-5)


def test_no_rois_gives_an_empty_result():
    layer = GridSampleRoIAlign((7, 5), 0.5, 1)
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    result = layer(features, torch.zeros(0, 5))
    assert result.shape == (0, 3, 7, 5)
    # Still part of the graph, as mmcv's result: a backward reaches the features, with zeros.
    grad, = torch.autograd.grad(result.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_features_are_sampled_in_float32(dtype):
    """torch's CPU grid_sample in float16/bfloat16 gave NaN and 3e38 on a map of this size."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 8, 200, 336, generator=generator)
    rois = torch.tensor([[0., 10, 20, 300, 180], [0, 100, 40, 180, 150]])
    expected = RoIAlign(7, 0.5, 2)(features.to(dtype).float(), rois)
    result = GridSampleRoIAlign(7, 0.5, 2)(features.to(dtype), rois)
    assert result.dtype == dtype
    torch.testing.assert_close(result.float(), expected, rtol=0, atol=1e-2)


def test_nan_rois_give_nan_features():
    """As a diverged model's proposals: NaN features make a NaN loss, which stops training."""
    result = GridSampleRoIAlign(7, 1.0, 1)(torch.randn(1, 3, 8, 8),
                                           torch.tensor([[0., float('nan'), 0, 4, 4]]))
    assert result.isnan().any()


@pytest.mark.parametrize('kwargs, message', [
    (dict(sampling_ratio=0), 'sampling_ratio >= 1'),
    (dict(sampling_ratio=1, pool_mode='max'), 'pool_mode must be "avg"'),
    (dict(sampling_ratio=1, use_torchvision=True), 'does not call torchvision'),
])
def test_unsupported_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GridSampleRoIAlign(7, 1.0, **kwargs)


@pytest.mark.parametrize('features, rois, message', [
    (torch.randn(3, 8, 8), torch.zeros(1, 5), r'features of shape \(N, C, H, W\)'),
    (torch.randn(1, 3, 8, 8), torch.zeros(1, 4), r'rois of shape \(K, 5\)'),
    (torch.randn(1, 3, 8, 8), torch.tensor([[1., 0, 0, 4, 4]]), 'features hold 1'),
    (torch.randn(1, 3, 8, 8), torch.tensor([[0., 5, 0, 4, 4]]), r'x2 < x1 or y2 < y1'),
    (torch.randn(1, 3, 8, 8), torch.tensor([[0., 0, 5, 4, 4]]), r'x2 < x1 or y2 < y1'),
])
def test_bad_inputs_are_named(features, rois, message):
    with pytest.raises(ValueError, match=message):
        GridSampleRoIAlign(7, 1.0, 1)(features, rois)


def _extractors(**roi_layer):
    config = dict(roi_layer=dict(type='RoIAlign', output_size=7, **roi_layer), out_channels=4,
                  featmap_strides=[4, 8, 16, 32])
    return (build_roi_extractor(dict(type='SingleRoIExtractor', **config)),
            build_roi_extractor(dict(type='GridSampleRoIExtractor', **config)))


def test_extractor_matches_single_roi_extractor_over_levels():
    expected_extractor, extractor = _extractors(sampling_ratio=2)
    assert all(isinstance(layer, GridSampleRoIAlign) for layer in extractor.roi_layers)
    generator = torch.Generator().manual_seed(2)
    features = tuple(torch.randn(2, 4, 512 // s, 512 // s, dtype=torch.float64,
                                 generator=generator) for s in (4, 8, 16, 32))
    # Sizes from 8 to 500 px, so that RoIs map to all four levels (from 448 px to the last).
    size = 8 + torch.rand(40, 1, generator=generator, dtype=torch.float64) * 492
    corner = torch.rand(40, 2, generator=generator, dtype=torch.float64) * (511 - size)
    images = (torch.arange(40) % 2).to(torch.float64)[:, None]
    rois = torch.cat([images, corner, corner + size], 1)
    expected = expected_extractor(features, rois)
    torch.testing.assert_close(extractor(features, rois), expected, rtol=0, atol=1e-12)
    levels = expected_extractor.map_roi_levels(rois, 4)
    assert len(levels.unique()) == 4


def test_extractor_refuses_other_layers_and_adaptive_sampling():
    config = dict(roi_layer=dict(type='RoIPool', output_size=7), out_channels=4,
                  featmap_strides=[4])
    with pytest.raises(ValueError, match='roi_layer type must be "RoIAlign"'):
        build_roi_extractor(dict(type='GridSampleRoIExtractor', **config))
    with pytest.raises(ValueError, match='sampling_ratio >= 1'):
        _extractors(sampling_ratio=0)
