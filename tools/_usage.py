"""What the command-line tools share to report bad input in one line: ``UsageError``, which their
``main`` turns into ``tools/NAME.py: error: ...`` and exit status 1, and reading a config file."""
import os.path as osp

from mmcv import Config
from mmdet.utils import update_data_root

from mmdet_custom.utils import error_summary


class UsageError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def builder_error(error):
    """One line for an error raised through mmcv's registry, which re-raises a builder's error
    as ``type(error)(f'{class}: {error}')``. For types that take more arguments (a JSONDecodeError)
    that call itself fails, with a TypeError that names nothing; the builder's error is the one
    it was handling."""
    if isinstance(error, TypeError) and error.__context__ is not None:
        error = error.__context__
    return f'{type(error).__name__}: {error_summary(error)}'


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
