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

_PR_SET_PDEATHSIG = 1

if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() == 1:  # the parent ended before the setting took effect
        os._exit(0)
