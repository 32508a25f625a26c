"""Building a dataset from its config with one clear error per failure, at building time and
when an image fails in the pipeline later."""
import collections
import math
import os.path as osp

from mmdet.datasets import CocoDataset, LVISV05Dataset, build_dataset
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
            return self._run(results)
        except DatasetError:
            raise
        except Exception as error:
            raise DatasetError(f'{_image_named(results)}: {type(error).__name__}: '
                               f'{error_summary(error)}') from error

    def _run(self, results):
        """The pipeline's transforms in turn, as mmdet's Compose runs them, with the loaded image's
        size checked against the annotation file's once a transform has loaded it."""
        transforms = getattr(self.pipeline, 'transforms', None)
        if transforms is None:
            return self.pipeline(results)
        size_checked = False
        for transform in transforms:
            results = transform(results)
            if results is None:
                return None
            if not size_checked and 'ori_shape' in results:
                _check_image_size(results)
                size_checked = True
        return results

    def __getattr__(self, name):  # the Compose's own attributes (e.g. transforms)
        if name == 'pipeline' or name.startswith('__'):  # not set yet while unpickling
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    def __repr__(self):
        return repr(self.pipeline)


def _image_named(results):
    """'PATH (image id N)' of the image a pipeline's ``results`` are of."""
    info = results.get('img_info') or {}
    image = osp.join(results.get('img_prefix') or '', str(info.get('filename', '?')))
    return f'{image} (image id {info.get("id")})'


def _check_image_size(results):
    """A DatasetError where the loaded image is not as large as the annotation file says: its
    boxes and masks are then in another frame (training met boxes clipped to nothing and a NaN
    loss; testing scored every box against shifted ground truth)."""
    info = results.get('img_info') or {}
    expected = (info.get('height'), info.get('width'))
    loaded = tuple(results['ori_shape'][:2])
    if None not in expected and loaded != expected:
        raise DatasetError(f'{_image_named(results)}: the image is {loaded[1]}x{loaded[0]} '
                           f'pixels, the annotation file says {expected[1]}x{expected[0]}: its '
                           f'boxes and masks do not fit it (a resized copy, '
                           f'or a JPEG its EXIF orientation turns when loaded?)')


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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_box(bbox):
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))


# CocoDataset's min_size: its training leaves out images under this many pixels a side.
MIN_TRAINING_SIDE = 32


def _small_images(coco):
    return sum(1 for image in coco.imgs.values()
               if min(image['width'], image['height']) < MIN_TRAINING_SIDE)


def _check_images(dataset, name):
    """A DatasetError naming the first image entry of the annotation file without a size, or
    whose id another entry has: mmdet reads every image's size, and of images sharing an id it
    keeps one, with the annotations of all of them. In training, a warning counting the images
    mmdet leaves out for being under MIN_TRAINING_SIDE pixels a side."""
    coco = getattr(dataset, 'coco', None)
    if coco is None:
        return
    files = {}
    for image in coco.dataset.get('images', []):
        where = f'{name}: image id {image.get("id")} ({image.get("file_name")})'
        if not all(_is_number(image.get(side)) and image[side] > 0
                   and float(image[side]).is_integer() for side in ('width', 'height')):
            raise DatasetError(f'{where} has no width and height in pixels (width '
                               f'{image.get("width")!r}, height {image.get("height")!r}) (ann_file '
                               f'{dataset.ann_file})')
        if image.get('id') in files:
            raise DatasetError(f'{where}: image {files[image["id"]]} has that id too; mmdet would '
                               f'keep one of them with the annotations of both (ann_file '
                               f'{dataset.ann_file})')
        files[image.get('id')] = image.get('file_name')
        for side in ('width', 'height'):  # (mmdet's masks take whole numbers: 64.0 failed)
            image[side] = int(image[side])
    small = 0 if getattr(dataset, 'test_mode', True) else _small_images(coco)
    if small:
        get_root_logger().warning(f'{name}: {small} of {len(files)} images are under '
                                  f'{MIN_TRAINING_SIDE} pixels a side and left out of training, '
                                  f'as mmdet leaves them out (ann_file {dataset.ann_file})')


def _loads_masks(dataset):
    transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', None) or []
    return any(getattr(transform, 'with_mask', False) for transform in transforms)


