"""One tuner candidate measured with the run's own build, warm-up, epoch loop and clocks."""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..report.stats import Estimate

LAB = {"loader.name": "torch", "workers": 2, "precision": "fp32", "channels_last": False, "compile": False}


TUNED_KEYS = ("loader.name", "workers", "precision", "channels_last", "compile")


@dataclass
class Candidate:
    settings: dict[str, Any]
    stage: str
    ips: list[float] = field(default_factory=list)  # images/s per repeat
    data_share: float = math.nan
    compile_s: float = math.nan
    seconds: float = 0.0  # wall time the measurement took
    status: str = "pending"  # measured | skipped: ... | failed: ...

    @property
    def label(self) -> str:
        s = self.settings
        loader = "loader=device" if s["loader.name"] == "device" else f"loader=torch workers={s['workers']}"
        return f"{loader} precision={s['precision']} channels_last={str(s['channels_last']).lower()}" + (
            " compile=true" if s["compile"] else ""
        )

    @property
    def overrides(self) -> list[str]:
        s = self.settings
        out = [f"loader={s['loader.name']}"]
        if s["loader.name"] == "torch":
            out.append(f"workers={s['workers']}")
        out += [f"precision={s['precision']}", f"channels_last={str(s['channels_last']).lower()}",
                f"compile={str(s['compile']).lower()}"]  # fmt: skip
        return out

    def estimate(self) -> Estimate:
        mean = statistics.fmean(self.ips) if self.ips else math.nan
        se = statistics.stdev(self.ips) / math.sqrt(len(self.ips)) if len(self.ips) >= 2 else math.nan
        return Estimate(self.label, mean, se, len(self.ips), "repeats")


def worker_counts(cores: int) -> list[int]:
    """A few DataLoader worker counts for this core count: none, the lab's 2, half and all of the cores."""
    return sorted({0, min(2, cores), max(1, cores // 2), cores})


def precisions(device: torch.device, facts: Any = None) -> tuple[list[str], str]:
    """Precisions worth measuring here and why: bf16 only where it is native (emulated bf16 is ~20x slower)."""
    from ..device import resolve_precision

    auto, why = resolve_precision("auto", device, facts)
    cands = ["fp32"] + (["bf16"] if auto == "bf16" else []) + (["fp16"] if device.type == "cuda" else [])
    return cands, why


class _Take:
    """The first n batches of a loader (a fresh iterator each epoch, as a real epoch has)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def _variant(cfg: DictConfig, settings: dict[str, Any]) -> DictConfig:
    c = copy.deepcopy(cfg)
    for k, v in settings.items():
        OmegaConf.update(c, k, v)
    return c


def measure(cfg: DictConfig, device: torch.device, data: Any, cand: Candidate, steps: int, warmup_steps: int,
            repeats: int) -> None:  # fmt: skip
    """Train warmup_steps + steps batches, repeats times, with the run's own build, warm-up and epoch loop."""
    from ..build import batch_shapes, build_model, seed_everything, step_context, warm_up
    from ..engine import train_epoch
    from ..loaders import DeviceLoader, make_loader

    c = _variant(cfg, cand.settings)
    t0 = time.perf_counter()
    seed_everything(c.seed)
    model = build_model(c, len(data.classes), device)
    ctx = step_context(c, model, device)  # the run's own step: optimizer, scaler, autocast, layout
    gen = torch.Generator().manual_seed(c.seed)
    loader = make_loader(c, data, True, device, gen)
    gen = loader.generator if isinstance(loader, DeviceLoader) else gen
    if c.compile:
        ctx.model = torch.compile(model)
    train_sizes, _ = batch_shapes(len(data), 0, c.batch_size)
    warm_s = warm_up(ctx, model, gen, train_sizes, [], image_size=int(data.images.shape[1]), classes=len(data.classes))
    if c.compile:
        cand.compile_s = warm_s
    data_s = busy_s = 0.0
    for _ in range(repeats):
        recs: list = []
        train_epoch(ctx, _Take(loader, warmup_steps + steps), 0, on_batch=lambda r, s, recs=recs: recs.append(r),
                    timing=c.timing if device.type == "cuda" else "sync", phases=False)  # fmt: skip
        timed = recs[warmup_steps:]
        if not timed:
            raise ValueError(f"the data has {len(recs)} batches of {c.batch_size}; tune.warmup_steps="
                             f"{warmup_steps} leaves none to time: use more data or fewer warm-up steps")  # fmt: skip
        busy = sum(r.data_time_s + r.compute_time_s for r in timed)
        cand.ips.append(sum(r.size for r in timed) / busy)
        data_s, busy_s = data_s + sum(r.data_time_s for r in timed), busy_s + busy
    cand.data_share = data_s / busy_s
    cand.seconds = time.perf_counter() - t0
    cand.status = "measured"
