"""tools/original_dcnv3_core.py: the original InternImage kernel as a backbone core_op."""
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')
from mmcv import Config  # noqa: E402
from mmdet.models import build_detector  # noqa: E402

from mmdet_custom.models.backbones.intern_image import CORE_OPS  # noqa: E402
from ops_dcnv3.modules import DCNv3  # noqa: E402
from tools_testlib import QUICKSTART_CONFIG, ROOT, load_script  # noqa: E402

# The original's code, as the GPU check copies it into .device/ (or beside the checkout).
ORIGINAL_DIRS = [Path(ROOT) / '.device' / 'original_dcnv3',
                 Path(ROOT).parent / 'shared' / 'anchors' / 'original_dcnv3']


core = load_script('tools/original_dcnv3_core.py', 'original_dcnv3_core')


def test_registers_a_core_op_with_the_compiled_modules_parameters():
    assert CORE_OPS[core.CORE_OP_NAME] is core.DCNv3Original
    ours, original = DCNv3(channels=32, group=2), core.DCNv3Original(channels=32, group=2)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in original.state_dict().items()]


def test_detector_config_selects_it_by_name():
    cfg = Config.fromfile(QUICKSTART_CONFIG)
    cfg.model.backbone.core_op = core.CORE_OP_NAME
    model = build_detector(cfg.model)
    dcns = [m for m in model.backbone.modules() if isinstance(m, core.DCNv3Original)]
    assert len(dcns) == sum(cfg.model.backbone.depths)


def test_cpu_tensors_are_refused_naming_cuda():
    layer = core.DCNv3Original(channels=16, group=2)
    with pytest.raises(RuntimeError, match='runs on CUDA only'):
        layer(torch.randn(1, 5, 5, 16))


def test_missing_original_code_names_the_prepare_step(tmp_path, monkeypatch):
    monkeypatch.setenv('ORIGINAL_DCNV3_DIR', str(tmp_path))
    monkeypatch.setattr(core, '_extension', None)
    with pytest.raises(FileNotFoundError, match=r'gpu_check\.sh --prepare'):
        core.original_extension()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_matches_our_module_on_cuda(dtype, monkeypatch):
    """Same weights, same input: the original core and ours agree, forward and backward."""
    folder = next((d for d in ORIGINAL_DIRS if (d / 'load.py').is_file()), None)
    if folder is None:
        pytest.skip('no copy of the original DCNv3 code (run scripts/gpu_check.sh --prepare)')
    monkeypatch.setenv('ORIGINAL_DCNV3_DIR', str(folder))
    torch.manual_seed(0)
    ours = DCNv3(channels=64, group=4).cuda()
    with torch.no_grad():  # non-trivial offsets and masks (they start at zero)
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    original = core.DCNv3Original(channels=64, group=4).cuda()
    original.load_state_dict(ours.state_dict())
    ours, original = ours.to(dtype), original.to(dtype)
    x = torch.randn(2, 20, 24, 64, device='cuda', dtype=dtype)
    x_ours, x_original = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_original = ours(x_ours), original(x_original)
    grad = torch.randn_like(y_ours)
    y_ours.backward(grad)
    y_original.backward(grad)
    tol = 1e-4 if dtype == torch.float32 else 2e-2

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    assert rel(y_ours, y_original) < tol
    assert rel(x_ours.grad, x_original.grad) < tol
    assert rel(ours.offset.weight.grad, original.offset.weight.grad) < tol * 10
