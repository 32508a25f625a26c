"""Building a dataset from its config with one clear error per failure."""
from mmdet.datasets import build_dataset

from ..utils import error_summary


class DatasetError(ValueError):
    """A dataset cannot be built (unreadable or incomplete annotations, settings its type does not
    take) or has no images; the message names the config entry (e.g. 'data.val')."""


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
    if len(dataset) == 0:
        # Training leaves out images without annotations of the config's classes (mmdet's
        # filter_empty_gt): a class-name typo empties the dataset, and training would then run
        # no iteration and save an untrained checkpoint.
        filtered = not getattr(dataset, 'test_mode', True) and getattr(dataset, 'filter_empty_gt', False)
        raise DatasetError(f'{name}: no images in the dataset' + (
            f' that have annotations of the classes {", ".join(dataset.CLASSES)}' if filtered else '')
            + f' (ann_file {getattr(dataset, "ann_file", None)})')  # (wrappers have none)
    return dataset
