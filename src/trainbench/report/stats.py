"""Findings that know their own uncertainty: matched comparisons, Welch's t, and where the noise came from.

A key's values are compared only between runs that match on every other varying key (a *cell*); inside a cell,
runs that differ only in `seed` are repeats. Noise, per cell and metric, comes from one of:
  * `seeds`: two or more runs per setting (repeats); the metric of each run is one replicate;
  * `epochs`: timing metrics only, one run per setting with at least 3 epochs after the first (the first pays
    cold caches and worker start-up): each later epoch is one replicate. Run-to-run effects (another process,
    thermal state) are not in this noise, and the text says so;
  * `none`: neither; a winner may be named as the better-looking setting, but never as significant.
Never the per-batch spread (batches within an epoch are not independent draws of the epoch's figure), and
accuracy only from seeds.

Two settings differ when Welch's t-test (unequal variances, Student-t with Welch-Satterthwaite degrees of
freedom) rejects equal means at ALPHA = 0.05, two-sided. When other keys vary, the effect is measured in each
cell and pooled over the cells (mean of the per-cell differences; variance and degrees of freedom from every
cell's components), so the other keys' effects never count as noise. Its false-positive rate on identical
settings is checked by simulation in the tests (about 5 % at 2, 3 and 5 repeats).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from scipy import stats as sps

ALPHA = 0.05  # two-sided significance level of every comparison
MIN_EPOCH_REPLICATES = 3  # epochs after the first needed to use epochs as replicates
CHANCE_MARGIN = 0.05  # accuracy within this of 1/classes counts as chance level

# timing metric -> (epochs.csv column, how the run's metric aggregates its epochs)
TIME_METRICS = {
    "avg_epoch_time_s": ("epoch_time_s", "mean"),
    "avg_data_time_s": ("data_time_s", "mean"),
    "avg_compute_time_s": ("compute_time_s", "mean"),
    "avg_other_time_s": ("other_time_s", "mean"),
    "total_data_time_s": ("data_time_s", "sum"),
    "total_compute_time_s": ("compute_time_s", "sum"),
    "total_epoch_time_s": ("epoch_time_s", "sum"),
    **{f"avg_{ph}_time_s": (f"{ph}_time_s", "mean") for ph in ("copy", "forward", "backward", "optimizer")},
}


@dataclass
class Finding:
    """One conclusion of the report, as written to findings.json (contract in SPEC.md)."""

    part: str
    metric: str
    winner: Any
    significant: bool
    text: str
    noise: str = "none"  # seeds | epochs | none (| repeats: the tuner's interleaved repeats)
    n: int = 0  # replicates per setting (the fewest of the compared settings)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        w = d["winner"]
        d["winner"] = w.item() if hasattr(w, "item") else w  # numpy scalars are not JSON
        return d


@dataclass
class Cell:
    """One setting's replicates in one cell (a combination of the other varying keys)."""

    shown: float  # the metric as the report shows it (mean over the cell's runs)
    reps: list[float]  # the replicates the test uses
    noise: str

    @property
    def mean(self) -> float:
        return sum(self.reps) / len(self.reps)

    @property
    def var_of_mean(self) -> float:
        """s^2 / n, the variance of the replicates' mean (NaN below 2 replicates)."""
        n = len(self.reps)
        return float(pd.Series(self.reps).var()) / n if n >= 2 else math.nan


@dataclass
class Estimate:
    """A setting's value of a metric (mean over its cells), its standard error, and where the noise came from."""

    setting: Any
    value: float
    se: float
    n: int
    noise: str
    cells: dict[tuple, Cell] = field(default_factory=dict)

    @classmethod
    def of(cls, setting: Any, values: list[float], noise: str = "seeds") -> Estimate:
        """An estimate from plain replicates (one cell)."""
        c = Cell(sum(values) / len(values) if values else math.nan, list(values), noise if len(values) >= 2 else "none")
        return cls(
            setting, c.shown, math.sqrt(c.var_of_mean) if len(values) >= 2 else math.nan, len(values), c.noise, {(): c}
        )


