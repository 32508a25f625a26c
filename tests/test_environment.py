"""The installed environment: what README's setup promises."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / 'scripts' / 'setup_env.sh'


def test_plugin_imports_and_registers_backbone():
    import mmdet_custom  # noqa: F401  (importing registers everything)
    import ops_dcnv3  # noqa: F401
    from mmdet.models.builder import BACKBONES
    assert BACKBONES.get('InternImage') is not None


def test_pinned_versions():
    import mmcv
    import mmdet
    assert torch.__version__.split('+')[0] == '2.14.1'
    assert mmcv.__version__ == '1.7.2'
    assert mmdet.__version__ == '2.28.2'


def test_mmcv_compiled_ops_load():
    from mmcv.ops import RoIAlign
    feats = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 3., 3.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    assert out.shape == (1, 1, 2, 2)


def test_dcnv3_extension_has_cpu_kernel():
    import ops_dcnv3._C  # noqa: F401  (the compiled extension, not the fallback)
    assert torch._C._dispatch_has_kernel_for_dispatch_key('dcnv3::dcnv3_forward', 'CPU')
    assert torch._C._dispatch_has_kernel_for_dispatch_key('dcnv3::dcnv3_backward', 'CPU')


def test_dcnv3_function_runs_the_compiled_cpu_kernels():
    # Not the PyTorch core it falls back to where there is no kernel (both compute the same, so
    # a wrong check of which device types have one went unseen by every comparison test).
    from ops_dcnv3.functions import DCNv3Function

    input = torch.randn(1, 4, 4, 8, requires_grad=True)
    offset, mask = torch.zeros(1, 4, 4, 2 * 18), torch.full((1, 4, 4, 2 * 9), 1 / 9)
    with torch.profiler.profile() as prof:
        output = DCNv3Function.apply(input, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 64)
        output.sum().backward()
    ops = {event.key for event in prof.key_averages()}
    assert {'dcnv3::dcnv3_forward', 'dcnv3::dcnv3_backward'} <= ops, sorted(ops)


@pytest.mark.skipif(shutil.which('nvcc') is None or os.environ.get('DCNV3_WITH_CUDA') == '0',
                    reason='no nvcc: the extension is built without CUDA kernels')
def test_dcnv3_extension_compiled_cuda_kernels_when_nvcc_found():
    import ops_dcnv3._C  # noqa: F401
    assert torch._C._dispatch_has_kernel_for_dispatch_key('dcnv3::dcnv3_forward', 'CUDA')
    assert torch._C._dispatch_has_kernel_for_dispatch_key('dcnv3::dcnv3_backward', 'CUDA')


def _setup_module():
    """The repository's setup.py as a module (its helpers are what the setup scripts call)."""
    sys.path.insert(0, str(ROOT))
    try:
        import setup
    finally:
        sys.path.remove(str(ROOT))
    return setup


def test_source_distribution_holds_every_extension_file(tmp_path):
    # The headers were left out (setup.py lists sources only), so installing the sdist failed
    # with "dcnv3.h: No such file or directory"; without nvcc, the .cu files were left out too.
    subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path),
                    'sdist', '-d', str(tmp_path)], cwd=ROOT,
                   env=dict(os.environ, DCNV3_WITH_CUDA='0'), check=True, capture_output=True)
    (archive,) = tmp_path.glob('*.tar.gz')
    with tarfile.open(archive) as sdist:
        packed = {name.split('/', 1)[1] for name in sdist.getnames() if '/ops_dcnv3/csrc/' in name}
    csrc = Path(ROOT, 'ops_dcnv3', 'csrc')
    wanted = {str(p.relative_to(ROOT)) for p in csrc.rglob('*') if p.suffix in ('.h', '.cpp', '.cu')}
    assert wanted and wanted <= packed, sorted(wanted - packed)


