"""tools/dist_train.sh and dist_test.sh with two CPU processes (gloo), as on a machine without GPUs."""
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip('mmdet')
from tools_testlib import (ROOT, free_port, run_tool, training_lock_held,  # noqa: E402
                           write_tiny_config)

# Each rank saves its own weights at the end, and the images it trained on in each epoch, so
# the ranks can be compared with each other.
DUMP_HOOK = '''
import json
import os.path as osp
import torch
from mmcv.runner import HOOKS, Hook


@HOOKS.register_module()
class DumpRankWeightsHook(Hook):
    def before_run(self, runner):
        self.images = {}

    def after_train_iter(self, runner):
        metas = runner.data_batch['img_metas'].data[0]
        self.images.setdefault(runner.epoch, []).extend(meta['ori_filename'] for meta in metas)

    def after_run(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{runner.rank}_weights.pth'))
        with open(osp.join(runner.work_dir, f'rank{runner.rank}_images.json'), 'w') as f:
            json.dump(self.images, f)
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
    env = {'PORT': str(free_port()), 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable}
    # Validation after the last epoch exercises the distributed evaluation hook as well; a
    # checkpoint after every iteration, the resume in an epoch below.
    result = run_tool(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work_dir),
                       '--seed', '0', '--diff-seed', '--cfg-options', 'checkpoint_config.by_epoch=False',
                       'checkpoint_config.interval=1'], env=env, pythonpath=[tmp_path], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert '2 processes, gloo' in log
    assert 'bbox_mAP' in log  # the DistEvalHook ran on CPU

    # The ranks split each epoch's 8 images between them, --diff-seed or not (mmdet's seed +
    # rank gave each rank its own order: some images twice, others never).
    images = [json.loads((work_dir / f'rank{rank}_images.json').read_text()) for rank in (0, 1)]
    for epoch in ('0', '1'):
        assert sorted(images[0][epoch] + images[1][epoch]) == [f'{i:06d}.png' for i in range(8)]

    rank0 = torch.load(work_dir / 'rank0_weights.pth', weights_only=True)
    rank1 = torch.load(work_dir / 'rank1_weights.pth', weights_only=True)
    checkpoint = torch.load(work_dir / 'iter_4.pth', weights_only=True)
    # 8 images, 2 per process: 2 iterations per epoch.
    assert checkpoint['meta']['iter'] == 4
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key
        assert torch.equal(checkpoint['state_dict'][key], value), key

    # Resumed after epoch 2's first batch, each rank trains on the images it had left.
    assert torch.load(work_dir / 'iter_3.pth', weights_only=True)['meta']['epoch_position'] == dict(
        batches=1, world_size=2, samples_per_gpu=2, epoch_batches=2)
    env['PORT'] = str(free_port())
    resumed_dir = tmp_path / 'resumed'
    result = run_tool(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(resumed_dir),
                       '--seed', '0', '--no-validate', '--resume-from', str(work_dir / 'iter_3.pth')],
                      env=env, pythonpath=[tmp_path], timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    rest = [json.loads((resumed_dir / f'rank{rank}_images.json').read_text()) for rank in (0, 1)]
    assert [r['1'] for r in rest] == [i['1'][2:] for i in images]

    env['PORT'] = str(free_port())
    result = run_tool(['bash', 'tools/dist_test.sh', config, str(work_dir / 'iter_4.pth'), '2',
                       '--eval', 'bbox', 'segm', '--out', str(tmp_path / 'results.pkl')],
                      env=env, pythonpath=[tmp_path], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'segm_mAP' in result.stdout
    import mmcv
    assert len(mmcv.load(str(tmp_path / 'results.pkl'))) == 4  # every val image, in order, once


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_a_failed_process_ends_the_launcher_in_one_line_with_its_status(tmp_path, tiny_config):
    # torchrun printed some 40 lines of its own traceback under the process's message, exit 1.
    missing = tmp_path / 'missing.pth'
    temporary = tmp_path / 'tmp'
    temporary.mkdir()
    result = run_tool(['bash', 'tools/dist_train.sh', tiny_config, '2', '--work-dir',
                       str(tmp_path / 'work'), '--resume-from', str(missing)],
                      env={'PORT': str(free_port()), 'OMP_NUM_THREADS': '1',
                           'PYTHON': sys.executable, 'TMPDIR': str(temporary)}, timeout=300)
    assert list(temporary.iterdir()) == []  # torchrun's log folder was left there
    assert result.returncode == 1
    assert f'tools/train.py: error: --resume-from: checkpoint not found: {missing}' in result.stderr
    assert re.fullmatch(r'torchrun: \S+/tools/train\.py ended first in process [01], with exit '
                        r'status 1 \(what it printed is above\); the other processes were stopped',
                        result.stderr.splitlines()[-1]), result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_a_work_dir_another_training_holds_is_refused_by_every_process(tmp_path, tiny_config):
    # Rank 0 takes the lock and tells the others: each stops with the same line, none waits for
    # a rank 0 that is gone.
    work = tmp_path / 'work'
    work.mkdir()
    with training_lock_held(work):
        env = {'PORT': str(free_port()), 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable}
        result = run_tool(['bash', 'tools/dist_train.sh', tiny_config, '2', '--work-dir',
                           str(work)], env=env, timeout=300)
    assert result.returncode == 1
    refusal = (f'tools/train.py: error: another training (pid 4242) is running in {work}; wait '
               f'for it or use another --work-dir')
    assert result.stderr.count(refusal) == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_ctrl_c_ends_the_launcher_with_130_after_the_resume_hint(tmp_path, tiny_config):
    log = tmp_path / 'train.log'
    with open(log, 'w') as out:
        run = subprocess.Popen(
            ['bash', 'tools/dist_train.sh', tiny_config, '2', '--work-dir', str(tmp_path / 'work'),
             '--no-validate', '--cfg-options', 'runner.max_epochs=50'],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PORT=str(free_port()), OMP_NUM_THREADS='1',
                     PYTHON=sys.executable,
                     PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])))
        deadline = time.monotonic() + 300
        while 'Saving checkpoint at 2 epochs' not in log.read_text():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
        assert run.wait(timeout=120) == 130
    lines = log.read_text().splitlines()
    assert lines[-1] == 'torchrun: stopped by SIGINT'
    assert sum('interrupted; the newest complete checkpoint is' in line for line in lines) == 2
    assert not any(line.startswith('Traceback') for line in lines)
    # Our DDP wrapping used torch's deprecated keyword: a FutureWarning from every process.
    assert not any('deprecated' in line for line in lines), [x for x in lines if 'deprecated' in x]


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
        assert f' with {checkout}/tools/_torchrun.py --nnodes=1 ' in result.stdout, result.stdout
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
    ('0', '29500', "the number of processes must be a whole number from 1 to 99999, got '0'"),
    ('two', '29500', "the number of processes must be a whole number from 1 to 99999, got 'two'"),
    ('100000', '29500', "the number of processes must be a whole number from 1 to 99999, got "
                        "'100000'"),
    ('18446744073709551617', '29500', "the number of processes must be a whole number from 1 to "
                                      "99999, got '18446744073709551617'"),
    ('2', '99999', "PORT must be a port number (1 to 65535), got '99999'"),
    ('2', 'abc', "PORT must be a port number (1 to 65535), got 'abc'")])
def test_launchers_refuse_a_process_count_or_port_that_is_no_number(processes, port, message):
    # torchrun's own failures were tracebacks; the port check called a bad PORT "in use".
    result = run_tool(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), 'config.py', processes],
                      env={'PORT': port})
    assert result.returncode == 2
    assert result.stderr == f'dist_train.sh: error: {message}\n'


def test_a_configs_dist_params_port_is_the_slurm_runs_and_refused_for_torchrun(monkeypatch):
    # It was dropped: two slurm jobs on one node met at port 29500.
    import os
    from mmdet_custom.apis.distributed import _export_slurm_env, init_distributed
    for name, value in dict(SLURM_PROCID='1', SLURM_NTASKS='2', SLURM_NODELIST='node1',
                            MASTER_ADDR='node1', MASTER_PORT='29500').items():
        monkeypatch.setenv(name, value)
    _export_slurm_env(29655)
    assert (os.environ['MASTER_PORT'], os.environ['RANK'], os.environ['WORLD_SIZE']) == (
        '29655', '1', '2')
    with pytest.raises(ValueError, match='dist_params.port=29655 sets the port of slurm runs; '
                                         "torchrun's is the PORT variable"):
        init_distributed('pytorch', 'gloo', port=29655)


def _torchrun_on_gpus(monkeypatch, rank, local_rank, gpus):
    """A torchrun process's variables on a node with ``gpus`` GPUs; returns the GPUs made current
    and the backends joined."""
    import torch.distributed
    for name, value in dict(RANK=rank, LOCAL_RANK=local_rank, WORLD_SIZE=8, MASTER_ADDR='node1',
                            MASTER_PORT=29500).items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
    calls = dict(set_device=[], init_process_group=[])
    monkeypatch.setattr(torch.cuda, 'set_device', calls['set_device'].append)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda backend, **_: calls['init_process_group'].append(backend))
    return calls


def test_torchrun_processes_take_the_gpu_of_their_local_rank(monkeypatch):
    # mmcv took GPU RANK % device_count: rank 5, the second of the second node (4 processes a
    # node), went to GPU 5 while its model went to GPU 1.
    from mmdet_custom.apis.distributed import init_distributed
    calls = _torchrun_on_gpus(monkeypatch, rank=5, local_rank=1, gpus=8)
    assert init_distributed('pytorch') == 'nccl'
    assert calls == dict(set_device=[1], init_process_group=['nccl'])


def test_more_torchrun_processes_than_gpus_are_refused_in_one_line(monkeypatch):
    # The second process of `dist_train.sh CONFIG 2` on a 1-GPU machine failed in model.cuda(1)
    # with an invalid device ordinal, after the model and data were built.
    from mmdet_custom.apis.distributed import init_distributed
    calls = _torchrun_on_gpus(monkeypatch, rank=1, local_rank=1, gpus=1)
    with pytest.raises(ValueError, match=r'^process 1 of this node has no GPU of its own: 1 GPU '
                                         r'visible; start at most 1 process a node '
                                         r'\(NUM_PROCESSES of tools/dist_train.sh and '
                                         r'tools/dist_test.sh\)$'):
        init_distributed('pytorch')
    assert calls == dict(set_device=[], init_process_group=[])


@pytest.mark.parametrize('gpus, omp_num_threads, expected', [
    (False, None, '8'),  # 16 cores, 2 processes
    (True, None, ''),  # torchrun's 1 a process, beside GPUs
    (False, '3', '3')])
def test_launchers_share_the_cores_between_processes_without_gpus(tmp_path, gpus, omp_num_threads,
                                                                  expected):
    checkout = tmp_path / 'checkout'
    (checkout / 'tools').mkdir(parents=True)
    for name in ('dist_train.sh', '_torchrun.sh'):
        shutil.copy(osp.join(ROOT, 'tools', name), checkout / 'tools' / name)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('python', 'echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"'), ('nproc', 'echo 16'),
                       ('nvidia-smi', 'exit 0' if gpus else 'exit 9')):
        (bin_dir / name).write_text(f'#!/bin/sh\n{text}\n')
        (bin_dir / name).chmod(0o755)
    env = {'PYTHON': str(bin_dir / 'python'), 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
    if omp_num_threads is not None:
        env['OMP_NUM_THREADS'] = omp_num_threads
    unset = [] if omp_num_threads else ['env', '-u', 'OMP_NUM_THREADS']
    result = run_tool([*unset, 'bash', str(checkout / 'tools' / 'dist_train.sh'), 'config.py', '2'],
                      env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'OMP_NUM_THREADS={expected}'


NODES = 'NNODES must be a whole number from 1 to 99999 and NODE_RANK one from 0 to NNODES - 1, got '


@pytest.mark.parametrize('variables, message', [
    (dict(NODE_RANK='1'), NODES + "NNODES='1' NODE_RANK='1'"),
    (dict(NNODES='x'), NODES + "NNODES='x' NODE_RANK='0'"),
    (dict(NNODES='100000'), NODES + "NNODES='100000' NODE_RANK='0'"),
    # bash reads a leading 0 as octal: "08: value too great for base", and the check passed.
    (dict(NNODES='16', NODE_RANK='08'), NODES + "NNODES='16' NODE_RANK='08'"),
    # bash's arithmetic wraps: 2^64 - 1 read as -1, which is less than NNODES.
    (dict(NNODES='2', NODE_RANK='18446744073709551615'),
     NODES + "NNODES='2' NODE_RANK='18446744073709551615'"),
    (dict(NNODES='2', NODE_RANK='1'), "with NNODES=2, MASTER_ADDR must be the first node's address "
                                      "as the other nodes reach it, not '127.0.0.1'"),
    (dict(PORT='99999999999999999999'), "PORT must be a port number (1 to 65535), got "
                                        "'99999999999999999999'"),
    (dict(PYTHON='/nonexistent/python'), '/nonexistent/python does not run (exit 127); run '
                                         'scripts/setup_env.sh or set PYTHON')])
def test_launchers_refuse_a_node_layout_that_would_hang_and_say_what_failed(
        tmp_path, variables, message):
    # The first two waited for ever with nothing printed; a missing interpreter was "port in use".
    checkout = tmp_path / 'checkout'  # without a .venv, so that PYTHON decides
    (checkout / 'tools').mkdir(parents=True)
    for name in ('dist_train.sh', '_torchrun.sh'):
        shutil.copy(osp.join(ROOT, 'tools', name), checkout / 'tools' / name)
    result = run_tool(['bash', str(checkout / 'tools' / 'dist_train.sh'), 'config.py', '2'],
                      env=dict(dict(PYTHON=sys.executable), **variables))
    assert result.returncode == 2
    assert result.stderr == f'dist_train.sh: error: {message}\n'


def test_launchers_leave_the_current_folder_off_the_import_path(tmp_path):
    # An empty PYTHONPATH left "ROOT:", which puts the current folder first: an mmdet/ folder
    # there (an mmdetection checkout) replaced the installed package.
    checkout = tmp_path / 'checkout'
    (checkout / 'tools').mkdir(parents=True)
    for name in ('dist_train.sh', '_torchrun.sh'):
        shutil.copy(osp.join(ROOT, 'tools', name), checkout / 'tools' / name)
    venv_python = checkout / '.venv' / 'bin' / 'python'
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text('#!/bin/sh\necho "PYTHONPATH=[$PYTHONPATH]"\n')
    venv_python.chmod(0o755)
    result = run_tool(['bash', str(checkout / 'tools' / 'dist_train.sh'), 'config.py', '2'],
                      env={'PYTHONPATH': '', 'PORT': str(free_port())})
    assert result.returncode == 0, result.stderr
    assert f'PYTHONPATH=[{checkout}]' in result.stdout


# Process 1 stops without gathering (as one that failed on an image does); process 0 is left
# in the gather.
GATHER_WITHOUT_A_PEER = '''
import datetime, os, sys
import torch.distributed as dist
from mmdet_custom.apis import ResultsNotGathered, multi_process_test

rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
if rank == 1:
    os._exit(1)


class Loader(list):
    dataset = [0, 1]


def model(return_loss, rescale, image):
    return [image]


model.eval = lambda: None
try:
    multi_process_test(model, Loader([dict(image=0)]))
except ResultsNotGathered as error:
    print(error, flush=True)  # (os._exit drops what is buffered)
    os._exit(0)
os._exit(2)
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_a_process_left_gathering_by_a_failed_one_says_so_in_one_line():
    # It printed the process group's 23-line traceback under the failed process's own message.
    port = str(free_port())
    peers = [subprocess.Popen([sys.executable, '-c', GATHER_WITHOUT_A_PEER, str(rank), port],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT)) for rank in (0, 1)]
    out, err = peers[0].communicate(timeout=300)
    peers[1].communicate(timeout=60)
    assert peers[0].returncode == 0, err[-3000:]
    message = out[out.index('process 0 could not gather'):]  # (after the progress bar)
    assert message.startswith('process 0 could not gather the results: another process stopped '
                              '(RuntimeError: ') and message.count('\n') == 1, out
