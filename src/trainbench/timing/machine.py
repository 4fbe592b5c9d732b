"""What the machine gave a run during an epoch: its own CPU use, other processes' CPU use, the load average.

A busy machine distorts every clock (measured here: 2 OpenMP threads on 2 cores next to another process made a
width-8 step take 4.3 s instead of 0.03 s), so each epoch row records
  cpu_util    = CPU seconds of this rank's processes (itself and its DataLoader workers) / (wall s x torch threads),
  others_cpu  = CPU seconds of every other process on the machine / (wall s x cores): the share of the machine
                that something else used while the epoch ran (the run's own ranks are not "others"),
  load_avg    = the 1-minute load average at the epoch's end (lags by about a minute: a hint, not a measure).
The report marks a run busy from these (report/runs.py: busy_reasons).
"""

from __future__ import annotations

import os
import time

import psutil
import torch


def _tree_cpu(root: psutil.Process) -> float:
    """CPU seconds of root, its reaped children (finished DataLoader workers) and its live descendants."""
    try:
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in root.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def _machine_busy_cpu() -> float:
    """CPU seconds the whole machine spent outside idle and iowait since boot."""
    t = psutil.cpu_times()
    return sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))


class LoadMeter:
    """Brackets an epoch: start() before its clock starts, stop() after it stops (both outside every clock)."""

    def __init__(self, whole_run_root: bool = False) -> None:
        self.me = psutil.Process(os.getpid())
        # with several ranks, the run is the launcher's process and all its descendants (every rank, every worker)
        self.run = psutil.Process(os.getppid()) if whole_run_root else self.me
        self.cores = psutil.cpu_count() or 1

    def __enter__(self) -> LoadMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.figures = self.stop()

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.own0, self.all0 = _tree_cpu(self.me), _machine_busy_cpu()
        self.run0 = self.own0 if self.run is self.me else _tree_cpu(self.run)

    def stop(self) -> dict[str, float]:
        """cpu_util, others_cpu and load_avg of the bracketed span."""
        wall = max(time.perf_counter() - self.t0, 1e-9)
        own_now = _tree_cpu(self.me)
        run_now = own_now if self.run is self.me else _tree_cpu(self.run)
        own = own_now - self.own0
        others = (_machine_busy_cpu() - self.all0) - (run_now - self.run0)
        return {
            "cpu_util": own / (wall * max(1, torch.get_num_threads())),
            "others_cpu": max(0.0, others) / (wall * self.cores),
            "load_avg": os.getloadavg()[0],
        }
