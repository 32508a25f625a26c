"""Fixtures shared by the tools tests (helpers live in tools_testlib.py)."""
import os.path as osp
import sys

import pytest

from tools_testlib import ROOT, write_tiny_config

sys.path.insert(0, osp.join(ROOT, 'tools'))
import _bootstrap  # noqa: E402


@pytest.fixture(autouse=True)
def keep_pytest_malloc_settings(monkeypatch):
    """Tools called in process would set the pytest process's malloc to keep all freed memory
    (``_bootstrap.reuse_freed_memory``) for the rest of the session; test_bootstrap.py checks that
    setting in processes of its own."""
    monkeypatch.setattr(_bootstrap, 'reuse_freed_memory', lambda: False)


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
