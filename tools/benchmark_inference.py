"""Time InternImage Mask R-CNN against mmdet's ResNet-50 Mask R-CNN, side by side in one process.

Three parts per model, on the same input: backbone+neck (``extract_feat``, no grad), full
inference (``simple_test`` of one image with the masks pasted at image size, as tools/test.py runs
it) and one training step (forward + backward of --train-batch images with synthetic ground
truth). The models take turns within every repeat; each figure is the median of --repeats after
--warmup. Weights are random (no checkpoint download); the DCNv3 offset and mask layers get
random weights too, so the op samples a pixel or so away from the grid as a trained model does.
The heads' score and box-delta layers (RPN and R-CNN) are zeroed in every model: all proposals
and detections then tie, and every model proposes and detects the same boxes, so the heads, which
all models share, do the same work in each (with random box layers each model would get boxes of
other sizes, and RoIAlign's adaptive sampling and the mask pasting cost seconds more or less).
The R-CNN score threshold is lowered to 0, so that each model emits 100 detections and runs the
mask head on them, as a trained model does on a typical image. Ratios are printed against R50.
R50 is mmdet's config, whose stem and first stage take no gradients (frozen_stages=1), while
InternImage trains every stage; --r50-frozen-stages -1 times a training step that does the same.

--breakdown then profiles --repeats more calls of each, taking turns as above (torch.profiler, self
CPU time), and splits each into the dense operators (convolutions and matrix products, forward
and backward) and the rest, medians of each. It prints each InternImage model's floor: its ratio
to R50 if its other operators took only as long as R50's do, its dense operators as they are.
The dense operators of both models run near the CPU's GEMM rate (docs/benchmarks.md), so a floor
above a target means that no change to the other operators alone can meet it.

    python tools/benchmark_inference.py                       # T vs R50, CPU, 2 threads
    python tools/benchmark_inference.py --models t s b --device cuda
    python tools/benchmark_inference.py --breakdown          # and where each model's time goes
    python tools/benchmark_inference.py --r50-frozen-stages -1   # R50 trains every stage, as T does
"""
import argparse
import os
import os.path as osp
import statistics
import sys

import _bootstrap  # (first: repository on sys.path, quiet imports)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmcv import Config  # noqa: E402
from mmdet.core import BitmapMasks  # noqa: E402
from mmdet.models import build_detector  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from _timing import count_at_least, median_ms, take_turns  # noqa: E402
from ops_dcnv3.modules.dcnv3 import _DCNv3Base  # noqa: E402

CONFIGS = {
    'r50': 'configs/_base_/models/mask_rcnn_r50_fpn.py',
    't': 'configs/coco/mask_rcnn_internimage_t_fpn_1x_coco.py',
    's': 'configs/coco/mask_rcnn_internimage_s_fpn_1x_coco.py',
    'b': 'configs/coco/mask_rcnn_internimage_b_fpn_1x_coco.py',
}
PARTS = ('backbone', 'inference', 'train')
PART_TITLES = {'backbone': 'backbone+neck', 'inference': 'full inference', 'train': 'training step'}
# Targets for InternImage-T / R50 (the issue that introduced this tool).
TARGETS = {'backbone': 1.15, 'inference': 1.0, 'train': 1.2}
# The operators --breakdown counts as dense: convolutions and matrix products, forward and backward
# (ops_dcnv3.modules.linear sends the blocks' Linears to oneDNN's _linear_pointwise and
# mkldnn_linear_backward_weights). Converting operands to oneDNN tensors (aten::to_mkldnn) is not
# arithmetic, so it counts with the rest.
DENSE_OPS = frozenset({
    'aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_slow_conv2d_forward',
    'aten::_slow_conv2d_backward', 'aten::slow_conv_transpose2d', 'aten::mm', 'aten::addmm',
    'aten::bmm', 'aten::baddbmm', 'mkldnn::_linear_pointwise', 'aten::mkldnn_linear',
    'aten::mkldnn_linear_backward_weights', 'aten::mkldnn_linear_backward_input'})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', choices=('t', 's', 'b'), default=['t'],
                        help='InternImage sizes to time against R50')
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS))
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--threads', type=count_at_least(1), default=2, help='CPU threads (torch.set_num_threads)')
    # At least 32: the backbone's last stage has 1/32 of the input's size.
    parser.add_argument('--image-size', type=count_at_least(32), nargs=2, default=(800, 1216),
                        metavar=('H', 'W'),
                        help='input size; the default is a 3:2 image (such as 640x427) at the '
                             '1333x800 test scale, 800x1199, padded to /32')
    parser.add_argument('--train-batch', type=count_at_least(1), default=2,
                        help='images per training step')
    parser.add_argument('--repeats', type=count_at_least(1), default=5,
                        help='timed runs per figure (median)')
    parser.add_argument('--warmup', type=count_at_least(0), default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--check', action='store_true',
                        help='exit with status 1 unless InternImage-T meets the targets '
                             f'(T/R50: {", ".join(f"{PART_TITLES[p]} <= {t:g}" for p, t in TARGETS.items())})')
    parser.add_argument('--r50-frozen-stages', type=int, default=1, choices=range(-1, 5),
                        metavar='{-1,...,4}',
                        help="R50's frozen_stages: 1 as in mmdet's config (stem and stage 1 take no "
                             'gradients); -1 trains every stage, as InternImage does')
    parser.add_argument('--breakdown', action='store_true',
                        help='also profile --repeats calls of each model and part: dense operators '
                             '(convolutions, matrix products) against the rest, and the floor '
                             'ratio (module doc; CPU only)')
    args = parser.parse_args(argv)
    if args.breakdown and args.device != 'cpu':
        parser.error('--breakdown splits CPU time; it needs --device cpu')
    if args.check and 't' not in args.models:
        parser.error('--check needs t among --models')
    return args


