"""The timed training epoch (lab part C2) and the untimed evaluation.

Three clocks run independently over one epoch:
  data    = time waiting for the next batch (excludes the host-to-device copy),
  compute = copy + forward + loss + backward + optimizer step, device synchronized before the clock is read,
  epoch   = the whole epoch, start to end, read on its own.
other = epoch - data - compute is everything else (metrics, CSV rows, progress bar, loader start-up
that is not a wait, Python overhead): it is reported, never hidden.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .device import synchronize


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, step: int, loss: float) -> None:
        self.epoch, self.batch, self.step, self.loss = epoch, batch, step, loss
        super().__init__(f"training diverged: loss={loss} at epoch {epoch}, batch {batch} (step {step})")


class LoaderDied(RuntimeError):
    """A DataLoader worker process ended abnormally."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM/SIGINT); the run stopped at a safe point."""


@dataclass
class BatchRecord:
    epoch: int
    batch: int
    step: int
    size: int
    loss: float
    acc: float
    data_time_s: float
    compute_time_s: float


@dataclass
class EpochStats:
    epoch: int
    batches: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    data_time_s: float = 0.0
    compute_time_s: float = 0.0
    epoch_time_s: float = 0.0

    def add(self, rec: BatchRecord, correct: int) -> None:
        """Count one finished batch into the epoch's totals."""
        self.batches += 1
        self.samples += rec.size
        self.loss_sum += rec.loss * rec.size
        self.correct += correct
        self.data_time_s += rec.data_time_s
        self.compute_time_s += rec.compute_time_s

    @property
    def other_time_s(self) -> float:
        """Epoch time not spent waiting for data or computing (>= 0 up to float rounding)."""
        return max(0.0, self.epoch_time_s - self.data_time_s - self.compute_time_s)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)

    @property
    def acc(self) -> float:
        return self.correct / max(1, self.samples)


@dataclass
class StepContext:
    """What one optimization step needs besides the batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    autocast_dtype: torch.dtype | None = None
    scaler: Any | None = None  # torch.amp.GradScaler for fp16
    channels_last: bool = False
    nan_at_step: int | None = None  # fault injection

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        non_blocking = self.device.type == "cuda"  # pinned host memory makes this copy asynchronous
        return x.to(self.device, non_blocking=non_blocking, memory_format=fmt), y.to(
            self.device, non_blocking=non_blocking
        )

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step; returns (loss, logits), still on the device (nothing is read back here)."""
        x, y = self.to_device(x, y)
        with self.autocast():
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        if self.nan_at_step is not None and global_step == self.nan_at_step:
            loss = loss * float("nan")  # injected fault: the divergence check must catch it
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach(), logits.detach()


