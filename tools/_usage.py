"""What the command-line tools share to report bad input in one line: ``UsageError``, which their
``main`` turns into ``tools/NAME.py: error: ...`` and exit status 1 (``one_line_errors``), the
``--cfg-options`` parser, reading a config file, checking what a dataset's evaluation is asked
for, joining the process group and choosing the GPU (``--gpu-id``). (Datasets are built by
mmdet_custom.apis.load_dataset, whose DatasetError ends a tool the same way.)"""
import ast
import contextlib
import inspect
import os
import os.path as osp
import re

import torch
from mmcv import Config, DictAction
from mmcv.cnn import VGG
from mmcv.runner import DistEvalHook as MmcvDistEvalHook
from mmdet.core import DistEvalHook
from mmdet.datasets import DATASETS, CocoDataset, CustomDataset
from mmdet.models import build_detector
from mmdet.models.dense_heads import GARPNHead, RPNHead
from mmdet.models.necks import FPN
from mmdet.models.roi_heads.mask_heads import FusedSemanticHead
from mmdet.utils import update_data_root

from mmdet_custom.apis import DatasetError, ResultsNotGathered, init_distributed
from mmdet_custom.models.backbones import InternImage


class UsageError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


@contextlib.contextmanager
def one_line_errors(prog, *error_types):
    """End the program with ``PROG: error: MESSAGE`` and exit status 1 when the block raises a
    UsageError, a DatasetError, a ResultsNotGathered (another process of a distributed run
    stopped) or one of ``error_types`` (e.g. CheckpointError): no traceback."""
    try:
        yield
    except (UsageError, DatasetError, ResultsNotGathered, *error_types) as error:
        raise SystemExit(f'{prog}: error: {error}') from None


