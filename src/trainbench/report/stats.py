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
cell's components), so the other keys' effects never count as noise.

One comparison engine: `compare` ranks the settings by the numbers its test uses (the replicates' means over the
cells every compared setting ran in: the same epochs, the same matched cells, the same runs), tests the best
against the runner-up on those cells, and names a `winner` only when that test is significant; the better-looking
setting is `leading` either way. A finding is significant only when every compared setting carries measured noise
(n >= 2). The report's significant candidates are then corrected together (Holm, `holm`), so that with no effect
anywhere at most ALPHA of reports carry any significant finding (simulated in the tests).
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
    winner: Any  # null unless significant
    significant: bool
    text: str
    noise: str = "none"  # seeds | epochs | none (| repeats: the tuner's interleaved repeats)
    n: int = 0  # replicates per setting (the fewest of the compared settings)
    leading: Any = None  # the better-looking setting, significant or not (what a student must not copy as a winner)
    p: float | None = None  # the test's own p-value (before the report's correction)
    p_adjusted: float | None = None  # Holm-adjusted over the report's tests (significant iff below ALPHA)
    key: str | None = None  # the setting compared (optimizer, workers, ...), where the finding compares one
    demoted: str | None = field(default=None, repr=False)  # the text if the report's correction takes it back

    def __post_init__(self) -> None:
        if self.leading is None:
            self.leading = self.winner
        if not self.significant:
            self.winner = None  # a winner is only ever a significant one

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("demoted")
        for k in ("winner", "leading"):
            d[k] = d[k].item() if hasattr(d[k], "item") else d[k]  # numpy scalars are not JSON
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


def cell_key(row: dict, match: list[str] | None) -> tuple:
    """The cell a summary row belongs to: its values of the other varying keys (`match`), as text."""
    return tuple(repr(row.get(k)) for k in (match or []))


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
            by_cell.setdefault(cell_key(r[0], match), []).append(r)
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


def welch(a: Estimate, b: Estimate, cells: set | None = None) -> Test:
    """a against b over the cells both have (of `cells`, when given); p = NaN when there is no noise to test against."""
    keys = [k for k in a.cells if k in b.cells and (cells is None or k in cells)]
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


def common_cells(ests: list[Estimate]) -> set:
    """The cells every one of ests ran in (a failed job's cell counts for none)."""
    return set.intersection(*(set(e.cells) for e in ests)) if ests else set()


def matched(e: Estimate, cells: set) -> float:
    """e's value on the numbers its test uses: the mean of its replicates' means over `cells`."""
    return sum(e.cells[k].mean for k in cells) / len(cells)


def measured(ests: list[Estimate], cells: set, t: Test | None) -> tuple[str, int, float | None]:
    """(noise, n, p) of a test t between two of ests over `cells`: noise is none (and p None) unless every one of
    ests carries measured noise with at least 2 replicates in each of the cells."""
    n = min(min(len(e.cells[k].reps) for k in cells) for e in ests) if cells and ests else 0
    noise = "none" if t is None or any(e.noise == "none" for e in ests) or n < 2 else t.noise
    return noise, n, (t.p if noise != "none" and not math.isnan(t.p) else None)


def _incomparable(
    part: str,
    key: str,
    metric: str,
    ests: list[Estimate],
    what: str,
    missing: list[str] | None,
    match: list[str] | None,
) -> Finding:
    """Why no setting of key can be named: one setting only, or no cell holding every setting."""
    have = ", ".join(f"{key}={e.setting}" for e in ests) or "none"
    miss = f"; missing: {', '.join(missing)}" if missing else ""
    why = f"Only one {key} completed ({have}){miss}"
    if len(ests) >= 2:
        others = ", ".join(match or [])
        why = f"No cell of the other varying keys ({others}) holds a completed run of every {key} ({have}){miss}"
    return Finding(part, metric, None, False, f"{why}: no {what} can be named.", key=key)


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
    """A finding on the best setting of `key` by `metric`: ranked, tested and shown on the same numbers (the
    replicates over the cells every setting ran in); `winner` only when the best beats the runner-up past the
    measured noise of every compared setting."""
    cells = common_cells(ests)
    if len(ests) < 2 or not cells:
        return _incomparable(part, key, metric, ests, what, missing, match)
    sign = 1 if lower_is_better else -1
    ranked = sorted(ests, key=lambda e: sign * matched(e, cells))
    best, second = ranked[0], ranked[1]
    t = welch(best, second, cells)
    noise, n, p = measured(ests, cells, t)
    sig = p is not None and p < ALPHA and sign * t.diff < 0  # (best is ranked on these cells: never the wrong sign)
    se = lambda e: "" if math.isnan(e.se) else f" ± {format(e.se, '.2g')}"  # noqa: E731
    basis = " (per-epoch means over the epochs after the first)" if noise == "epochs" else ""
    vals = "; ".join(f"{key}={e.setting}: {format(matched(e, cells), fmt)}{se(e)}" for e in ranked)
    pair = (
        f"{key}={best.setting} ({format(matched(best, cells), fmt)}) against {key}={second.setting} "
        f"({format(matched(second, cells), fmt)})"
    )
    dropped = [e.setting for e in ests if set(e.cells) - cells]
    scope = ""
    if dropped:
        scope = f" Compared where every {key} ran (cells of {', '.join(match or [])} missing a setting left out)."
    levels = _levels_note(t, match, fmt) + scope
    tail = f"{levels} All ({metric}{basis}, ± standard error): {vals}."
    within = (
        f"{what.capitalize()}: the settings are indistinguishable here; {pair} is within the noise "
        f"({noise_note(ests)}, p={t.p:.2g}): {firm_answer_hint(ests)}.{tail}"
    )
    if sig:
        text = (
            f"{what.capitalize()}: **{best.setting}**; {pair} differ beyond the noise ({noise_note(ests)}, "
            f"p={t.p:.2g}).{tail}"
        )
        demoted = within.replace(f"p={t.p:.2g})", f"p={t.p:.2g}, not significant after the report's correction)")
        return Finding(part, metric, best.setting, True, text, noise, n, best.setting, p, key=key, demoted=demoted)
    if noise == "none":
        text = (
            f"{what.capitalize()}: {key}={best.setting} looks best ({pair}), but {noise_note(ests)}, so this "
            f"is not a verdict: {firm_answer_hint(ests)}.{levels} All ({metric}): {vals}."
        )
        return Finding(part, metric, None, False, text, "none", n, best.setting, key=key)
    return Finding(part, metric, None, False, within, noise, n, best.setting, p, key=key)


def holm(findings: list[Finding], alpha: float = ALPHA) -> int:
    """Holm's step-down correction over every finding that carries a p-value (the report's tests): a finding stays
    significant only if its p is below alpha / (m - rank); the others lose their winner (their text says so).
    Sets p_adjusted on each tested finding; returns m, the number of tests corrected over."""
    tested = sorted((f for f in findings if f.p is not None), key=lambda f: f.p)
    m, running, stop = len(tested), 0.0, False
    for i, f in enumerate(tested):
        running = max(running, min(1.0, (m - i) * f.p))  # the adjusted p is monotone in the rank
        f.p_adjusted = running
        stop = stop or f.p > alpha / (m - i)
        if f.significant and (stop or running >= alpha):
            f.significant, f.winner = False, None
            f.text = f.demoted or f.text + " (Not significant after the report's correction.)"
    return m


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
