"""Timing honesty: a known injected delay must land in the right clock, with the right size.

Nothing here asserts data + compute + other == epoch: other is computed as the remainder, so that holds by
construction and would catch nothing. Instead every test injects a delay of known size in one place (the
dataset, iter(), the forward pass, the bookkeeping callback) and checks it arrives in that clock and no
other, with a lower bound (the delay really was counted) and an upper bound (nothing else was counted
there). The epoch clock is checked against a wall clock the test reads itself.
"""

from __future__ import annotations

import math
import signal
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainbench.figures import tally
from trainbench.timing.epoch import Diverged, Interrupted, StepContext, train_epoch

pytestmark = pytest.mark.timing  # clock bounds: run in `make test`'s serial pass, never beside another test

D = 0.01  # seconds slept per item / per forward
SLACK = 0.15  # scheduling noise allowed on top of an injected delay (busy 2-core machine)


def around(value: float, injected: float) -> bool:
    """value holds the injected delay (sleeps never return early) and not much more: oversleeping under load
    grows with the delay, so the upper bound is relative plus a constant."""
    return injected <= value <= 1.5 * injected + SLACK


class SleepyData(Dataset):
    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return torch.randn(3, 8, 8), i % 10


class SlowIterLoader:
    """A loader whose __iter__ (where DataLoader starts its workers) takes `startup` seconds."""

    def __init__(self, loader, startup: float) -> None:
        self.loader, self.startup = loader, startup

    def __iter__(self):
        time.sleep(self.startup)
        return iter(self.loader)


class SlowModel(nn.Module):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        time.sleep(self.delay)
        return self.fc(x.flatten(1))


