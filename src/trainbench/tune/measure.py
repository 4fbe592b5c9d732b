"""One tuner candidate measured with the run's own build, warm-up, epoch loop and clocks."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..report.stats import Estimate

LAB = {"loader.name": "torch", "workers": 2, "precision": "fp32", "channels_last": False, "compile": False}


@dataclass
class Candidate:
    settings: dict[str, Any]
    stage: str
    ips: list[float] = field(default_factory=list)  # images/s per repeat
    data_share: float = math.nan
    compile_s: float = math.nan
    seconds: float = 0.0  # wall time the measurement took
    data_s: float = 0.0  # projected data and busy seconds over the passes (data_share)
    busy_s: float = 0.0
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
        out += [
            f"precision={s['precision']}",
            f"channels_last={str(s['channels_last']).lower()}",
            f"compile={str(s['compile']).lower()}",
        ]
        return out

    def estimate(self) -> Estimate:
        """images/s over the interleaved repeats, as an Estimate (noise: the repeats)."""
        return (
            Estimate.of(self.label, self.ips, "repeats")
            if self.ips
            else Estimate(self.label, math.nan, math.nan, 0, "none")
        )

    def changes(self) -> int:
        """Settings that differ from the lab config (ties are broken toward fewer)."""
        return sum(self.settings.get(k) != v for k, v in LAB.items())


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


class Prepared:
    """One candidate built and warmed up once, with the run's own recipe and flags; each `one_pass` is one repeat.

    The search interleaves repeats over a stage's candidates (round-robin), so that load that drifts during the
    tuner lands in every candidate's spread, not in one candidate's mean."""

    def __init__(self, cfg: DictConfig, device: torch.device, data: Any, cand: Candidate) -> None:
        from ..recipe import build, compile_and_warm_up

        self.cand, self.device = cand, device
        self.cfg = c = _variant(cfg, cand.settings)
        # the run's own recipe (recipe.build): precision flags, cuDNN, seed, model, step context, loader, generator;
        # then the run's compile and untimed warm-up of every batch shape
        b = build(c, device, data=(data, None))
        warm_s = compile_and_warm_up(b, c)
        if c.compile:
            cand.compile_s = warm_s
        self.model, self.ctx, self.loader, self.timing = b.model, b.ctx, b.train_loader, b.timing

    def one_pass(self, steps: int) -> float:
        """Train `steps` batches from a fresh iterator (DataLoader workers start, as in every epoch); appends and
        returns images/s projected over one real epoch: the first batch (worker start-up included) once, the
        later batches' mean for the rest of the epoch's batches."""
        from ..timing.epoch import train_epoch

        t0 = time.perf_counter()
        recs: list = []
        train_epoch(
            self.ctx,
            _Take(self.loader, steps),
            0,
            on_batch=lambda r, s: recs.append(r),
            timing=self.timing,
            phases=bool(self.cfg.phase_clocks),
        )
        n_epoch = len(self.loader)  # batches in a real epoch of this data
        busy = [r.data_time_s + r.compute_time_s for r in recs]
        data = [r.data_time_s for r in recs]
        later = busy[1:] or busy
        projected = busy[0] + (n_epoch - 1) * sum(later) / len(later)
        data_proj = data[0] + (n_epoch - 1) * sum(data[1:] or data) / len(data[1:] or data)
        size = sum(r.size for r in recs) / len(recs)
        ips = n_epoch * size / projected
        c = self.cand
        c.ips.append(ips)
        c.data_s, c.busy_s = c.data_s + data_proj, c.busy_s + projected
        c.data_share = c.data_s / c.busy_s
        c.seconds += time.perf_counter() - t0
        c.status = "measured"
        return ips


def prepare(cfg: DictConfig, device: torch.device, data: Any, cand: Candidate) -> Prepared:
    """Build and warm up one candidate (the search's seam: the tests put known speeds here)."""
    return Prepared(cfg, device, data, cand)
