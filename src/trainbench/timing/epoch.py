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
from typing import Any, NamedTuple

import torch
from torch import nn

from ..device import synchronize
from ..figures import EpochStats, Record, batch_record
from .clocks import EventClock, SyncClock, make_clock


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, step: int, loss: float) -> None:
        self.epoch, self.batch, self.step, self.loss = epoch, batch, step, loss
        super().__init__(f"training diverged: loss={loss} at epoch {epoch}, batch {batch} (step {step})")


class LoaderDied(RuntimeError):
    """A DataLoader worker process ended abnormally."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM/SIGINT); the run stopped at a safe point."""


class StepResult(NamedTuple):
    """What one step leaves on the device: read back later, so that no step waits for the host."""

    loss: torch.Tensor
    logits: torch.Tensor
    y: torch.Tensor  # the labels on the device
    skipped: torch.Tensor | None  # fp16: True when the grad scaler skipped the optimizer step
    marks: tuple  # (after copy, after forward + loss, after backward) when phases are marked, else ()


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
    comm: Any | None = None  # data-parallel: the DDP communication clock (distributed.CommClock)

    @property
    def eval_model(self) -> nn.Module:
        """The model for evaluation: without the DDP wrapper (whose forward is a collective on every rank)."""
        return getattr(self.model, "module", self.model)

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

    def step(
        self, x: torch.Tensor, y: torch.Tensor, global_step: int, mark: Callable[[], Any] | None = None
    ) -> StepResult:
        """One training step; nothing is read back here. mark (a clock's mark) is called after the copy, after
        forward + loss and after backward, splitting compute into its phases; the caller marks the step's end."""
        marks: list[Any] = []

        def phase_end() -> None:  # sync clock: a sync point (the copy and the kernels may be asynchronous)
            if mark is not None:
                marks.append(mark())

        x, y = self.to_device(x, y)
        phase_end()  # copy
        with self.autocast():
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        if self.nan_at_step is not None and global_step == self.nan_at_step:
            loss = loss * float("nan")  # injected fault: the divergence check must catch it
        phase_end()  # forward + loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        phase_end()  # backward
        skipped = None
        if self.scaler is not None:
            # note: scaler.step reads found_inf back (.item()): fp16 has a CPU-GPU sync point in every step
            self.scaler.step(self.optimizer)
            # the step was skipped (inf/NaN gradients) iff found_inf is set; kept on the device, read at drain
            skipped = sum(v.float() for v in self.scaler._found_inf_per_device(self.optimizer).values()) > 0
            self.scaler.update()
        else:
            self.optimizer.step()
        # zero_grad after the step (not before backward): numerically the same, and it belongs to the
        # optimizer phase. Gradients are None between steps.
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss.detach(), logits.detach(), y, skipped, tuple(marks))


@dataclass
class _Pending:
    """A step whose figures are read back later (at once with the sync clock, at epoch end with events)."""

    batch: int
    step: int
    size: int
    marks: tuple  # (before next(), after next(), [after copy, after forward, after backward,] after the step)
    loss: torch.Tensor
    correct: torch.Tensor
    skipped: torch.Tensor | None
    comm: Any = (0.0, 0.0, 0, 0.0)  # (span, exposed, bytes, busy), or a PendingComm (nccl) resolved after settle


