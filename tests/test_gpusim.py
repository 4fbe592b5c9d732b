"""The real clocks (EventClock, the phase marks, the epoch loop) on a simulated CUDA timeline (tests/gpusim.py).

Host waits are real sleeps and kernels have known durations, so each clock's expected reading is known. Bounds
allow scheduling noise on a 2-core machine; the tests run in make test's serial (timing) pass."""

from __future__ import annotations

import functools
import time

import pytest
import torch

from gpusim import SimDevice, SimLoader, SimModel, SimScaler, SimSGD
from trainbench.figures import tally
from trainbench.timing import epoch
from trainbench.timing.clocks import EventClock
from trainbench.timing.epoch import StepContext, train_epoch

pytestmark = [pytest.mark.gpusim, pytest.mark.timing]
CPU = torch.device("cpu")
SLACK = 0.03  # scheduling noise allowed per figure (seconds)


@pytest.fixture(autouse=True)
def one_host_thread():
    """The simulated device's timeline is what these tests read; the host's share is the tiny SimModel. A 2-thread
    OpenMP pool on a 2-core VM made that share jitter by 40 ms now and then (one run in six): one thread here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def best_of(attempts: int = 3):
    """Run a clock-bound test up to `attempts` times, passing if one attempt holds. A scheduling hiccup only adds
    time (on this 2-core VM about one run in six lost 40 ms); a defect fails every attempt, as the simulator's own
    can-fail test shows. Each attempt starts from a fresh simulated device."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            for i in range(attempts):
                try:
                    return fn(*args, **kwargs)
                except AssertionError:
                    if i == attempts - 1:
                        raise

        return run

    return wrap


def _ctx(
    dev: SimDevice,
    fwd: float = 0.003,
    bwd: float = 0.006,
    opt: float = 0.001,
    copy: float = 0.0,
    scaler: SimScaler | None = None,
) -> StepContext:
    class Ctx(StepContext):
        def to_device(self, x, y):
            if copy:
                dev.launch(copy)  # a non-blocking host-to-device copy: queued, and the host goes on at once
            return x, y

    model = SimModel(dev, fwd, bwd)
    return Ctx(model=model, optimizer=SimSGD(model.parameters(), dev, opt), device=CPU, scaler=scaler)


def _epoch(dev, ctx, loader, monkeypatch, per_step=False, phases=True):
    """One epoch with the EventClock on the simulated device; the loop's own syncs go to the device too."""
    monkeypatch.setattr(epoch, "synchronize", lambda d: dev.synchronize())
    recs = []
    clock = EventClock(CPU, make_event=dev.event, sync=dev.synchronize, per_step=per_step)
    stats = train_epoch(ctx, loader, 0, clock=clock, phases=phases, on_batch=lambda r, s: recs.append(r))
    return stats, recs


@best_of()
def test_the_simulated_idle_clock_runs_with_the_wall_clock():
    dev = SimDevice()
    a = dev.event()
    a.record()
    time.sleep(0.05)
    b = dev.event()
    b.record()
    assert 0.05 <= a.elapsed_time(b) / 1e3 < 0.05 + SLACK
    frozen = SimDevice(frozen_idle=True)
    a, b = frozen.event(), frozen.event()
    a.record()
    time.sleep(0.05)
    b.record()
    assert a.elapsed_time(b) == 0.0  # the old fakes: an idle device's time stood still


def test_an_event_cannot_be_read_before_it_completed():
    dev = SimDevice()
    dev.launch(0.2)
    a = dev.event()
    a.record()
    with pytest.raises(RuntimeError, match="no sync"):
        a.elapsed_time(a)
    dev.synchronize()
    assert a.elapsed_time(a) == 0.0


@best_of()
def test_host_wait_is_data_time_once_not_twice(monkeypatch):
    """Review scenario: a loader whose host waits 50 ms per batch, 10 ms of kernels per step, 6 batches, events.
    Data is the device's exposed wait: 50 ms for the first batch, 40 ms for each later one (10 ms of each host
    wait overlaps the previous step's kernels). Before the fix the host wait was added to that span: 0.573 s of
    data inside a 0.329 s epoch, other clamped to 0."""
    dev = SimDevice()
    stats, recs = _epoch(dev, _ctx(dev), SimLoader(dev, 6, host_s=0.05), monkeypatch)
    assert 0.05 <= recs[0].data_time_s < 0.05 + SLACK
    assert all(0.04 - 0.005 <= r.data_time_s < 0.05 + SLACK for r in recs[1:]), [r.data_time_s for r in recs]
    assert 0.25 - 0.01 <= stats.data_time_s < 0.25 + 3 * SLACK
    assert 0.06 - 0.005 <= stats.compute_time_s < 0.06 + SLACK
    assert tally([stats])["clamped_s"] == 0 and stats.data_time_s + stats.compute_time_s <= stats.epoch_time_s
    assert dev.syncs == 2  # the one before the epoch's clock starts, and the epoch's one settle


