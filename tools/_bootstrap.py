"""Imported first by every tool: makes the checkout importable, mutes two import-time notices and
keeps long log records off the console (brief_console).

- ``mmdet_custom`` and ``ops_dcnv3`` import from the repository root, installed or not;
- mmcv 1.7 announces its 2.0 renaming on every import, torch notes "No CUDA runtime is found" on
  CPU-only machines that have a CUDA toolkit, and mmdet explains a v2.12 change to its mask
  evaluation on every run. None concerns the run, and they would bury a tool's own messages.
"""
import logging
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
