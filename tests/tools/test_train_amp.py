"""Mixed-precision training: ``tools/train.py --amp`` and the config's ``fp16`` / ``bf16``."""
import json
import math
import os.path as osp
import re

import pytest
import torch

pytest.importorskip('mmdet')
from mmcv import Config  # noqa: E402

from mmdet_custom.apis import check_mixed_precision, set_mixed_precision  # noqa: E402
from tools_testlib import PYTHON, ROOT, run_tool, write_tiny_config  # noqa: E402

TRAIN_TOOL = osp.join(ROOT, 'tools', 'train.py')

# Wraps every DCNv3 module's core call during training and records the dtypes it saw, then
# the parameters' dtypes at the end, into work_dir/dtypes.json.
DTYPE_PROBE = '''
import json
import os.path as osp

from mmcv.runner import HOOKS, Hook

from ops_dcnv3.modules.dcnv3 import _DCNv3Base


@HOOKS.register_module()
class DCNv3DtypeProbeHook(Hook):
    def before_run(self, runner):
        self.seen = set()
        for module in runner.model.modules():
            if isinstance(module, _DCNv3Base):
                module._sample = self._probe(module._sample)

    def _probe(self, sample):
        def probed(values, offset, mask):
            output = sample(values, offset, mask)
            self.seen.add(f'{values.dtype}/{offset.dtype}/{mask.dtype}->{output.dtype}')
            return output
        return probed

    def after_run(self, runner):
        with open(osp.join(runner.work_dir, 'dtypes.json'), 'w') as f:
            json.dump(dict(core=sorted(self.seen),
                           params=sorted({str(p.dtype) for p in runner.model.parameters()})), f)
'''


def _cfg(device, **settings):
    return Config(dict(device=device, **settings))


def test_config_fp16_on_cpu_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r'needs a CUDA GPU.*--amp bfloat16'):
        check_mixed_precision(_cfg('cpu', fp16=dict(loss_scale=512.)))


def test_fp16_and_bf16_together_are_refused():
    with pytest.raises(ValueError, match='both fp16 and bf16'):
        check_mixed_precision(_cfg('cuda', fp16=dict(loss_scale='dynamic'), bf16=dict()))


def test_bf16_takes_no_loss_scale():
    with pytest.raises(ValueError, match='bf16 takes no options'):
        check_mixed_precision(_cfg('cpu', bf16=dict(loss_scale=512.)))


def test_fp16_takes_a_plain_optimizer_hooks_settings():
    # A type in optimizer_config reached the float16 hook's constructor: a TypeError after the
    # model and data were built. OptimizerHook, named or not, is what it stands in for.
    from mmdet_custom.apis.train import _optimizer_hook_config
    for named in ({}, dict(type='OptimizerHook')):
        cfg = _cfg('cuda', fp16=dict(loss_scale='dynamic'),
                   optimizer_config=dict(grad_clip=dict(max_norm=1.0), **named))
        assert check_mixed_precision(cfg) == 'float16'
        assert _optimizer_hook_config(cfg, distributed=False).grad_clip == dict(max_norm=1.0)
    cfg = _cfg('cuda', fp16=dict(loss_scale='dynamic'),
               optimizer_config=dict(type='GradientCumulativeOptimizerHook', cumulative_iters=2))
    with pytest.raises(ValueError, match=r"optimizer_config names "
                                         r"type='GradientCumulativeOptimizerHook', which it cannot "
                                         r"stand in for"):
        check_mixed_precision(cfg)


def test_fp16_loss_scale_is_checked_before_training():
    # mmcv's hook took a static scale only as a float, so 512 (an int, as --cfg-options
    # fp16.loss_scale=512 parses it) stopped training with a traceback once the model and data
    # were built; it is a scale of 512.0 now.
    from mmdet_custom.apis.train import _optimizer_hook_config
    cfg = _cfg('cuda', fp16=dict(loss_scale=512), optimizer_config=dict(grad_clip=None))
    assert check_mixed_precision(cfg) == 'float16'
    with pytest.warns(UserWarning):  # GradScaler disables itself without CUDA
        hook = _optimizer_hook_config(cfg, distributed=False)
    assert type(hook._scale_update_param) is float and hook._scale_update_param == 512.0
    for wrong in ('static', 0, -512, float('inf'), True, [512]):
        with pytest.raises(ValueError, match=r"fp16.loss_scale must be 'dynamic', a static scale "
                                             r"\(a positive number\) or a dict of GradScaler's "
                                             r"arguments, got " + re.escape(repr(wrong))):
            check_mixed_precision(_cfg('cuda', fp16=dict(loss_scale=wrong)))
    with pytest.raises(ValueError, match=r"fp16.loss_scale: init not among GradScaler's arguments "
                                         r"\(init_scale, growth_factor, backoff_factor, "
                                         r"growth_interval, enabled\)"):
        check_mixed_precision(_cfg('cuda', fp16=dict(loss_scale=dict(init=512.))))
    with pytest.raises(ValueError, match=r"fp16 takes loss_scale only \(the optimizer hook's "
                                         r"other settings go in optimizer_config\), got grad_clip"):
        check_mixed_precision(_cfg('cuda', fp16=dict(loss_scale=512., grad_clip=None)))


