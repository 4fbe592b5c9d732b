"""`python -m trainbench.summarize DIR`: summary.csv, the lab's tables (C2-C7, Q1-Q4), findings, plots, report.md.

Runs are found by their run.json anywhere under DIR. Only runs whose status is `complete` enter a table or
an average; the others are listed with their status and error. The report is a list of parts (PARTS): each
is one function of the runs returning its markdown, tables, findings and plots, so adding a part is one
function plus one list entry. Every finding also goes to DIR/findings.json, with `significant` set from
the measured noise (see trainbench.findings).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .findings import Estimate, Finding, accuracy_finding, compare, differ, estimates, noise_note
from .records import BATCH_COLUMNS, EPOCH_COLUMNS, PHASE_COLUMNS, read_json, read_rows

log = logging.getLogger("trainbench")

# Flattened config keys shown under a short name when they vary across runs.
SHORT = {"device.name": "device", "optimizer.name": "optimizer", "norm.name": "norm", "data.name": "data",
         "loader.name": "loader"}  # fmt: skip
IGNORED = ("faults.", "progress", "resume.", "checkpoint.", "data.root", "tune.")
TIME_COLS = ["epoch_time_s", "data_time_s", "compute_time_s", "other_time_s"]
TEXT_COLUMNS = ["timing_mode"]  # epochs.csv's non-numeric columns
C2_IN_REPORT = 3  # C2 tables shown in report.md; the others are only in tables/
FLOAT_FORMAT = "%.6g"  # CSV floats: 6 significant digits


@dataclass
class Run:
    """One run dir as the summarizer sees it."""

    path: Path
    name: str
    status: str
    error: str | None
    info: dict
    epochs: pd.DataFrame
    settings: dict = field(default_factory=dict)
    _batches: pd.DataFrame | None = None

    @property
    def batches(self) -> pd.DataFrame:
        """batches.csv as numbers (read on first use)."""
        if self._batches is None:
            rows = read_rows(self.path / "batches.csv", BATCH_COLUMNS)
            self._batches = pd.DataFrame(rows, columns=BATCH_COLUMNS).apply(pd.to_numeric, errors="coerce")
        return self._batches

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items() if k != "seed") or self.name


@dataclass
class Context:
    """What every part sees: the runs, the summary table, and where plots go."""

    root: Path
    runs: list[Run]
    done: list[Run]  # complete runs with at least one epoch row
    table: pd.DataFrame  # one row per run (summary.csv)
    varying: list[str]
    inspect_models: bool = True

    @property
    def by(self) -> list[str]:
        """Varying settings other than the seed (repeats)."""
        return [v for v in self.varying if v != "seed"]

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "complete"] if len(self.table) else self.table

    def order(self, key: str) -> list[Any]:
        """The values of key among complete runs, in sweep (job) order."""
        return list(dict.fromkeys(r.settings.get(key) for r in self.done))

    def groups(self, key: str) -> list[tuple[Any, list[tuple[dict, pd.DataFrame, pd.DataFrame]]]]:
        """Per value of key (sweep order): (summary row, epochs, batches) of its complete runs."""
        rows = {r.name: row for r, row in zip(self.runs, self.table.to_dict("records"))}
        return [(v, [(rows[r.name], r.epochs, r.batches) for r in self.done if r.settings.get(key) == v])
                for v in self.order(key)]  # fmt: skip

    def missing(self, key: str) -> list[str]:
        """Values of key that were asked for but did not complete, with their status."""
        have = set(self.order(key))
        out = []
        for r in self.runs:
            v = r.settings.get(key)
            if r not in self.done and v is not None and v not in have:
                out.append(f"{key}={v} ({r.status}{': ' + r.error if r.error else ''})")
        return out

    def classes(self) -> int:
        for r in self.done:
            n = ((r.info.get("config") or {}).get("model") or {}).get("num_classes")
            if n:
                return int(n)
        return 10


@dataclass
class PartOutput:
    md: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


@dataclass
class Summary:
    runs: list[Run]
    varying: list[str]
    table: pd.DataFrame
    summary_path: Path
    report_path: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)


def refused_jobs(root: Path) -> list[dict]:
    """Jobs of the latest sweep invocation that were refused (their run dir held other settings)."""
    out = [read_json(p) for p in sorted((root / ".refused").glob("*.json"))]
    return sorted((r for r in out if r), key=lambda r: int(r.get("job", 0)))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def find_runs(root: Path) -> list[Run]:
    """Every run dir under root (a dir holding run.json), in natural order of their paths (= job order)."""

    def key(p: Path) -> list:
        return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(root).parts]

    runs = []
    for rj in sorted(root.rglob("run.json"), key=lambda p: key(p.parent)):
        info = read_json(rj) or {"status": "unreadable", "error": "run.json could not be parsed"}
        rows = read_rows(rj.parent / "epochs.csv", EPOCH_COLUMNS)  # tolerates a truncated last line
        df = pd.DataFrame(rows, columns=EPOCH_COLUMNS)
        text = df[TEXT_COLUMNS].replace("", None)
        df = df.apply(pd.to_numeric, errors="coerce")
        df[TEXT_COLUMNS] = text
        name = str(rj.parent.relative_to(root)) if rj.parent != root else rj.parent.name
        runs.append(Run(rj.parent, name, str(info.get("status", "unknown")), info.get("error"), info, df))
    return runs


def _varying(runs: list[Run]) -> list[str]:
    flat = [_flatten(r.info.get("config") or {}) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    # a key varies when the runs that record it disagree (a failed job's run.json may record less)
    vary = [k for k in keys if len({repr(f[k]) for f in flat if k in f}) > 1 and not k.startswith(IGNORED)]
    groups_varying = {k.split(".")[0] for k in vary if k in SHORT}
    # keys inside a group whose choice varies are explained by the choice (e.g. optimizer.momentum)
    vary = [k for k in vary if k in SHORT or k.split(".")[0] not in groups_varying]
    for r, f in zip(runs, flat):
        r.settings = {SHORT.get(k, k): f.get(k) for k in vary}
    return [SHORT.get(k, k) for k in vary]


def run_row(r: Run) -> dict[str, Any]:
    """summary.csv's figures for one run."""
    e, env = r.epochs, r.info.get("environment") or {}
    row: dict[str, Any] = {**r.settings, "run": r.name, "status": r.status,
                           "device_name": env.get("device_name"), "epochs": len(e)}  # fmt: skip
    for c in TIME_COLS:
        row[f"total_{c}"] = e[c].sum() if len(e) else math.nan
        row[f"avg_{c}"] = e[c].mean() if len(e) else math.nan
    for c in ("train_loss", "train_acc"):
        row[f"avg_{c}"] = e[c].mean() if len(e) else math.nan
        row[f"final_{c}"] = e[c].iloc[-1] if len(e) else math.nan
    row["final_test_acc"] = e["test_acc"].iloc[-1] if len(e) else math.nan
    total = e["epoch_time_s"].sum() if len(e) else 0
    row["data_share"] = e["data_time_s"].sum() / total if total else math.nan
    row["samples_per_s"] = e["samples"].sum() / total if total else math.nan
    for c in PHASE_COLUMNS + ["achieved_tflops", "mfu"]:
        row[f"avg_{c}"] = e[c].mean() if len(e) else math.nan
    row["flops_per_image"] = r.info.get("flops_per_image")
    row["world_size"] = int(r.info.get("world_size") or 1)
    row["batch_size"] = (r.info.get("config") or {}).get("batch_size")
    row["avg_comm_time_s"] = e["comm_time_s"].fillna(0).mean() if len(e) else math.nan
    row["avg_comm_exposed_s"] = e["comm_exposed_s"].fillna(0).mean() if len(e) else math.nan
    steps = e["batches"].sum() if len(e) else 0
    row["comm_bytes_per_step"] = e["comm_bytes"].fillna(0).sum() / steps if steps else math.nan
    row["steps_per_epoch"] = e["batches"].mean() if len(e) else math.nan
    row["profiled_steps"] = e["profiled_steps"].sum() if len(e) else 0
    row["timing_mode"] = "+".join(timing_modes(r)) or r.info.get("timing_mode")
    row["error"] = r.error
    return row


