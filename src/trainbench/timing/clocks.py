"""How a reading is taken. The epoch loop (timing/epoch.py) takes either clock.

On CUDA every mark is an event recorded on the stream (never a sync): a timing=sync run settles (synchronizes)
once per step, at the step's end, as the lab's loop does, and reads that step's events; timing=events settles
once per epoch. So the phase marks never add a sync, and the only difference between the modes is the per-step
sync the lab's loop has. Elsewhere (CPU, MPS) the host clock is read after a device sync (free on a CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..device import synchronize


class SyncClock:
    """Exact per-step split: the device is synchronized before every reading (a stall per step on a GPU).

    A mark is a number of seconds (perf_counter); span(a, b) = b - a."""

    per_step = True  # spans can be read as soon as they are marked

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> float:
        synchronize(self.device)  # note: CPU-GPU sync point; the reading must include the queued kernels
        return time.perf_counter()

    def span(self, a: float, b: float) -> float:
        return b - a

    def settle(self) -> None:
        """Make every mark readable (each was read synchronously; this only drains what was queued after)."""
        synchronize(self.device)


class EventClock:
    """CUDA events: a mark is an event recorded on the stream; spans are readable after settle()'s one sync.

    per_step=True (timing=sync): the loop settles after every step (the lab's one sync per step); False
    (timing=events): once per epoch. An event's timestamp follows the device's timeline: recorded while the
    device is idle it completes at once (the clock goes on with the wall clock), while busy when the work queued
    before it ends. make_event and sync are injectable, so that the clocks run on a simulated device in the tests."""

    def __init__(
        self,
        device: torch.device,
        make_event: Callable[[], Any] | None = None,
        sync: Callable[[], None] | None = None,
        per_step: bool = False,
    ) -> None:
        self.device, self.per_step = device, per_step
        self.make_event = make_event or (lambda: torch.cuda.Event(enable_timing=True))
        self.sync = sync or (lambda: torch.cuda.synchronize(device))

    def mark(self) -> Any:
        ev = self.make_event()
        ev.record()  # queued: no sync
        return ev

    def span(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1e3  # ms -> s

    def settle(self) -> None:
        self.sync()  # note: the CPU-GPU sync point: once per step (timing=sync) or once per epoch (timing=events)


def make_clock(timing: str, device: torch.device) -> SyncClock | EventClock:
    """CUDA: events, settled per step (timing=sync) or per epoch (timing=events); elsewhere the sync clock."""
    if device.type == "cuda":
        return EventClock(device, per_step=timing != "events")
    return SyncClock(device)