def train_epoch(
    ctx: StepContext,
    loader: Iterable,
    epoch: int,
    *,
    first_step: int = 0,
    on_batch: Callable[[BatchRecord, EpochStats], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    timing: str = "sync",
) -> EpochStats:
    """Train one epoch with the three independent clocks; timing='events' uses CUDA events (CUDA only)."""
    try:
        if timing == "events" and ctx.device.type == "cuda":
            return _train_epoch_events(ctx, loader, epoch, first_step, on_batch, stop_requested)
        return _train_epoch_sync(ctx, loader, epoch, first_step, on_batch, stop_requested)
    except Exception as e:
        # Free the finished frames' locals now, so that the DataLoader iterator shuts its workers down
        # (and stops watching SIGCHLD) at once, not whenever this traceback is collected.
        traceback.clear_frames(e.__traceback__)
        if isinstance(e, RuntimeError) and not isinstance(e, LoaderDied) and "DataLoader worker" in str(e):
            # torch's SIGCHLD handler raises wherever the main process happens to be (often mid-step)
            raise _loader_died(e) from e
        raise


def _loader_died(e: BaseException) -> LoaderDied:
    return LoaderDied(
        f"a DataLoader worker process died ({type(e).__name__}: {e}); this is often out of memory or a "
        "crash in the dataset: run with workers=0 to see the error in the main process"
    )


def _next_batch(it):
    """next(it), with a worker that died while handing over a batch turned into one clear error."""
    try:
        return next(it)
    except (ConnectionError, EOFError) as e:
        # A worker killed mid-hand-over (shared-memory fd passing) shows up as a reset or refused
        # connection; torch's "DataLoader worker ... killed" RuntimeError is handled in train_epoch.
        raise _loader_died(e) from e


def _train_epoch_sync(ctx, loader, epoch, first_step, on_batch, stop_requested) -> EpochStats:
    """Exact per-step split: the device is synchronized around every step."""
    ctx.model.train()
    stats = EpochStats(epoch)
    dev = ctx.device
    synchronize(dev)  # nothing queued from before may leak into this epoch
    epoch_start = time.perf_counter()
    it = None
    batch = 0
    while True:
        # The device is idle here (the last step ended with a sync), so this clock needs no sync.
        t0 = time.perf_counter()
        if it is None:
            it = iter(loader)  # worker start-up happens here: it is part of the first batch's data wait
        try:
            x, y = _next_batch(it)
        except StopIteration:
            break
        synchronize(dev)  # note: sync point; the device loader's augmentation is data time, not compute
        t1 = time.perf_counter()
        step = first_step + batch
        loss_t, logits = ctx.step(x, y, step)
        synchronize(dev)  # note: CPU-GPU sync point; compute time must include the queued kernels
        t2 = time.perf_counter()
        # --- bookkeeping: counted in other time ---
        loss = loss_t.item()
        if not math.isfinite(loss):
            raise Diverged(epoch, batch, step, loss)
        n = int(y.shape[0])
        correct = int((logits.argmax(1) == y.to(logits.device)).sum().item())
        rec = BatchRecord(epoch, batch, step, n, loss, correct / n, t1 - t0, t2 - t1)
        stats.add(rec, correct)
        if on_batch is not None:
            on_batch(rec, stats)
        batch += 1
        if stop_requested():
            raise Interrupted(f"stop requested during epoch {epoch} after batch {batch - 1}")
    synchronize(dev)
    stats.epoch_time_s = time.perf_counter() - epoch_start
    return stats


def _train_epoch_events(ctx, loader, epoch, first_step, on_batch, stop_requested) -> EpochStats:
    """CUDA-event timing: no per-step sync, so the loader overlaps compute; events are read once per epoch.

    Data time is the host's wait for the next batch; compute time is GPU time between events around each
    step. With overlap the two can add up to more than the epoch, so other time is floored at zero.
    Divergence is detected at the end of the epoch (reading the loss every step would be a sync).
    """
    ctx.model.train()
    stats = EpochStats(epoch)
    torch.cuda.synchronize(ctx.device)
    epoch_start = time.perf_counter()
    pending = []
    it = None
    batch = 0
    while True:
        t0 = time.perf_counter()
        if it is None:
            it = iter(loader)  # worker start-up: part of the first batch's data wait
        try:
            x, y = _next_batch(it)
        except StopIteration:
            break
        data_s = time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss_t, logits = ctx.step(x, y, first_step + batch)
        correct_t = (logits.argmax(1) == y.to(logits.device, non_blocking=True)).sum()
        end.record()
        pending.append((batch, int(y.shape[0]), data_s, start, end, loss_t, correct_t))
        batch += 1
        if stop_requested():
            break
    torch.cuda.synchronize(ctx.device)  # note: the one sync of the epoch
    stats.epoch_time_s = time.perf_counter() - epoch_start
    for b, n, data_s, start, end, loss_t, correct_t in pending:
        loss, correct = float(loss_t), int(correct_t)
        if not math.isfinite(loss):
            raise Diverged(epoch, b, first_step + b, loss)
        rec = BatchRecord(epoch, b, first_step + b, n, loss, correct / n, data_s, start.elapsed_time(end) / 1e3)
        stats.add(rec, correct)
        if on_batch is not None:
            on_batch(rec, stats)
    if stop_requested():
        raise Interrupted(f"stop requested during epoch {epoch}")
    return stats


@torch.no_grad()
def evaluate(ctx: StepContext, loader: Iterable) -> tuple[float, float]:
    """Average loss and top-1 accuracy over loader, in eval mode; not part of any timed region."""
    ctx.model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = ctx.to_device(x, y)
        with ctx.autocast():
            logits = ctx.model(x)
            loss_sum += float(ctx.loss_fn(logits.float(), y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    ctx.model.train()
    return loss_sum / max(1, n), correct / max(1, n)