def _segmentation_problem(segmentation, image):
    """What keeps ``segmentation`` from being read as a mask of ``image``, or None."""
    if segmentation is None or segmentation == []:
        return 'has no segmentation to read its mask from'
    if isinstance(segmentation, dict):  # run-length encoded
        size = [image['height'], image['width']]
        if 'counts' not in segmentation or list(segmentation.get('size') or []) != size:
            return (f'has a run-length segmentation of size {segmentation.get("size")} (with '
                    f'counts: {"counts" in segmentation}) on an image of size {size}')
        return None
    if not isinstance(segmentation, list):
        return f'has a segmentation that is a {type(segmentation).__name__}'
    # pycocotools reads the polygons as boxes where the first has 4 numbers, and refuses fewer
    # (later short ones it takes); a polygon has 3 points, 6 numbers, or more.
    first = segmentation[0]
    if not isinstance(first, list) or len(first) <= 4:
        length = len(first) if isinstance(first, list) else type(first).__name__
        return (f'has a first polygon of {length} numbers, which pycocotools cannot read (a '
                f'polygon has 3 points, 6 numbers, or more)')
    return None


def _ignored_in_training(ann, image):
    """Why mmdet's training leaves annotation ``ann`` of ``image`` out, or None (those marked
    ignore are left out before it is read)."""
    x, y, width, height = ann['bbox']
    if image is not None and (max(0, min(x + width, image['width']) - max(x, 0))
                              * max(0, min(y + height, image['height']) - max(y, 0))) == 0:
        return 'outside'
    if ann['area'] <= 0 or width < 1 or height < 1:
        return 'empty'
    if ann.get('iscrowd', False):
        return 'crowd'
    return None


# The metrics CocoDataset.evaluate reads the annotations for: with pycocotools (which reads
# their areas too), and proposal_fast with mmdet's own recall (boxes and iscrowd).
_READ_BY_COCOEVAL = {'bbox', 'segm', 'proposal'}
_READ_BY_COCO_EVALUATION = _READ_BY_COCOEVAL | {'proposal_fast'}


def _evaluated_as_coco(dataset):
    """Whether ``dataset``'s evaluate() reads its annotations as CocoDataset's does: those of its
    subclasses that keep or call it (Cityscapes' for bbox and segm), not LVIS's own evaluation."""
    return isinstance(dataset, CocoDataset) and not isinstance(dataset, LVISV05Dataset)