def test_amp_auto_is_bfloat16_on_cpu():
    cfg = _cfg('cpu')
    assert set_mixed_precision(cfg) == 'bfloat16'
    assert cfg.bf16 == {} and 'fp16' not in cfg


def test_amp_auto_is_float16_with_dynamic_loss_scaling_on_a_gpu():
    # Decided from the config's device, so it is checked without a GPU.
    cfg = _cfg('cuda')
    assert set_mixed_precision(cfg) == 'float16'
    assert cfg.fp16 == dict(loss_scale='dynamic') and 'bf16' not in cfg


def test_amp_float16_keeps_the_configs_loss_scale_and_drops_bf16(monkeypatch):
    cfg = _cfg('cuda', fp16=dict(loss_scale=dict(init_scale=512)), bf16=dict())
    assert set_mixed_precision(cfg, 'float16') == 'float16'
    assert cfg.fp16 == dict(loss_scale=dict(init_scale=512)) and 'bf16' not in cfg
    cfg = _cfg('cuda')
    assert set_mixed_precision(cfg, 'float16') == 'float16'
    assert cfg.fp16 == dict(loss_scale='dynamic')


def test_amp_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match='must be one of'):
        set_mixed_precision(_cfg('cpu'), 'float8')


def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(monkeypatch):
    # A T4 (compute capability 7.5) can hold bfloat16 tensors, so torch's default check says
    # yes; its bfloat16 arithmetic is emulated.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda device: type('Properties', (), dict(major=7, minor=5))())
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla T4')
    monkeypatch.setattr(torch.cuda, '_check_bf16_tensor_supported', lambda device: True)
    monkeypatch.setattr(torch.version, 'hip', None)
    with pytest.raises(ValueError, match=r'this GPU \(Tesla T4\) does not support bfloat16; '
                                         r'use float16 mixed precision \(--amp float16\)'):
        check_mixed_precision(_cfg('cuda', bf16=dict()))
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda device: type('Properties', (), dict(major=9, minor=0))())
    assert check_mixed_precision(_cfg('cuda', bf16=dict())) == 'bfloat16'


def test_no_mixed_precision_is_float32():
    assert check_mixed_precision(_cfg('cpu')) is None


@pytest.mark.slow
@pytest.mark.parametrize('option', [['--amp', 'float16'], ['--cfg-options', 'fp16.loss_scale=512.']])
def test_train_tool_refuses_float16_on_cpu(tmp_path, tiny_shapes, option):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: float16 is allowed there')
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_shapes)
    result = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(tmp_path / 'work')] + option,
                      timeout=300)
    assert result.returncode == 1
    assert 'float16 mixed precision' in result.stderr and 'needs a CUDA GPU' in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_train_tool_amp_on_cpu_trains_dcnv3_in_bfloat16(tmp_path, tiny_shapes):
    """--amp alone on the CPU: bfloat16 autocast; the DCNv3 cores run in bfloat16 on bfloat16
    values, offsets and masks, the weights stay float32, and the losses stay finite."""
    (tmp_path / 'dtype_probe.py').write_text(DTYPE_PROBE)
    config = write_tiny_config(
        tmp_path / 'tiny.py', tiny_shapes,
        extra="custom_imports = dict(imports=['mmdet_custom', 'dtype_probe'])\n"
              "custom_hooks = [dict(type='DCNv3DtypeProbeHook')]\n")
    work = tmp_path / 'work'
    result = run_tool([PYTHON, TRAIN_TOOL, config, '--work-dir', str(work), '--seed', '0',
                       '--no-validate', '--amp'],
                      pythonpath=[tmp_path], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'mixed precision: bfloat16 autocast in the backbone' in result.stderr
    seen = json.loads((work / 'dtypes.json').read_text())
    assert seen['core'] == ['torch.bfloat16/torch.bfloat16/torch.bfloat16->torch.bfloat16']
    assert seen['params'] == ['torch.float32']
    logs = [json.loads(line) for line in next(work.glob('*.log.json')).read_text().splitlines()]
    losses = [entry['loss'] for entry in logs if entry.get('mode') == 'train']
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.mark.filterwarnings('ignore:.*GradScaler')  # mmcv's CUDA scaler, built without CUDA
def test_fp16_trains_through_the_hook_that_does_not_wait_for_the_gpu_each_iteration():
    from mmdet_custom.apis.train import _optimizer_hook_config
    from mmdet_custom.core.hooks import SyncFreeFp16OptimizerHook
    cfg = _cfg('cuda', fp16=dict(loss_scale='dynamic'), optimizer_config=dict(grad_clip=None))
    hook = _optimizer_hook_config(cfg, distributed=False)
    assert type(hook) is SyncFreeFp16OptimizerHook and hook.grad_clip is None
