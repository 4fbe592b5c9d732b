"""The communication clock: a DDP communication hook that times each gradient bucket's all-reduce.

Each bucket's all-reduce is timed from launch to completion on the host, with its bytes. The all-reduce runs
during backward (DDP launches a bucket as soon as its gradients are ready), so comm_time_s overlaps
backward_time_s: it is the span of the step's all-reduces (first launch to last completion), waiting for the
slowest rank included. comm_exposed_s is the part backward waits for: from the last bucket's launch (its
gradients, the last ones, are ready: backward's compute is done) to the last completion. That is what the
lab's subtraction estimates.

On NCCL the host cannot see completion: the all-reduce's future is complete once the work is enqueued and its
then() callbacks run on the host at once. There (make_event given) each bucket is timed with CUDA events
instead: one recorded on the compute stream when the bucket is launched, one recorded after the callback made
the current stream wait for the all-reduce (f.value()), so it completes when the all-reduce has. Those are read
after the clock's settle (once per step with timing=sync, once per epoch with timing=events), never by a sync
of their own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch.distributed as dist


class CommClock:
    """Times each gradient bucket's all-reduce (launch to completion, host clock) and counts its bytes.

    take() returns (span of the all-reduces since the last take, the exposed part after the last launch, bytes,
    busy: the time the buckets' all-reduces actually took, each its own launch to completion, overlapping buckets
    counted once) and starts over: the epoch loop calls it once per step, after the step's clock stopped (DDP waits for
    every bucket before backward returns)."""

    def __init__(self, make_event: Any = None) -> None:
        self.make_event = make_event  # None: host clock (gloo); a CUDA event factory: device timeline (nccl)
        self._events: list[tuple[Any, Any, int]] = []
        self._lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None
        self._last_launch: float | None = None
        self._bytes = 0
        self._spans: list[tuple[float, float]] = []
        self.buckets = 0

    def hook(self, state, bucket):  # noqa: ANN001, ANN201 -- DDP checks these annotations: none is accepted
        """DDP communication hook: the default all-reduce (average), timed."""
        buf = bucket.buffer()
        if self.make_event is not None:
            return self._hook_events(buf)
        t0 = time.perf_counter()
        with self._lock:
            self._last_launch = t0 if self._last_launch is None else max(self._last_launch, t0)
        buf.div_(dist.get_world_size())
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f):  # noqa: ANN001, ANN202
            t1 = time.perf_counter()  # gloo: called when the all-reduce completed
            with self._lock:
                self._first = t0 if self._first is None else min(self._first, t0)
                self._last = t1 if self._last is None else max(self._last, t1)
                self._bytes += buf.numel() * buf.element_size()
                self._spans.append((t0, t1))
                self.buckets += 1
            return f.value()[0]

        return fut.then(done)

    def _hook_events(self, buf: Any) -> Any:
        start = self.make_event()
        start.record()  # on the compute stream: this bucket's gradients are ready here
        buf.div_(dist.get_world_size())
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f):  # noqa: ANN001, ANN202
            value = f.value()[0]  # makes the current stream wait for the all-reduce (no host wait)
            end = self.make_event()
            end.record()  # completes when the all-reduce has
            with self._lock:
                self._events.append((start, end, buf.numel() * buf.element_size()))
                self.buckets += 1
            return value

        return fut.then(done)

    def take(self) -> Any:
        """This step's figures: (span, exposed, bytes, busy) on the host clock, or with events a PendingComm whose
        resolve() gives them once the clock has settled."""
        if self.make_event is not None:
            with self._lock:
                out, self._events = PendingComm(self._events), []
            return out
        with self._lock:
            done = self._first is not None and self._last is not None
            span = (self._last - self._first) if done else 0.0
            exposed = max(0.0, self._last - self._last_launch) if done and self._last_launch is not None else 0.0
            out = (span, exposed, self._bytes, union_length(self._spans))
            self._first = self._last = self._last_launch = None
            self._bytes = 0
            self._spans = []
        return out


def union_length(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals (overlapping all-reduces counted once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


class PendingComm:
    """A step's bucket events (nccl), read after the clock's settle: resolve() -> (span, exposed, bytes, busy)."""

    def __init__(self, events: list[tuple[Any, Any, int]]) -> None:
        self.events = events

    def resolve(self) -> tuple[float, float, int, float]:
        if not self.events:
            return (0.0, 0.0, 0, 0.0)
        ref = self.events[0][0]
        spans = [(ref.elapsed_time(a) / 1e3, ref.elapsed_time(b) / 1e3) for a, b, _ in self.events]
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        last_launch = max(a for a, _ in spans)
        return (last - first, max(0.0, last - last_launch), sum(n for _, _, n in self.events), union_length(spans))
