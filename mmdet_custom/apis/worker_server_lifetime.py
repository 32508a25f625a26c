"""Preloaded by the data-loader workers' forkserver (``start_worker_server``), never imported by
the training process: it makes the server end when the process that started it ends.

Python's forkserver only notices its parent is gone when a pipe to it closes, and every worker it
forks holds that pipe's write end; torch's workers watch their own parent, the server. So a
training killed (SIGKILL by the out-of-memory killer, SIGTERM under torchrun) left the server and
its workers running, holding the dataset's memory, for good. With the kernel ending the server
with its parent, the workers see theirs change and exit.
"""
import ctypes
import os
import signal
import sys

from ..utils import WORKER_SERVER_PARENT_VARIABLE

_PR_SET_PDEATHSIG = 1

if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    parent = os.environ.pop(WORKER_SERVER_PARENT_VARIABLE, None)
    # The parent ended before the setting took effect. (Compared with the pid it had, not with 1:
    # a training process may itself be pid 1, in a container.)
    if parent is not None and os.getppid() != int(parent):
        os._exit(0)
