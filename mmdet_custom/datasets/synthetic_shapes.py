"""A small, seeded, COCO-format instance-segmentation dataset of coloured shapes.

It is the built-in default dataset: it needs no download, trains a small detector in minutes on
a CPU and is evaluated by the ordinary COCO tools. Layout written under ``--out``::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.png ...               val/000000.png ...

Every image shows a textured background (gradient, stripes, checkerboard or smooth noise) and a
few filled shapes of random class, size, colour, position and rotation. Shapes may overlap; a
shape drawn later hides what lies beneath it, so each annotation describes only the visible part
of its instance (polygon ``segmentation``, ``bbox``, ``area``, ``iscrowd`` 0). Placements that
would hide most of an earlier shape, or cut a hole into it (COCO polygons cannot express holes),
are redrawn, so every annotation is a faithful outline of what is on screen.

Each image has its own random stream derived from (seed, split, index): the same seed gives the
same files, and asking for more images leaves the first ones unchanged. Images are square by
default; ``--size H W`` makes them H pixels high and W wide, with shape sizes and texture scales
measured against the shorter side.

The module needs only numpy and OpenCV, so it also runs by file path before mmcv and mmdet are
installed (importing the ``mmdet_custom`` package, which ``-m`` does, pulls them in). Usage::

    python mmdet_custom/datasets/synthetic_shapes.py --out data/shapes \
        --num-train 400 --num-val 100 --size 256 --seed 0
    python -m mmdet_custom.datasets.synthetic_shapes --out data/wide --size 800 1333
"""
import argparse
import json
import os
import os.path as osp
import time

import cv2
import numpy as np

CLASSES = ('circle', 'triangle', 'rectangle')
SPLIT_IDS = {'train': 0, 'val': 1}

# A shape must keep at least this share of its own pixels visible after later shapes cover it.
MIN_VISIBLE_FRACTION = 0.5
# Smallest and largest shape, as a fraction of the image side (circumscribed-circle radius).
MIN_RADIUS_FRACTION = 0.07
# A shape needs MIN_SHAPE_PIXELS; below 24 pixels a side even the largest triangle has fewer
# (about 1.3 * (MAX_RADIUS_FRACTION * side)^2 pixels). mmdet's training leaves out images under
# 32 pixels a side (CocoDataset's min_size), so smaller ones could not be trained on at all.
MIN_SHAPE_PIXELS = 30
MIN_SIDE = 32
MAX_RADIUS_FRACTION = 0.2
# Background textures blend two colours at most this far apart per RGB channel (0-255); shape
# colours closer than MIN_COLOUR_CONTRAST (Euclidean) to either of them are redrawn, so that
# every shape stands out from every part of its background.
MAX_BACKGROUND_CONTRAST = 60.0
MIN_COLOUR_CONTRAST = 90.0
MAX_PLACEMENT_TRIES = 30


def _shape_outline(class_name, centre, radius, angle, rng):
    """Vertices (N x 2, float) of a shape centred at ``centre`` inside a circle of ``radius``."""
    if class_name == 'circle':
        # 48 vertices are indistinguishable from a true circle at these sizes.
        thetas = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    elif class_name == 'triangle':
        thetas = angle + np.array([0, 2, 4]) * np.pi / 3
    elif class_name == 'rectangle':
        # Corners at +-half around 0 and pi: the side ratio is tan(half), here 0.5 to 1 (square).
        half = rng.uniform(np.arctan(0.5), np.pi / 4)
        thetas = angle + np.array([half, np.pi - half, np.pi + half, 2 * np.pi - half])
    else:
        raise ValueError(f'unknown shape class {class_name!r}')
    return np.stack([centre[0] + radius * np.cos(thetas), centre[1] + radius * np.sin(thetas)], 1)


def _image_shape(size):
    """(height, width) from an int (a square side) or a (height, width) pair."""
    pair = (size, size) if np.isscalar(size) else tuple(size)
    if len(pair) != 2 or any(int(side) != side or side < 1 for side in pair):
        raise ValueError(f'image size must be a side or a (height, width) pair of positive whole '
                         f'pixels, got {size!r}')
    return int(pair[0]), int(pair[1])


