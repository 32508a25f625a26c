"""Draw a dataset's ground truth as the training pipeline delivers it (after resizing, flipping,
...), to check annotations and augmentation before training.

    python tools/browse_dataset.py CONFIG --output-dir browse/ [--split train] [--num 20]
"""
import argparse
import os
import os.path as osp

import _bootstrap  # noqa: F401  (first: repository on sys.path, quiet imports)

import mmcv  # noqa: E402
from mmdet.core.visualization import imshow_det_bboxes  # noqa: E402

import mmdet_custom  # noqa: E402,F401
from mmdet_custom.apis import load_dataset  # noqa: E402
from _usage import (ConfigOptions, UsageError, check_not_over_images, check_output_path,  # noqa: E402
                    one_line_errors, read_config)

# Steps that turn the annotated image into tensors; drawing needs the arrays before them.
TENSOR_STEPS = ('Normalize', 'Pad', 'DefaultFormatBundle', 'Collect', 'ImageToTensor')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw the ground truth of a dataset')
    parser.add_argument('config', help='config file')
    parser.add_argument('--output-dir', default='browse_dataset', help='where the drawings go')
    parser.add_argument('--split', choices=['train', 'val', 'test'], default='train',
                        help='data.<split> of the config (val/test go through the train '
                        'pipeline, random augmentation included, so that their boxes and masks '
                        'are loaded and drawn)')
    parser.add_argument('--num', type=int, default=20, help='how many images to draw')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions, help='override config entries')
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f'--num must be at least 1, got {args.num}')
    return args


def wrapped_dataset(data_cfg, key):
    """The dataset inside mmdet's wrappers (RepeatDataset, ClassBalancedDataset), whose
    pipeline is the one to draw: each image once. ``key`` names the config entry."""
    while 'pipeline' not in data_cfg and 'dataset' in data_cfg:
        data_cfg = data_cfg.dataset
    if 'pipeline' not in data_cfg:  # ConcatDataset's datasets (a list of them is refused earlier)
        raise UsageError(f'{key} holds several datasets ({data_cfg.get("type")}); this tool draws '
                         f'one: set {key} to one of them with --cfg-options')
    return data_cfg


def drawing_path(output_dir, filename):
    """Where the drawing of the image ``filename`` (as the annotation file names it) goes: its
    path under the image folder, so images of the same name in two subfolders both get one."""
    relative = osp.normpath(filename)
    if osp.isabs(relative) or relative.startswith(os.pardir):
        relative = osp.basename(relative)
    return osp.join(output_dir, relative)


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors('tools/browse_dataset.py'):
        cfg = read_config(args.config, args.cfg_options,
                          required=('data.train', f'data.{args.split}'))
        data_cfg = wrapped_dataset(cfg.data[args.split], f'data.{args.split}')
        if args.split != 'train':
            data_cfg.pipeline = wrapped_dataset(cfg.data.train, 'data.train').pipeline
            data_cfg.test_mode = False
        data_cfg.pipeline = [step for step in data_cfg.pipeline if step['type'] not in TENSOR_STEPS]
        for loader_setting in ('samples_per_gpu', 'workers_per_gpu'):  # (mmdet's older place)
            data_cfg.pop(loader_setting, None)
        check_output_path(args.output_dir, '--output-dir', folder=True)
        check_not_over_images(cfg, args.output_dir, '--output-dir', folder=True)
        dataset = load_dataset(data_cfg, f'data.{args.split}')
        count = min(args.num, len(dataset))
        # Drawings take their image's path under the image folder: in that folder itself they
        # would replace the images.
        images = {osp.realpath(osp.join(dataset.img_prefix or '', info['filename']))
                  for info in dataset.data_infos[:count]}
        if images & {osp.realpath(drawing_path(args.output_dir, info['filename']))
                     for info in dataset.data_infos[:count]}:
            raise UsageError(f'--output-dir {args.output_dir} holds the images drawn, which the '
                             f'drawings (named as their images) would replace: choose another folder')
        mmcv.mkdir_or_exist(args.output_dir)
        progress = mmcv.ProgressBar(count)
        for index in range(count):
            item = dataset[index]  # a DatasetError names an image that fails in the pipeline
            masks = item.get('gt_masks')
            imshow_det_bboxes(
                item['img'],
                item['gt_bboxes'],
                item['gt_labels'],
                segms=None if masks is None else masks.to_ndarray().astype(bool),
                class_names=dataset.CLASSES,
                show=False,
                out_file=drawing_path(args.output_dir, item['ori_filename']))
            progress.update()
    print(f'\n{count} drawings in {args.output_dir}')


if __name__ == '__main__':
    main()