def test_find_cuda_home_follows_nvcc_wrapper(tmp_path, monkeypatch):
    """A wrapper script named nvcc must lead to the toolkit, not to the wrapper's folder."""
    real = shutil.which('nvcc')
    if real is None:
        pytest.skip('no nvcc on PATH')
    wrapper = tmp_path / 'bin' / 'nvcc'
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {os.path.realpath(real)} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv('PATH', f'{wrapper.parent}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.delenv('CUDA_HOME', raising=False)
    home = _setup_module().find_cuda_home()
    assert home is not None and (Path(home) / 'include' / 'cuda_runtime.h').is_file()
    assert Path(home) != tmp_path


def _visible_gpus(monkeypatch, capabilities, torch_archs=('sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120')):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: bool(capabilities))
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i=0: capabilities[i])
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: list(torch_archs))


@pytest.mark.parametrize('capabilities, expected', [
    ([(7, 5)], '7.5+PTX'),  # a T4 runs no A100/H100 machine code
    ([(9, 0), (8, 6), (9, 0)], '8.6;9.0+PTX'),  # every visible GPU, once each
    ([(12, 1)], '12.0+PTX'),  # newer than torch's newest (sm_120): capped there, as torch does
    ([], '8.0;9.0+PTX'),  # none visible
])
def test_cuda_arch_list_follows_the_visible_gpus(monkeypatch, capabilities, expected):
    """Unset TORCH_CUDA_ARCH_LIST builds for the GPUs that are there, not only for A100/H100."""
    setup = _setup_module()
    _visible_gpus(monkeypatch, capabilities)
    for unset in (None, 'native'):
        if unset is None:
            monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)
        else:
            monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', unset)
        assert setup.cuda_arch_list() == expected
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '7.5;8.0')  # a list the user sets is kept as it is
    assert setup.cuda_arch_list() == '7.5;8.0'


def test_cuda_arch_list_reads_torchs_arch_names():
    setup = _setup_module()
    assert [setup._capability(name) for name in ('sm_75', 'sm_90a', 'sm_100', 'sm_120')] == \
        [(7, 5), (9, 0), (10, 0), (12, 0)]


@pytest.mark.skipif(shutil.which('nvcc') is None, reason='no nvcc on PATH')
def test_cuda_build_env_exports_the_arch_list(monkeypatch):
    """scripts/build_mmcv.sh and the DCNv3 build take their architectures from the same place."""
    common = ROOT / 'scripts' / '_build_common.sh'
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)
    env = dict(os.environ)
    script = (f'source {shlex.quote(str(common))} && cuda_build_env {shlex.quote(sys.executable)} '
              f'{shlex.quote(str(ROOT))} && echo "$TORCH_CUDA_ARCH_LIST"')
    resolved = subprocess.run(['bash', '-c', script], env=env, capture_output=True, text=True)
    assert resolved.returncode == 0, resolved.stderr
    expected = _setup_module().cuda_arch_list()
    assert resolved.stdout.strip() == expected
    kept = subprocess.run(['bash', '-c', script], env={**env, 'TORCH_CUDA_ARCH_LIST': '7.5'},
                          capture_output=True, text=True)
    assert kept.stdout.strip() == '7.5'


