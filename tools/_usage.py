"""What the command-line tools share to report bad input in one line: ``UsageError``, which their
``main`` turns into ``tools/NAME.py: error: ...`` and exit status 1 (``one_line_errors``), reading
a config file, and building a dataset."""
import contextlib
import os.path as osp

from mmcv import Config
from mmdet.datasets import build_dataset
from mmdet.utils import update_data_root

from mmdet_custom.utils import error_summary


class UsageError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


@contextlib.contextmanager
def one_line_errors(prog, *error_types):
    """End the program with ``PROG: error: MESSAGE`` and exit status 1 when the block raises a
    UsageError or one of ``error_types`` (e.g. CheckpointError): no traceback."""
    try:
        yield
    except (UsageError, *error_types) as error:
        raise SystemExit(f'{prog}: error: {error}') from None


def builder_error(error):
    """One line for an error raised through mmcv's registry, which re-raises a builder's error
    as ``type(error)(f'{class}: {error}')``. For types that take more arguments (a JSONDecodeError)
    that call itself fails, with a TypeError that names nothing; the builder's error is the one
    it was handling."""
    if isinstance(error, TypeError) and error.__context__ is not None:
        error = error.__context__
    return f'{type(error).__name__}: {error_summary(error)}'


def load_dataset(dataset_cfg, name):
    """``build_dataset(dataset_cfg)``, with the errors of an unreadable or incomplete annotation
    file, or of settings the dataset type does not take, as a UsageError naming ``name``
    (e.g. 'data.train')."""
    try:
        return build_dataset(dataset_cfg)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        raise UsageError(f'{name}: cannot load the dataset: {builder_error(error)}') from None


def read_config(path, cfg_options=None):
    """The config at ``path`` with ``--cfg-options`` merged and mmdet's MMDET_DATASETS applied."""
    if not osp.isfile(path):
        raise UsageError(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except Exception as error:
        raise UsageError(f'cannot read config {path}: {type(error).__name__}: {error}') from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    update_data_root(cfg)
    return cfg