def best_workers(counts: list[int], data_times: list[float]) -> tuple[int, bool]:
    """The lab's rule: the worker count after which data-loading time stops decreasing.

    Returns (best, still_decreasing); still_decreasing means the largest count was still the fastest,
    so more workers should be tried.
    """
    pairs = sorted(zip(counts, data_times))
    for (c, t), (_, t_next) in zip(pairs, pairs[1:]):
        if t_next >= t:
            return c, False
    return pairs[-1][0], True


def _agg(df: pd.DataFrame, key: str, cols: list[str], order: list[Any]) -> pd.DataFrame:
    """Mean (and std, when settings repeat over seeds) of cols per value of key, in the given order."""
    g = df.groupby(key, sort=False, dropna=False)[cols]
    out = g.mean()
    n = g.size()
    if (n > 1).any():
        out = out.join(g.std().add_suffix("_std"))
    out["runs"] = n
    out = out.reindex([v for v in order if v in out.index])
    return out.reset_index()


def _pm(df: pd.DataFrame, floatfmt: str = ".4g") -> pd.DataFrame:
    """Merge each column c with its c_std partner (settings repeated over seeds) into 'mean ± std' text."""
    out = df.copy()
    for c in [c for c in df.columns if f"{c}_std" in df.columns]:
        out[c] = [
            format(m, floatfmt) if pd.isna(sd) else f"{format(m, floatfmt)} ± {format(sd, floatfmt)}"
            for m, sd in zip(df[c], df[f"{c}_std"])
        ]
        out = out.drop(columns=f"{c}_std")
    return out


