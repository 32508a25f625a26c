"""SyncFreeTextLoggerHook: mmcv's peak-memory figure, read without a GPU tensor in one process."""
import types

import pytest
import torch

pytest.importorskip('mmcv')
from mmcv.runner import TextLoggerHook  # noqa: E402

from mmdet_custom.core.hooks import SyncFreeTextLoggerHook  # noqa: E402

# 300 MiB and a bit: 300 in mmcv's unit (MiB), 314 in MB, so the unit shows.
PEAK_BYTES = 300 * 1024 * 1024 + 123


def _runner(world_size):
    return types.SimpleNamespace(world_size=world_size,
                                 model=types.SimpleNamespace(output_device=None))


@pytest.fixture
def peak_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda device=None: PEAK_BYTES)


def test_one_process_reads_the_allocator_as_mmcv_reports_it(peak_memory, monkeypatch):
    expected = TextLoggerHook()._get_max_memory(_runner(1))  # (a CPU tensor here: no GPU)
    assert expected == 300

    def through_a_tensor(self, runner):
        raise AssertionError('mmcv\'s path, which reads a GPU tensor back, was taken')
    monkeypatch.setattr(TextLoggerHook, '_get_max_memory', through_a_tensor)
    assert SyncFreeTextLoggerHook()._get_max_memory(_runner(1)) == expected


def test_several_processes_keep_mmcvs_maximum_over_them(peak_memory, monkeypatch):
    calls = []
    monkeypatch.setattr(TextLoggerHook, '_get_max_memory',
                        lambda self, runner: calls.append(runner.world_size) or 7)
    assert SyncFreeTextLoggerHook()._get_max_memory(_runner(2)) == 7 and calls == [2]
