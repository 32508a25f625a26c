"""tools/dist_train.sh and dist_test.sh with two CPU processes (gloo), as on a machine without GPUs."""
import os.path as osp
import shutil

import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import ROOT, free_port, run_tool, write_tiny_config  # noqa: E402

# Each rank saves its own weights at the end, so the ranks can be compared with each other.
DUMP_HOOK = '''
import os.path as osp
import torch
from mmcv.runner import HOOKS, Hook


@HOOKS.register_module()
class DumpRankWeightsHook(Hook):
    def after_run(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{runner.rank}_weights.pth'))
'''


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_two_cpu_processes_train_identical_weights_and_test(tmp_path, tiny_shapes):
    (tmp_path / 'dump_hook.py').write_text(DUMP_HOOK)
    config = write_tiny_config(
        tmp_path / 'tiny_dist.py', tiny_shapes, epochs=2,
        extra="custom_imports = dict(imports=['mmdet_custom', 'dump_hook'])\n"
              "custom_hooks = [dict(type='NumClassCheckHook'), dict(type='DumpRankWeightsHook')]\n")
    work_dir = tmp_path / 'work'
    env = {'PORT': str(free_port()), 'OMP_NUM_THREADS': '1'}
    # Validation after the last epoch exercises the distributed evaluation hook as well.
    result = run_tool(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work_dir),
                       '--seed', '0'], env=env, pythonpath=[tmp_path], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert '2 processes, gloo' in log
    assert 'bbox_mAP' in log  # the DistEvalHook ran on CPU

    rank0 = torch.load(work_dir / 'rank0_weights.pth', weights_only=True)
    rank1 = torch.load(work_dir / 'rank1_weights.pth', weights_only=True)
    checkpoint = torch.load(work_dir / 'epoch_2.pth', weights_only=True)
    # 8 images, 2 per process: 2 iterations per epoch.
    assert checkpoint['meta']['iter'] == 4
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key
        assert torch.equal(checkpoint['state_dict'][key], value), key

    env['PORT'] = str(free_port())
    result = run_tool(['bash', 'tools/dist_test.sh', config, str(work_dir / 'epoch_2.pth'), '2',
                       '--eval', 'bbox', 'segm', '--out', str(tmp_path / 'results.pkl')],
                      env=env, pythonpath=[tmp_path], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'segm_mAP' in result.stdout
    import mmcv
    assert len(mmcv.load(str(tmp_path / 'results.pkl'))) == 4  # every val image, in order, once


def _stand_in_interpreter(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\necho "launched by $0 with $*"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize('script, args', [('dist_train.sh', ['config.py', '2']),
                                          ('dist_test.sh', ['config.py', 'model.pth', '2'])])
def test_launchers_prefer_the_checkouts_venv_to_python(tmp_path, script, args):
    """The checkout's .venv runs the job; $PYTHON only where there is none. PYTHON often still
    names the plain interpreter that scripts/setup_env.sh built the .venv from."""
    checkout = tmp_path / 'checkout'
    (checkout / 'tools').mkdir(parents=True)
    for name in (script, '_torchrun.sh'):
        shutil.copy(osp.join(ROOT, 'tools', name), checkout / 'tools' / name)
    named = _stand_in_interpreter(tmp_path / 'python3.12')
    venv = _stand_in_interpreter(checkout / '.venv' / 'bin' / 'python')

    def launched_by():
        result = run_tool(['bash', str(checkout / 'tools' / script), *args],
                          env={'PYTHON': str(named)})
        assert result.returncode == 0, result.stderr
        assert ' with -m torch.distributed.run ' in result.stdout, result.stdout
        return result.stdout.split()[2]

    assert launched_by() == str(venv)
    venv.unlink()
    assert launched_by() == str(named)


@pytest.mark.parametrize('script, args', [('dist_train.sh', ['config.py', '2']),
                                          ('dist_test.sh', ['config.py', 'model.pth', '2'])])
def test_launchers_refuse_a_port_in_use(script, args):
    # torchrun's own failure was a long traceback ending in EADDRINUSE.
    import socket
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tool(['bash', osp.join(ROOT, 'tools', script), *args],
                          env={'PORT': str(port)})
    assert result.returncode == 1
    assert result.stderr == (f'{script}: error: port {port} of 127.0.0.1 is in use (another run?): '
                             'set PORT to a free one\n')


@pytest.mark.parametrize('node_rank', ['0', '1'])
def test_launchers_refuse_a_master_addr_that_does_not_resolve(node_rank):
    # torchrun retried the name for ever: the run hung with nothing printed. (.invalid never resolves.)
    result = run_tool(['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), 'config.py', 'model.pth', '2'],
                      env={'MASTER_ADDR': 'rendezvous.invalid', 'NODE_RANK': node_rank,
                           'NNODES': '2'})
    assert result.returncode == 2
    assert result.stderr == ("dist_test.sh: error: MASTER_ADDR 'rendezvous.invalid' does not resolve "
                             'to an address\n')


@pytest.mark.parametrize('processes, port, message', [
    ('0', '29500', "the number of processes must be a whole number of at least 1, got '0'"),
    ('two', '29500', "the number of processes must be a whole number of at least 1, got 'two'"),
    ('2', '99999', "PORT must be a port number (1 to 65535), got '99999'"),
    ('2', 'abc', "PORT must be a port number (1 to 65535), got 'abc'")])
def test_launchers_refuse_a_process_count_or_port_that_is_no_number(processes, port, message):
    # torchrun's own failures were tracebacks; the port check called a bad PORT "in use".
    result = run_tool(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), 'config.py', processes],
                      env={'PORT': port})
    assert result.returncode == 2
    assert result.stderr == f'dist_train.sh: error: {message}\n'
