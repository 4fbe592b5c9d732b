"""Timing honesty: injected delays land in the right clock, and data + compute + other = epoch."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainbench.engine import StepContext, train_epoch

D = 0.01  # seconds slept per item / per forward


class SleepyData(Dataset):
    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return torch.randn(3, 8, 8), i % 10


class SlowModel(nn.Module):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        time.sleep(self.delay)
        return self.fc(x.flatten(1))


def _ctx(model: nn.Module) -> StepContext:
    return StepContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), device=torch.device("cpu"))


def _train(model, loader, on_batch=None):
    """train_epoch, keeping every batch record it reports."""
    recs = []

    def record(r, s):
        recs.append(r)
        if on_batch is not None:
            on_batch(r, s)

    return train_epoch(_ctx(model), loader, 0, on_batch=record), recs


def _check_sums(stats, recs):
    assert stats.data_time_s + stats.compute_time_s + stats.other_time_s == pytest.approx(stats.epoch_time_s, rel=1e-9)
    assert stats.other_time_s >= 0
    assert len(recs) == stats.batches
    assert sum(r.data_time_s for r in recs) == pytest.approx(stats.data_time_s, rel=1e-9)
    assert sum(r.compute_time_s for r in recs) == pytest.approx(stats.compute_time_s, rel=1e-9)


def test_slow_dataset_shows_up_in_data_time_not_compute():
    n, bs = 40, 8
    loader = DataLoader(SleepyData(n, D), batch_size=bs)
    stats, recs = _train(SlowModel(0.0), loader)
    assert stats.data_time_s >= n * D  # every sleep was a wait for data
    assert stats.compute_time_s < 0.5 * n * D
    assert sum(r.data_time_s for r in recs) == pytest.approx(stats.data_time_s, rel=1e-9)
    assert stats.batches == n // bs and stats.samples == n
    _check_sums(stats, recs)


def test_slow_model_shows_up_in_compute_time_not_data():
    n, bs = 40, 8
    loader = DataLoader(SleepyData(n, 0.0), batch_size=bs)
    stats, recs = _train(SlowModel(5 * D), loader)
    assert stats.compute_time_s >= (n // bs) * 5 * D
    assert stats.data_time_s < (n // bs) * 5 * D * 0.5
    _check_sums(stats, recs)


def test_slow_bookkeeping_shows_up_in_other_time():
    n, bs = 40, 8
    loader = DataLoader(SleepyData(n, 0.0), batch_size=bs)
    stats, recs = _train(SlowModel(0.0), loader, on_batch=lambda r, s: time.sleep(3 * D))
    assert stats.other_time_s >= (n // bs) * 3 * D
    assert stats.data_time_s + stats.compute_time_s < (n // bs) * 3 * D
    _check_sums(stats, recs)


def test_worker_loader_times_add_up():
    loader = DataLoader(SleepyData(32, D), batch_size=8, num_workers=2)
    stats, recs = _train(SlowModel(D), loader)
    _check_sums(stats, recs)
    assert stats.compute_time_s >= 4 * D
