"""python -m trainbench.tune [overrides]: measure the speed settings on this machine and name the fastest.

For the configured run (model, batch size, data), each candidate setting trains a few steps with the same
loop and clocks as a real run (train_epoch, after the untimed warm_up a run does), and the candidates are
ranked by images/s. Stages, so that a few minutes suffice:
  1. compute settings (precision x channels_last) on the device loader, which has no data-loading cost;
  2. the data pipeline (loader=torch with a few worker counts, loader=device) at the winning compute
     settings, where data loading matters most; the lab config (loader=torch, workers=2, fp32) as well;
  3. compile=true on the best so far, while enough of the budget is left (its compile time is its own column).
Throughput = images / (data + compute time) over the timed steps; the first warmup_steps of every
measurement (worker start-up, first-batch effects) are drawn but not counted. Two candidates within
2 standard errors of each other (from repeats) are reported as a tie, not as an order.
Writes tune.csv and winner.yaml to tune.out (default outputs/tune/<date>_<time>) and conf/tuned/winner.yaml,
which `python train.py experiment=fastest` uses.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .findings import Estimate, differ

log = logging.getLogger("trainbench.tune")

LAB = {"loader.name": "torch", "workers": 2, "precision": "fp32", "channels_last": False, "compile": False}
TUNED_KEYS = ("loader.name", "workers", "precision", "channels_last", "compile")
TUNED_PRESET = Path(__file__).resolve().parents[2] / "conf" / "tuned" / "winner.yaml"


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
    from .device import resolve_precision

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
    from .engine import train_epoch
    from .loaders import DeviceLoader, make_loader
    from .run import batch_shapes, build_model, seed_everything, step_context, warm_up

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


@dataclass
class TuneResult:
    candidates: list[Candidate]
    winner: Candidate | None
    lab: Candidate | None
    out_dir: Path
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def _ranked(cands: list[Candidate]) -> list[Candidate]:
    done = [c for c in cands if c.status == "measured"]
    return sorted(done, key=lambda c: -c.estimate().value) + [c for c in cands if c.status != "measured"]


def rows(result: TuneResult) -> list[dict[str, Any]]:
    """tune.csv's rows: ranked, with images/s, its standard error, speed against the lab config, ties marked."""
    ranked = _ranked(result.candidates)
    best = ranked[0].estimate() if ranked and ranked[0].status == "measured" else None
    lab = result.lab.estimate().value if result.lab is not None and result.lab.status == "measured" else math.nan
    out = []
    for i, c in enumerate(ranked):
        e = c.estimate()
        measured = c.status == "measured"
        tie = measured and best is not None and c is not ranked[0] and not differ(e, best)
        out.append({
            "rank": i + 1 if measured else None, "setting": c.label, "stage": c.stage,
            "images_per_s": e.value, "se": e.se, "repeats": len(c.ips), "vs_lab": e.value / lab if lab else math.nan,
            "data_share": c.data_share, "compile_s": c.compile_s, "within_noise_of_best": tie,
            "seconds": c.seconds, "status": c.status, "overrides": " ".join(c.overrides),
        })  # fmt: skip
    return out