def _fake_python(tmp_path, version):
    fake = tmp_path / 'python-fake'
    fake.write_text(f'#!/bin/sh\necho {version}\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize('version', ['3.9', '3.13'])  # no torch 2.14 wheels; mmcv 1.7 unchecked
def test_setup_rejects_unsupported_python(tmp_path, version):
    fake = _fake_python(tmp_path, version)
    result = subprocess.run(['bash', str(SETUP)], env={**os.environ, 'PYTHON': str(fake)},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f'Python {version}' in result.stderr and 'not supported' in result.stderr
    assert 'PYTHON=' in result.stderr  # says how to fix it


def test_setup_py_and_setup_env_agree_on_the_oldest_python():
    """pip's python_requires and the setup's accepted versions name the same oldest Python."""
    accepted = re.search(r'^ +(3\.\d+(?:\|3\.\d+)*)\) ;;$', SETUP.read_text(), re.M).group(1).split('|')
    oldest = min(accepted, key=lambda v: tuple(map(int, v.split('.'))))
    assert f"python_requires='>={oldest}'" in (ROOT / 'setup.py').read_text()


@pytest.mark.parametrize('version', ['3.10', '3.11', '3.12'])
def test_setup_names_missing_compiler(tmp_path, version):
    fake = _fake_python(tmp_path, version)  # a supported version: the setup gets to the compiler
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('dirname', 'bash', 'cat', 'head', 'grep'):
        path = shutil.which(tool)
        if path:
            (bin_dir / tool).symlink_to(path)
    result = subprocess.run([shutil.which('bash'), str(SETUP)],
                            env={'PATH': str(bin_dir), 'PYTHON': str(fake), 'HOME': str(tmp_path)},
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert 'no C++ compiler' in result.stderr and 'g++' in result.stderr


def test_setup_names_a_python_that_is_not_there_or_does_not_run(tmp_path):
    for python, message in (
            ('/nonexistent/python3.11', 'PYTHON=/nonexistent/python3.11: no such interpreter'),
            ('false', "false does not run (try 'false --version'); set PYTHON=/path/to/python3.11")):
        result = subprocess.run(['bash', str(SETUP)], env={**os.environ, 'PYTHON': python},
                                capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr == f'[setup] ERROR: {message}\n'


def test_setup_refuses_a_venv_of_another_python_than_the_one_named():
    # It took the wheel cache key from PYTHON and installed a wheel the venv could not use.
    venv_version = '%d.%d' % sys.version_info[:2]  # the tests run in the venv's Python
    other = next(v for v in ('3.10', '3.11', '3.12') if v != venv_version)
    with tempfile.TemporaryDirectory() as folder:
        fake = _fake_python(Path(folder), other)
        result = subprocess.run(['bash', str(SETUP)], env={**os.environ, 'PYTHON': str(fake)},
                                capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == (f'[setup] ERROR: {ROOT}/.venv is Python {venv_version}, PYTHON '
                                     f'is Python {other}: delete {ROOT}/.venv to build it again '
                                     'with PYTHON')


def test_setup_recreates_a_venv_whose_python_is_gone(tmp_path):
    # The interpreter a venv was made from removed (or a setup killed mid-way): every rerun failed
    # the same way, naming the venv module.
    checkout = tmp_path / 'checkout'
    (checkout / 'scripts').mkdir(parents=True)
    for name in ('setup_env.sh', '_build_common.sh'):
        shutil.copy(ROOT / 'scripts' / name, checkout / 'scripts' / name)
    (checkout / '.venv' / 'bin').mkdir(parents=True)
    (checkout / '.venv' / 'bin' / 'python').symlink_to(tmp_path / 'removed' / 'python3.11')
    fake = _fake_python(tmp_path, '3.11')  # its "venv" creates nothing
    result = subprocess.run(['bash', str(checkout / 'scripts' / 'setup_env.sh')],
                            env={**os.environ, 'PYTHON': str(fake)}, capture_output=True, text=True)
    assert result.returncode == 1
    assert f'[setup] recreating {checkout}/.venv: its Python does not run or has no pip' in result.stderr
    assert f'{checkout}/.venv has no working pip' in result.stderr


def test_setup_beside_needs_a_command():
    result = subprocess.run(['bash', str(SETUP), '--beside'], capture_output=True, text=True)
    assert result.returncode != 0 and '--beside needs a command' in result.stderr


@pytest.mark.slow
def test_setup_runs_a_command_beside_it_in_the_venv_and_fails_with_it(tmp_path):
    """--beside CMD runs CMD with the venv's python first on PATH; the setup fails if CMD does."""
    marker = tmp_path / 'prefix.txt'
    command = f'python -c "import sys; print(sys.prefix)" > {marker}'
    ok = subprocess.run(['bash', str(SETUP), '--beside', 'sh', '-c', command],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert Path(marker.read_text().strip()) == ROOT / '.venv'
    failed = subprocess.run(['bash', str(SETUP), '--beside', 'sh', '-c', 'exit 3'],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert 'the command run beside the setup failed (exit status 3): sh -c exit 3' in failed.stderr
    assert 'ready' not in failed.stderr


@pytest.mark.slow
def test_setup_second_run_reuses_everything():
    """With .venv in place the setup installs and builds nothing."""
    result = subprocess.run(['bash', str(SETUP)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Its one line: no install, build, cached-wheel reinstall or venv (re)creation announced.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(r'\[setup\] ready: .*/\.venv', lines[0]), result.stderr