def _md(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A pandas frame as a markdown table (no tabulate dependency); mean ± std where seeds repeat."""
    df = _pm(df, floatfmt)
    cols = list(df.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _c2(run: Run) -> pd.DataFrame:
    cols = ["epoch", "train_loss", "train_acc", "data_time_s", "compute_time_s", "other_time_s", "epoch_time_s"]
    t = run.epochs[cols].copy()
    total = {"epoch": "Total", **{c: t[c].sum() for c in cols[3:]}, "train_loss": math.nan, "train_acc": math.nan}
    avg = {"epoch": "Avg", **{c: t[c].mean() for c in cols[1:]}}
    t["epoch"] = t["epoch"].astype(int).astype(str)
    return pd.concat([t, pd.DataFrame([total, avg])], ignore_index=True)


def _concurrency_warning(runs: list[Run]) -> str | None:
    spans = []
    for r in runs:
        try:
            a = datetime.fromisoformat(r.info["started_at"])
            b = datetime.fromisoformat(r.info.get("finished_at") or r.info["updated_at"])
        except (KeyError, TypeError, ValueError):
            continue
        spans.append((a, b, (r.info.get("environment") or {}).get("hostname"), r.name))
    overlaps = {
        (x[3], y[3])
        for i, x in enumerate(spans)
        for y in spans[i + 1 :]
        if x[2] == y[2] and x[0] < y[1] and y[0] < x[1]
    }
    if not overlaps:
        return None
    pairs = ", ".join(f"{a}/{b}" for a, b in sorted(overlaps)[:5])
    return (f"**Warning:** {len(overlaps)} pair(s) of runs ran at the same time on one machine ({pairs}); "
            "they competed for cores/GPU, so their times are not comparable.")  # fmt: skip


def _cores(ctx: Context) -> int | None:
    for r in ctx.done:
        n = (r.info.get("environment") or {}).get("cpu_count")
        if n:
            return int(n)
    return None


# ----------------------------------------------------------------------------------------------- parts


def part_status(ctx: Context) -> PartOutput:
    """Runs left out of the tables, and a warning when compared runs ran at the same time."""
    out = PartOutput()
    refused = refused_jobs(ctx.root)
    if refused:
        out.md += ["## Jobs refused in this invocation", "",
                   "These jobs' run dirs already held runs of other settings; nothing was trained or overwritten, so "
                   "the tables below show the OLD runs for them, not what this invocation asked for. Re-run with "
                   "another `hydra.sweep.dir`.", ""]  # fmt: skip
        out.md += [f"- job {r['job']} ({' '.join(r.get('overrides') or [])}): {r['error']}" for r in refused] + [""]
    if len(ctx.done) < len(ctx.runs):
        bad = ctx.table[ctx.table["status"] != "complete"]
        out.md += [
            "## Runs left out of every table (not complete)",
            "",
            _md(bad[["run", "status", "epochs", "error"]]),
            "",
        ]
    warn = _concurrency_warning(ctx.done)
    if warn:
        out.md += [warn, ""]
    warn = _timing_mode_warning(ctx.done)
    if warn:
        out.md += [warn, ""]
    return out


def timing_modes(run: Run) -> list[str]:
    """The clocks a run's epochs were timed with (per epoch row; run.json's for rows written before that column)."""
    fallback = run.info.get("timing_mode")
    modes = [m if isinstance(m, str) else fallback for m in run.epochs["timing_mode"]] if len(run.epochs) else []
    return sorted({m for m in modes if m})


def _timing_mode_warning(runs: list[Run]) -> str | None:
    """A warning when compared figures come from different clocks (e.g. C5: cpu/sync beside cuda/events)."""
    by_mode: dict[str, list[str]] = {}
    mixed = []
    for r in runs:
        modes = timing_modes(r)
        if len(modes) > 1:
            mixed.append(r.name)
        for m in modes:
            by_mode.setdefault(m, []).append(r.name)
    if len(by_mode) <= 1:
        return None
    which = "; ".join(
        f"{m}: {', '.join(names[:6])}{' …' if len(names) > 6 else ''}" for m, names in sorted(by_mode.items())
    )
    text = (f"**Warning:** the runs compared here were timed with different clocks ({which}). `events` reads CUDA "
            "events once per epoch and leaves the per-step syncs out, `sync` syncs the device at every reading: "
            "their compute and other times are not measured the same way (see `timing_mode` in summary.csv).")  # fmt: skip
    if mixed:
        text += f" Runs whose epochs mix both clocks (resumed with another `timing`): {', '.join(mixed)}."
    return text


def part_all_runs(ctx: Context) -> PartOutput:
    cols = [*ctx.varying, "run", "epochs", "avg_epoch_time_s", "avg_data_time_s", "avg_compute_time_s",
            "avg_other_time_s", "data_share", "avg_train_loss", "avg_train_acc", "samples_per_s"]  # fmt: skip
    if not len(ctx.ok):
        return PartOutput()
    return PartOutput(md=["## All runs", "", _md(ctx.ok[cols]), ""])


def _worker_counts(ctx: Context) -> list[int]:
    return sorted(int(w) for w in ctx.order("workers")) if "workers" in ctx.by else []


def _is_c4_sweep(counts: list[int]) -> bool:
    """1 worker against one other count: a C4 comparison, whose best count comes from C3, not from here."""
    return len(counts) == 2 and 1 in counts


def _lab_rule(ctx: Context) -> tuple[dict[int, Estimate], int, bool]:
    """Data-time estimates per worker count (ascending) and the lab's best count (and still-decreasing flag).

    Shared by C3 and C4, so that both parts always name the same best count."""
    groups = sorted(ctx.groups("workers"), key=lambda g: g[0])
    data = {e.setting: e for e in estimates(groups, "total_data_time_s")}
    best, more = best_workers(list(data), [e.value for e in data.values()])
    return data, best, more


def part_c3(ctx: Context) -> PartOutput:
    """C3: data-loading time per worker count, the lab's best, the fastest by epoch time, and a diagnosis."""
    counts = _worker_counts(ctx)
    if len(counts) < 2 or _is_c4_sweep(counts):
        return PartOutput()
    out = PartOutput()
    cols = ["total_data_time_s", "total_compute_time_s", "total_other_time_s", "total_epoch_time_s",
            "avg_epoch_time_s", "data_share"]  # fmt: skip
    agg = _agg(ctx.ok, "workers", cols, sorted(ctx.order("workers")))
    out.tables["c3_workers"] = agg
    data, best, more = _lab_rule(ctx)
    epoch = estimates(sorted(ctx.groups("workers"), key=lambda g: g[0]), "avg_epoch_time_s")
    ws = list(data)
    i = ws.index(best)
    prev = data[ws[i - 1]] if i > 0 else None
    nxt = data[ws[i + 1]] if i + 1 < len(ws) else None
    # significant: the decrease that made `best` the best is beyond the noise (or, at the smallest count,
    # the increase after it is)
    sig = (prev is not None and differ(prev, data[best])) or (
        prev is None and nxt is not None and differ(nxt, data[best])
    )
    rule = (f"By the lab's rule (data-loading time stops decreasing after it) the best worker count is **{best}**"
            + (" (still decreasing at the largest count tried: try more workers)" if more else "")
            + f"; lowest data-loading time {min(e.value for e in data.values()):.3g} s with "
            f"{min(data.values(), key=lambda e: e.value).setting} workers. "
            + ("The step to it is beyond the noise." if sig else
               f"The data-time differences around it are within the noise ({noise_note(list(data.values()))}), "
               "so the rule's choice is not firm here: repeat each count (e.g. `seed=0,1,2`) for a firm answer."))  # fmt: skip
    out.findings.append(Finding("c3", "total_data_time_s", best, bool(sig), rule))
    fastest = compare("c3", "workers", "avg_epoch_time_s", epoch, True, "fastest worker count by epoch time", ".3g")
    out.findings.append(fastest)
    out.findings.append(Finding("c3", "diagnosis", None, False, _c3_diagnosis(ctx, agg, best, epoch)))
    out.md += ["## C3: data-loading time per worker count (summed over epochs)", "", _md(agg), ""]
    if best != 1:
        out.md += [f"Next (C4, 1 worker against the best count): `python train.py experiment=c4 workers=1,{best}`", ""]
    else:
        out.md += ["C4 compares 1 worker with the best count; here the best count is 1 itself, so there is nothing "
                   "to compare (try the fastest count by epoch time instead).", ""]  # fmt: skip
    out.plots.append(_plot_c3(agg, ctx.root / "plots"))
    return out


