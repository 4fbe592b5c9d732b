"""The tuner's search: stages of candidates within a time budget, the ranked table, the winner preset."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import ConfigError
from ..data import load_data
from ..device import device_name
from ..plan import make_plan
from ..report.stats import differ
from .measure import LAB, Candidate, _variant, measure, precisions, worker_counts

TUNED_PRESET = Path(__file__).resolve().parents[3] / "conf" / "tuned" / "winner.yaml"


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


def _check(tc: Any) -> None:
    """tune.* ranges, as config errors naming the key."""
    for key, v, ok in (("tune.steps", tc.steps, tc.steps >= 1), ("tune.repeats", tc.repeats, tc.repeats >= 1),
                       ("tune.warmup_steps", tc.warmup_steps, tc.warmup_steps >= 0),
                       ("tune.budget_s", tc.budget_s, tc.budget_s > 0)):  # fmt: skip
        if not ok:
            raise ConfigError(key, v, "an integer >= 1" if key != "tune.warmup_steps" else "an integer >= 0")


class _Session:
    """One tuner invocation: the data, the budget's clock, and every candidate measured so far."""

    def __init__(self, cfg: DictConfig, device: torch.device, data: Any, result: TuneResult) -> None:
        self.cfg, self.device, self.data, self.result = cfg, device, data, result
        self.start = time.perf_counter()

    def run_one(self, settings: dict[str, Any], stage: str) -> Candidate:
        """Measure one candidate (once: a setting measured in an earlier stage is reused), within the budget."""
        tc, result = self.cfg.tune, self.result
        for c in result.candidates:
            if c.settings == settings:
                return c  # measured already in an earlier stage
        cand = Candidate(dict(settings), stage)
        result.candidates.append(cand)
        elapsed = time.perf_counter() - self.start
        if elapsed > tc.budget_s:
            cand.status = f"skipped: budget ({tc.budget_s:.0f} s, tune.budget_s) spent"
            return cand
        print(f"[{elapsed:5.0f}s/{tc.budget_s:.0f}s] {stage}: {cand.label} ...", end=" ", flush=True)
        try:
            measure(self.cfg, self.device, self.data, cand, tc.steps, tc.warmup_steps, tc.repeats)
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

    def stages(self, precs: list[str], workers: list[int], cls: list[bool]) -> None:
        """1 compute settings on the device loader; 2 loaders at the winning compute (and the lab config);
        3 compile on the best so far, while half the budget is left."""
        tc, result = self.cfg.tune, self.result
        base = {**LAB, "loader.name": "device", "workers": 0}
        stage1 = [self.run_one({**base, "precision": p, "channels_last": cl}, "1 compute") for p in precs for cl in cls]
        b1 = _best(stage1) or Candidate(base, "")
        compute = {k: b1.settings[k] for k in ("precision", "channels_last")}
        result.lab = self.run_one(dict(LAB), "lab config")
        loaders = [{**LAB, **compute, "loader.name": "torch", "workers": w} for w in workers]
        loaders.append({**base, **compute})
        stage2 = [self.run_one(s, "2 data") for s in loaders] + [result.lab]
        b2 = _best(stage1 + stage2)
        if tc.compile and b2 is not None:
            left = tc.budget_s - (time.perf_counter() - self.start)
            if left >= tc.budget_s / 2:
                self.run_one({**b2.settings, "compile": True}, "3 compile")
            else:
                result.notes.append(f"compile=true not tried: {left:.0f} s of the budget left (< half of "
                                    f"tune.budget_s={tc.budget_s:.0f})")  # fmt: skip


def _best(cands: list[Candidate]) -> Candidate | None:
    done = [c for c in cands if c.status == "measured"]
    return max(done, key=lambda c: c.estimate().value) if done else None


def tune(cfg: DictConfig) -> TuneResult:
    """Measure the candidates within cfg.tune.budget_s, write tune.csv and the winner preset; Ctrl-C keeps results."""
    tc = cfg.tune
    _check(tc)
    device = make_plan(_variant(cfg, LAB)).device  # the data is checked there too
    out_dir = Path(tc.out) if tc.out else Path("outputs") / "tune" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    data, _ = load_data(cfg.data, test_needed=False)
    cores = os.cpu_count() or 1
    precs, why = (list(tc.precisions), "tune.precisions as given") if tc.precisions else precisions(device)
    workers = list(tc.workers) if tc.workers else worker_counts(cores)
    result = TuneResult([], None, None, out_dir, notes=[f"precisions {', '.join(precs)}: {why}"])
    print(f"trainbench.tune: {device_name(device)}, {cores} cores; model.width={cfg.model.width} batch_size="
          f"{cfg.batch_size} data={cfg.data.name}; {tc.repeats} x {tc.steps} timed steps per candidate after "
          f"{tc.warmup_steps} untimed; budget {tc.budget_s:.0f} s (tune.budget_s)", flush=True)  # fmt: skip
    try:
        _Session(cfg, device, data, result).stages(precs, workers, list(tc.channels_last))
    except KeyboardInterrupt:
        result.interrupted = True
        for c in result.candidates:
            if c.status == "pending":
                c.status = "interrupted"
        result.notes.append("interrupted (Ctrl-C): the table holds what was measured before it")
    result.winner = _best(result.candidates)
    _write(result, cfg, device)
    return result


def _write(result: TuneResult, cfg: DictConfig, device: torch.device) -> None:
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