def build_model(name, device, seed, r50_frozen_stages=1):
    cfg = Config.fromfile(osp.join(_bootstrap.REPO_ROOT, CONFIGS[name]))
    if name == 'r50':
        cfg.model.backbone.frozen_stages = r50_frozen_stages
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None  # random weights, no download
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # 100 detections with random weights (module doc)
    torch.manual_seed(seed)
    model = build_detector(cfg.model)  # constructors' random init (init_weights() not called)
    for module in model.modules():
        if isinstance(module, _DCNv3Base):  # offsets of about a pixel, non-uniform masks
            for layer in (module.offset, module.mask):
                torch.nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)
    # Equal scores and zero box deltas: every model proposes and detects the same boxes (module
    # doc), so the heads, shared by all models, do the same work in each.
    for layer in (model.rpn_head.rpn_cls, model.rpn_head.rpn_reg, model.roi_head.bbox_head.fc_cls,
                  model.roi_head.bbox_head.fc_reg):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model.to(device)


def image_metas(height, width, batch):
    meta = dict(img_shape=(height, width, 3), ori_shape=(height, width, 3),
                pad_shape=(height, width, 3), batch_input_shape=(height, width),
                scale_factor=np.ones(4, dtype=np.float32), flip=False, flip_direction=None)
    return [dict(meta) for _ in range(batch)]