def _c3_diagnosis(ctx: Context, agg: pd.DataFrame, best: int, epoch: list[Estimate]) -> str:
    """Data- or compute-bound, and what the workers cost, in words from the numbers."""
    a = agg.set_index("workers")
    lo, hi = a.index.min(), a.index.max()
    share = a["data_share"]
    cores = _cores(ctx)
    parts = []
    if share.max() < 0.1:
        parts.append(f"Compute-bound: data loading is at most {share.max():.1%} of the epoch at any worker count "
                     f"({share.idxmax()} workers), so the worker count can change the epoch by little.")  # fmt: skip
    elif share.get(lo, 0) >= 0.5:
        parts.append(f"Data-bound at {lo} workers: {share[lo]:.0%} of the epoch is spent waiting for data.")
    else:
        parts.append(f"Data loading is {share.min():.1%}-{share.max():.1%} of the epoch across worker counts.")
    est = {e.setting: e for e in epoch}
    if lo in est and hi in est and est[hi].value > est[lo].value and differ(est[hi], est[lo]):
        parts.append(
            f"More workers made the epoch slower ({est[lo].value:.3g} s at {lo} workers, {est[hi].value:.3g} s at {hi}): "
            f"worker processes compete with the training computation for this machine's "
            f"{cores if cores else 'few'} CPU cores (environment.cpu_count in run.json); their cost shows in compute "
            f"({a.loc[lo, 'total_compute_time_s']:.3g} s -> {a.loc[hi, 'total_compute_time_s']:.3g} s) and in other "
            f"(start-up and hand-over, {a.loc[lo, 'total_other_time_s']:.3g} s -> {a.loc[hi, 'total_other_time_s']:.3g} s), "
            "not in data time."
        )  # fmt: skip
    fastest = min(epoch, key=lambda e: e.value).setting if epoch else None
    if fastest is not None and fastest != best:
        parts.append(f"The lab's rule looks at data time only; by whole-epoch time {fastest} workers is the fastest "
                     f"setting measured.")  # fmt: skip
    return " ".join(parts)


def part_c4(ctx: Context) -> PartOutput:
    """C4: 1 worker against the best count (from a C3 sweep, or the other count of a C4 sweep), explained."""
    counts = _worker_counts(ctx)
    if 1 not in counts or len(counts) < 2:
        return PartOutput()
    if _is_c4_sweep(counts):
        best = next(c for c in counts if c != 1)
        source = "the count given on the command line (from C3)"
    else:
        _, best, _ = _lab_rule(ctx)
        source = "the best count of this C3 sweep by the lab's rule"
        if best == 1:
            return PartOutput()
    one = [r for r in ctx.done if r.settings.get("workers") == 1]
    bst = [r for r in ctx.done if r.settings.get("workers") == best]
    if not one or not bst:
        return PartOutput()
    a, b = one[0].epochs, bst[0].epochs
    t = pd.DataFrame({"epoch": a["epoch"].astype(int).astype(str)})
    for tag, e in (("1w", a), (f"{best}w", b)):
        for c in ("data_time_s", "compute_time_s", "other_time_s", "epoch_time_s"):
            t[f"{c}_{tag}"] = (
                e[c].values[: len(t)] if len(e) >= len(t) else list(e[c].values) + [math.nan] * (len(t) - len(e))
            )
    t = pd.concat(
        [t, pd.DataFrame([{"epoch": "Total", **t.iloc[:, 1:].sum()}, {"epoch": "Avg", **t.iloc[:, 1:].mean()}])]
    )
    out = PartOutput(tables={"c4_profile": t})
    out.md += [f"## C4: 1 worker against {best} workers ({source}), per epoch", "", _md(t), ""]

    def split(e: pd.DataFrame) -> tuple[float, float, float, float]:
        ep = e["epoch_time_s"].mean()
        return e["data_time_s"].mean(), e["compute_time_s"].mean(), ep, e["data_time_s"].sum() / e["epoch_time_s"].sum()

    d1, c1, e1, s1 = split(a)
    d2, c2, e2, s2 = split(b)
    cores = _cores(ctx)
    why = []
    if s1 > 0.2 and d2 < d1:
        why.append(f"one worker process cannot prepare batches as fast as the main process trains on them, so the "
                   f"loop waits ({s1:.0%} of the epoch); {best} workers prepare batches in parallel and the wait falls "
                   f"to {s2:.0%}.")  # fmt: skip
    elif s1 <= 0.2:
        why.append(f"even one worker keeps up with training here (data is {s1:.0%} of the epoch), so more workers "
                   "have little to gain.")  # fmt: skip
    if c2 > c1 * 1.05:
        why.append(f"Compute rose from {c1:.3g} s to {c2:.3g} s per epoch with {best} workers: the workers compete "
                   f"with training for the {cores or 'few'} CPU cores.")  # fmt: skip
    text = (f"C4: with 1 worker, data loading took {d1:.3g} s and compute {c1:.3g} s per epoch ({s1:.0%} of a "
            f"{e1:.3g} s epoch waiting for data); with {best} workers {d2:.3g} s and {c2:.3g} s ({s2:.0%} of "
            f"{e2:.3g} s). The difference: " + " ".join(why))  # fmt: skip
    ests = estimates([(w, g) for w, g in ctx.groups("workers") if w in (1, best)], "avg_epoch_time_s")
    verdict = compare("c4", "workers", "avg_epoch_time_s", ests, True, "faster of the two by epoch time", ".3g")
    out.findings += [Finding("c4", "explanation", None, False, text), verdict]
    return out


