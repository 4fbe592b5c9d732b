"""The fast path (loader=device, bf16, channels_last, compile, events timing): same distribution, same numbers."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from conftest import TINY, compose, requires_cuda
from trainbench.config import ConfigError
from trainbench.data import loaders
from trainbench.data.loaders import PAD, DeviceLoader, crop_flip
from trainbench.data.sources import MEAN, STD, ArrayDataset, make_synthetic
from trainbench.models.resnet import ResNet18
from trainbench.run import run


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_crop_offsets_uniform_and_flip_rate_half(monkeypatch):
    seen = []
    real = loaders.crop_flip

    def spy(padded, dy, dx, flip, size):
        seen.append((dy.clone(), dx.clone(), flip.clone()))
        return real(padded, dy, dx, flip, size)

    monkeypatch.setattr(loaders, "crop_flip", spy)
    data = make_synthetic(1000, "train")
    dl = DeviceLoader(data, train=True, batch_size=250, device=torch.device("cpu"), std=STD["lab"], seed=3)
    for e in range(20):  # 20 epochs x 1000 images
        dl.set_epoch(e)
        for _ in dl:
            pass
    dy = torch.cat([s[0] for s in seen])
    dx = torch.cat([s[1] for s in seen])
    flip = torch.cat([s[2] for s in seen]).float()
    n = len(dy)
    counts = torch.bincount(dy * 9 + dx, minlength=81).float()
    assert dy.min() == 0 and dy.max() == 2 * PAD and dx.min() == 0 and dx.max() == 2 * PAD
    expected = n / 81
    # each of the 9x9 positions within 5 standard deviations of a uniform draw, and chi-square plausible
    assert (counts - expected).abs().max() < 5 * expected**0.5
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 130  # 80 degrees of freedom: p < 1e-3 above 124.8
    assert abs(flip.mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    assert (dy == dx).float().mean() < 0.2  # the two offsets are drawn independently


@pytest.mark.parametrize("flip", [False, True])
def test_crop_flip_equals_torchvision(flip):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    std = STD["lab"]
    padded = torch.nn.functional.pad(torch.from_numpy(img)[None], (0, 0, PAD, PAD, PAD, PAD))
    for i, j in [(0, 0), (8, 8), (3, 5), (7, 1)]:
        pil = TF.pad(Image.fromarray(img), PAD)  # what RandomCrop(32, padding=4) does
        pil = TF.crop(pil, i, j, 32, 32)
        if flip:
            pil = TF.hflip(pil)
        ref = T.Normalize(MEAN, std)(T.ToTensor()(pil))
        out = crop_flip(padded, torch.tensor([i]), torch.tensor([j]), torch.tensor([flip]), 32)
        mine = (out.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(mine[0], ref, atol=1e-6, rtol=1e-6)


def test_device_loader_covers_the_split_once_per_epoch_and_test_is_plain():
    data = ArrayDataset(
        np.arange(10 * 32 * 32 * 3, dtype=np.int64).reshape(10, 32, 32, 3).astype(np.uint8), np.arange(10), ["c"] * 10
    )
    train = DeviceLoader(data, train=True, batch_size=4, device=torch.device("cpu"), std=STD["lab"], seed=0)
    labels = torch.cat([y for _, y in train])
    assert sorted(labels.tolist()) == list(range(10)) and len(train) == 3
    assert labels.tolist() != list(range(10))  # shuffled
    test = DeviceLoader(data, train=False, batch_size=4, device=torch.device("cpu"), std=STD["lab"])
    x, y = next(iter(test))
    ref = T.Normalize(MEAN, STD["lab"])(T.ToTensor()(Image.fromarray(data.images[0])))
    torch.testing.assert_close(x[0], ref, atol=1e-6, rtol=1e-6)
    assert y.tolist() == [0, 1, 2, 3]


@pytest.mark.timing
def test_device_loader_run_counts_its_augmentation_as_data_per_batch(tmp_path, monkeypatch):
    """A known delay injected into the device loader's augmentation must land in each batch's data time.

    Would catch: augmenting the whole epoch up front (in iter() or before the clock), which would move the
    cost into one batch or out of the data clock altogether."""
    delay = 0.05
    real = loaders.crop_flip

    def slow_crop_flip(*a, **k):
        time.sleep(delay)
        return real(*a, **k)

    monkeypatch.setattr(loaders, "crop_flip", slow_crop_flip)
    info = run(compose([*TINY, "loader=device", "epochs=2", "test_eval=false"]), tmp_path / "r")
    assert info["status"] == "complete"
    batches = rows(tmp_path / "r" / "batches.csv")
    assert len(batches) == 4
    for b in batches:
        assert delay <= float(b["data_time_s"]) < delay + 0.1, b
    for r in rows(tmp_path / "r" / "epochs.csv"):
        assert int(r["samples"]) == 64
        assert 2 * delay <= float(r["data_time_s"]) < 2 * delay + 0.2
        assert float(r["other_time_s"]) < delay


def test_device_loader_pads_with_zero():
    """The padded tensor the device loader keeps has zeros around every image (RandomCrop pads with 0)."""
    data = make_synthetic(4, "train")
    dl = DeviceLoader(data, train=True, batch_size=4, device=torch.device("cpu"), std=STD["lab"])
    assert dl.images.shape == (4, 32 + 2 * PAD, 32 + 2 * PAD, 3)
    inner = dl.images[:, PAD:-PAD, PAD:-PAD]
    assert torch.equal(inner, torch.from_numpy(data.images))
    border = dl.images.clone()
    border[:, PAD:-PAD, PAD:-PAD] = 0
    assert int(border.abs().sum()) == 0


def test_device_loader_works_for_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png"
                )
    cfg = compose(
        [
            *[a for a in TINY if not a.startswith("data")],
            "data=imagefolder",
            f"data.root={tmp_path / 'img'}",
            "loader=device",
            "batch_size=4",
        ]
    )
    assert run(cfg, tmp_path / "r")["status"] == "complete"
    assert len(rows(tmp_path / "r" / "batches.csv")) == 4


class _Spy:
    """Records, on every training forward of the run's model, the autocast state and the input's layout."""

    def __init__(self, monkeypatch):
        from trainbench.models import resnet as model_mod

        self.calls = []
        real = model_mod.ResNet18.forward

        def forward(m, x):
            if m.training:
                self.calls.append(
                    {
                        "autocast": torch.is_autocast_enabled("cpu"),
                        "dtype": torch.get_autocast_dtype("cpu"),
                        "x_channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                        "w_channels_last": m.conv1.weight.is_contiguous(memory_format=torch.channels_last)
                        and not m.conv1.weight.is_contiguous(),
                    }
                )
            return real(m, x)

        monkeypatch.setattr(model_mod.ResNet18, "forward", forward)


def _count_steps(monkeypatch):
    steps = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, args, kw: steps.append(1))
    return steps, handle


def test_bf16_runs_under_autocast_and_steps_every_batch(tmp_path, monkeypatch):
    """Would catch: bf16 not really on, or bf16 runs skipping optimizer steps."""
    from trainbench import recipe

    monkeypatch.setattr(recipe, "warm_up", lambda *a, **k: 0.0)  # its (reverted) steps are tested on their own
    monkeypatch.setattr(recipe, "step_flops_per_image", lambda *a, **k: 1.0)  # its forward: test_compute.py
    spy = _Spy(monkeypatch)
    steps, handle = _count_steps(monkeypatch)
    try:
        run(compose([*TINY, "data.train_size=128", "epochs=2", "test_eval=false", "precision=bf16"]), tmp_path / "r")
    finally:
        handle.remove()
    assert len(spy.calls) == 8 and all(c["autocast"] and c["dtype"] == torch.bfloat16 for c in spy.calls)
    assert len(steps) == 8  # one optimizer step per batch
    assert len(rows(tmp_path / "r" / "batches.csv")) == 8


BF16_U = 2.0**-8  # bf16's unit roundoff (8 significant bits): each rounded input or weight is off by up to this


def test_bf16_step_tracks_fp32():
    """One training step's loss and gradients under bf16 autocast against fp32: same weights, same batch, so only
    rounding differs (deterministic, unlike two training trajectories, which drift apart chaotically and by an
    amount that depends on the CPU's kernels: an AVX2-only CPU emulates bf16 and rounds differently).

    Bound from the precision: the loss within 8 u relative (u = 2^-8, bf16's unit roundoff; rounding of inputs
    and weights compounds over the network's 18 weighted layers: measured 1.3e-4 to 2.9e-4 relative at seeds 0-2
    on an AVX-512-BF16 CPU, well inside). The gradients of a width-8 net under bf16 are far noisier (1 - cos
    measured 0.03 to 0.08), so their check only catches a broken backward (cos near 0). A path that is not
    really bf16 gives the same loss exactly (caught: la != lb)."""
    import copy

    from trainbench.data.sources import make_synthetic

    torch.manual_seed(0)
    model = ResNet18("batchnorm", 8, 10)
    data = make_synthetic(64, "train")
    x = ((torch.as_tensor(data.images).permute(0, 3, 1, 2).float() / 255) - 0.5) / 0.25
    y = torch.as_tensor(data.labels, dtype=torch.long)

    def step(m, dtype):
        m.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in m.parameters()])

    la, ga = step(model, None)
    lb, gb = step(copy.deepcopy(model), torch.bfloat16)
    assert la != lb  # bf16 really ran
    assert abs(la - lb) / la < 8 * BF16_U, (la, lb)
    cos = torch.nn.functional.cosine_similarity(ga, gb, dim=0).item()
    assert cos > 0.8, cos


def test_bf16_training_learns(tmp_path):
    """bf16 end to end: a run's first loss is the fp32 run's up to rounding (same weights, same first batch), and
    the bf16 run learns (its last epoch's loss below its first)."""
    base = [*TINY, "data.train_size=128", "optimizer.lr=0.02", "epochs=3", "test_eval=false"]
    run(compose([*base, "epochs=1"]), tmp_path / "fp32")
    run(compose([*base, "precision=bf16"]), tmp_path / "bf16")
    a = [float(r["loss"]) for r in rows(tmp_path / "fp32" / "batches.csv")]
    b = [float(r["loss"]) for r in rows(tmp_path / "bf16" / "batches.csv")]
    assert len(b) == 12 and a[0] != b[0]  # bf16 really ran
    assert abs(a[0] - b[0]) / a[0] < 8 * BF16_U, (a[0], b[0])
    eb = [float(r["train_loss"]) for r in rows(tmp_path / "bf16" / "epochs.csv")]
    assert eb[-1] < eb[0], eb


@pytest.mark.parametrize("cl", [False, True])
def test_channels_last_reaches_the_model(tmp_path, monkeypatch, cl):
    """Would catch: channels_last=true not applied to the weights or the batches (or applied when false)."""
    from trainbench import recipe

    monkeypatch.setattr(recipe, "step_flops_per_image", lambda *a, **k: 1.0)  # its forward: test_compute.py
    spy = _Spy(monkeypatch)
    run(compose([*TINY, "test_eval=false", f"channels_last={str(cl).lower()}"]), tmp_path / "r")
    assert len(spy.calls) == 3  # the warm-up step (batch shape 32) and the 2 batches
    for c in spy.calls:
        assert c["x_channels_last"] == cl and c["w_channels_last"] == cl, c


def test_channels_last_matches_contiguous(tmp_path):
    base = [*TINY, "epochs=1", "test_eval=false"]
    run(compose(base), tmp_path / "a")
    run(compose([*base, "channels_last=true"]), tmp_path / "b")
    a = [float(r["loss"]) for r in rows(tmp_path / "a" / "batches.csv")]
    b = [float(r["loss"]) for r in rows(tmp_path / "b" / "batches.csv")]
    assert np.allclose(a, b, atol=1e-3), (a, b)


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ConfigError, match="precision='fp16'.*CUDA"):
        run(compose([*TINY, "precision=fp16"]), tmp_path / "r")


def test_events_timing_falls_back_to_sync_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    info = run(compose([*TINY, "timing=events"]), tmp_path / "r")
    assert info["timing_mode"] == "sync"
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["timing"] == "events"


@pytest.mark.slow
def test_compile_time_is_reported_apart(tmp_path):
    info = run(compose([*TINY, "compile=true", "model.width=4"]), tmp_path / "r")
    assert info["status"] == "complete" and info["compile_time_s"] > 0
    r = rows(tmp_path / "r" / "epochs.csv")[0]
    assert float(r["epoch_time_s"]) < info["compile_time_s"]  # compilation is not in the epoch


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("timing", ["sync", "events"])
def test_cuda_fast_path(tmp_path, timing):
    cfg = compose([*TINY, "device=cuda", "loader=device", "precision=bf16", "channels_last=true", f"timing={timing}"])
    info = run(cfg, tmp_path / "r")
    assert info["status"] == "complete" and info["timing_mode"] == timing
    for e in rows(tmp_path / "r" / "epochs.csv"):
        assert e["timing_mode"] == timing
        phases = sum(float(e[c]) for c in ("copy_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s"))
        assert phases == pytest.approx(float(e["compute_time_s"]), rel=0.01)


@pytest.mark.gpu
@requires_cuda
def test_cuda_fp16_with_scaler_and_pinned_loader(tmp_path):
    cfg = compose([*TINY, "device=cuda", "precision=fp16", "workers=2"])
    assert run(cfg, tmp_path / "r")["status"] == "complete"
    b = rows(tmp_path / "r" / "batches.csv")
    (e,) = rows(tmp_path / "r" / "epochs.csv")
    assert int(e["skipped_steps"]) == sum(int(r["skipped"]) for r in b)  # the scaler's first steps may skip


@pytest.mark.gpu
@requires_cuda
def test_cuda_fp16_overflowing_scale_is_recorded_as_skipped_steps():
    """On the GPU, a scale that overflows fp16 gradients makes the scaler skip the step: counted, not taken."""
    from torch import nn

    from trainbench.timing.epoch import StepContext, train_epoch

    dev = torch.device("cuda")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**30, growth_interval=1000)
    ctx = StepContext(model=model, optimizer=opt, device=dev, autocast_dtype=torch.float16, scaler=scaler)
    data = [(torch.randn(4, 3, 8, 8), torch.arange(4)) for _ in range(24)]
    stats = train_epoch(ctx, data, 0, timing="events")
    assert stats.skipped_steps >= 1 and scaler.get_scale() == 2.0 ** (30 - stats.skipped_steps)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_flags_follow_the_key_and_are_recorded(tmp_path, tf32):
    """fp32 means fp32 unless tf32=true; run.json's environment records the flags in force (CUDA reads them)."""
    try:
        info = run(compose([*TINY, "test_eval=false", f"tf32={str(tf32).lower()}"]), tmp_path / "r")
        env = info["environment"]
        assert env["tf32_matmul"] is tf32 and env["tf32_cudnn"] is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # torch's default, for the tests after this one


