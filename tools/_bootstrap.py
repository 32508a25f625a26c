"""Imported first by every tool: makes the checkout importable, mutes two import-time notices and
keeps long log records off the console (brief_console) and makes a log file's failed write
stop a run (failed_log_writes_raise); tools that run a model call reuse_freed_memory() first.

- ``mmdet_custom`` and ``ops_dcnv3`` import from the repository root, installed or not;
- mmcv 1.7 announces its 2.0 renaming on every import, torch notes "No CUDA runtime is found" on
  CPU-only machines that have a CUDA toolkit, and mmdet explains a v2.12 change to its mask
  evaluation on every run. None concerns the run, and they would bury a tool's own messages.
"""
import ctypes
import logging
import os
import os.path as osp
import sys
import warnings

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

MUTED_WARNINGS = ('On January 1, 2023, MMCV will release v2.0.0',
                  'The key "bbox" is deleted for more accurate mask AP')
_show_warning = warnings.showwarning


def _show_unmuted_warning(message, *args, **kwargs):
    # Dropped at display rather than by a filter: mmdet resets the filters (simplefilter('once'))
    # right before it warns.
    if not str(message).startswith(MUTED_WARNINGS):
        _show_warning(message, *args, **kwargs)


warnings.showwarning = _show_unmuted_warning
logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)


class _BriefFormatter(logging.Formatter):
    """Console formatting that folds long informational records (environment, config, hook and
    parameter-group listings) into their first line plus a pointer to the log file."""

    def __init__(self, fmt, max_lines, log_file):
        super().__init__(fmt)
        self.max_lines = max_lines
        self.log_file = log_file

    def format(self, record):
        text = super().format(record)
        lines = text.splitlines()
        if record.levelno >= logging.WARNING or len(lines) <= self.max_lines:
            return text
        return f'{lines[0].rstrip(":")} [{len(lines) - 1} more lines in {self.log_file}]'


def brief_console(logger, log_file, max_lines=4):
    """Keep a training console readable; ``log_file`` (``logger``'s file) still gets everything.

    - ``logger``'s info records longer than ``max_lines`` lines show their first line only;
    - mmcv reports weight initialisation, one record per parameter, to the first logger ever
      created, which mmcv 1.7 makes its own 'mmcv' logger at import time; given ``logger``'s
      file handler, mmcv writes that report to the file instead of the console.
    """
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:  # the console, not the FileHandler subclass
            fmt = handler.formatter._fmt if handler.formatter else None
            handler.setFormatter(_BriefFormatter(fmt, max_lines, log_file))
    mmcv_logger = logging.getLogger('mmcv')
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler not in mmcv_logger.handlers:
            mmcv_logger.addHandler(handler)


def failed_log_writes_raise(logger):
    """Make a write to ``logger``'s log files that fails (a full disk, the file removed) raise its
    OSError, so that training stops on it in one line naming the cause (train_detector's), as at
    a checkpoint it cannot write. logging's default prints a traceback for each record it could
    not write, to stderr, and goes on without them: the text log silently lost its lines."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = _raise_write_error(handler)


def _raise_write_error(handler):
    def handle_error(record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise error
        logging.Handler.handleError(handler, record)  # a record that cannot be formatted
    return handle_error


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of giving it back to
    the kernel. Returns whether the setting was made.

    By default glibc serves each block above its mmap threshold (at most 32 MiB) with a fresh
    mapping and unmaps it on free, so every CPU training step gets its large activations as new
    pages, which the kernel faults in and zeroes one at a time. An InternImage-T Mask R-CNN step
    (2 images of 800x1216, 2 threads) took 1.8 to 2.5 million page faults and 4 to 5.5 s of
    system time: 14 s a step against 10.3 s without them (ResNet-50: 10.3 s against 7.9). With mmap
    off and the heap never trimmed, a step reuses the pages of the one before. The price is peak
    RSS: about 10% more (11.0 instead of 10.1 GB for that step), because glibc serves the first
    few large aligned blocks from new heap before freed neighbours merge. GPU tensors are not
    affected.

    Nothing is changed off Linux/glibc, or when GLIBC_TUNABLES already sets malloc tunables (the
    user's choice wins).
    """
    if not sys.platform.startswith('linux') or 'glibc.malloc.' in os.environ.get('GLIBC_TUNABLES', ''):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; other C libraries may not have it
    except AttributeError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # mallopt returns 1 on success. -1 as the trim threshold disables trimming (mallopt(3)).
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, -1) == 1