def group_part(ctx: Context, key: str, part: str, title: str, accuracy: bool) -> PartOutput:
    """C5/C6/C7: a table per value of key, the fastest setting and (where training differs) the most accurate."""
    if key not in ctx.by and not ctx.missing(key):
        return PartOutput()
    if not ctx.done:
        return PartOutput()
    cols = ["avg_epoch_time_s", "avg_data_time_s", "avg_compute_time_s", "avg_other_time_s", "avg_train_loss",
            "avg_train_acc", "final_train_acc", "final_test_acc"]  # fmt: skip
    agg = _agg(ctx.ok, key, cols, ctx.order(key)) if key in ctx.ok else pd.DataFrame()
    out = PartOutput(tables={part: agg}, md=[f"## {title}", "", _md(agg), ""])
    groups = ctx.groups(key)
    missing = ctx.missing(key)
    ests = estimates(groups, "avg_epoch_time_s")
    out.findings.append(
        compare(part[:2], key, "avg_epoch_time_s", ests, True, f"fastest {key} per epoch", ".3g", missing)
    )
    if part == "c5_device" and len(ests) > 1:
        slow, quick = max(e.value for e in ests), min(e.value for e in ests)
        out.md += [f"The slowest device takes {slow / quick:.3g}x as long per epoch as the fastest.", ""]
    if accuracy:
        acc = estimates(groups, "avg_train_acc")
        out.findings.append(accuracy_finding(part[:2], key, acc, ctx.classes(), missing))
    if key == "norm":
        per_epoch = pd.DataFrame({r.settings["norm"]: r.epochs.set_index("epoch")["train_acc"] for r in ctx.done[:4]}).T
        per_epoch.columns = [f"epoch {int(c)}" for c in per_epoch.columns]
        out.md += ["Per-epoch training top-1:", "", _md(per_epoch.reset_index(names="norm")), ""]
    return out


def _group_part(key: str, part: str, title: str, accuracy: bool) -> Callable[[Context], PartOutput]:
    """group_part for one key, as a part (a function of the context alone)."""
    fn = functools.partial(group_part, key=key, part=part, title=title, accuracy=accuracy)
    fn.__name__ = f"part_{part}"  # type: ignore[attr-defined]
    return fn


def part_c2(ctx: Context) -> PartOutput:
    """C2: per-epoch time split with Total and Avg rows, one table per distinct setting (first few in the report)."""
    out = PartOutput()
    seen: dict[str, Run] = {}
    for r in ctx.done:
        seen.setdefault(r.label(), r)
    for i, r in enumerate(seen.values()):
        t = _c2(r)
        out.tables[f"c2_{r.name.replace('/', '_')}"] = t
        if i < C2_IN_REPORT:
            out.md += [f"## C2: time per epoch, run {r.name} {r.settings or ''}", "", _md(t), ""]
    if len(seen) > C2_IN_REPORT:
        out.md += [f"C2 tables of the other {len(seen) - C2_IN_REPORT} settings: `tables/c2_*.csv`.", ""]
    return out


def part_q(ctx: Context) -> PartOutput:
    """Q1-Q4: the model's facts for each (norm, optimizer) pair among the runs."""
    if not ctx.inspect_models or not ctx.done:
        return PartOutput()
    from .inspect import model_facts

    seen, facts = set(), []
    for r in ctx.done:
        c = r.info.get("config") or {}
        k = (c.get("norm", {}).get("name"), c.get("optimizer", {}).get("name"))
        if k in seen or len(seen) >= 5:
            continue
        seen.add(k)
        facts.append(model_facts(c))
    q = pd.DataFrame([{k: f[k] for k in ("norm", "optimizer", "conv_layers", "conv_layers_without_shortcut",
                                           "linear_in_features", "trainable_parameters", "gradients",
                                           "optimizer_state_tensors", "optimizer_state_elements")} for f in facts])  # fmt: skip
    (ctx.root / "inspect.json").write_text(json.dumps(facts, indent=2) + "\n")  # full facts, optimizer state included
    return PartOutput(md=["## Q1-Q4: the model", "", _md(q), ""], tables={"q1_q4": q})


PHASE_NAMES = [c.removesuffix("_time_s") for c in PHASE_COLUMNS]