def test_the_simulator_can_fail(monkeypatch):
    """With the idle clock frozen (the old fakes), the host wait vanishes from data time: the check above fails."""
    dev = SimDevice(frozen_idle=True)
    stats, _ = _epoch(dev, _ctx(dev), SimLoader(dev, 6, host_s=0.05), monkeypatch)
    assert stats.data_time_s < 0.25 - 0.01  # i.e. test_host_wait_is_data_time_once_not_twice would fail here


@best_of()
def test_device_loader_augmentation_lands_in_data_time(monkeypatch):
    """A loader that queues 20 ms of augmentation kernels per batch and returns at once: 20 ms of data per batch
    (the kernels run before the step's), compute 10 ms."""
    dev = SimDevice()
    stats, recs = _epoch(dev, _ctx(dev), SimLoader(dev, 6, aug_s=0.02), monkeypatch)
    assert all(0.02 - 0.002 <= r.data_time_s < 0.02 + SLACK for r in recs), [r.data_time_s for r in recs]
    assert 0.06 - 0.005 <= stats.compute_time_s < 0.06 + SLACK


@pytest.mark.parametrize("per_step", [False, True], ids=["events", "sync"])
@best_of()
def test_phase_spans_sum_to_compute_and_no_phase_adds_a_sync(monkeypatch, per_step):
    """Phases are events in both modes: events settles once per epoch, sync once per step (the lab's), and the
    phase marks add none. Each phase's span is its kernels: copy 5, forward 3, backward 6, optimizer 1 ms."""
    dev = SimDevice()
    stats, recs = _epoch(dev, _ctx(dev, copy=0.005), SimLoader(dev, 6), monkeypatch, per_step=per_step)
    assert dev.syncs == 1 + (6 if per_step else 1)  # + the one before the epoch's clock starts
    for r in recs:
        split = r.copy_time_s + r.forward_time_s + r.backward_time_s + r.optimizer_time_s
        assert split == pytest.approx(r.compute_time_s, abs=1e-9)
    n = len(recs)
    for phase, want in (("copy", 0.005), ("forward", 0.003), ("backward", 0.006), ("optimizer", 0.001)):
        got = getattr(stats, f"{phase}_time_s") / n
        assert want - 0.0005 <= got < want + 0.004, (phase, got)


@best_of()
def test_a_non_blocking_copy_is_counted_once(monkeypatch):
    """A 5 ms non-blocking copy: in the copy phase and in compute, never in data."""
    dev = SimDevice()
    stats, recs = _epoch(dev, _ctx(dev, copy=0.005), SimLoader(dev, 6, host_s=0.02), monkeypatch)
    assert 6 * 0.015 - 0.003 <= stats.compute_time_s < 6 * 0.015 + SLACK
    assert all(0.005 - 0.0005 <= r.copy_time_s < 0.005 + 0.004 for r in recs)
    assert stats.data_time_s < 6 * 0.02 + SLACK  # the copy is not in data


def test_fp16_skipped_step_is_counted_without_an_extra_sync(monkeypatch):
    dev = SimDevice()
    stats, recs = _epoch(dev, _ctx(dev, scaler=SimScaler({2})), SimLoader(dev, 6), monkeypatch)
    assert [r.skipped for r in recs] == [0, 0, 1, 0, 0, 0] and stats.skipped_steps == 1
    assert dev.syncs == 2  # the loop reads the skip flag after the epoch's settle, not per step


@pytest.mark.parametrize("events", [False, True], ids=["host-clock", "events"])
def test_nccl_all_reduces_are_timed_on_the_device_timeline(monkeypatch, events):
    """Two 20 ms all-reduces on the comm stream, NCCL-like (the future is complete when enqueued, callbacks run at
    once). The host clock reads about nothing (the old comm clock on NCCL); events read 40 ms of span and busy,
    20 ms exposed after the last launch, once the clock has settled."""
    from trainbench.parallel import commclock as CC

    dev = SimDevice()

    class Work:
        def __init__(self, buf):
            self.fut = dev.enqueue_collective(0.02, buf)

        def get_future(self):
            return self.fut

    class Bucket:
        def buffer(self):
            return torch.zeros(1000)

    monkeypatch.setattr(CC.dist, "all_reduce", lambda buf, async_op=True: Work(buf))
    monkeypatch.setattr(CC.dist, "get_world_size", lambda: 2)
    clock = CC.CommClock(make_event=dev.event if events else None)
    for _ in range(2):
        clock.hook(None, Bucket())
    got = clock.take()
    dev.synchronize()  # the clock's settle
    span, exposed, nbytes, busy = got.resolve() if events else got
    assert nbytes == 2 * 4000
    if events:
        assert 0.04 <= span < 0.04 + SLACK and 0.04 <= busy < 0.04 + SLACK and 0.02 <= exposed < 0.04 + SLACK
    else:
        assert span < 0.005  # the defect: launch time only


def test_cuda_clocks_are_events_in_both_timing_modes():
    from trainbench.timing.clocks import SyncClock, make_clock

    sync, events = make_clock("sync", torch.device("cuda", 0)), make_clock("events", torch.device("cuda", 0))
    assert isinstance(sync, EventClock) and sync.per_step  # the lab's one sync per step, marks as events
    assert isinstance(events, EventClock) and not events.per_step
    assert isinstance(make_clock("events", CPU), SyncClock)