def _cell(runs: list[tuple[dict, pd.DataFrame, Any]], metric: str) -> Cell | None:
    vals = [float(row[metric]) for row, _, _ in runs if not pd.isna(row.get(metric))]
    if not vals:
        return None
    shown = sum(vals) / len(vals)
    if len(vals) >= 2:
        return Cell(shown, vals, "seeds")
    if metric in TIME_METRICS:
        col, how = TIME_METRICS[metric]
        ep = runs[0][1]
        later = [float(v) for v in ep[col].iloc[1:] if not pd.isna(v)] if col in ep else []
        if len(later) >= MIN_EPOCH_REPLICATES:
            scale = len(ep) if how == "sum" else 1  # a total is compared through its per-epoch replicates x epochs
            return Cell(shown, [v * scale for v in later], "epochs")
    return Cell(shown, vals, "none")


def estimates(
    groups: list[tuple[Any, list[tuple[dict, pd.DataFrame, Any]]]], metric: str, match: list[str] | None = None
) -> list[Estimate]:
    """Per setting (in the order given): its cells (runs grouped by the `match` keys' values in their summary rows),
    the mean over cells, its standard error and noise source.

    groups: [(setting, [(summary row, epochs frame, batches frame or None), ...]), ...]."""
    out = []
    for setting, runs in groups:
        by_cell: dict[tuple, list] = {}
        for r in runs:
            by_cell.setdefault(tuple(repr(r[0].get(k)) for k in (match or [])), []).append(r)
        cells = {k: c for k, rs in by_cell.items() if (c := _cell(rs, metric)) is not None}
        if not cells:
            continue
        noises = {c.noise for c in cells.values()}
        noise = "none" if "none" in noises else ("seeds" if noises == {"seeds"} else "epochs")
        var = sum(c.var_of_mean for c in cells.values()) / len(cells) ** 2
        out.append(
            Estimate(
                setting,
                sum(c.shown for c in cells.values()) / len(cells),
                math.sqrt(var) if noise != "none" else math.nan,
                min(len(c.reps) for c in cells.values()),
                noise,
                cells,
            )
        )
    return out


@dataclass
class Test:
    """Welch's t-test of a against b, pooled over their matched cells."""

    diff: float  # mean of a minus mean of b (over matched cells)
    se: float
    df: float
    p: float
    levels: dict[tuple, float]  # per matched cell: the difference
    noise: str

    @property
    def significant(self) -> bool:
        return self.noise != "none" and not math.isnan(self.p) and self.p < ALPHA


def welch(a: Estimate, b: Estimate) -> Test:
    """a against b over the cells both have; p = NaN when there is no noise to test against."""
    keys = [k for k in a.cells if k in b.cells]
    if not keys:
        return Test(math.nan, math.nan, math.nan, math.nan, {}, "none")
    levels = {k: a.cells[k].mean - b.cells[k].mean for k in keys}
    diff = sum(levels.values()) / len(keys)
    noise = "none" if "none" in (a.noise, b.noise) else ("seeds" if a.noise == b.noise == "seeds" else "epochs")
    comps = [(c.var_of_mean, len(c.reps) - 1) for k in keys for c in (a.cells[k], b.cells[k])]
    if noise == "none" or any(math.isnan(v) for v, _ in comps):
        return Test(diff, math.nan, math.nan, math.nan, levels, "none")
    var = sum(v for v, _ in comps) / len(keys) ** 2
    if var == 0:  # identical replicates: any difference is real, none is not
        return Test(diff, 0.0, math.inf, 0.0 if diff else 1.0, levels, noise)
    df = sum(v for v, _ in comps) ** 2 / sum(v**2 / d for v, d in comps if v > 0)
    t = diff / math.sqrt(var)
    return Test(diff, math.sqrt(var), df, float(2 * sps.t.sf(abs(t), df)), levels, noise)


def differ(a: Estimate, b: Estimate) -> bool:
    """True when a and b differ beyond the noise (Welch's t at ALPHA; never without noise)."""
    return welch(a, b).significant


def noise_note(ests: list[Estimate]) -> str:
    """Where the noise of these estimates came from, in words."""
    noises = {e.noise for e in ests}
    n = min((e.n for e in ests), default=0)
    if "none" in noises:
        return (
            "no run-to-run noise was measured (one run per setting: accuracy needs seeds, times seeds or "
            f"{MIN_EPOCH_REPLICATES + 1}+ epochs)"
        )
    if noises == {"seeds"}:
        return f"noise from {n}+ seeds per setting, Welch's t at {ALPHA:g}"
    return (
        f"noise from the spread of {n}+ epochs after the first within each run, Welch's t at {ALPHA:g}; "
        "run-to-run effects are not in it"
    )