class ConfigOptions(DictAction):
    """``--cfg-options KEY=VALUE ...`` (mmcv's DictAction), with a word that is not KEY=VALUE,
    or a VALUE written as a dict, an argparse error rather than a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for pair in values:
            if '=' not in pair:
                parser.error(f'{option_string}: expected KEY=VALUE, got {pair!r}')
            # mmcv reads VALUE as numbers, strings and lists of them: `dict(...)` and `{...}`
            # stay strings, which the config's consumer (e.g. custom_hooks) then failed on with a
            # bare assert. (A template such as filename_tmpl=epoch_{}.pth is no dict.)
            key, value = pair.split('=', 1)
            if (re.search(r'dict\s*\(|\{\s*[\'"]', value)
                    or re.fullmatch(r'[\[(\s]*\{.*\}[\])\s,]*', value)):
                parser.error(f'{option_string}: {key}: a VALUE cannot hold a dict (mmcv reads it '
                             f'as a string): set a dict\'s keys one by one ({key}.NAME=VALUE), or '
                             f'write it in a config file')
        super().__call__(parser, namespace, values, option_string)


def join_process_group(launcher, cfg):
    """``init_distributed`` with the config's backend and port; a process not started by
    ``launcher`` (its variables missing) is a UsageError. Returns the backend used."""
    try:
        dist_params = cfg.get('dist_params', {})
        return init_distributed(launcher, dist_params.get('backend'), dist_params.get('port'))
    except ValueError as error:
        raise UsageError(str(error)) from None


def select_gpu(gpu_id, distributed):
    """``cfg.gpu_ids`` for ``--gpu-id`` (mmdet's flag: the GPU a single-process run uses), made
    the current device so that ``model.cuda()`` lands there. Distributed ranks each take the GPU
    of their LOCAL_RANK, so a ``--gpu-id`` there is refused rather than ignored."""
    if gpu_id is None:
        return [0]
    if distributed:
        raise UsageError('--gpu-id applies to single-process runs; distributed ranks each use '
                         'the GPU of their LOCAL_RANK (set CUDA_VISIBLE_DEVICES to choose GPUs)')
    if not torch.cuda.is_available():
        if gpu_id == 0:
            return [0]
        raise UsageError(f'--gpu-id {gpu_id}: no GPU is visible to this process (it runs on the CPU)')
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        raise UsageError(f'--gpu-id {gpu_id}: {count} GPU{"s" if count > 1 else ""} visible, '
                         f'numbered 0 to {count - 1}')
    torch.cuda.set_device(gpu_id)
    return [gpu_id]


def _missing(cfg, dotted):
    """How the config lacks the dotted key, as the end of a sentence about it; None if it has it."""
    parts = dotted.split('.')
    for depth, part in enumerate(parts):
        if isinstance(cfg, (list, tuple)):  # e.g. data.test as a list of datasets (mmdet allows it)
            return f': {".".join(parts[:depth])} is a list; this tool takes one dict there'
        if not isinstance(cfg, (Config, dict)) or part not in cfg:
            return f' has no {dotted}: not a detector config for this tool'
        cfg = cfg[part]
    return None


def read_config(path, cfg_options=None, required=()):
    """The config at ``path`` with ``--cfg-options`` merged and mmdet's MMDET_DATASETS applied;
    ``required`` names the (dotted) keys the tool needs, e.g. 'model' or 'data.test'."""
    if not osp.isfile(path):
        raise UsageError(f'config file not found: {path}')
    if path.endswith('.py'):
        # Checked before mmcv, whose check fails inside its temporary folder: after the error
        # line, Python printed a traceback for the temporary file it could no longer delete.
        try:
            with open(path, encoding='utf-8') as f:
                ast.parse(f.read(), filename=path)
        except SyntaxError as error:
            raise UsageError(f'cannot read config {path}: SyntaxError: {error.msg} (line '
                             f'{error.lineno})') from None
        except UnicodeDecodeError as error:
            raise UsageError(f'cannot read config {path}: not UTF-8 text ({error.reason} at byte '
                             f'{error.start})') from None
    try:
        cfg = Config.fromfile(path)
    except Exception as error:
        raise UsageError(f'cannot read config {path}: {type(error).__name__}: {error}') from None
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (TypeError, KeyError, ValueError) as error:  # e.g. a key under a value that is no dict
            raise UsageError(f'--cfg-options do not fit config {path}: '
                             f'{type(error).__name__}: {error}') from None
    for key in required:
        missing = _missing(cfg, key)
        if missing:
            raise UsageError(f'config {path}{missing}')
    update_data_root(cfg)
    return cfg


def check_output_path(path, option, folder=False):
    """Refuse, before the work whose results go there, an output ``path`` (a file, or with
    ``folder`` a folder, made when missing) that cannot be written: a folder where the file
    goes, a file where a folder goes (the path's own or a parent's), a folder this user may not
    write in. ``option`` names it in the message."""
    if path is None:
        return
    target = osp.abspath(path)
    if osp.isdir(target) and not folder:
        raise UsageError(f'{option} {path} is a folder: name a file')
    if osp.exists(target) and not osp.isdir(target) and folder:
        raise UsageError(f'{option} {path} is a file, not a folder')
    parent = target if folder else osp.dirname(target)
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise UsageError(f'{option} {path}: {parent} is a file, not a folder')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f'{option} {path}: this user cannot write in {parent}')


def _on_local_disk(dataset):
    """Whether a dataset config reads its annotations and images from this machine's files
    (not through a storage backend such as petrel, which mmdet reaches via file_client_args)."""
    clients = [dataset.get('file_client_args')] + [
        transform.get('file_client_args') for transform in dataset.get('pipeline', [])
        if isinstance(transform, dict)]
    return all(client is None or client.get('backend', 'disk') == 'disk' for client in clients)


def dataset_files(dataset):
    """The (annotation file, image folder) pairs a dataset config reads from local disk, through
    mmdet's dataset wrappers (``dataset``/``datasets`` keys) and lists, with its ``data_root``
    applied as mmdet's CustomDataset applies it; None for one it does not set or names by URI."""
    if isinstance(dataset, (list, tuple)):
        for item in dataset:
            yield from dataset_files(item)
        return
    if 'dataset' in dataset or 'datasets' in dataset:
        yield from dataset_files(dataset.get('dataset') or dataset.get('datasets'))
        return
    if not _on_local_disk(dataset):
        return
    root = dataset.get('data_root')

    def local(path):
        if not path or '://' in path:
            return None
        return osp.join(root, path) if root and not osp.isabs(path) else path
    ann_files = dataset.get('ann_file')
    ann_files = list(ann_files) if isinstance(ann_files, (list, tuple)) else [ann_files]
    for ann_file in ann_files:
        yield local(ann_file), local(dataset.get('img_prefix'))


def check_not_over_images(cfg, path, option, folder=False):
    """Refuse an output that would replace images the config's datasets read: with ``folder``, a
    folder that is one of their image folders (drawings take their image's name); otherwise a
    file that exists in one."""
    if path is None:
        return
    target = osp.realpath(path)
    for split in ('train', 'val', 'test'):
        for _, img_prefix in dataset_files(cfg.data.get(split) or []):
            if not img_prefix:
                continue
            images = osp.realpath(img_prefix)
            if folder and target == images:
                raise UsageError(f'{option} {path} is the image folder of data.{split}, whose '
                                 f'images the drawings (named as their images) would replace: '
                                 f'choose another folder')
            if not folder and osp.isfile(target) and target.startswith(images + os.sep):
                raise UsageError(f'{option} {path} is an image of data.{split} (in {img_prefix}), '
                                 f'which the drawing would replace: choose another file')


def build_model(cfg, config_path, training=False):
    """``build_detector`` of ``cfg.model`` (with ``cfg.train_cfg`` when ``training``); a model the
    config cannot describe (an unknown type, a wrong argument) is a UsageError naming the config."""
    try:
        model = build_detector(cfg.model, train_cfg=cfg.get('train_cfg') if training else None,
                               test_cfg=cfg.get('test_cfg'))
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise UsageError(f'cannot build the model of config {config_path}: '
                         f'{type(error).__name__}: {error}') from None
    _check_neck_inputs(model)
    return model


def _check_neck_inputs(model):
    """A UsageError where the neck expects other feature maps than the InternImage backbone gives
    (a config derived from another model size, or other out_indices): the first forward failed
    with a bare assert in the FPN or a convolution's channel error."""
    backbone, neck = getattr(model, 'backbone', None), getattr(model, 'neck', None)
    # FPN and its kin (PAFPN) take every output in order; other necks pick or reorder them.
    if not isinstance(backbone, InternImage) or not isinstance(neck, FPN):
        return
    expected = list(neck.in_channels)
    if expected != backbone.out_channels:
        raise UsageError(f'model.neck.in_channels is {expected}, but the backbone gives '
                         f'{backbone.out_channels} (channels={backbone.channels}, out_indices='
                         f'{list(backbone.out_indices)}): set model.neck.in_channels='
                         f'{backbone.out_channels}')


# Modules with a num_classes that need not be the dataset's: the RPN's (object or not), and
# those mmdet's NumClassCheckHook leaves out too (HTC's and SCNet's semantic heads count COCO's
# stuff classes as well, VGG its ImageNet ones).
_NOT_DATASET_CLASS_HEADS = (RPNHead, GARPNHead, FusedSemanticHead, VGG)


def _class_heads(model):
    """(name, num_classes) of each head of ``model`` that tells the dataset's classes apart."""
    for module_name, module in model.named_modules():
        count = getattr(module, 'num_classes', None)
        if isinstance(count, int) and not isinstance(module, _NOT_DATASET_CLASS_HEADS):
            yield module_name, count


def predicted_class_count(model):
    """How many classes ``model`` predicts (its first class head's count), or None."""
    return next((count for _, count in _class_heads(model)), None)


def _wrapped(dataset):
    """The dataset inside mmdet's wrappers (RepeatDataset, ClassBalancedDataset,
    MultiImageMixDataset: ``dataset``; ConcatDataset: the first of ``datasets``), which copy
    only its CLASSES."""
    while True:
        if getattr(dataset, 'dataset', None) is not None:
            dataset = dataset.dataset
        elif getattr(dataset, 'datasets', None):
            dataset = dataset.datasets[0]
        else:
            return dataset


def check_num_classes(model, dataset, name, checkpoint=None):
    """A UsageError where a head of ``model`` predicts another number of classes than ``dataset``
    (config entry ``name``) has: the most common slip with a dataset of one's own. mmdet's check
    is an assert in the first epoch (its traceback, once per process); in testing, the results
    were numbered for other classes and formatting them failed after inference, or not at all.
    With the weights of ``checkpoint`` loaded, the model's class count is the checkpoint's, and
    the dataset's classes are what to change. A dataset without class names (mmdet's
    CustomDataset without ``classes``) has nothing to compare, nor has a panoptic one: its heads
    count its thing classes, its stuff classes or both (mmdet's panoptic configs turn mmdet's
    check off)."""
    if dataset.CLASSES is None or getattr(_wrapped(dataset), 'THING_CLASSES', None) is not None:
        return
    for module_name, count in _class_heads(model):
        if count != len(dataset.CLASSES):
            remedy = (f'set num_classes={len(dataset.CLASSES)} in every head of the config'
                      if checkpoint is None else
                      f'name the {count} classes {checkpoint} was trained on in {name}.classes')
            raise UsageError(f'model.{module_name}.num_classes is {count}, but {name} has '
                             f'{len(dataset.CLASSES)} classes ({", ".join(dataset.CLASSES)}): '
                             f'{remedy}')


def check_class_order(recorded, dataset, source):
    """A UsageError where the class names ``recorded`` with a model (``source`` says how, e.g.
    'CKPT was trained') are the test set's in another order: its labels would be scored as other
    classes. A model or dataset without class names passes."""
    if recorded is None or dataset.CLASSES is None:
        return
    recorded, classes = tuple(recorded), tuple(dataset.CLASSES)
    if recorded != classes and sorted(recorded) == sorted(classes):
        raise UsageError(f'{source} with its classes in another order ({", ".join(recorded)}) '
                         f'than data.test numbers them ({", ".join(classes)}): its labels would '
                         f'be scored as other classes')


def _named_parameters(function):
    return {name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


# The evaluation hooks' own settings; the rest of a config's ``evaluation`` goes to evaluate().
_EVAL_HOOK_KEYS = ((_named_parameters(MmcvDistEvalHook.__init__)
                   | _named_parameters(DistEvalHook.__init__)) - {'self', 'dataloader'})


def evaluation_settings(cfg):
    """The config's ``evaluation`` settings that reach ``dataset.evaluate()`` as keyword
    arguments: all but the evaluation hook's own (interval, save_best, ...) and ``metric``."""
    return {key: value for key, value in cfg.get('evaluation', {}).items()
            if key not in _EVAL_HOOK_KEYS and key != 'metric'}


# What the evaluate() of mmdet's two base datasets accepts as ``metric``; a subclass that keeps
# its base's evaluate() (e.g. the COCO-format datasets) accepts the same.
_METRICS = {CocoDataset.evaluate: ('bbox', 'segm', 'proposal', 'proposal_fast'),
            CustomDataset.evaluate: ('mAP', 'recall')}
# Metrics mmdet's evaluate() refuses (a KeyError, after inference) for results with masks, and
# for results without.
_BOX_RESULTS_ONLY = ('proposal_fast',)
_MASK_RESULTS_ONLY = ('segm',)
# The names CocoDataset.evaluate() takes in metric_items (pycocotools' 12 summary figures).
_COCO_METRIC_ITEMS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR@100', 'AR@300',
                      'AR@1000', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000')


def predicts_masks(cfg):
    """Whether the detector ``cfg.model`` describes gives instance masks: a mask head in its RoI
    head (Mask R-CNN and its kin) or of its own (SOLO, YOLACT), or MaskFormer's kind of head."""
    model = cfg.model
    return bool((model.get('roi_head') or {}).get('mask_head') or model.get('mask_head')
                or model.get('panoptic_head'))


def registered_dataset(dataset_cfg):
    """The dataset class a dataset config names, or None (an unknown type)."""
    return DATASETS.get(dataset_cfg.get('type', ''))


def check_evaluation(dataset_cfg, metrics, options, name, masks=False):
    """Refuse, before any inference, metrics or keyword options (``options``) that the evaluate()
    of the dataset type ``dataset_cfg`` names does not take for the model's results (``masks``:
    with instance masks); ``name`` says where they came from."""
    dataset_type = registered_dataset(dataset_cfg)
    if dataset_type is None:
        return  # build_dataset will name the unknown type
    known = _METRICS.get(dataset_type.evaluate)
    if known is not None:
        refused = _BOX_RESULTS_ONLY if masks else _MASK_RESULTS_ONLY
        known = tuple(metric for metric in known if metric not in refused)
    for metric in [metrics] if isinstance(metrics, str) else metrics or ():
        if known is not None and metric not in known:
            raise UsageError(f'{name}: {dataset_type.__name__} cannot evaluate {metric!r} '
                             f'(it evaluates {", ".join(known)})')
    parameters = inspect.signature(dataset_type.evaluate).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = [key for key in options if key not in parameters or key in ('self', 'results')]
        if unknown:
            raise UsageError(f'{name}: {dataset_type.__name__}.evaluate() takes no option '
                             f'{unknown[0]!r}')
    items = options.get('metric_items')
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or ())
    if (dataset_type.evaluate is CocoDataset.evaluate and items is None and 'proposal' in metrics
            and {'bbox', 'segm'} & set(metrics)):
        # Its first metric chooses the items reported for all: the APs of bbox and segm came out
        # as ARs (no bbox_mAP), or the proposals' AR as an unnamed class-agnostic mAP.
        raise UsageError(f'{name}: CocoDataset reports every metric with the items of the first '
                         f'({metrics[0]}), so proposal beside bbox or segm gives wrongly named '
                         f'figures: evaluate proposal in a run of its own')
    if dataset_type.evaluate is CocoDataset.evaluate and items is not None:
        for item in [items] if isinstance(items, str) else items:
            if item not in _COCO_METRIC_ITEMS:
                raise UsageError(f'{name}: metric_items: CocoDataset has no {item!r} (it has '
                                 f'{", ".join(_COCO_METRIC_ITEMS)})')
    counts = options.get('proposal_nums')
    if dataset_type.evaluate is CocoDataset.evaluate and counts is not None and not (
            isinstance(counts, (list, tuple)) and len(counts) >= 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts)):
        # pycocotools' summary reads the third (its AR@1000 and the size-wise ARs).
        raise UsageError(f'{name}: proposal_nums must list at least 3 positive whole numbers '
                         f'(e.g. [100,300,1000]), got {counts!r}')
