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

from .. import presets
from ..config import ConfigError
from ..data.sources import load_data
from ..device import device_name
from ..plan import make_plan, resolve_model
from ..report.stats import differ
from .measure import LAB, Candidate, _variant, precisions, prepare, worker_counts


@dataclass
class TuneResult:
    candidates: list[Candidate]
    winner: Candidate | None  # the preset's setting: a candidate that beats the lab config beyond the noise, or lab
    lab: Candidate | None
    out_dir: Path
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    verdict: str = ""
    wrote: list[Path] = field(default_factory=list)
    base: list[str] = field(
        default_factory=list
    )  # the tuner's own overrides (model=, data=, ...): the commands keep them


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
        out.append(
            {
                "rank": i + 1 if measured else None,
                "setting": c.label,
                "stage": c.stage,
                "images_per_s": e.value,
                "se": e.se,
                "repeats": len(c.ips),
                "vs_lab": e.value / lab if lab else math.nan,
                "data_share": c.data_share,
                "compile_s": c.compile_s,
                "within_noise_of_best": tie,
                "seconds": c.seconds,
                "status": c.status,
                "overrides": " ".join(c.overrides),
            }
        )
    return out


def render(result: TuneResult) -> str:
    """The ranked table as text, then the verdict and the preset's overrides."""
    rs = rows(result)
    head = ["rank", "setting", "images/s", "± se", "vs lab", "data", "compile s", "note"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rs:
        note = (
            "tie with #1 (within noise)"
            if r["within_noise_of_best"]
            else ("" if r["status"] == "measured" else r["status"])
        )
        lines.append(
            " | ".join(
                [
                    str(r["rank"] or "-"),
                    r["setting"],
                    f"{r['images_per_s']:.1f}",
                    f"{r['se']:.1f}" if not math.isnan(r["se"]) else "?",
                    f"{r['vs_lab']:.2f}x" if not math.isnan(r["vs_lab"]) else "?",
                    f"{r['data_share']:.0%}" if not math.isnan(r["data_share"]) else "?",
                    f"{r['compile_s']:.0f}" if not math.isnan(r["compile_s"]) else "",
                    note,
                ]
            )
        )
    text = "\n".join(lines)
    if result.verdict:
        text += f"\n\n{result.verdict}"
    if result.winner is not None:
        base = "".join(f"{b} " for b in result.base)
        text += f"\n  python train.py {base}{' '.join(result.winner.overrides)}"
        text += (
            f"\n  python train.py {base}experiment=fastest   (on this machine, with this model, batch size and data)"
        )
    if result.winner is not None and result.winner.settings.get("precision") in ("bf16", "fp16"):
        prec = result.winner.settings["precision"]
        text += (
            f"\nnote: precision={prec} changes the numerics (autocast regions compute in {prec}), so it may change "
            "accuracy: compare a few seeds of both (`-m seed=0,1,2 precision=fp32," + prec + "`) before adopting it"
        )
    for n in result.notes:
        text += f"\nnote: {n}"
    return text


def choose(cands: list[Candidate], lab: Candidate | None) -> tuple[Candidate | None, str]:
    """The preset's setting and the verdict: among the settings within the noise of the fastest, the one with the
    fewest changes from the lab config that beats the lab config beyond the noise; else the lab config itself."""
    done = [c for c in cands if c.status == "measured"]
    if not done:
        return None, "nothing was measured"
    best = max(done, key=lambda c: c.estimate().value)
    if lab is None or lab.status != "measured":
        return best, f"fastest measured: {best.label} (the lab config was not measured: no comparison with it)"
    le = lab.estimate()
    beats = [
        c
        for c in done
        if c is not lab
        and c.estimate().value > le.value
        and differ(c.estimate(), le)
        and not differ(c.estimate(), best.estimate())
    ]
    if not beats:
        return lab, (
            "no setting beats the lab config here beyond the noise (interleaved repeats, Welch's t): the "
            "preset is the lab config"
        )
    w = min(beats, key=lambda c: (c.changes(), -c.estimate().value))
    ratio = w.estimate().value / le.value
    tie = " (the fewest changes among the settings tied with the fastest)" if w is not best else ""
    return w, f"winner: {w.label}, {ratio:.2f}x the lab config beyond the noise{tie}"


def _check(tc: Any) -> None:
    """tune.* ranges, as config errors naming the key."""
    for key, v, ok in (
        ("tune.steps", tc.steps, tc.steps >= 2),
        ("tune.repeats", tc.repeats, tc.repeats >= 2),
        ("tune.budget_s", tc.budget_s, tc.budget_s > 0),
    ):
        if not ok:
            raise ConfigError(
                key,
                v,
                "a number > 0" if key == "tune.budget_s" else "an integer >= 2",
                "repeats are the noise that decides ties" if key == "tune.repeats" else "",
            )


class _Session:
    """One tuner invocation: the data, the budget's clock, and every candidate measured so far."""

    def __init__(self, cfg: DictConfig, device: torch.device, data: Any, result: TuneResult) -> None:
        self.cfg, self.device, self.data, self.result = cfg, device, data, result
        self.start = time.perf_counter()

    def _left(self) -> float:
        return self.cfg.tune.budget_s - (time.perf_counter() - self.start)

    def stage(self, settings: list[dict[str, Any]], name: str) -> list[Candidate]:
        """Measure a stage's candidates with interleaved repeats: round r measures every candidate once, in order,
        before round r + 1 starts. A setting measured in an earlier stage is measured afresh here."""
        tc, result = self.cfg.tune, self.result
        cands, prepared = [], {}
        for st in settings:
            old = next((c for c in result.candidates if c.settings == st), None)
            if old is not None:
                result.candidates.remove(old)
            cand = Candidate(dict(st), name)
            result.candidates.append(cand)
            cands.append(cand)
        for cand in cands:
            if self._left() <= 0:
                cand.status = f"skipped: budget ({tc.budget_s:.0f} s, tune.budget_s) spent"
                continue
            try:
                prepared[id(cand)] = prepare(self.cfg, self.device, self.data, cand)
            except (KeyboardInterrupt, ValueError):
                raise
            except Exception as e:  # a candidate this machine cannot run (e.g. compile without a compiler)
                cand.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"{name}: {cand.label}: {cand.status}", flush=True)
        for r in range(tc.repeats):
            for cand in cands:
                if id(cand) not in prepared or self._left() <= 0:
                    continue
                try:
                    ips = prepared[id(cand)].one_pass(tc.steps)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # a candidate that fails mid-measurement (diverged, out of memory): the
                    # others go on, and tune.csv says why this one has no figure
                    cand.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                    cand.ips.clear()
                    del prepared[id(cand)]
                    print(f"{name}: {cand.label}: {cand.status}", flush=True)
                    continue
                print(
                    f"[{tc.budget_s - self._left():5.0f}s/{tc.budget_s:.0f}s] {name}, round {r + 1}/{tc.repeats}: "
                    f"{cand.label}: {ips:.1f} images/s",
                    flush=True,
                )
        return cands

    def stages(self, precs: list[str], workers: list[int], cls: list[bool]) -> None:
        """1 compute settings on the device loader; 2 loaders at the winning compute, with the lab config and
        stage 1's best interleaved; 3 compile on the best so far against the lab config, while half the budget
        is left."""
        tc, result = self.cfg.tune, self.result
        base = {**LAB, "loader.name": "device", "workers": 0}
        stage1 = self.stage([{**base, "precision": p, "channels_last": cl} for p in precs for cl in cls], "1 compute")
        b1 = _best(stage1) or Candidate(base, "")
        compute = {k: b1.settings[k] for k in ("precision", "channels_last")}
        loaders = [dict(LAB)] + [{**LAB, **compute, "loader.name": "torch", "workers": w} for w in workers]
        loaders.append({**base, **compute})
        stage2 = self.stage(list({repr(x): x for x in loaders}.values()), "2 data")
        result.lab = stage2[0]
        b2 = _best(stage2)
        if tc.compile and b2 is not None:
            if self._left() >= tc.budget_s / 2:
                self.stage([dict(LAB), {**b2.settings}, {**b2.settings, "compile": True}], "3 compile")
                result.lab = next(c for c in result.candidates if c.settings == LAB)
            else:
                result.notes.append(
                    f"compile=true not tried: {self._left():.0f} s of the budget left (< half of "
                    f"tune.budget_s={tc.budget_s:.0f})"
                )


