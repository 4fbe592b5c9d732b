"""profile=true: torch.profiler over a few steps of one epoch -> profile/trace.json and profile/ops.csv.

The profiled steps run slower (the profiler records every operator): they are marked in batches.csv
(`profiled`) and counted in epochs.csv (`profiled_steps`), and the report flags the epochs that hold them.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

log = logging.getLogger("trainbench")

OPS_COLUMNS = ["name", "category", "calls", "self_time_s", "share"]

# First match wins; patterns are searched in the lower-cased operator name.
CATEGORIES: list[tuple[str, str]] = [
    ("data loading", r"dataloader"),
    ("communication", r"allreduce|all_reduce|nccl|gloo|c10d|broadcast|allgather"),
    ("optimizer", r"optimizer|_foreach|\bsgd\b|adam|adagrad|adadelta|zero_grad|lerp|addcdiv|addcmul"),
    ("convolution", r"conv|cudnn_convolution|mkldnn_convolution"),
    ("batch norm", r"batch_norm|batchnorm"),
    ("activation", r"relu|threshold|clamp_min"),
    ("pooling", r"pool"),
    ("linear", r"addmm|\bmm\b|aten::mm|linear|matmul|\bbmm\b|gemm"),
    ("loss", r"cross_entropy|nll_loss|log_softmax|softmax"),
    ("copy", r"copy|memcpy|\bto\b|_to_copy|contiguous|clone|pin_memory"),
]


def category(name: str) -> str:
    """The operator category for the ops table (convolution, batch norm, ..., other)."""
    n = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, n):
            return cat
    return "other"


def ops_rows(events: Any, device_type: str) -> list[dict[str, Any]]:
    """Operators by self time (device time on CUDA, CPU time elsewhere), with their share of the total."""
    rows = []
    for e in events:
        if e.key.startswith("ProfilerStep"):
            continue  # the schedule's own step annotations, not operators
        us = e.self_device_time_total if device_type == "cuda" else e.self_cpu_time_total
        if us > 0:
            rows.append({"name": e.key, "category": category(e.key), "calls": e.count, "self_time_s": us / 1e6})
    total = sum(r["self_time_s"] for r in rows)
    for r in rows:
        r["share"] = r["self_time_s"] / total if total else 0.0
    return sorted(rows, key=lambda r: -r["self_time_s"])


class EpochProfiler:
    """torch.profiler over the steps wait <= batch < wait + warmup + active of one epoch.

    step() is called after each training step (in the epoch's bookkeeping, i.e. in other time); the trace is
    written when the active steps end, or at exit if the epoch was shorter than the schedule."""

    def __init__(
        self, out_dir: Path, device: torch.device, wait: int, warmup: int, active: int, record_shapes: bool = False
    ) -> None:
        self.out_dir, self.device = out_dir, device
        self.wait, self.warmup, self.active = wait, warmup, active
        self.written = False
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.prof = profile(
            activities=acts,
            schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._write,
            record_shapes=record_shapes,
        )

    def profiled(self, batch: int) -> bool:
        """Whether the profiler was running during this batch's step (traced: warm-up or active)."""
        return self.wait <= batch < self.wait + self.warmup + self.active

    def step(self, batch: int) -> None:
        self.prof.step()

    def _write(self, prof: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        rows = ops_rows(prof.key_averages(), self.device.type)
        with open(self.out_dir / "ops.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, OPS_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        self.written = True

    def __enter__(self) -> EpochProfiler:
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.prof.__exit__(*exc)
        if not self.written and exc[0] is None:
            log.warning(
                "profile=true: the epoch ended before the profiler's schedule (profiler.wait=%d + warmup=%d "
                "+ active=%d steps) recorded anything; no trace written",
                self.wait,
                self.warmup,
                self.active,
            )


def for_epoch(
    cfg: Any, epoch: int, run_dir: Path, device: torch.device, rank: int | None = None
) -> EpochProfiler | None:
    """profile=true: the profiler for epoch profiler.epoch (None for every other epoch, and with profile=false).

    With several ranks each writes its own profile/rank{r}/trace.json and ops.csv (rank=None: profile/)."""
    pc = cfg.profiler
    if not cfg.profile or epoch != pc.epoch:
        return None
    log.info(
        "profile=true: profiling epoch %d (profiler.epoch=%d), steps %d..%d traced (profiler.wait=%d, "
        "warmup=%d, active=%d); they run slower and are marked profiled in batches.csv",
        epoch + 1,
        pc.epoch,
        pc.wait,
        pc.wait + pc.warmup + pc.active - 1,
        pc.wait,
        pc.warmup,
        pc.active,
    )
    out = run_dir / "profile" / (f"rank{rank}" if rank is not None else "")
    return EpochProfiler(out, device, pc.wait, pc.warmup, pc.active, pc.record_shapes)
