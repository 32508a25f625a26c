"""Fixtures shared by the tools tests (helpers live in tools_testlib.py)."""
import pytest

from tools_testlib import write_tiny_config


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory):
    """8 train + 4 val images of 64x64, generated once per session."""
    from mmdet_custom.datasets.synthetic_shapes import generate
    out = tmp_path_factory.mktemp('shapes')
    generate(str(out), num_train=8, num_val=4, size=64, seed=0)
    return str(out)


@pytest.fixture
def tiny_config(tmp_path, tiny_shapes):
    return write_tiny_config(tmp_path / 'tiny_shapes.py', tiny_shapes)