def _fill_mask(outline, height, width):
    mask = np.zeros((height, width), np.uint8)
    # Sub-pixel precision (4 fractional bits) keeps small shapes symmetric.
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _background(rng, height, width):
    """A float32 H x W x 3 RGB texture in [0, 255], and the two colours it blends."""
    colour_a = rng.uniform(0, 255, 3)
    # Visible texture, but quieter than the shapes drawn on it.
    colour_b = np.clip(colour_a + rng.uniform(-MAX_BACKGROUND_CONTRAST, MAX_BACKGROUND_CONTRAST, 3), 0, 255)
    # Coordinates in units of the shorter side, so stripes and checkers keep their proportions.
    short_side = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / short_side
    kind = rng.integers(4)
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        weight = (xx * np.cos(angle) + yy * np.sin(angle))
        weight = (weight - weight.min()) / max(np.ptp(weight), 1e-6)
    elif kind == 1:  # soft stripes
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.25)
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 2:  # checkerboard
        cells = int(rng.integers(4, 12))
        weight = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    else:  # smooth value noise: a coarse random grid, upsampled
        cells = int(rng.integers(3, 9))
        grid = (round(cells * height / short_side), round(cells * width / short_side))
        coarse = rng.uniform(0, 1, grid).astype(np.float32)
        weight = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = colour_a + weight[..., None] * (colour_b - colour_a)
    image += rng.normal(0, 8, image.shape)  # fine grain everywhere
    return image.astype(np.float32), (colour_a, colour_b)


def _has_hole(mask):
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    # With RETR_CCOMP, inner contours (holes) are the ones that have a parent.
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _mask_to_polygons(mask):
    """Outer contours of a binary mask as COCO polygons (flat [x0, y0, x1, y1, ...] lists).

    COCO polygons live in continuous coordinates where pixel (x, y) is the square
    [x, x+1] x [y, y+1], and pycocotools fills the pixels whose centres the polygon encloses. A
    contour through the centres of the boundary pixels would lose about half of them; tracing
    the mask at twice the resolution puts the outline a quarter pixel outside those centres,
    and the polygon then rasterises back to exactly the mask.
    """
    doubled = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) < 3:
            continue
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2
        polygons.append([float(v) for v in points.reshape(-1)])
    return polygons


def render_image(seed, split, index, size=256, min_instances=2, max_instances=6):
    """Draw one image, ``size`` pixels square or ``(height, width)``.

    Returns:
        image (H x W x 3 uint8, RGB) and a list of instances, each a dict with ``label``
        (index into CLASSES), ``colour``, ``mask`` (H x W bool: the visible pixels) and
        ``shape_area`` (pixels of the whole shape, hidden ones included).
    """
    height, width = _image_shape(size)
    short_side = min(height, width)
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    image, background_colours = _background(rng, height, width)
    wanted = int(rng.integers(min_instances, max_instances + 1))

    instances = []  # drawn bottom to top; masks hold visible pixels only
    for _ in range(wanted):
        for _ in range(MAX_PLACEMENT_TRIES):
            label = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(MIN_RADIUS_FRACTION, MAX_RADIUS_FRACTION) * short_side
            # (x, y): a shape may poke out of the image by up to 40% of its radius.
            centre = rng.uniform(radius * 0.6, np.array([width, height]) - radius * 0.6, 2)
            outline = _shape_outline(CLASSES[label], centre, radius, rng.uniform(0, 2 * np.pi), rng)
            mask = _fill_mask(outline, height, width)
            covered = [inst['mask'] & ~mask for inst in instances]
            acceptable = mask.sum() >= MIN_SHAPE_PIXELS and all(
                remaining.sum() >= MIN_VISIBLE_FRACTION * inst['shape_area'] and not _has_hole(remaining)
                for inst, remaining in zip(instances, covered))
            if acceptable:
                break
        else:
            continue  # this image is crowded: draw fewer shapes
        for inst, remaining in zip(instances, covered):
            inst['mask'] = remaining
        colour = rng.uniform(0, 255, 3)
        while min(np.linalg.norm(colour - c) for c in background_colours) < MIN_COLOUR_CONTRAST:
            colour = rng.uniform(0, 255, 3)
        instances.append(dict(label=label, colour=colour, mask=mask, shape_area=int(mask.sum())))

    for inst in instances:
        # A little shading keeps the shape from being one flat colour.
        shade = rng.normal(0, 6, (int(inst['mask'].sum()), 3))
        image[inst['mask']] = inst['colour'] + shade
    return np.clip(image, 0, 255).round().astype(np.uint8), instances