def _check_annotations(dataset, name, metrics=None):
    """A DatasetError naming the first annotation that is read and cannot be: in training, by
    mmdet's loading (a box [x, y, width, height] and an area of every annotation of the images
    not marked ignore, and where the pipeline loads masks, the segmentation of each annotation of
    the classes it keeps); in testing, by the evaluation of ``metrics`` (of the classes: a box,
    iscrowd 0 or 1, an area for pycocotools, and for segm a segmentation).
    They failed with a traceback when read, in the first epoch or after the whole inference.
    In training, the annotations mmdet leaves out for an empty box or one outside its image: a
    warning with their count, or a DatasetError when nothing is left to train on."""
    coco = getattr(dataset, 'coco', None)
    if coco is None or not isinstance(next(iter(coco.anns.values()), {}), dict):
        return  # (a panoptic file's annotations are lists of segments)
    training = not getattr(dataset, 'test_mode', True)
    metrics = {metrics} if isinstance(metrics, str) else set(metrics or ())
    evaluated = _evaluated_as_coco(dataset) and bool(metrics & _READ_BY_COCO_EVALUATION)
    if not (training or evaluated):
        return
    area_read = training or bool(metrics & _READ_BY_COCOEVAL)
    masks_read = _loads_masks(dataset) if training else 'segm' in metrics
    class_ids = set(dataset.cat_ids)
    ignored = collections.Counter()  # annotations of the classes by why training leaves them out
    annotations = 0
    for ann in coco.anns.values():
        of_the_classes = ann.get('category_id') in class_ids
        if not (of_the_classes or training):  # (training reads every annotation of an image)
            continue
        if training and ann.get('ignore', False):  # left out before anything is read
            if of_the_classes:
                annotations += 1
                ignored['ignore'] += 1
            continue
        problem = None
        if not _is_box(ann.get('bbox')):
            problem = (f'has no box of 4 numbers [x, y, width, height]: bbox '
                       f'{repr(ann["bbox"]) if "bbox" in ann else "missing"}')
        elif area_read and not _is_number(ann.get('area')):
            problem = (f'has no area (a number), which mmdet\'s training and pycocotools\' '
                       f'evaluation read: area {ann.get("area")!r}')
        elif not training and ann.get('iscrowd') not in (0, 1):
            problem = (f'has no iscrowd of 0 or 1, which pycocotools\' evaluation reads: iscrowd '
                       f'{ann.get("iscrowd")!r}')
        if problem is None and not of_the_classes:
            continue
        annotations += 1
        image = coco.imgs.get(ann.get('image_id'))
        if problem is None:
            reason = _ignored_in_training(ann, image) if training else None
            ignored[reason] += 1
            if masks_read and reason is None and image is not None:
                problem = _segmentation_problem(ann.get('segmentation'), image)
        if problem:
            raise DatasetError(f'{name}: annotation {ann.get("id")} (image {ann.get("image_id")}) '
                               f'{problem} (ann_file {dataset.ann_file})')
    if not training or not annotations:
        return
    if not ignored[None]:
        raise DatasetError(f'{name}: mmdet\'s training leaves out every annotation ('
                           f'{ignored["empty"]} with an empty box, under 1 px wide or high or of '
                           f'area 0; {ignored["outside"]} with a box outside its image; '
                           f'{ignored["crowd"]} crowd, iscrowd 1; {ignored["ignore"]} marked '
                           f'ignore): nothing to train on '
                           f'(ann_file {dataset.ann_file})')
    for reason, what in (('empty', 'an empty box (under 1 px wide or high, or area 0)'),
                         ('outside', 'a box outside its image')):
        if ignored[reason]:
            get_root_logger().warning(f'{name}: {ignored[reason]} of {annotations} '
                                      f'annotations have {what} and are ignored, as mmdet '
                                      f'ignores them (ann_file {dataset.ann_file})')


def _builder_error(error):
    # mmcv's registry re-raises a builder's error as type(error)(f'{class}: {error}'); for types
    # that take more arguments (a JSONDecodeError) that call itself fails, with a TypeError that
    # names nothing, and the builder's error is the one it was handling.
    if isinstance(error, TypeError) and error.__context__ is not None:
        error = error.__context__
    return f'{type(error).__name__}: {error_summary(error)}'


def load_dataset(dataset_cfg, name, default_args=None, metrics=None):
    """``build_dataset(dataset_cfg, default_args)``, raising DatasetError naming ``name`` where
    that fails, gives a dataset without images, or holds annotations that training, or the
    evaluation of ``metrics`` (a test set's), cannot read."""
    try:
        dataset = build_dataset(dataset_cfg, default_args)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        raise DatasetError(f'{name}: cannot load the dataset: {_builder_error(error)}') from None
    for base in _base_datasets(dataset):
        _check_classes(base, name)
        _check_images(base, name)
    if len(dataset) == 0:
        # Training leaves out images without annotations of the config's classes (mmdet's
        # filter_empty_gt): a class-name typo empties the dataset, and training would then run
        # no iteration and save an untrained checkpoint.
        # It also leaves out images under MIN_TRAINING_SIDE pixels a side.
        training = not getattr(dataset, 'test_mode', True)
        filtered = training and getattr(dataset, 'filter_empty_gt', False)
        coco = getattr(dataset, 'coco', None)
        small = _small_images(coco) if training and coco is not None else 0
        classes = ', '.join(dataset.CLASSES)
        if small:
            kept = (f' that mmdet\'s training keeps: it leaves out images under '
                    f'{MIN_TRAINING_SIDE} pixels a side ({small} of {len(coco.imgs)} here)'
                    + (f' and those without annotations of the classes {classes}' if filtered
                       else ''))
        else:
            kept = f' that have annotations of the classes {classes}' if filtered else ''
        raise DatasetError(f'{name}: no images in the dataset{kept} (ann_file '
                           f'{getattr(dataset, "ann_file", None)})')  # (wrappers have none)
    for base in _base_datasets(dataset):
        _check_annotations(base, name, metrics)
        if callable(getattr(base, 'pipeline', None)):
            base.pipeline = _PipelineNamingItsImage(base.pipeline)
    return dataset
