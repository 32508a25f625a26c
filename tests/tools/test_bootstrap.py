"""tools/_bootstrap.reuse_freed_memory: large CPU tensors reuse freed pages instead of new ones."""
import json
import subprocess
import sys

import pytest

from tools_testlib import PYTHON, ROOT

# Allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold) 15 times and prints
# the minor page faults of the last five: with glibc's defaults each allocation is a fresh
# mapping whose 16384 pages fault in when written. With the setting, the heap grows for the first
# few (posix_memalign's alignment leaves each freed block a little short of the next request until
# neighbours merge) and then serves them from freed pages.
PROBE = '''
import json, resource, sys
sys.path.insert(0, 'tools')
import _bootstrap, torch
made = _bootstrap.reuse_freed_memory() if sys.argv[1] == 'reuse' else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
before = faults()
for _ in range(5):
    torch.ones(16 << 20)
print(json.dumps(dict(made=made, faults=faults() - before,
                      peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)))
'''


def probe(mode, **env):
    import os
    result = subprocess.run([PYTHON, '-c', PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, **env), check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='a glibc setting')
def test_freed_pages_are_reused():
    default, reused = probe('default'), probe('reuse')
    assert reused['made'] is True
    assert default['faults'] > 5 * 16000  # each 64 MiB allocation faulted in anew
    assert reused['faults'] < 1000
    assert reused['peak_mib'] < default['peak_mib'] + 16 * 64  # the heap's growth stays bounded


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='a glibc setting')
def test_user_malloc_tunables_win():
    assert probe('reuse', GLIBC_TUNABLES='glibc.malloc.trim_threshold=1048576')['made'] is False


@pytest.mark.parametrize('tool', ['train', 'test', 'image_demo', 'benchmark_inference',
                                  'benchmark_dcnv3', 'deployment/test', 'deployment/benchmark_onnx',
                                  'deployment/pytorch2onnx'])
def test_model_tools_make_the_setting(tool):
    with open(f'{ROOT}/tools/{tool}.py') as source:
        main = source.read().split('\ndef main(', 1)[1]
    assert '_bootstrap.reuse_freed_memory()' in main.split('\ndef ', 1)[0]


def test_a_log_file_that_cannot_be_written_raises_the_write_error(tmp_path, capsys):
    # logging printed "--- Logging error ---" and a traceback for each record (while the text log
    # lost its lines) and went on; training went on until a checkpoint could not be written.
    import errno
    import logging
    sys.path.insert(0, f'{ROOT}/tools')
    try:
        import _bootstrap
    finally:
        sys.path.pop(0)
    logger = logging.getLogger('failed_log_writes')
    handler = logging.FileHandler(tmp_path / 'run.log')
    logger.addHandler(handler)
    try:
        _bootstrap.failed_log_writes_raise(logger)
        logger.warning('written')

        def full_disk(text):
            raise OSError(errno.ENOSPC, 'No space left on device')

        handler.stream.write = full_disk
        with pytest.raises(OSError) as error:
            logger.warning('not written')
        assert error.value.errno == errno.ENOSPC
        assert 'Logging error' not in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / 'run.log').read_text() == 'written\n'