def train_epoch(
    ctx: StepContext,
    loader: Iterable,
    epoch: int,
    *,
    first_step: int = 0,
    on_batch: Callable[[Record, EpochStats], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    timing: str = "sync",
    clock: SyncClock | EventClock | None = None,
    phases: bool = True,
    after_step: Callable[[int], None] | None = None,
) -> EpochStats:
    """Train one epoch with the three independent clocks; timing='events' uses CUDA events (CUDA only).

    phases=True also splits compute into copy, forward (+ loss), backward and optimizer (zero_grad + step):
    with the sync clock that is three more device syncs per step (free on a CPU, a stall each on a GPU).
    after_step(batch) runs after each step's clocks stopped (the profiler's step): in other time."""
    try:
        return _train_epoch(
            ctx,
            loader,
            epoch,
            first_step,
            on_batch,
            stop_requested,
            clock or make_clock(timing, ctx.device),
            phases,
            after_step,
        )
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


def _train_epoch(
    ctx, loader, epoch, first_step, on_batch, stop_requested, clock, phases=True, after_step=None
) -> EpochStats:
    """One loop for both clocks.

    data    = waiting for next(loader) on the host (iter() included: worker start-up is the first batch's
              wait), plus, with events, the device time of what the loader queued (on-device augmentation);
    compute = copy + forward + loss + backward + optimizer step (and, with phases, each of them on its own);
    epoch   = its own host clock, from before iter() to after the last batch's bookkeeping.
    With the sync clock each step is read at once; with events, once at the end of the epoch (divergence
    is then found at the epoch's end too).
    """
    ctx.model.train()
    stats = EpochStats(epoch)
    synchronize(ctx.device)  # nothing queued from before may leak into this epoch
    epoch_start = time.perf_counter()
    pending: list[_Pending] = []
    it = None
    batch = 0
    while True:
        # per step (sync clock, timing=sync on CUDA) the device is idle here: the last step ended with a sync
        m0 = clock.mark()
        if it is None:
            it = iter(loader)  # worker start-up happens here: it is part of the first batch's data wait
        try:
            x, y = _next_batch(it)
        except StopIteration:
            break
        m1 = clock.mark()  # sync clock: sync point; events: ends after the loader's queued kernels (data time)
        step = first_step + batch
        r = ctx.step(x, y, step, mark=clock.mark if phases else None)
        m2 = clock.mark()  # sync clock: compute must include the queued kernels
        # --- bookkeeping: counted in other time (queued after m2 with events, so outside compute) ---
        correct_t = (r.logits.argmax(1) == r.y).sum()
        comm = ctx.comm.take() if ctx.comm is not None else (0.0, 0.0, 0, 0.0)  # the step's all-reduces, done by now
        pending.append(
            _Pending(batch, step, int(r.y.shape[0]), (m0, m1, *r.marks, m2), r.loss, correct_t, r.skipped, comm)
        )
        if after_step is not None:
            after_step(batch)
        if clock.per_step:
            clock.settle()  # note: the one CPU-GPU sync point of a step with timing=sync (the lab's)
            _drain(pending, stats, clock, epoch, on_batch)
        batch += 1
        if stop_requested():
            clock.settle()
            _drain(pending, stats, clock, epoch, on_batch)
            raise Interrupted(f"stop requested during epoch {epoch} after batch {batch - 1}")
    if not clock.per_step:
        clock.settle()  # note: timing=events' one CPU-GPU sync point of the epoch
    _drain(pending, stats, clock, epoch, on_batch)
    stats.epoch_time_s = time.perf_counter() - epoch_start
    return stats


def _drain(pending: list[_Pending], stats: EpochStats, clock, epoch: int, on_batch) -> None:
    """Read back the pending steps' figures, check them, count them and report each batch."""
    for p in pending:
        loss = p.loss.item()  # note: a CPU-GPU sync point (free here: the clock already synced)
        if not math.isfinite(loss):
            pending.clear()
            raise Diverged(epoch, p.batch, p.step, loss)
        correct = int(p.correct.item())
        m0, m1, m2 = p.marks[0], p.marks[1], p.marks[-1]
        # data: from before next() to after it, on the clock's own timeline. With events that is the device's
        # timeline: an idle device's event clock runs on with the wall clock, so a host wait is in the span once
        # (it was counted twice when the host wait was added to it), and the loader's queued kernels are in it.
        data_s = clock.span(m0, m1)
        # phases: consecutive spans from m1 to m2, so that they add up to compute (up to float rounding)
        split = [clock.span(a, b) for a, b in zip(p.marks[1:-1], p.marks[2:])] if len(p.marks) > 3 else []
        skipped = int(bool(p.skipped.item())) if p.skipped is not None else 0
        comm = p.comm.resolve() if hasattr(p.comm, "resolve") else p.comm  # nccl: bucket events, readable now
        phases = dict(zip(("copy_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s"), split))
        rec = batch_record(
            epoch=epoch,
            batch=p.batch,
            step=p.step,
            size=p.size,
            loss=loss,
            acc=correct / p.size,
            data_time_s=data_s,
            compute_time_s=clock.span(m1, m2),
            skipped=skipped,
            comm_time_s=comm[0],
            comm_exposed_s=comm[1],
            comm_bytes=comm[2],
            comm_busy_s=comm[3],
            **phases,
        )
        stats.add(rec)
        if on_batch is not None:
            on_batch(rec, stats)
    pending.clear()


@torch.no_grad()
def evaluate_sums(ctx: StepContext, loader: Iterable) -> tuple[float, int, int]:
    """(loss sum, correct, images) over loader, in eval mode; not part of any timed region."""
    model = ctx.eval_model
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = ctx.to_device(x, y)
        with ctx.autocast():
            logits = model(x)
            loss_sum += float(ctx.loss_fn(logits.float(), y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train()
    return loss_sum, correct, n
