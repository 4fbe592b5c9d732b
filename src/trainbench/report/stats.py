"""Findings that know their own uncertainty: noise estimates, and comparisons that name a winner only past the noise.

Noise, per run and metric, as a standard error:
  * repeats (runs that differ only in `seed`): the spread of the metric over the repeats, / sqrt(repeats);
  * otherwise, within the run: per-epoch spread (std / sqrt(epochs)) where there are 2+ epochs, and the
    per-batch spread of the clock behind the metric (std * sqrt(batches), the noise of a sum of batches),
    whichever is larger. Within-run spread misses run-to-run effects (other load on the machine, thermal
    state), so it is a lower bound: the text says so and how to get a firm answer.
A difference is significant when it exceeds 2 combined standard errors (about 95 % for normal noise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

Z = 2.0  # standard errors a difference must exceed
CHANCE_MARGIN = 0.05  # accuracy within this of 1/classes counts as chance level

# metric -> (epochs.csv column, batches.csv column(s) whose per-batch spread bounds its noise, how it aggregates)
TIME_METRICS = {
    "avg_epoch_time_s": ("epoch_time_s", ("data_time_s", "compute_time_s"), "mean"),
    "avg_data_time_s": ("data_time_s", ("data_time_s",), "mean"),
    "avg_compute_time_s": ("compute_time_s", ("compute_time_s",), "mean"),
    "total_data_time_s": ("data_time_s", ("data_time_s",), "sum"),
    "total_compute_time_s": ("compute_time_s", ("compute_time_s",), "sum"),
    "total_epoch_time_s": ("epoch_time_s", ("data_time_s", "compute_time_s"), "sum"),
    **{
        f"avg_{ph}_time_s": (f"{ph}_time_s", (f"{ph}_time_s",), "mean")
        for ph in ("copy", "forward", "backward", "optimizer")
    },
}


@dataclass
class Finding:
    """One conclusion of the report, as written to findings.json (contract in SPEC.md)."""

    part: str
    metric: str
    winner: Any
    significant: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        w = d["winner"]
        d["winner"] = w.item() if hasattr(w, "item") else w  # numpy scalars are not JSON
        return d


def within_run_se(epochs: pd.DataFrame, batches: pd.DataFrame | None, metric: str) -> float:
    """Standard error of one run's metric from its own per-epoch and per-batch spread (0 when unknown)."""
    if metric in TIME_METRICS:
        col, bcols, how = TIME_METRICS[metric]
        n_ep = len(epochs)
        se_ep = 0.0
        if n_ep >= 2:
            sd = float(epochs[col].std())
            se_ep = sd / math.sqrt(n_ep) if how == "mean" else sd * math.sqrt(n_ep)
        se_b = 0.0
        if batches is not None and len(batches) >= 2:
            per_batch = batches[list(bcols)].sum(axis=1)
            n_b = len(per_batch)
            sd_sum = float(per_batch.std()) * math.sqrt(n_b)  # noise of the sum over all batches of the run
            se_b = sd_sum / max(1, n_ep) if how == "mean" else sd_sum
        if n_ep < 2 and (batches is None or len(batches) < 2):
            return math.nan  # nothing to estimate the noise from
        return max(se_ep, se_b)
    if metric in ("avg_train_acc", "final_train_acc", "final_test_acc"):
        col = {"avg_train_acc": "train_acc", "final_train_acc": "train_acc", "final_test_acc": "test_acc"}[metric]
        vals = epochs[col].dropna()
        if not len(vals):
            return math.nan
        p = float(vals.mean() if metric.startswith("avg") else vals.iloc[-1])
        samples = float(epochs["samples"].sum() if metric == "avg_train_acc" else epochs["samples"].iloc[-1])
        if metric == "final_test_acc":
            samples = max(samples / 5, 1.0)  # the test split is smaller than the training split, typically
        return math.sqrt(max(p * (1 - p), 1e-12) / max(samples, 1.0))
    if metric == "avg_train_loss":
        vals = epochs["train_loss"]
        return float(vals.std() / math.sqrt(len(vals))) if len(vals) >= 2 else 0.0
    return 0.0


@dataclass
class Estimate:
    """A setting's value of a metric and its standard error."""

    setting: Any
    value: float
    se: float
    runs: int
    source: str  # "repeats" or "within-run"