def _best(cands: list[Candidate]) -> Candidate | None:
    done = [c for c in cands if c.status == "measured"]
    return max(done, key=lambda c: c.estimate().value) if done else None


def model_label(cfg: DictConfig) -> str:
    """The model as the tuner's first line names it (the lab's: with its width)."""
    from ..models import label

    name = label(cfg.model)
    return f"{name} (model.width={cfg.model.width})" if name == "resnet18" else name


def tune(cfg: DictConfig) -> TuneResult:
    """Measure the candidates within cfg.tune.budget_s, write tune.csv and the winner preset; Ctrl-C keeps results."""
    tc = cfg.tune
    _check(tc)
    device = make_plan(_variant(cfg, LAB)).device  # the data is checked there too
    cfg = resolve_model(cfg)  # the model's class count and the data's image side, as a run records them
    out_dir = Path(tc.out) if tc.out else Path("outputs") / "tune" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    data, _ = load_data(cfg.data, test_needed=False)
    cores = os.cpu_count() or 1
    precs, why = (list(tc.precisions), "tune.precisions as given") if tc.precisions else precisions(device)
    workers = list(tc.workers) if tc.workers else worker_counts(cores)
    result = TuneResult([], None, None, out_dir, notes=[f"precisions {', '.join(precs)}: {why}"])
    print(
        f"trainbench.tune: {device_name(device)}, {cores} cores; model={model_label(cfg)} batch_size="
        f"{cfg.batch_size} data={cfg.data.name}; {tc.repeats} interleaved repeats x {tc.steps} timed steps per "
        f"candidate (worker start-up counted, projected over an epoch); budget {tc.budget_s:.0f} s "
        "(tune.budget_s)",
        flush=True,
    )
    try:
        _Session(cfg, device, data, result).stages(precs, workers, list(tc.channels_last))
    except KeyboardInterrupt:
        result.interrupted = True
        for c in result.candidates:
            if c.status == "pending":
                c.status = "interrupted"
        result.notes.append("interrupted (Ctrl-C): the table holds what was measured before it")
    result.winner, result.verdict = choose(result.candidates, result.lab)
    _write(result, cfg, device)
    return result


def _write(result: TuneResult, cfg: DictConfig, device: torch.device) -> None:
    """tune.csv, and the preset (the winner's settings, or the lab config) beside it and in the user's cache."""
    rs = rows(result)
    if rs:
        with open(result.out_dir / "tune.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, list(rs[0]))
            w.writeheader()
            w.writerows(rs)
        result.wrote.append(result.out_dir / "tune.csv")
    if result.winner is not None and not result.interrupted:
        settings = {k: result.winner.settings[k] for k in LAB}
        note = (
            f"Written by python -m trainbench.tune on {datetime.now().isoformat(timespec='seconds')} for "
            f"{device_name(device)}: {result.verdict}."
        )
        result.wrote += presets.write(
            settings, presets.key_of(cfg, device), note, result.out_dir, to_cache=bool(cfg.tune.write_preset)
        )