def firm_answer_hint(ests: list[Estimate]) -> str:
    """What to run for a firmer answer."""
    if all(e.noise == "seeds" for e in ests):
        return "more seeds or longer runs would tell them apart"
    return f"run each setting with seeds (`seed=0,1,2`), or at least {MIN_EPOCH_REPLICATES + 1} epochs, for a verdict"


def _levels_note(t: Test, match: list[str] | None, fmt: str) -> str:
    """The effect at each level of the other varying keys, and pooled."""
    if not match or len(t.levels) < 1 or not any(k for k in t.levels):
        return ""
    lv = "; ".join(
        f"{', '.join(f'{m}={v.strip(chr(39))}' for m, v in zip(match, k))}: {format(d, '+' + fmt)}"
        for k, d in t.levels.items()
    )
    return (
        f" Compared at matched {', '.join(match)} (the other keys that vary): {lv}; pooled {format(t.diff, '+' + fmt)}."
    )


def compare(
    part: str,
    key: str,
    metric: str,
    ests: list[Estimate],
    lower_is_better: bool,
    what: str,
    fmt: str,
    missing: list[str] | None = None,
    match: list[str] | None = None,
) -> Finding:
    """A finding naming the best setting of `key` by `metric`; significant only when it beats the runner-up past
    the measured noise (with no noise, the better-looking setting is named and significant is false)."""
    if len(ests) < 2:
        have = ", ".join(f"{key}={e.setting}" for e in ests) or "none"
        miss = f"; missing: {', '.join(missing)}" if missing else ""
        return Finding(
            part,
            metric,
            None,
            False,
            f"Only one {key} completed ({have}){miss}: no {what} can be named from a single setting.",
        )
    ranked = sorted(ests, key=lambda e: e.value if lower_is_better else -e.value)
    best, second = ranked[0], ranked[1]
    t = welch(best, second)
    n = min(e.n for e in ests)
    noise = "none" if any(e.noise == "none" for e in ests) else t.noise
    se = lambda e: "" if math.isnan(e.se) else f" ± {format(e.se, '.2g')}"  # noqa: E731
    vals = "; ".join(f"{key}={e.setting}: {format(e.value, fmt)}{se(e)}" for e in ests)
    pair = (
        f"{key}={best.setting} ({format(best.value, fmt)}) against {key}={second.setting} ({format(second.value, fmt)})"
    )
    levels = _levels_note(t, match, fmt)
    if t.significant:
        text = (
            f"{what.capitalize()}: **{best.setting}**; {pair} differ beyond the noise ({noise_note(ests)}, "
            f"p={t.p:.2g}).{levels} All ({metric}, ± standard error): {vals}."
        )
        return Finding(part, metric, best.setting, True, text, noise, n)
    if noise == "none":
        text = (
            f"{what.capitalize()}: {key}={best.setting} looks best ({pair}), but {noise_note(ests)}, so this "
            f"is not a verdict: {firm_answer_hint(ests)}.{levels} All ({metric}): {vals}."
        )
        return Finding(part, metric, best.setting, False, text, "none", n)
    text = (
        f"{what.capitalize()}: the settings are indistinguishable here; {pair} is within the noise "
        f"({noise_note(ests)}, p={t.p:.2g}): {firm_answer_hint(ests)}.{levels} All ({metric}, ± standard error): "
        f"{vals}."
    )
    return Finding(part, metric, None, False, text, noise, n)


def accuracy_finding(
    part: str,
    key: str,
    ests: list[Estimate],
    classes: int,
    missing: list[str] | None = None,
    match: list[str] | None = None,
) -> Finding:
    """Highest average training accuracy, or why none can be named (chance level, one setting, noise)."""
    chance = 1.0 / max(1, classes)
    if ests and all(e.value < chance + CHANCE_MARGIN for e in ests):
        top = max(e.value for e in ests)
        return Finding(
            part,
            "avg_train_acc",
            None,
            False,
            f"Accuracy cannot be compared yet: every {key} is within {CHANCE_MARGIN:.0%} of chance "
            f"({chance:.2f} for {classes} classes; best {top:.3f}). The run is too short to compare "
            "accuracy: train more epochs or on more data.",
        )
    return compare(part, key, "avg_train_acc", ests, False, "highest average training top-1", ".3f", missing, match)