def estimates(
    groups: list[tuple[Any, list[tuple[dict, pd.DataFrame, pd.DataFrame | None]]]], metric: str
) -> list[Estimate]:
    """Per setting (in the order given): the mean of the metric over its runs and its standard error.

    groups: [(setting, [(summary row, epochs frame, batches frame or None), ...]), ...]."""
    out = []
    for setting, runs in groups:
        vals = [float(row[metric]) for row, _, _ in runs if not pd.isna(row[metric])]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        if len(vals) >= 2:
            sd = float(pd.Series(vals).std())
            out.append(Estimate(setting, mean, sd / math.sqrt(len(vals)), len(vals), "repeats"))
        else:
            _, e, b = runs[0]
            out.append(Estimate(setting, mean, within_run_se(e, b, metric), 1, "within-run"))
    return out


def differ(a: Estimate, b: Estimate) -> bool:
    """True when a and b differ by more than Z combined standard errors (never when the noise is unknown)."""
    if math.isnan(a.se) or math.isnan(b.se):
        return False
    return abs(a.value - b.value) > Z * math.sqrt(a.se**2 + b.se**2)


def noise_note(ests: list[Estimate]) -> str:
    if any(math.isnan(e.se) for e in ests):
        return "the noise could not be estimated: no per-batch records and a single epoch"
    if all(e.source == "repeats" for e in ests):
        return "noise from repeats"
    return "noise from the spread within each run, a lower bound on run-to-run noise"


def firm_answer_hint(ests: list[Estimate]) -> str:
    if all(e.source == "repeats" for e in ests):
        return "more repeats or longer runs would tell them apart"
    return "repeat each setting (e.g. `seed=0,1,2`) or train more epochs for a firm answer"


def best_of(ests: list[Estimate], lower_is_better: bool) -> tuple[Estimate, Estimate | None, bool]:
    """(best, runner-up, significant): the best setting and whether it beats the runner-up past the noise."""
    ranked = sorted(ests, key=lambda e: e.value if lower_is_better else -e.value)
    if len(ranked) == 1:
        return ranked[0], None, False
    return ranked[0], ranked[1], differ(ranked[0], ranked[1])


def compare(
    part: str,
    key: str,
    metric: str,
    ests: list[Estimate],
    lower_is_better: bool,
    what: str,
    fmt: str,
    missing: list[str] | None = None,
) -> Finding:
    """A finding naming the best setting of `key` by `metric` only when it beats the runner-up past the noise."""  # fmt: skip
    if len(ests) < 2:
        have = ", ".join(f"{key}={e.setting}" for e in ests) or "none"
        miss = f"; missing: {', '.join(missing)}" if missing else ""
        return Finding(part, metric, None, False,
                       f"Only one {key} completed ({have}){miss}: no {what} can be named from a single setting.")  # fmt: skip
    best, second, sig = best_of(ests, lower_is_better)
    vals = "; ".join(f"{key}={e.setting}: {format(e.value, fmt)} ± {format(e.se, '.2g')}" for e in ests)
    pair = (f"{key}={best.setting} ({format(best.value, fmt)}) against {key}={second.setting} "
            f"({format(second.value, fmt)})")  # fmt: skip
    if sig:
        text = (f"{what.capitalize()}: **{best.setting}**; {pair} differ beyond the noise ({noise_note(ests)}). "
                f"All ({metric}, ± standard error): {vals}.")  # fmt: skip
        return Finding(part, metric, best.setting, True, text)
    text = (f"{what.capitalize()}: the settings are indistinguishable here; {pair} is within the noise "
            f"({noise_note(ests)}): {firm_answer_hint(ests)}. All ({metric}, ± standard error): {vals}.")  # fmt: skip
    return Finding(part, metric, None, False, text)


def accuracy_finding(
    part: str, key: str, ests: list[Estimate], classes: int, missing: list[str] | None = None
) -> Finding:
    """Highest average training accuracy, or why none can be named (chance level, one setting, noise)."""
    chance = 1.0 / max(1, classes)
    if ests and all(e.value < chance + CHANCE_MARGIN for e in ests):
        top = max(e.value for e in ests)
        return Finding(part, "avg_train_acc", None, False,
                       f"Accuracy cannot be compared yet: every {key} is within {CHANCE_MARGIN:.0%} of chance "
                       f"({chance:.2f} for {classes} classes; best {top:.3f}). The run is too short to compare "
                       "accuracy: train more epochs or on more data.")  # fmt: skip
    return compare(part, key, "avg_train_acc", ests, False, "highest average training top-1", ".3f", missing)
