"""How a reading is taken: the sync clock (synchronize the device, read the host clock) or CUDA events (record
on the stream, read once per epoch after its one sync). The epoch loop (engine.py) takes either."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .device import synchronize


class SyncClock:
    """Exact per-step split: the device is synchronized before every reading (a stall per step on a GPU).

    A mark is a number of seconds (perf_counter); span(a, b) = b - a."""

    per_step = True  # spans can be read as soon as they are marked

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> float:
        synchronize(self.device)  # note: CPU-GPU sync point; the reading must include the queued kernels
        return time.perf_counter()

    def host(self) -> float:
        """A host-side reading without a sync (the device is idle or its time is marked separately)."""
        return time.perf_counter()

    def span(self, a: float, b: float) -> float:
        return b - a

    def settle(self) -> None:
        """Make every mark readable (nothing to wait for: each was read synchronously)."""


class EventClock:
    """CUDA events: a mark is an event recorded on the stream; spans are read once per epoch, after one sync.

    make_event and sync are injectable so that the bookkeeping is testable with fake events on a CPU."""

    per_step = False  # spans are readable only after settle()

    def __init__(self, device: torch.device, make_event: Callable[[], Any] | None = None,
                 sync: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.device = device
        self.make_event = make_event or (lambda: torch.cuda.Event(enable_timing=True))
        self.sync = sync or (lambda: torch.cuda.synchronize(device))

    def mark(self) -> Any:
        ev = self.make_event()
        ev.record()  # queued: no sync
        return ev

    def host(self) -> float:
        return time.perf_counter()

    def span(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1e3  # ms -> s

    def settle(self) -> None:
        self.sync()  # note: the one CPU-GPU sync point of the epoch


def make_clock(timing: str, device: torch.device) -> SyncClock | EventClock:
    """The clock for timing (sync | events); events need CUDA, elsewhere the sync clock is used."""
    return EventClock(device) if timing == "events" and device.type == "cuda" else SyncClock(device)
