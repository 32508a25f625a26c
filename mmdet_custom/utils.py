"""Small helpers shared across the plugin."""
import re
from typing import Optional

import numpy as np

# The training process's pid, in the environment its data-loader workers' forkserver starts with
# (mmdet_custom.apis.start_worker_server sets it, worker_server_lifetime reads it there).
WORKER_SERVER_PARENT_VARIABLE = 'INTERNIMAGE_WORKER_SERVER_PARENT'


def error_summary(error: BaseException) -> str:
    """The first sentence (or line) of an exception's message, which names the failure (torch
    appends paragraphs of generic advice to some), or its type where it has no message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.split('. ')[0].splitlines()[0]


def numpy_pickle_globals() -> list:
    """What numpy values in a checkpoint (a best score, a seed drawn with numpy) pickle as, under
    the module names of numpy 1 and 2: scalars, dtypes and arrays, data only. For
    ``torch.serialization.safe_globals``, so that torch's weights-only loader reads them."""
    try:  # numpy 2, and 1.26, whose numpy._core forwards to numpy.core when imported by name
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype] + sorted({type(np.dtype(code)) for code in '?bhilqBHILQefdFD'},
                                              key=str)
    for name in ('scalar', '_reconstruct'):
        allowed += [(getattr(multiarray, name), f'{module}.{name}')
                    for module in ('numpy.core.multiarray', 'numpy._core.multiarray')]
    return allowed


def unsupported_pickle_global(error: BaseException) -> Optional[str]:
    """The object type (``module.name``) torch's weights-only loader refused, as ``error`` (its
    UnpicklingError) names it, or None for another error."""
    found = re.search(r'Unsupported global: GLOBAL (\S+)', str(error))
    return found.group(1) if found else None