def instance_annotation(mask):
    """COCO fields (segmentation, area, bbox, iscrowd) describing the visible mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return dict(
        segmentation=_mask_to_polygons(mask),
        area=int(mask.sum()),
        bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        iscrowd=0)


def write_split(out_dir, split, num_images, size=256, seed=0, log_every=100):
    """Render ``num_images`` images of ``split`` to ``out_dir`` and write its COCO json."""
    height, width = _image_shape(size)
    image_dir = osp.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, instances = render_image(seed, split, index, (height, width))
        file_name = f'{index:06d}.png'
        cv2.imwrite(osp.join(image_dir, file_name), image[..., ::-1])  # cv2 writes BGR
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        for inst in instances:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=inst['label'] + 1, **instance_annotation(inst['mask'])))
        if log_every and (index + 1) % log_every == 0:
            print(f'  {split}: {index + 1}/{num_images} images', flush=True)
    coco = dict(
        info=dict(description=f'synthetic shapes, seed {seed}, {split} split'),
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def generate(out_dir, num_train=400, num_val=100, size=256, seed=0):
    """Write both splits; returns the two annotation file paths."""
    return [write_split(out_dir, split, count, size, seed)
            for split, count in (('train', num_train), ('val', num_val))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the synthetic shapes instance-segmentation dataset (COCO format).')
    parser.add_argument('--out', default='data/shapes', help='output folder')
    parser.add_argument('--num-train', type=int, default=400, help='training images')
    parser.add_argument('--num-val', type=int, default=100, help='validation images')
    parser.add_argument('--size', type=int, nargs='+', default=[256], metavar=('H', 'W'),
                        help='image size in pixels: one value for square images, or height and width')
    parser.add_argument('--seed', type=int, default=0, help='the same seed gives the same dataset')
    args = parser.parse_args(argv)
    if len(args.size) > 2 or min(args.size) < MIN_SIDE:
        parser.error(f'--size takes one side or a height and a width, each at least {MIN_SIDE} '
                     f'(mmdet\'s training leaves out smaller images); got {args.size}')
    if min(args.num_train, args.num_val) < 0:
        parser.error('--num-train and --num-val must not be negative')
    if args.seed < 0:
        parser.error(f'--seed must not be negative (numpy seeds are 0 to 2**32 - 1); got {args.seed}')
    if osp.exists(args.out) and not osp.isdir(args.out):
        parser.error(f'--out {args.out} is a file, not a folder')
    # The folders it makes, checked before any image is drawn (else a traceback at the first).
    for folder in (osp.join(args.out, name) for name in ('train', 'val', 'annotations')):
        if osp.exists(folder) and not osp.isdir(folder):
            parser.error(f'--out {args.out}: {folder} is a file, not a folder')
    parent = osp.dirname(osp.abspath(args.out))
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        parser.error(f'--out {args.out}: {parent} is a file, not a folder')
    height, width = args.size * 2 if len(args.size) == 1 else args.size
    args.size = (height, width)
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    height, width = args.size
    print(f'Writing synthetic shapes ({args.num_train} train + {args.num_val} val images, '
          f'{width}x{height} (width x height), seed {args.seed}) to {args.out}', flush=True)
    for ann_file in generate(args.out, args.num_train, args.num_val, args.size, args.seed):
        print(f'  wrote {ann_file}')
    print(f'Done in {time.time() - start:.1f} s; classes: {", ".join(CLASSES)}')


if __name__ == '__main__':
    main()
