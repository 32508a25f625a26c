"""Fixtures for the whole suite."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
import _bootstrap  # noqa: E402


@pytest.fixture(autouse=True)
def keep_pytest_malloc_settings(monkeypatch):
    """Tools called in process would set the pytest process's malloc to keep all freed memory
    (``_bootstrap.reuse_freed_memory``) for the rest of the session; tests/tools/test_bootstrap.py
    checks that setting in processes of its own."""
    monkeypatch.setattr(_bootstrap, 'reuse_freed_memory', lambda: False)