def render(result: TuneResult) -> str:
    """The ranked table as text, then the winner's overrides."""
    rs = rows(result)
    head = ["rank", "setting", "images/s", "± se", "vs lab", "data", "compile s", "note"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rs:
        note = (
            "tie with #1 (within noise)"
            if r["within_noise_of_best"]
            else ("" if r["status"] == "measured" else r["status"])
        )
        lines.append(" | ".join([
            str(r["rank"] or "-"), r["setting"], f"{r['images_per_s']:.1f}", f"{r['se']:.1f}" if not math.isnan(r["se"]) else "?",
            f"{r['vs_lab']:.2f}x" if not math.isnan(r["vs_lab"]) else "?", f"{r['data_share']:.0%}" if not math.isnan(r["data_share"]) else "?",
            f"{r['compile_s']:.0f}" if not math.isnan(r["compile_s"]) else "", note,
        ]))  # fmt: skip
    text = "\n".join(lines)
    if result.winner is not None:
        text += f"\n\nwinner: {result.winner.label}\n  python train.py {' '.join(result.winner.overrides)}"
        text += "\n  python train.py experiment=fastest   (uses conf/tuned/winner.yaml, unless tune.write_preset=false)"
        ties = [r["setting"] for r in rs if r["within_noise_of_best"]]
        if ties:
            text += f"\n  within measured noise of the winner (no real order between them): {'; '.join(ties)}"
    for n in result.notes:
        text += f"\nnote: {n}"
    return text


def winner_yaml(c: Candidate, lab: Candidate | None, machine: str) -> str:
    """A preset (package _global_) that sets the winner's keys; experiment=fastest includes it."""
    s = c.settings
    vs = (
        f"{c.estimate().value / lab.estimate().value:.2f}x the lab config"
        if lab and lab.ips
        else "lab config not measured"
    )
    return (
        "# @package _global_\n"
        f"# Written by python -m trainbench.tune on {datetime.now().isoformat(timespec='seconds')} for {machine}:\n"
        f"# {c.estimate().value:.1f} images/s measured, {vs}. Re-run the tuner on another machine.\n"
        f"loader:\n  name: {s['loader.name']}\nworkers: {s['workers']}\nprecision: {s['precision']}\n"
        f"channels_last: {str(s['channels_last']).lower()}\ncompile: {str(s['compile']).lower()}\n"
    )


def tune(cfg: DictConfig) -> TuneResult:
    """Measure the candidates within cfg.tune.budget_s, write tune.csv and the winner preset; Ctrl-C keeps results."""
    from .data import check_available, load_data
    from .device import device_name
    from .run import make_plan

    tc = cfg.tune
    for key, v, ok in (("tune.steps", tc.steps, tc.steps >= 1), ("tune.repeats", tc.repeats, tc.repeats >= 1),
                       ("tune.warmup_steps", tc.warmup_steps, tc.warmup_steps >= 0),
                       ("tune.budget_s", tc.budget_s, tc.budget_s > 0)):  # fmt: skip
        if not ok:
            from .config import ConfigError

            raise ConfigError(key, v, "an integer >= 1" if key != "tune.warmup_steps" else "an integer >= 0")
    plan = make_plan(_variant(cfg, LAB))
    device = plan.device
    check_available(cfg.data)
    out_dir = Path(tc.out) if tc.out else Path("outputs") / "tune" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    data, _ = load_data(cfg.data, test_needed=False)
    cores = os.cpu_count() or 1
    precs, why = (list(tc.precisions), "tune.precisions as given") if tc.precisions else precisions(device)
    workers = list(tc.workers) if tc.workers else worker_counts(cores)
    cls = list(tc.channels_last)
    result = TuneResult([], None, None, out_dir, notes=[f"precisions {', '.join(precs)}: {why}"])
    start = time.perf_counter()
    print(f"trainbench.tune: {device_name(device)}, {cores} cores; model.width={cfg.model.width} batch_size="
          f"{cfg.batch_size} data={cfg.data.name}; {tc.repeats} x {tc.steps} timed steps per candidate after "
          f"{tc.warmup_steps} untimed; budget {tc.budget_s:.0f} s (tune.budget_s)", flush=True)  # fmt: skip

    def run_one(settings: dict[str, Any], stage: str) -> Candidate:
        for c in result.candidates:
            if c.settings == settings:
                return c  # measured already in an earlier stage
        cand = Candidate(dict(settings), stage)
        result.candidates.append(cand)
        elapsed = time.perf_counter() - start
        if elapsed > tc.budget_s:
            cand.status = f"skipped: budget ({tc.budget_s:.0f} s, tune.budget_s) spent"
            return cand
        print(f"[{elapsed:5.0f}s/{tc.budget_s:.0f}s] {stage}: {cand.label} ...", end=" ", flush=True)
        try:
            measure(cfg, device, data, cand, tc.steps, tc.warmup_steps, tc.repeats)
        except (KeyboardInterrupt, ValueError):
            raise
        except Exception as e:  # a candidate this machine cannot run (e.g. compile without a compiler)
            cand.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            print(cand.status, flush=True)
            return cand
        e = cand.estimate()
        print(f"{e.value:.1f} images/s" + (f" ± {e.se:.1f}" if not math.isnan(e.se) else "") +
              (f" (compile {cand.compile_s:.0f} s)" if not math.isnan(cand.compile_s) else ""), flush=True)  # fmt: skip
        return cand

    def best(cands: list[Candidate]) -> Candidate | None:
        done = [c for c in cands if c.status == "measured"]
        return max(done, key=lambda c: c.estimate().value) if done else None

    try:
        base = {**LAB, "loader.name": "device", "workers": 0}
        stage1 = [run_one({**base, "precision": p, "channels_last": cl}, "1 compute") for p in precs for cl in cls]
        b1 = best(stage1) or Candidate(base, "")
        compute = {k: b1.settings[k] for k in ("precision", "channels_last")}
        result.lab = run_one(dict(LAB), "lab config")
        loaders = [{**LAB, **compute, "loader.name": "torch", "workers": w} for w in workers]
        loaders.append({**base, **compute})
        stage2 = [run_one(s, "2 data") for s in loaders] + [result.lab]
        b2 = best(stage1 + stage2)
        if tc.compile and b2 is not None:
            left = tc.budget_s - (time.perf_counter() - start)
            if left >= tc.budget_s / 2:
                run_one({**b2.settings, "compile": True}, "3 compile")
            else:
                result.notes.append(f"compile=true not tried: {left:.0f} s of the budget left (< half of "
                                    f"tune.budget_s={tc.budget_s:.0f})")  # fmt: skip
    except KeyboardInterrupt:
        result.interrupted = True
        for c in result.candidates:
            if c.status == "pending":
                c.status = "interrupted"
        result.notes.append("interrupted (Ctrl-C): the table holds what was measured before it")
    result.winner = best(result.candidates)
    _write(result, cfg, device)
    return result


def _write(result: TuneResult, cfg: DictConfig, device: torch.device) -> None:
    import csv

    from .device import device_name

    rs = rows(result)
    if rs:
        with open(result.out_dir / "tune.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, list(rs[0]))
            w.writeheader()
            w.writerows(rs)
    if result.winner is not None:
        text = winner_yaml(result.winner, result.lab, device_name(device))
        (result.out_dir / "winner.yaml").write_text(text)
        if cfg.tune.write_preset:
            TUNED_PRESET.parent.mkdir(exist_ok=True)
            TUNED_PRESET.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m trainbench.tune [Hydra overrides, tune.* included]."""
    from .cli import _exit_with
    from .config import ConfigError
    from .data import DataError
    from .inspect import compose

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = compose(args)
        result = tune(cfg)
    except (ConfigError, DataError, ValueError) as e:
        _exit_with(e)
        return 1
    print()
    print(render(result))
    wrote = [result.out_dir / "tune.csv"] + ([result.out_dir / "winner.yaml"] if result.winner else [])
    wrote += [TUNED_PRESET] if result.winner and cfg.tune.write_preset else []
    print("\nwrote " + ", ".join(map(str, wrote)))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