def _ctx(model: nn.Module, warm: bool = True, **kw) -> StepContext:
    """A step context; one untimed step first, so that torch's one-off first-call costs are in no test."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = StepContext(model=model, optimizer=opt, device=torch.device("cpu"), **kw)
    if warm:
        delay = getattr(model, "delay", 0.0)
        model.delay = 0.0
        ctx.step(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), -1)
        model.delay = delay
    return ctx


def _train(model, loader, on_batch=None, **kw):
    """train_epoch, keeping every batch record it reports and the wall time of the whole call."""
    recs = []

    def record(r, s):
        recs.append(r)
        if on_batch is not None:
            on_batch(r, s)

    ctx = _ctx(model)
    t = time.perf_counter()
    stats = train_epoch(ctx, loader, 0, on_batch=record, **kw)
    return stats, recs, time.perf_counter() - t


def _epoch_clock_covers_the_call(stats, wall):
    # Would catch: work moved before the epoch clock starts (worker start-up, a hidden prefetch).
    assert wall - 0.05 <= stats.epoch_time_s <= wall


def test_slow_dataset_lands_in_data_time_only():
    # Would catch: data time not measured around next(), batches fetched outside the data clock.
    n, bs = 40, 8
    stats, recs, wall = _train(SlowModel(0.0), DataLoader(SleepyData(n, D), batch_size=bs))
    assert around(stats.data_time_s, n * D)
    assert stats.compute_time_s < SLACK
    for r in recs:
        assert r.data_time_s >= bs * D  # each batch waited for its own 8 items
    assert stats.batches == n // bs and stats.samples == n
    _epoch_clock_covers_the_call(stats, wall)


def test_slow_model_lands_in_compute_time_only():
    # Would catch: the forward pass (or the step) outside the compute clock, or counted as data.
    n, bs = 40, 8
    stats, recs, wall = _train(SlowModel(5 * D), DataLoader(SleepyData(n, 0.0), batch_size=bs))
    nb = n // bs
    assert around(stats.compute_time_s, nb * 5 * D)
    assert stats.data_time_s < SLACK
    assert all(r.compute_time_s >= 5 * D for r in recs)
    _epoch_clock_covers_the_call(stats, wall)


def test_slow_bookkeeping_lands_in_other_time_only():
    # Would catch: an epoch clock that is data + compute (other would be 0), or bookkeeping inside a clock.
    n, bs = 40, 8
    stats, recs, wall = _train(
        SlowModel(0.0), DataLoader(SleepyData(n, 0.0), batch_size=bs), on_batch=lambda r, s: time.sleep(3 * D)
    )
    nb = n // bs
    assert around(tally([stats])["other_time_s"], nb * 3 * D)  # the catalogue derives other from the three clocks
    assert stats.data_time_s + stats.compute_time_s < SLACK
    _epoch_clock_covers_the_call(stats, wall)


def test_loader_startup_is_the_first_batchs_data_wait():
    # Would catch: iter(loader) (where worker processes start) run before the data clock or the epoch clock.
    startup = 0.2
    loader = SlowIterLoader(DataLoader(SleepyData(16, 0.0), batch_size=8), startup)
    stats, recs, wall = _train(SlowModel(0.0), loader)
    assert recs[0].data_time_s >= startup
    assert recs[1].data_time_s < startup / 2
    assert around(stats.data_time_s, startup)
    assert tally([stats])["other_time_s"] < startup / 2
    _epoch_clock_covers_the_call(stats, wall)


def test_worker_loader_startup_and_waits_are_data_time():
    # With 2 worker processes: starting them and waiting for their batches is data time, and the
    # epoch clock still covers everything train_epoch did.
    loader = DataLoader(SleepyData(32, D), batch_size=8, num_workers=2)
    stats, recs, wall = _train(SlowModel(D), loader)
    assert recs[0].data_time_s >= 8 * D  # the first batch cannot arrive before a worker slept 8 times
    assert around(stats.compute_time_s, 4 * D)
    assert stats.data_time_s + stats.compute_time_s <= stats.epoch_time_s
    _epoch_clock_covers_the_call(stats, wall)


def test_stop_request_lands_at_the_next_batch_boundary():
    # Would catch: the per-batch stop check removed (SIGTERM would then finish the whole epoch).
    loader = DataLoader(SleepyData(80, 0.0), batch_size=8)
    recs = []
    with pytest.raises(Interrupted, match="after batch 2"):
        train_epoch(
            _ctx(SlowModel(0.0)), loader, 0, on_batch=lambda r, s: recs.append(r), stop_requested=lambda: len(recs) >= 3
        )
    assert [r.batch for r in recs] == [0, 1, 2]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_diverges_at_its_batch(bad):
    # Would catch: a divergence check that looks for NaN only (isnan instead of isfinite).
    def loss_fn(logits, y):
        loss = nn.functional.cross_entropy(logits, y)
        return loss * bad if step_of[0] == 2 else loss

    step_of = [0]
    recs = []

    def on_batch(r, s):
        recs.append(r)
        step_of[0] += 1

    ctx = _ctx(SlowModel(0.0), loss_fn=loss_fn)
    with pytest.raises(Diverged) as e:
        train_epoch(ctx, DataLoader(SleepyData(40, 0.0), batch_size=8), 0, on_batch=on_batch)
    assert (e.value.batch, e.value.step) == (2, 2) and len(recs) == 2
    assert math.isnan(e.value.loss) if math.isnan(bad) else e.value.loss == bad


def test_stop_flag_first_sigint_asks_second_stops_at_once():
    # A first Ctrl-C (or SIGTERM) only asks the loop to stop at the next batch; a second Ctrl-C raises at once.
    import os

    from trainbench.stopflag import StopFlag

    before = signal.getsignal(
        signal.SIGINT
    )  # default_int_handler, or SIG_IGN when the suite was started in the background
    with StopFlag() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes
        assert stop() and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before  # restored on exit


def test_stop_flag_sigterm_sets_the_flag():
    import os

    from trainbench.stopflag import StopFlag

    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop() and stop.signum == signal.SIGTERM


class _FakeGPU:
    """A fake device timeline: the test advances `now`; events record it; elapsed_time reads the difference."""

    def __init__(self):
        self.now = 0.0
        self.syncs = 0

    def event(self):
        gpu = self

        class Ev:
            t = None

            def record(self):
                self.t = gpu.now

            def elapsed_time(self, other):
                return (other.t - self.t) * 1e3

        return Ev()

    def sync(self):
        self.syncs += 1


class _GpuTimedModel(nn.Module):
    """Each forward 'queues' 0.5 s of device work on the fake timeline."""

    def __init__(self, gpu):
        super().__init__()
        self.gpu, self.fc = gpu, nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        self.gpu.now += 0.5
        return self.fc(x.flatten(1))


class _GpuAugLoader:
    """Each batch 'queues' 0.1 s of device augmentation (like loader=device), after a host wait of 0.02 s."""

    def __init__(self, gpu, n_batches=4):
        self.gpu, self.n = gpu, n_batches

    def __iter__(self):
        for _ in range(self.n):
            time.sleep(0.02)
            self.gpu.now += 0.1
            yield torch.randn(8, 3, 8, 8), torch.arange(8) % 10


def test_event_clock_bookkeeping_with_fake_events():
    """The events clock, on a CPU with fake events: device time queued by the loader counts as data, the step's
    as compute, everything is read once per epoch after one sync, and the accuracy kernels are queued after the
    compute mark. (This fake's clock stands still while the device idles, so the host wait is not in data here;
    tests/test_gpusim.py checks the host wait with a device clock that runs on, as CUDA's does.)"""
    from trainbench.timing.clocks import EventClock

    gpu = _FakeGPU()
    clock = EventClock(torch.device("cpu"), make_event=gpu.event, sync=gpu.sync)
    seen_during = []
    recs = []
    stats = train_epoch(
        _ctx(_GpuTimedModel(gpu), warm=False),
        _GpuAugLoader(gpu),
        0,
        clock=clock,
        on_batch=lambda r, s: (recs.append(r), seen_during.append(gpu.syncs)),
    )
    assert gpu.syncs == 1 and seen_during == [1, 1, 1, 1]  # one sync, and rows only after it
    for r in recs:
        assert r.compute_time_s == pytest.approx(0.5)
        assert r.data_time_s == pytest.approx(0.1)  # the device augmentation the loader queued, counted once
    assert stats.compute_time_s == pytest.approx(2.0) and stats.batches == 4


def test_event_clock_finds_divergence_at_the_end_with_its_batch():
    from trainbench.timing.clocks import EventClock

    gpu = _FakeGPU()
    clock = EventClock(torch.device("cpu"), make_event=gpu.event, sync=gpu.sync)
    calls = [0]

    def loss_fn(logits, y):
        calls[0] += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * math.nan if calls[0] == 3 else loss

    recs = []
    with pytest.raises(Diverged) as e:
        train_epoch(
            _ctx(_GpuTimedModel(gpu), warm=False, loss_fn=loss_fn),
            _GpuAugLoader(gpu),
            0,
            clock=clock,
            on_batch=lambda r, s: recs.append(r),
        )
    assert e.value.batch == 2 and len(recs) == 2 and gpu.syncs == 1


def test_event_clock_stop_request_drains_then_stops():
    from trainbench.timing.clocks import EventClock

    gpu = _FakeGPU()
    clock = EventClock(torch.device("cpu"), make_event=gpu.event, sync=gpu.sync)
    recs = []
    with pytest.raises(Interrupted, match="after batch 1"):
        train_epoch(
            _ctx(_GpuTimedModel(gpu), warm=False),
            _GpuAugLoader(gpu),
            0,
            clock=clock,
            on_batch=lambda r, s: recs.append(r),
            stop_requested=lambda: gpu.now > 1.0,
        )
    assert [r.batch for r in recs] == [0, 1]  # the steps already queued are recorded, then it stops


# ------------------------------------------------------------------------------------------- compute phases


def _phase_delays(model: nn.Module, ctx: StepContext, copy: float, backward: float, optimizer: float) -> None:
    """Inject known delays into the copy, the backward pass and the optimizer step (forward: SlowModel)."""
    to_device = ctx.to_device

    def slow_copy(x, y):
        time.sleep(copy)
        return to_device(x, y)

    ctx.to_device = slow_copy
    model.fc.weight.register_hook(lambda g: time.sleep(backward))  # runs inside backward
    ctx.optimizer.register_step_pre_hook(lambda o, a, k: time.sleep(optimizer))


def test_each_phase_gets_its_own_injected_delay_and_they_sum_to_compute():
    # Would catch: a phase mark in the wrong place (a delay counted in its neighbour), a phase missing from
    # compute, or phases that do not add up to the compute clock.
    model = SlowModel(2 * D)
    ctx = _ctx(model)
    _phase_delays(model, ctx, copy=D, backward=3 * D, optimizer=4 * D)
    recs = []
    stats = train_epoch(ctx, DataLoader(SleepyData(16, 0.0), batch_size=8), 0, on_batch=lambda r, s: recs.append(r))
    assert len(recs) == 2
    for r in recs:
        assert around(r.copy_time_s, D) and around(r.forward_time_s, 2 * D)
        assert around(r.backward_time_s, 3 * D) and around(r.optimizer_time_s, 4 * D)
        phases = r.copy_time_s + r.forward_time_s + r.backward_time_s + r.optimizer_time_s
        assert phases == pytest.approx(r.compute_time_s, rel=1e-6)
    assert stats.forward_time_s == pytest.approx(sum(r.forward_time_s for r in recs))
    assert stats.optimizer_time_s == pytest.approx(sum(r.optimizer_time_s for r in recs))


def test_phase_split_off_leaves_phases_empty_and_compute_whole():
    model = SlowModel(2 * D)
    recs = []
    stats = train_epoch(
        _ctx(model),
        DataLoader(SleepyData(16, 0.0), batch_size=8),
        0,
        phases=False,
        on_batch=lambda r, s: recs.append(r),
    )
    assert all(math.isnan(r.forward_time_s) and math.isnan(r.optimizer_time_s) for r in recs)
    assert math.isnan(stats.copy_time_s)
    assert around(stats.compute_time_s, 2 * 2 * D)


def test_event_clock_splits_phases_from_device_time():
    """Fake device timeline: forward queues 0.5 s, backward 0.2 s, the optimizer step 0.1 s."""
    from trainbench.timing.clocks import EventClock

    gpu = _FakeGPU()
    clock = EventClock(torch.device("cpu"), make_event=gpu.event, sync=gpu.sync)
    model = _GpuTimedModel(gpu)
    ctx = _ctx(model, warm=False)
    model.fc.weight.register_hook(lambda g: setattr(gpu, "now", gpu.now + 0.2))
    ctx.optimizer.register_step_post_hook(lambda o, a, k: setattr(gpu, "now", gpu.now + 0.1))
    recs = []
    train_epoch(ctx, _GpuAugLoader(gpu), 0, clock=clock, on_batch=lambda r, s: recs.append(r))
    assert gpu.syncs == 1 and len(recs) == 4
    for r in recs:
        assert (r.copy_time_s, r.forward_time_s) == (0.0, pytest.approx(0.5))
        assert (r.backward_time_s, r.optimizer_time_s) == (pytest.approx(0.2), pytest.approx(0.1))
        assert r.compute_time_s == pytest.approx(0.8)


def test_fp16_scaler_skipped_steps_are_counted_not_taken():
    """A grad scaler whose scale overflows the fp16 gradients skips the step (and halves its scale): the
    skip is recorded per batch and per epoch, and the weights really did not move. CPU GradScaler, so the
    logic is tested without CUDA (fp16 training itself is refused on a CPU by the config check)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=1000)
    ctx = StepContext(
        model=model, optimizer=opt, device=torch.device("cpu"), autocast_dtype=torch.float16, scaler=scaler
    )
    w0 = model[1].weight.detach().clone()
    recs = []
    stats = train_epoch(ctx, DataLoader(SleepyData(96, 0.0), batch_size=4), 0, on_batch=lambda r, s: recs.append(r))
    skipped = [r.skipped for r in recs]
    assert skipped[0] == 1 and stats.skipped_steps == sum(skipped) >= 1
    assert 0 in skipped  # the scale came down until a step was taken...
    assert not torch.equal(model[1].weight, w0)  # ...and that step moved the weights
    assert scaler.get_scale() == 2.0 ** (30 - sum(skipped))  # halved once per skipped step, as recorded


def test_a_forked_worker_ignores_the_stop_request(caplog):
    """Ctrl-C on a terminal reaches the whole process group, DataLoader workers included, and a forked worker
    inherits the handler: it must neither log nor set anything (before: one log line per worker, three with
    workers=2). Simulated by handling the signal under another pid than the one that installed the handler."""
    from trainbench.stopflag import StopFlag

    with StopFlag() as stop:
        stop._pid = -1  # as seen from a forked child
        stop._handle(signal.SIGINT, None)
        assert not stop() and "received" not in caplog.text
        stop._pid = __import__("os").getpid()
        stop._handle(signal.SIGINT, None)
        assert stop() and caplog.text.count("received SIGINT") == 1
