"""A simulated CUDA device timeline for the clock tests (marker `gpusim`; runs on a CPU).

Streams hold queued kernels of known durations; the host returns from a launch at once. An event recorded on a
stream completes when the work queued before it on that stream is done; recorded on an idle stream it completes
at once, so that, as with real CUDA events, the device's clock goes on with the wall clock while it is idle.
synchronize() waits (really sleeps) until every stream is idle and counts itself. Reading an event's time
before it completed is an error, as it is on a GPU. NCCL-style work: `enqueue_collective` queues the work on the
"comm" stream and returns a future that is already complete (its then() callbacks run on the host at once);
the work's end is only visible through events on the comm stream.

`frozen_idle=True` replaces the idle clock by one that stands still while the device is idle (the old fakes'
behaviour): the tests show that the clock checks fail on it, so the simulator can fail.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


class SimDevice:
    def __init__(self, frozen_idle: bool = False) -> None:
        self.frozen_idle = frozen_idle
        self.free = {"default": 0.0, "copy": 0.0, "comm": 0.0, "callback": 0.0}  # when each stream's work ends
        self.current = "default"  # the host's current stream (a future's callbacks run on a side stream)
        self.work = 0.0  # frozen clock: seconds of kernels queued so far (advances only with work)
        self.syncs = 0

    def launch(self, seconds: float, stream: str = "default") -> None:
        """Queue a kernel of known duration; the host returns at once."""
        start = max(time.perf_counter(), self.free[stream])
        self.free[stream] = start + seconds
        self.work += seconds

    def event_time(self, stream: str = "default") -> float:
        if self.frozen_idle:
            return self.work
        return max(time.perf_counter(), self.free[stream])

    def event(self, stream: str | None = None) -> SimEvent:
        return SimEvent(self, stream)

    def synchronize(self, *_: Any) -> None:
        """Wait until every stream is idle (a real sleep, so that host clocks see it)."""
        self.syncs += 1
        wait = max(self.free.values()) - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    def enqueue_collective(self, seconds: float, value: Any = None) -> SimFuture:
        """NCCL-like: queue the work on the comm stream; the future is complete when the work is enqueued."""
        self.launch(seconds, "comm")
        return SimFuture(self, value)


class SimEvent:
    def __init__(self, dev: SimDevice, stream: str | None = None) -> None:
        self.dev, self.stream, self.t = dev, stream, None

    def record(self, stream: Any = None) -> None:
        self.t = self.dev.event_time(self.stream or self.dev.current)  # on the host's current stream

    def query(self) -> bool:
        return self.t is not None and (self.dev.frozen_idle or time.perf_counter() >= self.t)

    def elapsed_time(self, other: SimEvent) -> float:
        if not (self.query() and other.query()):
            raise RuntimeError("elapsed_time read before both events completed (no sync)")
        return (other.t - self.t) * 1e3


class SimFuture:
    """NCCL's future: complete once the work is enqueued, so then() runs its callback on the host at once, on a
    side stream (as CUDA futures do); value() makes the current stream wait for the work (no host wait)."""

    def __init__(self, dev: SimDevice | None = None, value: Any = None) -> None:
        self.dev, self._value = dev, value

    def then(self, fn: Any) -> SimFuture:
        if self.dev is None:
            return SimFuture(None, fn(self))
        before, self.dev.current = self.dev.current, "callback"
        try:
            return SimFuture(self.dev, fn(self))
        finally:
            self.dev.current = before

    def value(self) -> list:
        if self.dev is not None:
            cur = self.dev.current
            self.dev.free[cur] = max(self.dev.free[cur], self.dev.free["comm"])  # the stream waits for the work
        return [self._value]


class _Kernel(torch.autograd.Function):
    """Forward queues fwd_s, backward queues bwd_s on the simulated device."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dev: SimDevice, fwd_s: float, bwd_s: float) -> torch.Tensor:
        ctx.dev, ctx.bwd_s = dev, bwd_s
        dev.launch(fwd_s)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        ctx.dev.launch(ctx.bwd_s)
        return g, None, None, None


class SimModel(nn.Module):
    """A tiny real model whose forward and backward also queue kernels of known durations on the device."""

    def __init__(self, dev: SimDevice, fwd_s: float, bwd_s: float) -> None:
        super().__init__()
        self.dev, self.fwd_s, self.bwd_s = dev, fwd_s, bwd_s
        self.lin = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Kernel.apply(self.lin(x.flatten(1)), self.dev, self.fwd_s, self.bwd_s)


class SimSGD(torch.optim.SGD):
    """SGD whose step also queues opt_s."""

    def __init__(self, params: Any, dev: SimDevice, opt_s: float) -> None:
        super().__init__(params, lr=0.01)
        self.dev, self.opt_s = dev, opt_s

    def step(self, closure: Any = None) -> Any:
        self.dev.launch(self.opt_s)
        return super().step(closure)


class SimScaler:
    """fp16's grad scaler, as the loop uses it, with no hidden sync: skips the optimizer step at skip_steps."""

    def __init__(self, skip_steps: set[int]) -> None:
        self.skip_steps, self.calls = skip_steps, 0
        self.found = torch.tensor(0.0)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def step(self, opt: torch.optim.Optimizer) -> None:
        skip = self.calls in self.skip_steps
        self.found = torch.tensor(1.0 if skip else 0.0)
        if not skip:
            opt.step()
        self.calls += 1

    def _found_inf_per_device(self, opt: torch.optim.Optimizer) -> dict:
        return {torch.device("cpu"): self.found}

    def update(self) -> None:
        pass


class SimLoader:
    """n batches of 4 tiny images; each next() waits host_s on the host and queues aug_s of kernels (a loader
    that augments on the device)."""

    def __init__(self, dev: SimDevice, n: int, host_s: float = 0.0, aug_s: float = 0.0) -> None:
        self.dev, self.n, self.host_s, self.aug_s = dev, n, host_s, aug_s

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            if self.host_s:
                time.sleep(self.host_s)
            if self.aug_s:
                self.dev.launch(self.aug_s)
            yield torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))