def _op_categories(run: Run, top: int = 5) -> str | None:
    """The top operator categories of a run's profile (share of profiled self time), or None."""
    path = run.path / "profile" / "ops.csv"
    if not path.is_file():
        return None
    ops = pd.read_csv(path)
    if not len(ops):
        return None
    cats = ops.groupby("category")["share"].sum().sort_values(ascending=False).head(top)
    return ", ".join(f"{c} {s:.0%}" for c, s in cats.items())


def _spread_in_se(es: list[Estimate]) -> float:
    """(highest - lowest) in combined standard errors (the difference in seconds when the noise is unknown or 0)."""
    hi, lo = max(es, key=lambda e: e.value), min(es, key=lambda e: e.value)
    se = math.hypot(hi.se, lo.se)
    return (hi.value - lo.value) / se if se > 0 and not math.isnan(se) else hi.value - lo.value


def part_compute(ctx: Context) -> PartOutput:
    """Where compute goes: the phase split per run, achieved TFLOP/s and utilisation, the top operator categories
    of profiled runs, and per varying setting the phase that changes most (a finding only past the noise)."""
    phase_cols = [f"avg_{c}" for c in PHASE_COLUMNS]
    ok = ctx.ok
    if not len(ok) or not all(c in ok for c in phase_cols) or ok[phase_cols].isna().all().all():
        return PartOutput()
    ok = ok[ok[phase_cols].notna().all(axis=1)]
    t = ok[[*ctx.by, "run", *phase_cols, "avg_compute_time_s", "avg_achieved_tflops", "avg_mfu"]].copy()
    for ph, c in zip(PHASE_NAMES, phase_cols):
        t[f"{ph}_share"] = t[c] / t[phase_cols].sum(axis=1)
    out = PartOutput(tables={"compute_phases": t})
    out.md += ["## Where compute goes", "",
               "Compute per epoch split into its phases (copy = host-to-device copy, forward includes the loss, "
               "optimizer = zero_grad + step), the training step's achieved TFLOP/s (counted FLOPs / compute time) and "
               "utilisation (mfu) against the device's peak (`peak_source` in run.json).", "", _md(t), ""]  # fmt: skip
    runs = {r.name: r for r in ctx.done}
    cats = [(name, _op_categories(runs[name])) for name in t["run"] if name in runs]
    cats = [(n, c) for n, c in cats if c]
    if cats:
        out.md += ["Top operator categories (share of the profiled steps' self time, `profile/ops.csv`):", ""]
        out.md += [f"- {n}: {c}" for n, c in cats] + [""]
    profiled = [r.name for r in ctx.done if r.epochs["profiled_steps"].fillna(0).sum() > 0]
    if profiled:
        out.md += [f"**Note:** runs {', '.join(profiled)} include steps run under the profiler (slower; `profiled` in "
                   "batches.csv): their times are not comparable with unprofiled runs.", ""]  # fmt: skip
    for key in ctx.by:
        groups = [(v, [g for g in gs if not pd.isna(g[0].get(phase_cols[0]))]) for v, gs in ctx.groups(key)]
        groups = [(v, gs) for v, gs in groups if gs]
        if len(groups) < 2:
            continue
        per_phase = {ph: estimates(groups, f"avg_{ph}_time_s") for ph in PHASE_NAMES}
        spread = {ph: _spread_in_se(es) for ph, es in per_phase.items() if len(es) > 1}
        if not spread:
            continue
        ph = max(spread, key=spread.get)  # the phase whose change with this setting stands out most from its noise
        es = per_phase[ph]
        hi, lo = max(es, key=lambda e: e.value), min(es, key=lambda e: e.value)
        f = compare("compute", key, f"avg_{ph}_time_s", es, True, f"lowest {ph} time per epoch", ".3g")
        vals = ", ".join(f"{key}={e.setting} {e.value:.3g} s" for e in es)
        sig = ("a difference beyond the measured noise" if differ(hi, lo)
               else "a difference within the measured noise: it may not be real")  # fmt: skip
        f.text = (f"Compute phases across {key}: the {ph} phase changes most ({vals}; {key}={hi.setting} takes "
                  f"{hi.value / lo.value if lo.value else math.inf:.3g}x {key}={lo.setting}'s), {sig}. " + f.text)  # fmt: skip
        out.findings.append(f)
    out.plots.append(_plot_phases(t, [runs[n].label() if n in runs else n for n in t["run"]], ctx.root / "plots"))
    return out


