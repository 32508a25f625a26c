"""torchrun for tools/_torchrun.sh, ending in one line where torchrun ends in its traceback.

A process that fails (a refused option, a missing file, a crash) prints its own message; torchrun
then buried it under some 40 lines of its traceback, once per run, and exited 1 whatever the
process's exit status. A Ctrl-C (the processes print where to resume) or SIGTERM did the same.
Here the exit status is the failing process's, or 128 + the signal (130 for Ctrl-C).
"""
import shutil
import signal
import sys
import tempfile

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main


def run(argv: list) -> int:
    # torchrun's own log folder (TMPDIR/torchelastic_*, per-process attempt folders) was left
    # behind by every run, ended well or not.
    log_dir = tempfile.mkdtemp(prefix='torchelastic_')
    try:
        return _run(['--log-dir', log_dir, *argv])
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def _run(argv: list) -> int:
    try:
        main(argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode < 0:  # killed by that signal
            status = 128 - failure.exitcode
            try:
                how = f'by {signal.Signals(-failure.exitcode).name}'
            except ValueError:
                how = f'by signal {-failure.exitcode}'
        else:
            how, status = f'with exit status {failure.exitcode}', failure.exitcode
        print(f'torchrun: {error.name} ended first in process {rank}, {how} (what it printed is '
              f'above); the other processes were stopped', file=sys.stderr)
        return status if 0 < status < 256 else 1
    except SignalException as error:
        print(f'torchrun: stopped by {error.sigval.name}', file=sys.stderr)
        return 128 + int(error.sigval)
    return 0


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))
