"""Count a detector's parameters and FLOPs, including the DCNv3 sampling that generic counters miss.

    python tools/get_flops.py CONFIG [--shape 1280 800]

Conventions (those of the published InternImage figures; mmcv's counter's but for the
parameters):
- one multiply-add counts as one FLOP;
- the model runs ``forward_dummy`` (backbone, neck, RPN, and the RoI heads on 1000 random
  proposals, the first 100 for the mask head) on one image of shape 3 x H x W, ``--shape H W``;
- mmcv counts the layers it knows (convs, linears, norms, ...); the DCNv3 core is a custom
  function it cannot see, so each DCNv3 layer adds 5 * h * w * K * C, with (h, w) its feature map
  (H/4 x W/4 at stage 0, halving per stage), C its channels and K its kernel points (3 x 3 = 9).
  A layer on a core other than ours (e.g. core_op='DCNv3_original', the original kernel, CUDA
  only) runs on the PyTorch core here: the count does not depend on the core;
- the parameters are all of the model's, frozen ones included, as in the published detector
  sizes; mmcv's counter would count only those that take gradients (the same for InternImage,
  which freezes none, but 225,344 fewer for mmdet's R50 Mask R-CNN with its frozen stem and
  first stage).
"""
import argparse

import _bootstrap  # noqa: F401  (first: repository on sys.path, quiet imports)

import torch  # noqa: E402
from mmcv.cnn import get_model_complexity_info  # noqa: E402
from mmdet.models.detectors import TwoStageDetector  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from ops_dcnv3.modules import DCNv3, DCNv3_pytorch  # noqa: E402
from ops_dcnv3.modules.dcnv3 import _DCNv3Base  # noqa: E402
from _usage import ConfigOptions, build_model, one_line_errors, read_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Count parameters and FLOPs of a detector')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=[1280, 800],
                        help='input size H W (one number: square)')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override config entries')
    parser.add_argument('--per-layer', action='store_true', help='print mmcv\'s per-layer table')
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or a single size')
    if min(args.shape) < 32:  # the backbone's last stage has 1/32 of the input's size
        parser.error(f'--shape must be at least 32 pixels each way, got {args.shape}')
    return args


def dcnv3_core_flops(height, width, channels, kernel_points):
    """FLOPs of one DCNv3 sampling core on a height x width map (the published convention)."""
    return 5 * height * width * kernel_points * channels


class DCNv3CoreCounter:
    """Adds ``dcnv3_core_flops`` for every DCNv3 layer call (any core) during a forward pass."""

    def __init__(self, model):
        self.flops = 0
        self.layers = 0
        self._handles = [module.register_forward_hook(self._count) for module in model.modules()
                         if isinstance(module, _DCNv3Base)]

    def _count(self, module, inputs, output):
        batch, height, width, channels = inputs[0].shape  # DCNv3 layers run channels-last
        self.flops += batch * dcnv3_core_flops(height, width, channels, module.kernel_size ** 2)
        self.layers += 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


def dummy_forward(model):
    """The forward pass to count: ``forward_dummy``, with well-formed proposals for two-stage models.

    mmdet's two-stage ``forward_dummy`` feeds the RoI heads 1000 ``torch.randn`` boxes, half of
    them with x2 < x1, which the CPU RoIAlign rejects. The count depends only on the number of
    boxes (1000 for the box head, the first 100 for the mask head), so valid random boxes inside
    the image give the same FLOPs on every device.
    """
    if not isinstance(model, TwoStageDetector):
        return model.forward_dummy

    def forward(img):
        features = model.extract_feat(img)
        outs = (model.rpn_head(features),) if model.with_rpn else ()
        height, width = img.shape[-2:]
        corners = torch.rand(1000, 2, 2, generator=torch.Generator().manual_seed(0))
        corners = (corners * torch.tensor([width, height])).to(img.device)
        proposals = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
        return outs + (model.roi_head.forward_dummy(features, proposals),)
    return forward


def count_complexity(cfg, height, width, per_layer=False):
    """Returns (total FLOPs, FLOPs of the DCNv3 cores, number of parameters)."""
    cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    model = build_model(cfg, cfg.filename, training=True)
    model.eval()
    if not hasattr(model, 'forward_dummy'):
        raise SystemExit(f'{model.__class__.__name__} has no forward_dummy: FLOPs cannot be counted')
    model.forward = dummy_forward(model)
    for module in model.modules():
        if isinstance(module, _DCNv3Base) and not isinstance(module, (DCNv3, DCNv3_pytorch)):
            module.__class__ = DCNv3_pytorch  # the same layer on the PyTorch core (module doc)
    dcn_counter = DCNv3CoreCounter(model)
    with torch.no_grad():
        generic_flops, _ = get_model_complexity_info(
            model, (3, height, width), print_per_layer_stat=per_layer, as_strings=False)
    dcn_counter.remove()
    params = sum(p.numel() for p in model.parameters())  # frozen ones too (module doc)
    return generic_flops + dcn_counter.flops, dcn_counter.flops, params


def main(argv=None):
    args = parse_args(argv)
    height, width = (args.shape * 2)[:2]
    with one_line_errors('tools/get_flops.py'):
        cfg = read_config(args.config, args.cfg_options, required=('model',))
        flops, dcn_flops, params = count_complexity(cfg, height, width, args.per_layer)
    line = '=' * 40
    print(f'{line}\nConfig: {args.config}\nInput shape: (3, {height}, {width})\n'
          f'Flops: {flops / 1e9:.2f} GFLOPs (of which DCNv3 cores {dcn_flops / 1e9:.2f} G)\n'
          f'Params: {params:,} ({params / 1e6:.2f} M, all parameters, frozen ones included)\n{line}')
    print('A multiply-add counts as one FLOP; forward_dummy runs the RoI heads on fixed random '
          'proposals. Check that the figures suit your comparison.')


if __name__ == '__main__':
    main()