def test_cpu_bf16_detection_from_flags():
    from trainbench.device import cpu_bf16_native

    assert cpu_bf16_native({"avx2", "avx512f", "avx512_bf16"})
    assert cpu_bf16_native({"avx2", "amx_bf16", "amx_tile"})
    assert not cpu_bf16_native({"avx2", "avx512f", "avx512bw"})  # AVX-512 without BF16: emulated


@pytest.mark.parametrize("native", [False, True])
def test_bf16_warns_where_the_cpu_emulates_it(tmp_path, monkeypatch, caplog, native):
    from trainbench import device

    monkeypatch.setattr(device, "cpu_bf16_native", lambda flags=None: native)
    caplog.set_level("WARNING", logger="trainbench")
    run(compose([*TINY, "test_eval=false", "precision=bf16"]), tmp_path / "r")
    warned = "precision=bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16" in caplog.text
    assert warned is not native


def test_batch_shapes_include_the_short_last_batch():
    from trainbench.recipe import batch_shapes

    assert batch_shapes(80, 32, 32) == ([16, 32], [32])
    assert batch_shapes(64, 0, 32) == ([32], [])
    assert batch_shapes(10, 5, 32) == ([10], [5])


def test_warm_up_restores_model_optimizer_scaler_and_rngs():
    """The warm-up trains on random batches, then puts everything back: the run is as without it."""
    from trainbench.models.resnet import ResNet18
    from trainbench.recipe import warm_up
    from trainbench.timing.epoch import StepContext

    torch.manual_seed(0)
    model = ResNet18("batchnorm", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = StepContext(model=model, optimizer=opt, device=torch.device("cpu"))
    ctx.step(torch.randn(4, 3, 32, 32), torch.arange(4), 0)  # momentum buffers exist, BN stats moved
    gen = torch.Generator().manual_seed(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in opt.state[next(iter(opt.state))].items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    secs = warm_up(ctx, model, gen, [8, 3], [5], image_size=32, classes=10)
    assert secs > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.state[next(iter(opt.state))].items():
        assert torch.equal(v, opt_before[k]), k
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG continues as if nothing ran
    assert torch.equal(
        torch.randint(0, 100, (4,), generator=gen),
        torch.randint(0, 100, (4,), generator=torch.Generator().manual_seed(5)),
    )
    assert model.training and all(p.grad is None for p in model.parameters())


def test_runs_record_their_warm_up(tmp_path):
    info = run(compose([*TINY, "test_eval=false"]), tmp_path / "r")
    assert info["warmup_time_s"] > 0 and "compile_time_s" not in info


@pytest.mark.slow
def test_compile_with_short_last_batch_compiles_outside_the_epochs(tmp_path):
    """compile=true with a short last batch: every shape is compiled in the warm-up, so epoch 0's compute is
    within 3x of epoch 1's (before, a recompilation inside epoch 0 made it 450x)."""
    info = run(
        compose([*TINY, "data.train_size=80", "batch_size=32", "model.width=8", "epochs=2", "compile=true"]),
        tmp_path / "r",
    )
    r = rows(tmp_path / "r" / "epochs.csv")
    c0, c1 = float(r[0]["compute_time_s"]), float(r[1]["compute_time_s"])
    assert c0 < 3 * c1, (c0, c1, info["compile_time_s"])
    assert info["compile_time_s"] > c0


def test_rows_record_their_clock_phases_and_skipped_steps(tmp_path):
    run(compose([*TINY, "epochs=1"]), tmp_path / "r")
    (e,) = rows(tmp_path / "r" / "epochs.csv")
    assert e["timing_mode"] == "sync" and e["skipped_steps"] == "0"
    phases = sum(float(e[c]) for c in ("copy_time_s", "forward_time_s", "backward_time_s", "optimizer_time_s"))
    assert phases == pytest.approx(float(e["compute_time_s"]), rel=0.01)
    for b in rows(tmp_path / "r" / "batches.csv"):
        assert float(b["forward_time_s"]) > 0 and float(b["backward_time_s"]) > 0 and b["skipped"] == "0"
    run(compose([*TINY, "epochs=1", "phase_clocks=false"]), tmp_path / "off")
    (e,) = rows(tmp_path / "off" / "epochs.csv")
    assert e["forward_time_s"] == "" and float(e["compute_time_s"]) > 0


def test_resume_carries_an_older_versions_rows_into_the_new_columns(tmp_path):
    """A run dir written before timing_mode and the phase columns existed is resumed: its rows are kept (the
    new cells empty) under one header, and the new epoch has them filled."""
    d = tmp_path / "r"
    run(compose([*TINY, "epochs=1", "checkpoint.keep_on_complete=true"]), d)
    old_cols = [
        "epoch",
        "batches",
        "samples",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "data_time_s",
        "compute_time_s",
        "other_time_s",
        "epoch_time_s",
        "samples_per_s",
        "eval_time_s",
        "lr",
    ]
    (r0,) = rows(d / "epochs.csv")
    with open(d / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, old_cols, extrasaction="ignore")
        w.writeheader()
        w.writerow(r0)
    info = run(compose([*TINY, "epochs=2", "checkpoint.keep_on_complete=true"]), d)
    assert info["status"] == "complete"
    got = rows(d / "epochs.csv")
    assert [r["epoch"] for r in got] == ["0", "1"] and got[0]["train_loss"] == r0["train_loss"]
    assert got[0]["timing_mode"] == "" and got[1]["timing_mode"] == "sync" and float(got[1]["forward_time_s"]) > 0
