"""Building a dataset from its config with one clear error per failure, at building time and
when an image fails in the pipeline later."""
import math
import os.path as osp

from mmdet.datasets import build_dataset
from mmdet.utils import get_root_logger

from ..utils import error_summary


class DatasetError(ValueError):
    """A dataset cannot be built (unreadable or incomplete annotations, settings its type does not
    take) or has no images, the message naming the config entry (e.g. 'data.val'); or one of its
    images fails in the pipeline, the message naming the image."""

    def __str__(self):
        text = super().__str__()
        # Raised in a DataLoader worker, it comes back as torch re-raises it: "Caught DatasetError
        # in DataLoader worker process 0." and the worker's traceback, ending in the message.
        if text.startswith('Caught DatasetError'):
            return text.rstrip().rsplit('DatasetError: ', 1)[-1]
        return text


class _PipelineNamingItsImage:
    """A dataset's pipeline whose failures raise DatasetError naming the image: a corrupt or
    missing image, or a malformed annotation, ended training hours in with a traceback from deep
    inside a transform, and no file named."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, results):
        try:
            return self.pipeline(results)
        except DatasetError:
            raise
        except Exception as error:
            info = results.get('img_info') or {}
            image = osp.join(results.get('img_prefix') or '', str(info.get('filename', '?')))
            raise DatasetError(f'{image} (image id {info.get("id")}): {type(error).__name__}: '
                               f'{error_summary(error)}') from error

    def __getattr__(self, name):  # the Compose's own attributes (e.g. transforms)
        if name == 'pipeline' or name.startswith('__'):  # not set yet while unpickling
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    def __repr__(self):
        return repr(self.pipeline)


def _base_datasets(dataset):
    """The datasets holding images under mmdet's wrappers (Repeat, ClassBalanced, Concat)."""
    if hasattr(dataset, 'datasets'):
        return [base for inner in dataset.datasets for base in _base_datasets(inner)]
    if hasattr(dataset, 'dataset'):
        return _base_datasets(dataset.dataset)
    return [dataset]


def _check_classes(dataset, name):
    """A DatasetError where the config's classes do not name the annotation file's categories one
    to one, in the file's order. mmdet numbers the categories it finds by those names in the
    file's order (in training and again in evaluation) while results, pictures and checkpoints
    name label i after CLASSES[i]: a class the file lacks shifted the later ones onto other
    names, classes listed in another order swapped them, and a class naming two categories gave
    the second a label past the classes (an IndexError in the mask loss)."""
    coco = getattr(dataset, 'coco', None)
    if coco is None:
        return
    classes = list(dataset.CLASSES)
    repeated = sorted({cls for cls in classes if classes.count(cls) > 1})
    if repeated:
        raise DatasetError(f'{name}: the classes name {", ".join(map(str, repeated))} more than '
                           f'once ({", ".join(map(str, classes))})')
    known = [category.get('name') for category in coco.cats.values()]  # the file's order
    missing = [cls for cls in classes if cls not in known]
    if missing:
        raise DatasetError(f'{name}: the classes {", ".join(map(str, missing))} are not among the '
                           f'annotation file\'s categories ({", ".join(map(str, known))}) (ann_file '
                           f'{dataset.ann_file})')
    named = [category for category in known if category in classes]
    twice = sorted({category for category in named if named.count(category) > 1})
    if twice:
        ids = {cls: [str(cat_id) for cat_id, category in coco.cats.items()
                     if category.get('name') == cls] for cls in twice}
        listed = '; '.join(f'{cls}: ids {", ".join(cat_ids)}' for cls, cat_ids in ids.items())
        raise DatasetError(f'{name}: several of the annotation file\'s categories have the name of '
                           f'one class ({listed}); give each category its own name (ann_file '
                           f'{dataset.ann_file})')
    if named != classes:
        raise DatasetError(f'{name}: list the classes in the order of the annotation file\'s '
                           f'categories, {", ".join(map(str, named))} (the config has '
                           f'{", ".join(map(str, classes))}): mmdet numbers the labels in the '
                           f'file\'s order, so other names would go with them (ann_file '
                           f'{dataset.ann_file})')


def _is_box(bbox):
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in bbox))


def _check_boxes(dataset, name):
    """Annotations of the classes without a box [x, y, width, height]: a DatasetError naming the
    first (mmdet's loading and pycocotools' evaluation read every one). In training, those mmdet
    ignores for an empty box (under 1 px wide or high, or area 0): a warning with their count, or
    a DatasetError when no other annotation is left."""
    coco = getattr(dataset, 'coco', None)
    if coco is None:
        return
    annotations = [ann for ann in coco.anns.values() if ann.get('category_id') in dataset.cat_ids]
    for ann in annotations:
        if not _is_box(ann.get('bbox')):
            found = repr(ann['bbox']) if 'bbox' in ann else 'missing'
            raise DatasetError(f'{name}: annotation {ann.get("id")} (image {ann.get("image_id")}) '
                               f'has no box of 4 numbers [x, y, width, height]: bbox {found} '
                               f'(ann_file {dataset.ann_file})')
    if getattr(dataset, 'test_mode', True):
        return
    empty = sum(1 for ann in annotations
                if ann.get('area', 1) <= 0 or ann['bbox'][2] < 1 or ann['bbox'][3] < 1)
    if empty and empty == len(annotations):
        raise DatasetError(f'{name}: every annotation has an empty box (under 1 px wide or high, '
                           f'or area 0), which mmdet ignores: nothing to train on '
                           f'(ann_file {dataset.ann_file})')
    if empty:
        get_root_logger().warning(f'{name}: {empty} of {len(annotations)} annotations have an '
                                  f'empty box (under 1 px wide or high, or area 0) and are '
                                  f'ignored, as mmdet ignores them (ann_file {dataset.ann_file})')


def _builder_error(error):
    # mmcv's registry re-raises a builder's error as type(error)(f'{class}: {error}'); for types
    # that take more arguments (a JSONDecodeError) that call itself fails, with a TypeError that
    # names nothing, and the builder's error is the one it was handling.
    if isinstance(error, TypeError) and error.__context__ is not None:
        error = error.__context__
    return f'{type(error).__name__}: {error_summary(error)}'


def load_dataset(dataset_cfg, name, default_args=None):
    """``build_dataset(dataset_cfg, default_args)``, raising DatasetError naming ``name`` where
    that fails or gives a dataset without images."""
    try:
        dataset = build_dataset(dataset_cfg, default_args)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        raise DatasetError(f'{name}: cannot load the dataset: {_builder_error(error)}') from None
    for base in _base_datasets(dataset):
        _check_classes(base, name)
    if len(dataset) == 0:
        # Training leaves out images without annotations of the config's classes (mmdet's
        # filter_empty_gt): a class-name typo empties the dataset, and training would then run
        # no iteration and save an untrained checkpoint.
        filtered = not getattr(dataset, 'test_mode', True) and getattr(dataset, 'filter_empty_gt', False)
        raise DatasetError(f'{name}: no images in the dataset' + (
            f' that have annotations of the classes {", ".join(dataset.CLASSES)}' if filtered else '')
            + f' (ann_file {getattr(dataset, "ann_file", None)})')  # (wrappers have none)
    for base in _base_datasets(dataset):
        _check_boxes(base, name)
        if callable(getattr(base, 'pipeline', None)):
            base.pipeline = _PipelineNamingItsImage(base.pipeline)
    return dataset