def synthetic_ground_truth(height, width, batch, device, generator, boxes_per_image=8):
    """Random boxes with rectangular masks and random labels, the same for every model."""
    gt_bboxes, gt_labels, gt_masks = [], [], []
    for _ in range(batch):
        size = torch.tensor([width, height], dtype=torch.float32)
        corners = torch.rand(boxes_per_image, 2, 2, generator=generator) * size * 0.9
        top_left = corners.min(1).values
        bottom_right = torch.minimum(torch.maximum(corners.max(1).values, top_left + 8), size)
        boxes = torch.cat([top_left, bottom_right], 1)
        masks = np.zeros((boxes_per_image, height, width), dtype=np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        gt_bboxes.append(boxes.to(device))
        gt_labels.append(torch.randint(0, 80, (boxes_per_image,), generator=generator).to(device))
        gt_masks.append(BitmapMasks(masks, height, width))
    return dict(gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_masks=gt_masks)


def part_calls(part, models, image, train_inputs, seed):
    """One zero-argument callable per model for this part (models set to the right mode)."""
    calls = {}
    for name, model in models.items():
        if part == 'train':
            model.train()

            def step(model=model):
                torch.manual_seed(seed)  # the same proposal sampling for every model and repeat
                model.zero_grad(set_to_none=True)
                loss, _ = model._parse_losses(model(train_inputs['img'], train_inputs['img_metas'],
                                                    **train_inputs['ground_truth']))
                loss.backward()
            calls[name] = step
            continue
        model.eval()
        metas = image_metas(*image.shape[2:], 1)
        if part == 'backbone':
            calls[name] = lambda model=model: _no_grad(model.extract_feat, image)
        else:
            calls[name] = lambda model=model: _no_grad(model, return_loss=False, rescale=True,
                                                       img=[image], img_metas=[metas])
    return calls


def op_breakdown(fn):
    """(dense, rest): the self CPU time in ms of one call of fn, in DENSE_OPS and in every other
    operator."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    dense = rest = 0.0
    for event in prof.key_averages():
        if event.key in DENSE_OPS:
            dense += event.self_cpu_time_total
        else:
            rest += event.self_cpu_time_total
    return dense / 1e3, rest / 1e3


def median_breakdowns(calls, repeats):
    """{name: (dense, rest)}: the medians of ``repeats`` op_breakdown calls of each named call,
    taking turns within every repeat."""
    splits = take_turns(calls, op_breakdown, warmup=0, repeats=repeats)
    return {name: (statistics.median(dense for dense, _ in values),
                   statistics.median(rest for _, rest in values)) for name, values in splits.items()}


def print_breakdown(title, splits):
    """One row per model of ``splits`` ({name: (dense, rest)}), with the floor of each model but
    R50: its time with R50's non-dense time in place of its own, over R50's time."""
    r50_dense, r50_rest = splits['r50']
    for name, (dense, rest) in splits.items():
        floor = '' if name == 'r50' else f'{(dense + r50_rest) / (r50_dense + r50_rest):>9.2f}x'
        print(f'{title:<22}{name.upper():>6}{dense + rest:>10.0f}{dense:>10.0f}{rest:>10.0f}{floor}')


def _no_grad(fn, *args, **kwargs):
    with torch.no_grad():
        return fn(*args, **kwargs)


def main(argv=None):
    args = parse_args(argv)
    _bootstrap.reuse_freed_memory()  # CPU steps reuse freed pages instead of faulting in new ones
    if args.device == 'cpu':
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is available')
    device = args.device
    height, width = args.image_size

    names = ['r50'] + args.models
    models = {name: build_model(name, device, args.seed, args.r50_frozen_stages) for name in names}
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.randn(1, 3, height, width, generator=generator).to(device)
    train_inputs = dict(
        img=torch.randn(args.train_batch, 3, height, width, generator=generator).to(device),
        img_metas=image_metas(height, width, args.train_batch),
        ground_truth=synthetic_ground_truth(height, width, args.train_batch, device, generator))

    device_name = (torch.cuda.get_device_name() if device == 'cuda'
                   else f'cpu, {torch.get_num_threads()} threads')
    print(f'InternImage ({", ".join(n.upper() for n in args.models)}) vs ResNet-50 Mask R-CNN: '
          f'{device_name}, torch {torch.__version__}, image {height}x{width}, training batch '
          f'{args.train_batch}, median of {args.repeats} after {args.warmup} warm-up, R50 '
          f'frozen_stages={args.r50_frozen_stages}')
    print(f'load average before: {os.getloadavg()[0]:.2f} (1 min, {os.cpu_count()} CPUs)', flush=True)

    header = f'{"part":<22}' + ''.join(f'{n.upper():>11}' for n in names) + ''.join(
        f'{n.upper() + "/R50":>9}' for n in args.models)
    print(header)
    print('-' * len(header))
    ratios, splits = {}, {}
    for part in args.parts:
        calls = part_calls(part, models, image, train_inputs, args.seed)
        times = median_ms(calls, device, args.warmup, args.repeats)
        title = PART_TITLES[part] + (f' ({args.train_batch} img)' if part == 'train' else '')
        ratios[part] = {name: times[name] / times['r50'] for name in args.models}
        print(f'{title:<22}' + ''.join(f'{times[n]:>9.0f}ms' for n in names)
              + ''.join(f'{ratios[part][n]:>8.2f}x' for n in args.models), flush=True)
        if args.breakdown:
            splits[title] = median_breakdowns(calls, args.repeats)
    print(f'load average after: {os.getloadavg()[0]:.2f}')
    if args.breakdown:
        print(f'\nwhere the time goes: torch.profiler self CPU time in ms, medians of {args.repeats} more'
              '\ncalls each; dense: convolutions and matrix products; floor: T/R50 with R50\'s'
              '\nnon-dense time in place of T\'s')
        print(f'{"part":<22}{"model":>6}{"total":>10}{"dense":>10}{"rest":>10}{"floor":>10}')
        for title, by_model in splits.items():
            print_breakdown(title, by_model)

    if 't' in args.models:
        verdicts = [(part, ratios[part]['t'] <= TARGETS[part]) for part in args.parts]
        print('T/R50 targets: ' + ', '.join(
            f'{PART_TITLES[part]} <= {TARGETS[part]:g} {"met" if ok else "NOT met"}'
            for part, ok in verdicts))
        if args.check and not all(ok for _, ok in verdicts):
            sys.exit(1)


if __name__ == '__main__':
    main()