def _stacked_bars(
    path: Path,
    labels: list[str],
    parts: dict[str, list[float]],
    title: str,
    ylabel: str = "seconds per epoch (mean)",
    xlabel: str | None = None,
    slanted: bool = True,
) -> Path:
    """One bar per label, stacked from parts ({legend entry: a value per label}); saved to path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    bottom = [0.0] * len(labels)
    for lab, vals in parts.items():
        ax.bar(range(len(labels)), list(vals), bottom=bottom, label=lab)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if slanted:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    else:
        ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel=ylabel, title=title, **({"xlabel": xlabel} if xlabel else {}))
    ax.legend(**({} if slanted else {"fontsize": 8}))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_phases(t: pd.DataFrame, labels: list[str], out: Path) -> Path:
    parts = {ph: list(t[f"avg_{ph}_time_s"]) for ph in PHASE_NAMES}
    return _stacked_bars(out / "compute_phases.png", labels, parts, "Where compute goes")


SCALING_COLUMNS = ["world_size", "batch_size", "global_batch", "scaling", "avg_epoch_time_s", "speedup", "efficiency",
                   "compute_time_s", "comm_time_s", "comm_estimate_s", "bandwidth_gb_s", "comm_exposed_s",
                   "runs"]  # fmt: skip


def scaling_table(ok: pd.DataFrame) -> pd.DataFrame:
    """tables/scaling.csv: per (world size, per-rank batch), against 1 rank at the same per-rank batch (weak
    scaling) and, where a 1-rank run at the same global batch exists, against it (strong scaling)."""
    cols = ["avg_epoch_time_s", "avg_compute_time_s", "avg_comm_time_s", "avg_comm_exposed_s", "comm_bytes_per_step",
            "steps_per_epoch"]  # fmt: skip
    g = ok.groupby(["world_size", "batch_size"])[cols].mean()
    n_runs = ok.groupby(["world_size", "batch_size"]).size()
    rows = []
    for (ws, bs), v in g.iterrows():
        bases = [("weak", (1, bs))] + ([("strong", (1, ws * bs))] if ws > 1 else [])
        for kind, key in bases:
            if key not in g.index:
                continue
            base = g.loc[key]
            speedup = base["avg_epoch_time_s"] / v["avg_epoch_time_s"]
            # the lab's estimate: N-rank compute minus what the same steps took on 1 rank (same per-rank batch)
            est = (v["avg_compute_time_s"] - v["steps_per_epoch"] * base["avg_compute_time_s"] / base["steps_per_epoch"]
                   if kind == "weak" and ws > 1 else math.nan)  # fmt: skip
            ring = 2 * (ws - 1) / ws  # ring all-reduce: bytes each rank sends (and receives) per byte of gradient
            bw = (ring * v["comm_bytes_per_step"] * v["steps_per_epoch"] / v["avg_comm_time_s"] / 1e9
                  if ws > 1 and v["avg_comm_time_s"] > 0 else math.nan)  # fmt: skip
            rows.append({"world_size": ws, "batch_size": bs, "global_batch": ws * bs, "scaling": kind,
                         "avg_epoch_time_s": v["avg_epoch_time_s"], "speedup": speedup, "efficiency": speedup / ws,
                         "compute_time_s": v["avg_compute_time_s"], "comm_time_s": v["avg_comm_time_s"],
                         "comm_estimate_s": est, "bandwidth_gb_s": bw, "comm_exposed_s": v["avg_comm_exposed_s"],
                         "runs": int(n_runs[(ws, bs)])})  # fmt: skip
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)


def part_scaling(ctx: Context) -> PartOutput:
    """Data-parallel scaling over world sizes: speed-up, efficiency, measured communication against the lab's
    subtraction estimate, achieved all-reduce bandwidth, and a plot of the epoch split per world size."""
    ok = ctx.ok
    if not len(ok) or "world_size" not in ok or ok["world_size"].nunique() < 2:
        return PartOutput()
    t = scaling_table(ok)
    out = PartOutput(tables={"scaling": t})
    out.md += ["## Scaling: data-parallel training", "",
               "Speed-up = 1-rank epoch time / N-rank epoch time (epochs cover the same data; N ranks share it). "
               "Weak scaling: against 1 rank at the same per-rank batch (the global batch grows with N); strong: "
               "against 1 rank at the same global batch. comm_time_s is measured: the span of each step's gradient "
               "all-reduces (a DDP communication hook), summed over the epoch and averaged over ranks; the "
               "all-reduce runs during backward, so it overlaps compute and includes waiting for the slowest rank. "
               "comm_exposed_s is the part backward waited for (last bucket's launch to the last completion: "
               "communication not hidden behind backward's compute). comm_estimate_s is the lab's subtraction "
               "(N-rank compute minus the same steps' 1-rank compute): it can only see the exposed part, so compare "
               "it with comm_exposed_s. bandwidth_gb_s: ring all-reduce bytes, 2(N-1)/N x gradient bytes per step, "
               "over comm_time_s.", "",
               _md(t), ""]  # fmt: skip
    for _, r in t[(t["world_size"] > 1) & (t["scaling"] == "weak")].iterrows():
        if not math.isnan(r["comm_estimate_s"]) and r["comm_time_s"] > 0:
            ratio = r["comm_estimate_s"] / r["comm_time_s"]
            exp = r["comm_exposed_s"]
            vs_exp = f" ({r['comm_estimate_s'] / exp:.2f}x the measured exposed part, {exp:.3g} s)" if exp > 0 else ""
            out.md += [f"- {int(r['world_size'])} ranks, batch {int(r['batch_size'])} per rank: all-reduce span "
                       f"{r['comm_time_s']:.3g} s per epoch, of which {exp:.3g} s exposed; the lab's subtraction "
                       f"estimate {r['comm_estimate_s']:.3g} s{vs_exp}, {ratio:.2f}x the span; speed-up "
                       f"{r['speedup']:.2f}x, efficiency {r['efficiency']:.0%}."]  # fmt: skip
    out.md += [""]
    key = next((k for k in ctx.by if k.endswith("nproc")), None)
    if key is not None:
        ests = estimates(ctx.groups(key), "avg_epoch_time_s")
        out.findings.append(compare("scaling", key, "avg_epoch_time_s", ests, True, "fastest world size per epoch",
                                    ".3g", ctx.missing(key)))  # fmt: skip
    out.plots.append(_plot_scaling(ok, ctx.root / "plots"))
    return out


def _plot_scaling(ok: pd.DataFrame, out: Path) -> Path:
    g = ok.groupby(["world_size", "batch_size"])[
        ["avg_data_time_s", "avg_compute_time_s", "avg_comm_time_s", "avg_other_time_s"]].mean().reset_index()  # fmt: skip
    labels = [f"{int(w)} x {int(b)}" for w, b in zip(g["world_size"], g["batch_size"])]
    parts = {"data": g["avg_data_time_s"], "compute (without comm)": g["avg_compute_time_s"] - g["avg_comm_time_s"],
             "communication": g["avg_comm_time_s"], "other": g["avg_other_time_s"]}  # fmt: skip
    return _stacked_bars(out / "scaling.png", labels, parts, "Scaling: where the epoch goes",
                         ylabel="seconds per epoch (mean over ranks)", xlabel="ranks x batch per rank", slanted=False)  # fmt: skip


def part_plots(ctx: Context) -> PartOutput:
    """Where the epoch goes (stacked bars) and the training curves (per batch when runs have one epoch)."""
    if not ctx.done:
        return PartOutput()
    return PartOutput(plots=_plots(ctx.done, ctx.root / "plots"))


PARTS: list[Callable[[Context], PartOutput]] = [
    part_status,
    part_all_runs,
    part_c3,
    part_c4,
    _group_part("device", "c5_device", "C5: average epoch time per device", accuracy=False),
    _group_part("optimizer", "c6_optimizer", "C6: per optimizer", accuracy=True),
    _group_part("norm", "c7_norm", "C7: BatchNorm against none", accuracy=True),
    part_compute,
    part_scaling,
    part_c2,
    part_q,
    part_plots,
]


def summarize(root: Path, inspect_models: bool = True) -> Summary:
    """Write summary.csv, findings.json, tables/*.csv, plots/*.png and report.md under root."""
    root = Path(root)
    runs = find_runs(root)
    varying = _varying(runs)
    table = pd.DataFrame([run_row(r) for r in runs])
    summary_path, report_path = root / "summary.csv", root / "report.md"
    table.to_csv(summary_path, index=False, float_format=FLOAT_FORMAT)
    done = [r for r in runs if r.status == "complete" and len(r.epochs)]
    ctx = Context(root, runs, done, table, varying, inspect_models)
    outputs = [part(ctx) for part in PARTS]
    findings = [f for o in outputs for f in o.findings]
    tables = {k: v for o in outputs for k, v in o.tables.items()}
    plots = [p for o in outputs for p in o.plots]
    md = [f"# trainbench report: {root}", "", f"{len(runs)} run(s), {len(done)} complete. Settings that vary: "
          f"{', '.join(varying) or 'none'}.", ""]  # fmt: skip
    if findings:
        md += ["## Findings", "", *[f"- {f.text}" for f in findings], ""]
    for o in outputs:
        md += o.md
    if plots:
        md += ["## Plots", "", *[f"![{p.stem}](plots/{p.name})" for p in plots], ""]
    if tables:
        (root / "tables").mkdir(exist_ok=True)
        for name, t in tables.items():
            t.to_csv(root / "tables" / f"{name}.csv", index=False, float_format=FLOAT_FORMAT)
    (root / "findings.json").write_text(json.dumps([f.as_dict() for f in findings], indent=2, default=str) + "\n")
    report_path.write_text("\n".join(md))
    return Summary(runs, varying, table, summary_path, report_path, tables, findings, refused_jobs(root))


def _plot_c3(agg: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(exist_ok=True)
    a = agg.sort_values("workers")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(a["workers"], a["total_data_time_s"], marker="o", color="tab:blue")
    left.set(xlabel="DataLoader workers", ylabel="data-loading time, s (sum over epochs)", title="C3: data loading")
    left.set_ylim(bottom=0)
    for c, lab in (
        ("total_compute_time_s", "compute"),
        ("total_other_time_s", "other"),
        ("total_epoch_time_s", "epoch"),
    ):
        right.plot(a["workers"], a[c], marker="o", label=lab)
    right.set(xlabel="DataLoader workers", ylabel="seconds (sum over epochs)", title="C3: the whole epoch")
    right.set_ylim(bottom=0)
    right.legend()
    path = out / "c3_workers.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _plots(done: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(exist_ok=True)
    parts = {lab: [r.epochs[c].mean() for r in done]
             for c, lab in (("data_time_s", "data"), ("compute_time_s", "compute"), ("other_time_s", "other"))}  # fmt: skip
    paths = [_stacked_bars(out / "time_split.png", [r.label() for r in done], parts, "Where the epoch goes")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    per_batch = all(len(r.epochs) <= 1 for r in done)  # one epoch: a curve needs the batches
    for r in done:
        if per_batch and len(r.batches):
            x, loss, acc = r.batches["step"], r.batches["loss"], r.batches["acc"]
        else:
            x, loss, acc = r.epochs["epoch"] + 1, r.epochs["train_loss"], r.epochs["train_acc"]
        a1.plot(x, loss, marker="." if per_batch else "o", label=r.label())
        a2.plot(x, acc, marker="." if per_batch else "o", label=r.label())
    xlabel = "step (batch)" if per_batch else "epoch"
    a1.set(xlabel=xlabel, ylabel="train loss")
    a2.set(xlabel=xlabel, ylabel="train top-1")
    a2.legend(fontsize=7)
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: summarize a sweep dir or any tree of run dirs."""
    p = argparse.ArgumentParser(prog="python -m trainbench.summarize", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a sweep dir (multirun/...) or any dir of run dirs")
    p.add_argument("--no-inspect", action="store_true", help="leave out the Q1-Q4 model facts")
    a = p.parse_args(argv)
    if not a.dir.is_dir():
        p.error(f"{a.dir} is not a directory")
    s = summarize(a.dir, inspect_models=not a.no_inspect)
    if not s.runs:
        print(f"no runs (no run.json) under {a.dir}", file=sys.stderr)
        return 1
    print(s.report_path.read_text())
    print(f"\nwrote {s.summary_path}, {a.dir / 'findings.json'} and {s.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
